//! `pursamere eval`: the white-box robustness evaluation.
//!
//! Threat model (DESIGN.md): the attacker knows both networks, every setting and every
//! noise vector. Gradient attacks run on the float host reference with the model's
//! *dequantised* weights (it agrees with the core on every label in `verify`); the
//! verdict for every adversarial example comes from the deployed system itself, the
//! int8 core. The Square attack queries the core only.
//!
//! Per example and threat (norm, ε) the record holds, for every attack, whether the
//! core still classifies correctly; the worst case is "correct under every attack".
//! Records are appended to `results.jsonl` as they finish, so a killed run resumes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use pursamere_core::PurifierConfig;
use pursamere_trainer::attack::{
    pgd, square_linf, AttackLoss, AttackNorm, ClassifierOracle, GradientOracle, PgdConfig,
    PurifiedOracle, PurifierGradient,
};
use pursamere_trainer::data::{load_mnist_dir, Split};
use pursamere_trainer::model::{FloatModel, FloatNet};
use serde::{Deserialize, Serialize};

use super::images::{model_bytes, parse_model};
use super::{core_classify, core_purify_classify, write_file};

/// The protocol file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    /// Test images evaluated (from `start`).
    pub images: usize,
    /// First test image.
    #[serde(default)]
    pub start: usize,
    /// PGD steps per restart.
    pub steps: usize,
    /// PGD restarts.
    #[serde(default = "one")]
    pub restarts: usize,
    /// Square attack queries per image.
    pub square_queries: usize,
    /// L∞ budgets.
    #[serde(default)]
    pub linf_eps: Vec<f32>,
    /// L2 budgets.
    #[serde(default)]
    pub l2_eps: Vec<f32>,
    /// Attacks: any of "transfer", "bpda", "full", "square".
    pub attacks: Vec<String>,
    /// Defences: any of "none", "denoise", "ere" (ρ = 0), "pursamere" (ρ = `rho`).
    pub defences: Vec<String>,
    /// PGD losses: "ce" and/or "margin".
    #[serde(default = "ce")]
    pub losses: Vec<String>,
    /// ρ of the "pursamere" defence (the model's own ρ when it is > 0).
    #[serde(default = "rho")]
    pub rho: f32,
    /// Re-attack the examples that survived, at the largest ε of each norm, with the
    /// full-gradient attack and twice the steps; flag "not converged" when the worst
    /// case drops by more than 1 point.
    #[serde(default)]
    pub convergence_check: bool,
}

fn one() -> usize {
    1
}
fn ce() -> Vec<String> {
    vec!["ce".into()]
}
fn rho() -> f32 {
    0.05
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Protocol file (TOML); see docs/EVALUATION.md.
    #[arg(long)]
    pub protocol: PathBuf,
    /// Data set directory (MNIST layout); the TEST split is used.
    #[arg(long)]
    pub data: PathBuf,
    /// Model file (.psm); default: the shipped model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output directory: results.jsonl (per example, appended), report.json, report.md.
    #[arg(long)]
    pub out: PathBuf,
    /// Overrides of the model's purifier settings (the defended system evaluated).
    #[command(flatten)]
    pub purifier: super::export::PurifierArgs,
}

/// One evaluated (example, defence, threat).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    index: usize,
    defence: String,
    norm: String,
    eps: f32,
    clean_correct: bool,
    /// Attack name → still correct after it.
    correct: BTreeMap<String, bool>,
    /// Mean gradient norm of the full attack's first step (masking indicator).
    grad_norm: Option<f32>,
    seconds: BTreeMap<String, f64>,
}

/// Result of the step-doubling check at one threat.
#[derive(Debug, Clone, Serialize)]
struct Convergence {
    defence: String,
    norm: String,
    eps: f32,
    worst: f64,
    worst_double_steps: f64,
}

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

fn denoise_then_classify(fm: &FloatModel) -> Option<FloatNet> {
    if fm.denoiser.residual {
        return None;
    }
    let mut layers = fm.denoiser.layers.clone();
    layers.extend(fm.classifier.layers.iter().cloned());
    Some(FloatNet {
        residual: false,
        layers,
    })
}

