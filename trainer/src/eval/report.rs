//! The evaluation report: Markdown, JSON and the accuracy-against-ε plot, each
//! stating the model hash, the settings fingerprint and the commit.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::plot::{accuracy_vs_eps, Curve};
use super::protocol::Protocol;
use super::results::{CheckRecord, Record};
use super::EvalError;
use crate::attack::AttackNorm;

/// Wilson 95 % interval for k successes out of n.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, nf) = (1.959_963_984_540_054, n as f64);
    let p = k as f64 / nf;
    let den = 1.0 + z * z / nf;
    let c = (p + z * z / (2.0 * nf)) / den;
    let h = z * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt() / den;
    ((c - h).max(0.0), (c + h).min(1.0))
}

/// An f32 as the JSON number it reads as (0.3, not 0.30000001192092896).
pub(crate) fn f32_json(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// What identifies a report.
pub struct Header {
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// Fingerprint of the settings.
    pub fingerprint: String,
    /// Commit of the code.
    pub commit: String,
    /// Data set name.
    pub data: String,
    /// The full settings.
    pub settings: Value,
}

/// A finished report.
pub struct Report {
    /// The Markdown text (also in `report.md`).
    pub markdown: String,
    /// The JSON document (also in `report.json`).
    pub json: Value,
    /// Sanity-check flags (empty when every check passed).
    pub flags: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The attacks that query the system's outputs only, never a gradient.
const GRADIENT_FREE: [&str; 2] = ["square", "square-twin"];

/// How much the gradient-free attacks of a cascade lowered the accuracy below what
/// the attacks before them left (`per`: the cumulative accuracy after each attack
/// that ran), with their names as a flag names them; `None` when none ran or no
/// attack ran before them.
fn gradient_free_extra(attacks: &[String], per: &BTreeMap<String, f64>) -> Option<(f64, String)> {
    let first = attacks
        .iter()
        .position(|a| GRADIENT_FREE.contains(&a.as_str()) && per.contains_key(a))?;
    let before = attacks[..first].iter().rev().find_map(|a| per.get(a))?;
    let ran: Vec<&String> = attacks[first..]
        .iter()
        .filter(|a| GRADIENT_FREE.contains(&a.as_str()) && per.contains_key(*a))
        .collect();
    let after = ran
        .iter()
        .filter_map(|a| per.get(*a))
        .copied()
        .reduce(f64::min)?;
    let names = ran
        .iter()
        .map(|a| match a.as_str() {
            "square" => "Square",
            _ => "Square against the float twin",
        })
        .collect::<Vec<_>>()
        .join(" and ");
    Some((before - after, names))
}

/// Builds and writes `report.md`, `report.json` and `report.png` into `out`.
pub fn write(
    out: &Path,
    p: &Protocol,
    header: &Header,
    records: &[Record],
    checks: &[CheckRecord],
    threats: &[(AttackNorm, f32)],
    wall_seconds: f64,
) -> Result<Report, EvalError> {
    let mut md = String::new();
    md += &format!(
        "Model SHA-256 `{}`; settings fingerprint `{}`; commit `{}`; data {} ({} split), images {}..{}.\n\n",
        header.model_sha256,
        &header.fingerprint[..16.min(header.fingerprint.len())],
        header.commit,
        header.data,
        p.split,
        p.range().start,
        p.range().end
    );
    md += "Attacks run as a cascade in the column order: each column is the accuracy after \
           that attack and every attack to its left. The worst case adds the restart check \
           (new random starts on the survivors) where it ran.\n\n";
    md += &format!(
        "| defence | norm | ε | n | clean | {} | worst case (95 % Wilson) |\n|---|---|---|---|---|{}---|\n",
        p.attacks.join(" | "),
        "---|".repeat(p.attacks.len())
    );
    let mut rows = Vec::new();
    let mut flags = Vec::new();
    let mut sorted = threats.to_vec();
    sorted.sort_by(|a, b| {
        (a.0 as u8, a.1)
            .partial_cmp(&(b.0 as u8, b.1))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut check_lines = Vec::new();
    for defence in &p.defences {
        let mut prev_worst: BTreeMap<&str, f64> = BTreeMap::new();
        for &(norm, eps) in &sorted {
            let nn = norm.name();
            let recs: Vec<&Record> = records
                .iter()
                .filter(|r| &r.defence == defence && r.norm == nn && r.eps == eps)
                .collect();
            let n = recs.len();
            if n == 0 {
                continue;
            }
            let clean = recs.iter().filter(|r| r.clean_correct).count();
            // Cumulative accuracy after each attack of the cascade.
            let mut per = BTreeMap::new();
            for (i, at) in p.attacks.iter().enumerate() {
                if !recs.iter().any(|r| r.correct.contains_key(at)) {
                    continue;
                }
                let k = recs
                    .iter()
                    .filter(|r| {
                        r.clean_correct
                            && p.attacks[..=i]
                                .iter()
                                .all(|a| r.correct.get(a).copied().unwrap_or(true))
                    })
                    .count();
                per.insert(at.clone(), k as f64 / n as f64);
            }
            let broken_by_check = |r: &Record, kind: &str| {
                checks.iter().any(|c| {
                    c.check == kind
                        && c.broken
                        && c.index == r.index
                        && &c.defence == defence
                        && c.norm == nn
                        && c.eps == eps
                })
            };
            let main = recs.iter().filter(|r| r.robust()).count();
            let mut row_checks = BTreeMap::new();
            for kind in ["restarts", "double-steps"] {
                let ran = checks.iter().any(|c| {
                    c.check == kind && &c.defence == defence && c.norm == nn && c.eps == eps
                });
                if ran {
                    let broken = recs
                        .iter()
                        .filter(|r| r.robust() && broken_by_check(r, kind))
                        .count();
                    row_checks.insert(kind, broken);
                }
            }
            let worst = recs
                .iter()
                .filter(|r| {
                    r.robust()
                        && !broken_by_check(r, "restarts")
                        && !broken_by_check(r, "double-steps")
                })
                .count();
            let (lo, hi) = wilson(worst, n);
            let wf = worst as f64 / n as f64;
            let gnorm: Vec<f32> = recs.iter().filter_map(|r| r.grad_norm).collect();
            let mean_g =
                (!gnorm.is_empty()).then(|| gnorm.iter().sum::<f32>() / gnorm.len() as f32);
            md += &format!(
                "| {defence} | {nn} | {eps} | {n} | {:.1} % | {} | **{:.1} %** [{:.1}, {:.1}] |\n",
                100.0 * clean as f64 / n as f64,
                p.attacks
                    .iter()
                    .map(|at| per
                        .get(at)
                        .map_or("–".to_string(), |v| format!("{:.1} %", 100.0 * v)))
                    .collect::<Vec<_>>()
                    .join(" | "),
                100.0 * wf,
                100.0 * lo,
                100.0 * hi
            );
            // The row's own flags (also in the report's list and, through the
            // summary, next to the row's figure).
            let mut row_flags = Vec::new();
            // Whether a flag makes the figure an upper bound (more attack would likely
            // break more), recorded as such so that the summary never reads it back
            // out of the flags' wording.
            let mut upper_bound = false;
            for (kind, broken) in &row_checks {
                let what = if *kind == "restarts" {
                    format!("{} new random starts", p.restart_check_restarts)
                } else {
                    format!("{} steps", 2 * p.steps)
                };
                check_lines.push(format!(
                    "- {kind} check, {defence} {nn} {eps}: {broken} of {main} survivors broken with {what} \
                     ({:.1} % → {:.1} % before any other check)",
                    100.0 * main as f64 / n as f64,
                    100.0 * (main - broken) as f64 / n as f64
                ));
                if *broken as f64 / n as f64 > 0.01 {
                    upper_bound = true;
                    row_flags.push(format!(
                        "FLAG {defence} {nn} {eps}: not converged — the {kind} check lowers the worst case by {:.1} points",
                        100.0 * *broken as f64 / n as f64
                    ));
                }
            }
            if let Some(&pw) = prev_worst.get(nn) {
                if wf > pw + 1e-9 {
                    row_flags.push(format!(
                        "FLAG {defence} {nn}: robust accuracy rises with ε ({:.1} % at {eps})",
                        100.0 * wf
                    ));
                }
            }
            prev_worst.insert(nn, wf);
            // The gradient-free attacks run last, on the survivors of every gradient
            // attack: if they still break many, the gradients under-report (masking).
            if let Some((extra, names)) = gradient_free_extra(&p.attacks, &per) {
                if extra > 0.01 {
                    upper_bound = true;
                    row_flags.push(format!(
                        "FLAG {defence} {nn} {eps}: {names} (gradient-free) broke {:.1} points that every gradient attack missed — suspect gradient masking",
                        100.0 * extra
                    ));
                }
            }
            if let Some(g) = mean_g {
                if g < 1e-6 {
                    upper_bound = true;
                    row_flags.push(format!(
                        "FLAG {defence} {nn} {eps}: mean gradient norm through the purifier {g:e} — masking"
                    ));
                }
            }
            flags.extend(row_flags.iter().cloned());
            rows.push(json!({"defence": defence, "norm": nn, "eps": f32_json(eps), "n": n,
                "clean": clean as f64 / n as f64, "after_attack": per,
                "worst_case_before_checks": main as f64 / n as f64,
                "checks_broken": row_checks,
                "flags": row_flags,
                "upper_bound": upper_bound,
                "worst_case": wf, "wilson95": [lo, hi],
                "mean_full_gradient_norm": mean_g,
                "seconds_per_image": p.attacks.iter().map(|at| (at.clone(), recs.iter().filter_map(|r| r.seconds.get(at)).sum::<f64>().abs() / n as f64)).collect::<BTreeMap<_,_>>()}));
        }
        if defence == "none" {
            for nn in ["linf", "l2"] {
                if let Some(last) = rows
                    .iter()
                    .rev()
                    .find(|r| r["defence"] == "none" && r["norm"] == nn)
                {
                    let w = last["worst_case"].as_f64().unwrap_or(1.0);
                    if w > 0.01 {
                        flags.push(format!("FLAG undefended classifier keeps {:.1} % at the largest {nn} ε (should be ≤ 1 % for a standard classifier — if this one is adversarially trained, the flag is expected; otherwise suspect the attack)", 100.0 * w));
                    }
                }
            }
        }
    }
    md += &format!(
        "\nConvergence checks (survivors of {} re-attacked by every gradient attack):\n",
        if p.check_every_eps {
            "every ε"
        } else {
            "each norm's largest ε"
        }
    );
    if check_lines.is_empty() {
        md += "- none ran (restart_check = false, or no survivors)\n";
    }
    for l in &check_lines {
        md += &format!("{l}\n");
    }
    md += &format!(
        "\nSeconds per image (mean over each row's images):\n\n| defence | norm | ε | {} |\n|---|---|---|{}\n",
        p.attacks.join(" | "),
        "---|".repeat(p.attacks.len())
    );
    for r in &rows {
        md += &format!(
            "| {} | {} | {} | {} |\n",
            r["defence"].as_str().unwrap_or(""),
            r["norm"].as_str().unwrap_or(""),
            r["eps"].as_f64().unwrap_or(0.0) as f32,
            p.attacks
                .iter()
                .map(|at| match r["seconds_per_image"][at].as_f64() {
                    Some(s) if s > 0.0 => format!("{s:.3}"),
                    _ => "–".into(),
                })
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let compute: f64 = records
        .iter()
        .map(|r| r.seconds.values().sum::<f64>())
        .sum();
    md += &format!(
        "\nAttack compute in the records: {compute:.0} s; this invocation's wall time: {wall_seconds:.0} s.\n"
    );
    md += "\nSanity checks (undefended ≤ 1 % at the largest ε; accuracy not rising with ε; \
           Square breaks ≤ 1 point beyond the gradient attacks; the restart check changes the \
           worst case by ≤ 1 point; gradient norm through the purifier not vanishing):\n";
    if flags.is_empty() {
        md += "- all passed\n";
    }
    for f in &flags {
        md += &format!("- {f}\n");
    }
    for r in &rows {
        if let Some(g) = r["mean_full_gradient_norm"].as_f64() {
            md += &format!(
                "- mean norm of the margin loss's exact gradient through the purifier at the clean input, {} {} {}: {g:.3}\n",
                r["defence"].as_str().unwrap_or(""),
                r["norm"].as_str().unwrap_or(""),
                r["eps"].as_f64().unwrap_or(0.0) as f32,
            );
        }
    }
    let mut panels = Vec::new();
    for norm in [AttackNorm::Linf, AttackNorm::L2] {
        let nn = norm.name();
        let curves: Vec<Curve> = p
            .defences
            .iter()
            .filter_map(|defence| {
                let mine: Vec<&Value> = rows
                    .iter()
                    .filter(|r| r["defence"] == defence.as_str() && r["norm"] == nn)
                    .collect();
                let first = mine.first()?;
                let f = |v: &Value| v.as_f64().unwrap_or(0.0);
                let n = first["n"].as_u64().unwrap_or(0) as usize;
                let clean = f(&first["clean"]);
                let (lo, hi) = wilson((clean * n as f64).round() as usize, n);
                let mut points = vec![(0.0, clean, lo, hi)];
                points.extend(mine.iter().map(|r| {
                    (
                        f(&r["eps"]) as f32,
                        f(&r["worst_case"]),
                        f(&r["wilson95"][0]),
                        f(&r["wilson95"][1]),
                    )
                }));
                Some(Curve {
                    defence: defence.clone(),
                    points,
                })
            })
            .collect();
        if !curves.is_empty() {
            let title = match norm {
                AttackNorm::Linf => "L∞ threat",
                AttackNorm::L2 => "L2 threat",
            };
            panels.push((title.to_string(), curves));
        }
    }
    accuracy_vs_eps(&out.join("report.png"), &panels)?;
    let json = json!({
        "model_sha256": header.model_sha256,
        "fingerprint": header.fingerprint,
        "commit": header.commit,
        "data": header.data,
        "settings": header.settings,
        "protocol": p,
        "rows": rows,
        "flags": flags,
        "wall_seconds": wall_seconds,
    });
    let md_path = out.join("report.md");
    crate::train::write_atomic(&md_path, md.as_bytes()).map_err(io(&md_path))?;
    let json_path = out.join("report.json");
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    crate::train::write_atomic(&json_path, text.as_bytes()).map_err(io(&json_path))?;
    Ok(Report {
        markdown: md,
        json,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gradient_free_extra_counts_both_square_variants() {
        let attacks = names(&["transfer", "apgd-ce", "square", "square-twin"]);
        let per: BTreeMap<String, f64> = [
            ("transfer", 0.80),
            ("apgd-ce", 0.72),
            ("square", 0.715),
            ("square-twin", 0.695),
        ]
        .into_iter()
        .map(|(a, v)| (a.to_string(), v))
        .collect();
        let (extra, who) = gradient_free_extra(&attacks, &per).unwrap();
        assert!((extra - 0.025).abs() < 1e-12, "{extra}");
        assert_eq!(who, "Square and Square against the float twin");
        // Only one of them ran.
        let mut one = per.clone();
        one.remove("square-twin");
        let (extra, who) = gradient_free_extra(&attacks, &one).unwrap();
        assert!((extra - 0.005).abs() < 1e-12, "{extra}");
        assert_eq!(who, "Square");
        // No gradient-free attack, or nothing before it: nothing to compare.
        assert!(gradient_free_extra(&names(&["apgd-ce"]), &per).is_none());
        let only: BTreeMap<String, f64> = [("square".to_string(), 0.5)].into();
        assert!(gradient_free_extra(&names(&["square"]), &only).is_none());
    }
}