pub fn run(a: EvalArgs) -> Result<i32> {
    let text = std::fs::read_to_string(&a.protocol)
        .with_context(|| format!("cannot read {}", a.protocol.display()))?;
    let p: Protocol = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid protocol", a.protocol.display()))?;
    for at in &p.attacks {
        if !["transfer", "bpda", "full", "square"].contains(&at.as_str()) {
            bail!("unknown attack `{at}` (transfer, bpda, full, square)");
        }
    }
    for d in &p.defences {
        if !["none", "denoise", "ere", "pursamere"].contains(&d.as_str()) {
            bail!("unknown defence `{d}` (none, denoise, ere, pursamere)");
        }
    }
    let losses: Vec<AttackLoss> = p
        .losses
        .iter()
        .map(|l| match l.as_str() {
            "ce" => Ok(AttackLoss::CrossEntropy),
            "margin" => Ok(AttackLoss::Margin),
            o => bail!("unknown loss `{o}` (ce, margin)"),
        })
        .collect::<Result<_>>()?;
    if p.images == 0 || p.steps == 0 || (p.linf_eps.is_empty() && p.l2_eps.is_empty()) {
        bail!("the protocol needs images > 0, steps > 0 and at least one budget");
    }
    let bytes = model_bytes(&a.model)?;
    let model = parse_model(&bytes, &a.model)?;
    let fm = FloatModel::from_spec(model.spec());
    let d = model.input_len();
    let test = load_mnist_dir(&a.data, Split::Test)?;
    if p.start + p.images > test.len() {
        bail!(
            "images {}..{} are outside the {} test images",
            p.start,
            p.start + p.images,
            test.len()
        );
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let results = a.out.join("results.jsonl");
    let mut done: Vec<Record> = std::fs::read_to_string(&results)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if !done.is_empty() {
        eprintln!(
            "resuming: {} records already in {}",
            done.len(),
            results.display()
        );
    }
    let mut sink = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results)?;

    let base = a.purifier.apply(model.purifier_config())?;
    let purifier_for = |defence: &str| -> Option<PurifierConfig> {
        match defence {
            "ere" => Some(PurifierConfig { rho: 0.0, ..base }),
            "pursamere" => Some(PurifierConfig {
                rho: if base.rho > 0.0 { base.rho } else { p.rho },
                ..base
            }),
            _ => None,
        }
    };
    let threats: Vec<(AttackNorm, f32)> = p
        .linf_eps
        .iter()
        .map(|&e| (AttackNorm::Linf, e))
        .chain(p.l2_eps.iter().map(|&e| (AttackNorm::L2, e)))
        .collect();
    let total = p.images * p.defences.len() * threats.len();
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(st) =
        indicatif::ProgressStyle::with_template("eval [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
    {
        bar.set_style(st.progress_chars("=> "));
    }
    bar.inc(done.len() as u64);
    let undefended = ClassifierOracle::new(&fm.classifier, d);
    let dnc = denoise_then_classify(&fm);

    for defence in &p.defences {
        let cfg = purifier_for(defence);
        let predict = |x: &[f32]| -> Result<Vec<usize>> {
            match (defence.as_str(), &cfg) {
                (_, Some(c)) => Ok(core_purify_classify(&model, c, x)?.1),
                ("denoise", None) => {
                    let mut out = vec![0.0; x.len()];
                    let mut scratch = vec![0.0; model.denoise_scratch_len()];
                    for (xi, oi) in x.chunks(d).zip(out.chunks_mut(d)) {
                        model.denoise(xi, oi, &mut scratch)?;
                    }
                    // The denoiser may leave [0, 1]; the classifier takes any finite input.
                    core_classify(&model, &out)
                }
                _ => core_classify(&model, x),
            }
        };
        if defence == "denoise" && dnc.is_none() {
            bail!("the `denoise` ablation needs a non-residual denoiser");
        }
        for &(norm, eps) in &threats {
            let norm_name = if norm == AttackNorm::Linf {
                "linf"
            } else {
                "l2"
            };
            for i in p.start..p.start + p.images {
                if done.iter().any(|r| {
                    r.index == i && &r.defence == defence && r.norm == norm_name && r.eps == eps
                }) {
                    continue;
                }
                let x = test.image_f32(i).unwrap_or_default();
                let y = vec![usize::from(test.labels[i])];
                let clean_correct = predict(&x)?[0] == y[0];
                let mut correct = BTreeMap::new();
                let mut seconds = BTreeMap::new();
                let mut grad_norm = None;
                for attack in &p.attacks {
                    let t = Instant::now();
                    let mut ok = clean_correct;
                    if ok && attack == "square" {
                        if norm != AttackNorm::Linf {
                            continue;
                        }
                        let side = usize::from(model.spec().meta.input_shape.height);
                        let query = |img: &[f32]| -> Vec<f32> {
                            let mut logits = vec![0.0; model.num_classes()];
                            let mut scratch =
                                vec![
                                    0.0;
                                    model.scratch_len_fast().max(model.denoise_scratch_len())
                                ];
                            let mut buf = vec![0.0; d];
                            let xin: &[f32] = match (defence.as_str(), &cfg) {
                                (_, Some(c)) => {
                                    let _ = model.purify(img, c, &mut buf, &mut scratch);
                                    &buf
                                }
                                ("denoise", None) => {
                                    let _ = model.denoise(img, &mut buf, &mut scratch);
                                    &buf
                                }
                                _ => img,
                            };
                            let _ = model.classify(xin, &mut logits, &mut scratch);
                            logits
                        };
                        let r = square_linf(
                            query,
                            &x,
                            y[0],
                            side,
                            d / side.max(1),
                            eps,
                            p.square_queries,
                            i as u64,
                        );
                        ok = !r.fooled;
                    } else if ok {
                        for &loss in &losses {
                            let pc = PgdConfig {
                                norm,
                                eps,
                                steps: p.steps,
                                step_size: 2.5 * eps / p.steps as f32,
                                loss,
                                random_start: true,
                                restarts: p.restarts,
                                seed: i as u64,
                            };
                            let adv = match (attack.as_str(), defence.as_str(), &cfg) {
                                ("transfer", _, _) => pgd(&undefended, &x, &y, &pc),
                                (_, "none", _) => pgd(&undefended, &x, &y, &pc),
                                (_, "denoise", _) => {
                                    let net = dnc.as_ref().map_or(&fm.classifier, |n| n);
                                    let o = ClassifierOracle::new(net, d);
                                    if attack == "bpda" {
                                        pgd(&undefended, &x, &y, &pc)
                                    } else {
                                        pgd(&o, &x, &y, &pc)
                                    }
                                }
                                ("bpda", _, Some(c)) => pgd(
                                    &PurifiedOracle::new(
                                        &fm.denoiser,
                                        &fm.classifier,
                                        d,
                                        *c,
                                        PurifierGradient::Bpda,
                                    ),
                                    &x,
                                    &y,
                                    &pc,
                                ),
                                (_, _, Some(c)) => {
                                    let o = PurifiedOracle::new(
                                        &fm.denoiser,
                                        &fm.classifier,
                                        d,
                                        *c,
                                        PurifierGradient::Full,
                                    );
                                    if grad_norm.is_none() {
                                        let g = o.evaluate(&x, &y, loss).grad;
                                        grad_norm =
                                            Some(g.iter().map(|v| v * v).sum::<f32>().sqrt());
                                    }
                                    pgd(&o, &x, &y, &pc)
                                }
                                _ => x.clone(),
                            };
                            if predict(&adv)?[0] != y[0] {
                                ok = false;
                                break;
                            }
                        }
                    }
                    correct.insert(attack.clone(), ok);
                    seconds.insert(attack.clone(), t.elapsed().as_secs_f64());
                }
                let rec = Record {
                    index: i,
                    defence: defence.clone(),
                    norm: norm_name.into(),
                    eps,
                    clean_correct,
                    correct,
                    grad_norm,
                    seconds,
                };
                writeln!(sink, "{}", serde_json::to_string(&rec)?)?;
                sink.flush()?;
                done.push(rec);
                bar.inc(1);
                let same: Vec<&Record> = done
                    .iter()
                    .filter(|r| &r.defence == defence && r.norm == norm_name && r.eps == eps)
                    .collect();
                let robust = same
                    .iter()
                    .filter(|r| r.correct.values().all(|&c| c) && r.clean_correct)
                    .count();
                bar.set_message(format!(
                    "{defence} {norm_name} {eps}: robust {robust}/{}",
                    same.len()
                ));
            }
        }
    }
    bar.finish_and_clear();

    let mut convergence = Vec::new();
    if p.convergence_check && p.attacks.iter().any(|a| a == "full") {
        for defence in &p.defences {
            let Some(c) = purifier_for(defence) else {
                continue;
            };
            let oracle =
                PurifiedOracle::new(&fm.denoiser, &fm.classifier, d, c, PurifierGradient::Full);
            for norm in [AttackNorm::Linf, AttackNorm::L2] {
                let nn = if norm == AttackNorm::Linf {
                    "linf"
                } else {
                    "l2"
                };
                let Some(eps) = threats
                    .iter()
                    .filter(|t| t.0 == norm)
                    .map(|t| t.1)
                    .reduce(f32::max)
                else {
                    continue;
                };
                let recs: Vec<&Record> = done
                    .iter()
                    .filter(|r| &r.defence == defence && r.norm == nn && r.eps == eps)
                    .collect();
                let survivors: Vec<usize> = recs
                    .iter()
                    .filter(|r| r.clean_correct && r.correct.values().all(|&c| c))
                    .map(|r| r.index)
                    .collect();
                let mut broken = 0;
                for &i in &survivors {
                    let x = test.image_f32(i).unwrap_or_default();
                    let y = vec![usize::from(test.labels[i])];
                    let pc = PgdConfig {
                        norm,
                        eps,
                        steps: 2 * p.steps,
                        step_size: 2.5 * eps / (2 * p.steps) as f32,
                        loss: losses[0],
                        random_start: true,
                        restarts: p.restarts,
                        seed: i as u64 + 1,
                    };
                    let adv = pgd(&oracle, &x, &y, &pc);
                    if core_purify_classify(&model, &c, &adv)?.1[0] != y[0] {
                        broken += 1;
                    }
                }
                let n = recs.len().max(1) as f64;
                convergence.push(Convergence {
                    defence: defence.clone(),
                    norm: nn.into(),
                    eps,
                    worst: survivors.len() as f64 / n,
                    worst_double_steps: (survivors.len() - broken) as f64 / n,
                });
            }
        }
    }
    report(&a, &p, &done, &threats, &convergence)
}

fn report(
    a: &EvalArgs,
    p: &Protocol,
    done: &[Record],
    threats: &[(AttackNorm, f32)],
    convergence: &[Convergence],
) -> Result<i32> {
    let mut md = String::new();
    md += &format!(
        "| defence | norm | ε | n | clean | {} | worst case (95 % Wilson) |\n|---|---|---|---|---|{}---|\n",
        p.attacks.join(" | "),
        "---|".repeat(p.attacks.len())
    );
    let mut rows = Vec::new();
    let mut flags = Vec::new();
    for defence in &p.defences {
        let mut prev_worst: Option<f64> = None;
        for &(norm, eps) in threats {
            let nn = if norm == AttackNorm::Linf {
                "linf"
            } else {
                "l2"
            };
            let recs: Vec<&Record> = done
                .iter()
                .filter(|r| &r.defence == defence && r.norm == nn && r.eps == eps)
                .collect();
            let n = recs.len();
            if n == 0 {
                continue;
            }
            let clean = recs.iter().filter(|r| r.clean_correct).count();
            let mut per = BTreeMap::new();
            for at in &p.attacks {
                let k = recs
                    .iter()
                    .filter(|r| r.correct.get(at).copied().unwrap_or(r.clean_correct))
                    .count();
                per.insert(at.clone(), k as f64 / n as f64);
            }
            let worst = recs
                .iter()
                .filter(|r| r.clean_correct && r.correct.values().all(|&c| c))
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
                    .map(|at| format!("{:.1} %", 100.0 * per[at]))
                    .collect::<Vec<_>>()
                    .join(" | "),
                100.0 * wf,
                100.0 * lo,
                100.0 * hi
            );
            // Sanity checks.
            if let Some(pw) = prev_worst {
                if wf > pw + 1e-9 {
                    flags.push(format!(
                        "FLAG {defence} {nn}: robust accuracy rises with ε ({:.1} % at {eps})",
                        100.0 * wf
                    ));
                }
            }
            prev_worst = Some(wf);
            if let (Some(&full), Some(&tr)) = (per.get("full"), per.get("transfer")) {
                if full > tr + 1e-9 {
                    flags.push(format!("FLAG {defence} {nn} {eps}: white-box (full) accuracy {:.1} % above transfer {:.1} % — suspect the attack", 100.0 * full, 100.0 * tr));
                }
            }
            if let (Some(&full), Some(&sq)) = (per.get("full"), per.get("square")) {
                if full > sq + 1e-9 {
                    flags.push(format!("FLAG {defence} {nn} {eps}: full-gradient accuracy {:.1} % above Square {:.1} % — gradient masking?", 100.0 * full, 100.0 * sq));
                }
            }
            if let Some(g) = mean_g {
                if g < 1e-6 {
                    flags.push(format!("FLAG {defence} {nn} {eps}: mean gradient norm through the purifier {g:e} — masking"));
                }
            }
            rows.push(serde_json::json!({"defence": defence, "norm": nn, "eps": eps, "n": n,
                "clean": clean as f64 / n as f64, "per_attack": per, "worst_case": wf, "wilson95": [lo, hi],
                "mean_full_gradient_norm": mean_g,
                "seconds_per_image": p.attacks.iter().map(|at| (at.clone(), recs.iter().filter_map(|r| r.seconds.get(at)).sum::<f64>() / n as f64)).collect::<BTreeMap<_,_>>()}));
        }
        if defence == "none" {
            if let Some(last) = rows.iter().rev().find(|r| r["defence"] == "none") {
                let w = last["worst_case"].as_f64().unwrap_or(1.0);
                if w > 0.01 {
                    flags.push(format!("FLAG undefended classifier keeps {:.1} % at the largest ε (should be ≤ 1 %)", 100.0 * w));
                }
            }
        }
    }
    for c in convergence {
        let drop = c.worst - c.worst_double_steps;
        md += &format!(
            "\nStep doubling ({} {} {}): worst case {:.1} % with {} steps, {:.1} % with {}.\n",
            c.defence,
            c.norm,
            c.eps,
            100.0 * c.worst,
            p.steps,
            100.0 * c.worst_double_steps,
            2 * p.steps
        );
        if drop > 0.01 {
            flags.push(format!(
                "FLAG {} {} {}: not converged — doubling the PGD steps lowers the worst case by {:.1} points",
                c.defence, c.norm, c.eps, 100.0 * drop
            ));
        }
    }
    md += "\nSanity checks:\n";
    if flags.is_empty() {
        md += "- all passed (undefended ≤ 1 % at the largest ε, no accuracy rising with ε, white-box ≤ transfer and Square, non-zero gradients)\n";
    }
    for f in &flags {
        md += &format!("- {f}\n");
    }
    write_file(&a.out.join("report.md"), md.as_bytes())?;
    write_file(
        &a.out.join("report.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"protocol": p, "rows": rows, "convergence": convergence, "flags": flags}),
        )?
        .as_bytes(),
    )?;
    println!("{md}");
    println!(
        "wrote {}/report.md, report.json, results.jsonl",
        a.out.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::wilson;

    #[test]
    fn wilson_interval_matches_published_values() {
        // 8 of 10: the textbook Wilson 95 % interval is [0.490, 0.943].
        let (lo, hi) = wilson(8, 10);
        assert!(
            (lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0, 10);
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 1e-3, "{hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }
}
