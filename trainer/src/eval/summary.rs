//! `docs/eval/summary.json`: one record per (dataset, classifier, defence, norm, ε),
//! upserted from evaluation reports — generated, never typed.

use std::path::Path;

use serde_json::{json, Value};

use super::EvalError;

/// The rows of the summary file at `path` (none when it does not exist yet).
fn read_rows(path: &Path) -> Result<Vec<Value>, EvalError> {
    match std::fs::read_to_string(path) {
        Ok(t) => parse_rows(&t).map_err(|why| {
            EvalError::Protocol(format!("{} is not a summary file: {why}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(EvalError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The rows of a summary file's text, each checked for the fields every reader
/// uses — so that a hand-edited or damaged file is refused, naming the row and the
/// field, instead of printing 0 % (a missing or mistyped figure) or a column "L∞ 0".
pub fn parse_rows(text: &str) -> Result<Vec<Value>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let rows = doc
        .get("rows")
        .and_then(Value::as_array)
        .ok_or("no \"rows\" array")?;
    for (k, r) in rows.iter().enumerate() {
        let at = |what: String| format!("row {k} ({}): {what}", short(r));
        let val = |f: &str| match &r[f] {
            Value::Null => "missing".to_owned(),
            v => v.to_string(),
        };
        for f in ["dataset", "classifier", "defence", "norm"] {
            if !r[f].is_string() {
                return Err(at(format!("`{f}` is {}, not a string", val(f))));
            }
        }
        if !matches!(r["norm"].as_str(), Some("linf" | "l2")) {
            return Err(at(format!(
                "`norm` is {}, not \"linf\" or \"l2\"",
                val("norm")
            )));
        }
        // ε = 0 is a protocol's clean budget: a measured row like any other.
        if !r["eps"].as_f64().is_some_and(|e| e.is_finite() && e >= 0.0) {
            return Err(at(format!("`eps` is {}, not a number ≥ 0", val("eps"))));
        }
        if r["n"].as_u64().is_none_or(|n| n == 0) {
            return Err(at(format!(
                "`n` is {}, not a positive whole number",
                val("n")
            )));
        }
        for f in ["clean", "worst_case"] {
            if !r[f].as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)) {
                return Err(at(format!("`{f}` is {}, not a fraction in [0, 1]", val(f))));
            }
        }
    }
    Ok(rows.clone())
}

/// A row's identity for an error message.
fn short(r: &Value) -> String {
    ["dataset", "classifier", "defence", "norm"]
        .iter()
        .map(|f| r[*f].as_str().unwrap_or("?"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Rows filed under a classifier name that were measured on another model file
/// than the run that would add to them.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: its {dataset} rows named \"{classifier}\" ({rows}) were measured on another model file (SHA-256 {}…), this run's model is {}…: file this run under another --classifier name, or pass --replace-rows to replace all {rows} of them",
    path.display(),
    &theirs[..theirs.len().min(12)],
    &ours[..ours.len().min(12)]
)]
pub struct SummaryConflict {
    /// The summary file.
    pub path: std::path::PathBuf,
    /// Data set name.
    pub dataset: String,
    /// Classifier name.
    pub classifier: String,
    /// SHA-256 of the model the existing rows were measured on.
    pub theirs: String,
    /// SHA-256 of this run's model.
    pub ours: String,
    /// How many rows of the other model there are.
    pub rows: usize,
}

/// Whether `r` is a row of `dataset` filed under `classifier` but measured on a
/// model file other than `model_sha256`.
fn of_other_model(r: &Value, dataset: &str, classifier: &str, model_sha256: &str) -> bool {
    r["dataset"] == dataset
        && r["classifier"] == classifier
        && r["model_sha256"]
            .as_str()
            .is_some_and(|m| m != model_sha256)
}

/// The rows of `dataset` filed under `classifier` that were measured on a model
/// file other than `model_sha256`.
fn other_models<'r>(
    rows: &'r [Value],
    dataset: &str,
    classifier: &str,
    model_sha256: &str,
) -> Vec<&'r Value> {
    rows.iter()
        .filter(|r| of_other_model(r, dataset, classifier, model_sha256))
        .collect()
}

/// The refusal of [`check_same_model`] for `rows`, if any.
fn conflict(
    path: &Path,
    rows: &[Value],
    dataset: &str,
    classifier: &str,
    model_sha256: &str,
) -> Result<(), EvalError> {
    let others = other_models(rows, dataset, classifier, model_sha256);
    match others.first() {
        None => Ok(()),
        Some(r) => Err(EvalError::SummaryModel(Box::new(SummaryConflict {
            path: path.to_path_buf(),
            dataset: dataset.to_string(),
            classifier: classifier.to_string(),
            theirs: r["model_sha256"].as_str().unwrap_or("").to_string(),
            ours: model_sha256.to_string(),
            rows: others.len(),
        }))),
    }
}

/// One classifier name, one model file: fails when the summary at `path` already
/// files rows of `dataset` under `classifier` that were measured on another model
/// file (a new row beside them would mix two systems in one table, and one with the
/// same key would silently replace the other's figure). Called before a long
/// evaluation, so that it does not end in this error; [`upsert`] checks again.
pub fn check_same_model(
    path: &Path,
    dataset: &str,
    classifier: &str,
    model_sha256: &str,
) -> Result<(), EvalError> {
    conflict(path, &read_rows(path)?, dataset, classifier, model_sha256)
}

/// Holds an exclusive lock on `<dir>/.<name>.lock` while it lives, so that two
/// evaluations finishing together cannot both read the summary, each add their
/// rows and the second write drop the first one's (the file itself is replaced
/// by a rename, so it cannot carry the lock).
fn lock_beside(path: &Path) -> Result<std::fs::File, EvalError> {
    let name = path
        .file_name()
        .map_or_else(|| "summary".into(), |n| n.to_string_lossy().into_owned());
    let lock = path.with_file_name(format!(".{name}.lock"));
    let io = |source| EvalError::Io {
        path: lock.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(io)?;
    file.lock().map_err(io)?;
    Ok(file)
}

/// A row's ε as an integer key (millionths): rows of one budget compare equal
/// whatever the float's last bits.
fn eps_key(r: &Value) -> i64 {
    (r["eps"].as_f64().unwrap_or(0.0) * 1e6).round() as i64
}

/// A row's system and budget, borrowed from it: (dataset, classifier, defence,
/// norm, ε in millionths). With the purifier setting it identifies a row.
fn row_identity(r: &Value) -> (&str, &str, &str, &str, i64) {
    let text = |f: &str| r[f].as_str().unwrap_or("");
    (
        text("dataset"),
        text("classifier"),
        text("defence"),
        text("norm"),
        eps_key(r),
    )
}

/// Adds (or replaces) the rows of `report` (a `report.json` document) in the
/// summary file at `path`, tagging them with `dataset`, `classifier` and the
/// `protocol` file name. Rows are kept sorted by their key; the file is written
/// atomically, under a lock beside it. Rows of `dataset` already filed under
/// `classifier` but measured on another model file are an error
/// ([`check_same_model`]), or with `replace_other_models` are all removed (the name
/// then belongs to the new model); so is a row that would replace one measured on
/// more images, unless `replace_other_models`; and a report of any split but the
/// TEST set. Returns the rows written and the rows of other models removed.
pub fn upsert(
    path: &Path,
    report: &Value,
    dataset: &str,
    classifier: &str,
    protocol: &str,
    replace_other_models: bool,
) -> Result<(usize, usize), EvalError> {
    let io = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    // The summary holds TEST figures; settings are chosen on the TRAIN hold-out,
    // whose figures must not replace (or pass for) them.
    let split = report["settings"]["data"]["split"]
        .as_str()
        .unwrap_or("test");
    if split != "test" {
        return Err(EvalError::Protocol(format!(
            "{}: the summary holds TEST-set figures, and this run evaluated the `{split}` split; \
             leave out --summary for runs that choose settings",
            path.display()
        )));
    }
    let _lock = lock_beside(path)?;
    let model_sha256 = report["model_sha256"].as_str().unwrap_or("");
    let mut rows = read_rows(path)?;
    if !replace_other_models {
        conflict(path, &rows, dataset, classifier, model_sha256)?;
    }
    let before = rows.len();
    rows.retain(|r| !of_other_model(r, dataset, classifier, model_sha256));
    let removed = before - rows.len();
    // One row per (dataset, classifier, defence, norm, ε) and purifier setting: two
    // settings of one defence (say an L∞ and an L2 ball) are two systems, and one
    // must not silently replace the other. Rows written before the setting was
    // recorded match a new row of the same model file.
    let same = |a: &Value, b: &Value| {
        row_identity(a) == row_identity(b)
            && (a["purifier"] == b["purifier"]
                || ((a.get("purifier").is_none() || b.get("purifier").is_none())
                    && a["model_sha256"] == b["model_sha256"]))
    };
    let mut added = 0;
    for r in report["rows"].as_array().into_iter().flatten() {
        let new = json!({
            "dataset": dataset,
            "classifier": classifier,
            "defence": r["defence"],
            // The defence's purifier setting (null for "none").
            "purifier": r["defence"]
                .as_str()
                .map_or(Value::Null, |d| report["settings"]["defences"][d].clone()),
            "norm": r["norm"],
            "eps": r["eps"].as_f64().map_or(Value::Null, |e| super::report::f32_json(e as f32)),
            "n": r["n"],
            "clean": r["clean"],
            "worst_case": r["worst_case"],
            "wilson95": r["wilson95"],
            // What stands behind the figure: the worst case before the convergence
            // checks, the survivors each check broke (empty: no check ran on this
            // row — the engine checks the survivors of each norm's largest ε), and the row's
            // sanity flags (masking, non-convergence), as the report gives them.
            "worst_case_before_checks": r["worst_case_before_checks"],
            "checks_broken": r["checks_broken"],
            "flags": r["flags"].as_array().cloned().unwrap_or_default(),
            // Whether those flags make the figure an upper bound (the report decides).
            "upper_bound": r["upper_bound"].as_bool().unwrap_or(false),
            "protocol": protocol,
            "attacks": report["protocol"]["attacks"],
            "model_sha256": report["model_sha256"],
            "fingerprint": report["fingerprint"],
            "commit": report["commit"],
        });
        // A figure on fewer images does not silently replace one on more (a
        // `--count 2` trial filed under the name of a 1,000-image row).
        if let Some(o) = rows.iter().find(|o| same(o, &new)) {
            let (had, has) = (o["n"].as_u64().unwrap_or(0), new["n"].as_u64().unwrap_or(0));
            if has < had && !replace_other_models {
                return Err(EvalError::Protocol(format!(
                    "{}: its row {} {} {} {} {} was measured on {had} images, this run on {has}: \
                     not replaced (evaluate at least as many images, file it under another \
                     --classifier name, or pass --replace-rows)",
                    path.display(),
                    dataset,
                    classifier,
                    new["defence"].as_str().unwrap_or("?"),
                    new["norm"].as_str().unwrap_or("?"),
                    new["eps"]
                )));
            }
        }
        rows.retain(|o| !same(o, &new));
        rows.push(new);
        added += 1;
    }
    // Sorted by identity, then purifier setting (its text is built only for rows
    // of one identity, which are rare).
    rows.sort_by(|a, b| {
        row_identity(a)
            .cmp(&row_identity(b))
            .then_with(|| a["purifier"].to_string().cmp(&b["purifier"].to_string()))
    });
    // What is written must read back: a report row the readers would refuse is
    // refused here, before the file is replaced.
    parse_rows(&json!({ "rows": rows }).to_string()).map_err(|why| {
        EvalError::Protocol(format!(
            "{}: this run's rows cannot go into the summary: {why}",
            path.display()
        ))
    })?;
    let doc = json!({
        "about": "Generated by `pursamere eval --summary`; one record per (dataset, classifier, defence, purifier setting, norm, eps). Fractions in [0, 1]. `checks_broken` names the convergence checks that ran on the row and the survivors each broke (empty: none ran — the engine checks the survivors of each norm's largest ε only, unless the protocol sets `check_every_eps`); `flags` are the row's sanity flags from its report (gradient masking, non-convergence) and `upper_bound` whether they make `worst_case` an upper bound. Rows written before a field existed lack it.",
        "rows": rows,
    });
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
    crate::train::write_atomic(path, text.as_bytes()).map_err(io)?;
    Ok((added, removed))
}

/// One measured row of a summary file, as a report line needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasuredRow {
    /// Defence (`none`, `ere`, …).
    pub defence: String,
    /// `linf` or `l2`.
    pub norm: String,
    /// Budget ε.
    pub eps: f64,
    /// Worst-case accuracy (fraction).
    pub worst_case: f64,
    /// Images.
    pub n: u64,
    /// Whether the figure is an upper bound (or the row cannot say).
    pub bound: Bound,
}

/// The rows of a summary file (its JSON text) measured on the model with SHA-256
/// `model_sha256` as it is deployed: with a defence in front (not `none`) when its
/// purifier is on, the classifier alone (`none`) when it is off (K = 0); L∞ before
/// L2, by ε.
pub fn defended_rows(summary: &str, model_sha256: &str, purifier_on: bool) -> Vec<MeasuredRow> {
    let rows = serde_json::from_str::<Value>(summary)
        .ok()
        .and_then(|v| v.get("rows").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    let mut out: Vec<MeasuredRow> = rows
        .iter()
        .filter(|r| r["model_sha256"].as_str() == Some(model_sha256))
        // The model's own system: purified rows, or (purifier off) the classifier's.
        .filter(|r| {
            r["defence"]
                .as_str()
                .is_some_and(|d| (d != "none") == purifier_on)
        })
        .filter_map(|r| {
            Some(MeasuredRow {
                defence: r["defence"].as_str()?.to_owned(),
                norm: r["norm"].as_str()?.to_owned(),
                eps: r["eps"].as_f64()?,
                worst_case: r["worst_case"].as_f64()?,
                n: r["n"].as_u64()?,
                bound: bound_of(r),
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (a.norm != "linf", a.eps)
            .partial_cmp(&(b.norm != "linf", b.eps))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    out
}

/// The robustness matrix of one data set as Markdown tables, from the text of a
/// summary file: one line per (classifier, defence, purifier setting), one column per
/// threat (L∞ before L2, by ε); a cell is the worst case with its images, "≤" when
/// the row's report flagged it (an upper bound: gradient-free attacks or a check
/// broke what the gradient attacks missed), "†" when the row predates recorded flags,
/// "°" when it had survivors but no convergence check ran on it (both explained under
/// the table), "–" when not measured. Every figure
/// comes from the file (`pursamere summary`), none is typed.
pub fn matrix_markdown(summary: &str, dataset: &str) -> Result<String, EvalError> {
    let rows = parse_rows(summary)
        .map_err(|why| EvalError::Unsupported(format!("not a summary file: {why}")))?;
    let mine: Vec<&Value> = rows.iter().filter(|r| r["dataset"] == dataset).collect();
    if mine.is_empty() {
        let mut known: Vec<&str> = rows.iter().filter_map(|r| r["dataset"].as_str()).collect();
        known.sort_unstable();
        known.dedup();
        return Err(EvalError::Unsupported(format!(
            "no rows of data set \"{dataset}\" (the file has: {})",
            known.join(", ")
        )));
    }
    let mut threats: Vec<(bool, i64, String)> = mine
        .iter()
        .map(|r| {
            let l2 = r["norm"] == "l2";
            let e = r["eps"].as_f64().unwrap_or(0.0) as f32;
            (
                l2,
                eps_key(r),
                format!("{} {e}", if l2 { "L2" } else { "L∞" }),
            )
        })
        .collect();
    threats.sort();
    threats.dedup();
    let order = |d: &str| {
        DEFENCE_ORDER
            .iter()
            .position(|x| *x == d)
            .unwrap_or(usize::MAX)
    };
    let mut systems: Vec<(String, usize, String, String)> = mine
        .iter()
        .map(|r| {
            let d = r["defence"].as_str().unwrap_or("");
            (
                r["classifier"].as_str().unwrap_or("").to_string(),
                order(d),
                d.to_string(),
                purifier_words(&r["purifier"]),
            )
        })
        .collect();
    systems.sort();
    systems.dedup();
    let mut md = format!(
        "| classifier | defence | clean | {} |\n| --- | --- | --- |{}\n",
        threats
            .iter()
            .map(|t| t.2.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        " --- |".repeat(threats.len())
    );
    let mut unrecorded = false;
    let mut unchecked = false;
    for (classifier, _, defence, setting) in &systems {
        let of_system: Vec<&&Value> = mine
            .iter()
            .filter(|r| {
                r["classifier"] == classifier.as_str()
                    && r["defence"] == defence.as_str()
                    && purifier_words(&r["purifier"]) == *setting
            })
            .collect();
        // Clean accuracy of the row with the most images.
        let clean = of_system
            .iter()
            .max_by_key(|r| r["n"].as_u64().unwrap_or(0))
            .and_then(|r| r["clean"].as_f64())
            .map_or("–".to_string(), |c| format!("{:.1} %", 100.0 * c));
        let cells: Vec<String> = threats
            .iter()
            .map(|(l2, e, _)| {
                of_system
                    .iter()
                    .find(|r| (r["norm"] == "l2") == *l2 && eps_key(r) == *e)
                    .map_or("–".to_string(), |r| {
                        let bound = bound_of(r);
                        unrecorded |= bound == Bound::Unrecorded;
                        let no_check = ran_no_check(r);
                        unchecked |= no_check;
                        format!(
                            "{}{:.1} % ({}){}{}",
                            if bound == Bound::UpperBound {
                                "≤ "
                            } else {
                                ""
                            },
                            100.0 * r["worst_case"].as_f64().unwrap_or(0.0),
                            r["n"].as_u64().unwrap_or(0),
                            if bound == Bound::Unrecorded {
                                " †"
                            } else {
                                ""
                            },
                            if no_check { " °" } else { "" },
                        )
                    })
            })
            .collect();
        let def = if setting.is_empty() {
            defence.clone()
        } else {
            format!("{defence} ({setting})")
        };
        md += &format!(
            "| {classifier} | {def} | {clean} | {} |\n",
            cells.join(" | ")
        );
    }
    if unrecorded {
        md += "\n† written before summary rows recorded their sanity flags: whether the figure is an upper bound is not in the file (docs/EVALUATION.md discusses each run).\n";
    }
    if unchecked {
        md += "\n° no convergence check ran on this row: the engine re-attacks the survivors of each norm's largest ε in a protocol only (of every ε with `check_every_eps = true`), so the figure rests on the main suite alone.\n";
    }
    Ok(md)
}

/// Whether a row had survivors but no convergence check re-attacked them: it records
/// `checks_broken` (rows written before the field existed cannot say) and it is empty.
fn ran_no_check(r: &Value) -> bool {
    let survivors = r["worst_case"].as_f64().is_some_and(|w| w > 0.0);
    survivors && r["checks_broken"].as_object().is_some_and(|c| c.is_empty())
}

/// What a summary row says about the standing of its figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Measured with no flag that puts it in doubt.
    Measured,
    /// Flagged (gradient-free attacks, or a convergence check, broke more than a
    /// point that the gradient attacks missed): an upper bound.
    UpperBound,
    /// Written before rows recorded their sanity flags: the file cannot say;
    /// docs/EVALUATION.md discusses the run.
    Unrecorded,
}

/// The standing of a summary row's figure: the report's own `upper_bound` verdict;
/// for rows written before it was recorded but with their flags, the flags' kind
/// (masking, non-convergence); for older rows, unknown.
pub fn bound_of(r: &Value) -> Bound {
    let upper = match (r["upper_bound"].as_bool(), r["flags"].as_array()) {
        (Some(b), _) => b,
        (None, Some(f)) => f
            .iter()
            .filter_map(Value::as_str)
            .any(|f| f.contains("gradient masking") || f.contains("not converged")),
        (None, None) => return Bound::Unrecorded,
    };
    if upper {
        Bound::UpperBound
    } else {
        Bound::Measured
    }
}

/// The defences in the order a matrix lists them.
const DEFENCE_ORDER: [&str; 4] = ["none", "denoise", "ere", "pursamere"];

/// A purifier setting in a few words ("K 5, M 1, L2 δ 0.5, ρ 0.05"; empty for none).
fn purifier_words(p: &Value) -> String {
    let Some(o) = p.as_object() else {
        return String::new();
    };
    let num = |k: &str| o.get(k).and_then(Value::as_f64).map(|v| v as f32);
    let mut w = Vec::new();
    if let Some(k) = num("iters") {
        w.push(format!("K {k}"));
    }
    if let Some(m) = num("noise_samples") {
        w.push(format!("M {m}"));
    }
    if let Some(r) = num("radius") {
        let norm = if o.get("norm").and_then(Value::as_str) == Some("L2") {
            "L2 "
        } else {
            "L∞ "
        };
        w.push(format!("{norm}δ {r}"));
    }
    if let Some(rho) = num("rho") {
        w.push(format!("ρ {rho}"));
    }
    w.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defended_rows_pick_the_model_and_skip_undefended_rows() {
        let text = r#"{"rows": [
            {"model_sha256": "a", "defence": "ere", "norm": "l2", "eps": 2.0, "worst_case": 0.3, "n": 10,
             "flags": ["FLAG ere l2 2: Square (gradient-free) broke 2.0 points that every gradient attack missed — suspect gradient masking"]},
            {"model_sha256": "a", "defence": "none", "norm": "linf", "eps": 0.3, "worst_case": 0.0, "n": 10},
            {"model_sha256": "a", "defence": "ere", "norm": "linf", "eps": 0.3, "worst_case": 0.01, "n": 10},
            {"model_sha256": "b", "defence": "ere", "norm": "linf", "eps": 0.1, "worst_case": 0.7, "n": 10}
        ]}"#;
        let rows = defended_rows(text, "a", true);
        let keys: Vec<(&str, f64)> = rows.iter().map(|r| (r.norm.as_str(), r.eps)).collect();
        assert_eq!(keys, [("linf", 0.3), ("l2", 2.0)]);
        // A row flagged for masking is an upper bound; a row written before rows
        // recorded their flags cannot say.
        assert_eq!(
            rows.iter().map(|r| r.bound).collect::<Vec<_>>(),
            [Bound::Unrecorded, Bound::UpperBound]
        );
        // Purifier off: the classifier's own rows.
        let rows = defended_rows(text, "a", false);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].defence.as_str(), rows[0].worst_case),
            ("none", 0.0)
        );
        assert!(defended_rows("not json", "a", true).is_empty());
    }

    /// The report's own verdict decides; rows that carry flags but no verdict are
    /// read by the flags' kind; older rows cannot say.
    #[test]
    fn a_rows_bound_comes_from_its_verdict_then_its_flags() {
        let masking = "FLAG ere l2 2: Square (gradient-free) broke 2.0 points that every gradient attack missed — suspect gradient masking";
        let rises = "FLAG ere l2: robust accuracy rises with ε (40.0 % at 2)";
        let cases = [
            (json!({"upper_bound": true, "flags": []}), Bound::UpperBound),
            (
                json!({"upper_bound": false, "flags": [masking]}),
                Bound::Measured,
            ),
            (json!({"flags": [masking]}), Bound::UpperBound),
            (
                json!({"flags": ["FLAG ere linf 0.3: not converged — the restarts check lowers the worst case by 2.0 points"]}),
                Bound::UpperBound,
            ),
            (json!({"flags": [rises]}), Bound::Measured),
            (json!({"flags": []}), Bound::Measured),
            (json!({}), Bound::Unrecorded),
        ];
        for (row, want) in cases {
            assert_eq!(bound_of(&row), want, "{row}");
        }
    }

    /// A damaged or hand-edited file is refused, naming the row and the field, not
    /// printed as 0 % or a column "L∞ 0".
    #[test]
    fn a_row_with_a_missing_or_mistyped_field_is_refused() {
        let good = json!({"dataset": "mnist", "classifier": "std", "defence": "none",
            "norm": "linf", "eps": 0.3, "worst_case": 0.5, "n": 100, "clean": 0.98});
        let doc = |r: Value| json!({"rows": [good.clone(), r]}).to_string();
        assert!(matrix_markdown(&doc(good.clone()), "mnist").is_ok());
        for (field, value, says) in [
            ("eps", json!("0.3"), "`eps` is \"0.3\""),
            ("worst_case", json!("0.5"), "`worst_case` is \"0.5\""),
            ("worst_case", Value::Null, "`worst_case` is missing"),
            ("clean", json!(98.0), "`clean` is 98.0, not a fraction"),
            ("n", json!(0), "`n` is 0"),
            ("norm", json!("L-inf"), "`norm` is \"L-inf\""),
            ("classifier", json!(7), "`classifier` is 7"),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            let err = matrix_markdown(&doc(bad), "mnist").unwrap_err().to_string();
            assert!(
                err.contains("row 1") && err.contains(says),
                "{field}: {err}"
            );
        }
        let err = matrix_markdown("{\"rows\": [", "mnist")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        // The committed file passes.
        parse_rows(include_str!("../../../docs/eval/summary.json")).unwrap();
    }

    #[test]
    fn the_matrix_has_one_line_per_system_and_one_column_per_threat() {
        let text = r#"{"rows": [
            {"dataset": "mnist", "classifier": "std", "defence": "ere", "purifier": {"iters": 5, "noise_samples": 1, "norm": "L2", "radius": 0.5, "rho": 0.0},
             "norm": "l2", "eps": 2.0, "worst_case": 0.313, "n": 1000, "clean": 0.973,
             "flags": ["FLAG ere l2 2: Square (gradient-free) broke 2.0 points that every gradient attack missed — suspect gradient masking"]},
            {"dataset": "mnist", "classifier": "std", "defence": "none", "purifier": null,
             "norm": "linf", "eps": 0.3, "worst_case": 0.0, "n": 1000, "clean": 0.98,
             "flags": [], "upper_bound": false},
            {"dataset": "mnist", "classifier": "std", "defence": "none", "purifier": null,
             "norm": "linf", "eps": 0.1, "worst_case": 0.02, "n": 200, "clean": 0.98},
            {"dataset": "fashion-mnist", "classifier": "std", "defence": "none",
             "norm": "linf", "eps": 0.1, "worst_case": 0.0, "n": 200, "clean": 0.875}
        ]}"#;
        let md = matrix_markdown(text, "mnist").unwrap();
        assert!(
            !md.contains('°'),
            "every row either predates checks_broken or ran a check: {md}"
        );
        let lines: Vec<&str> = md.lines().collect();
        // Four table lines, a blank line and the note on the unrecorded row.
        assert_eq!(lines.len(), 6, "{md}");
        assert_eq!(
            lines[0],
            "| classifier | defence | clean | L∞ 0.1 | L∞ 0.3 | L2 2 |"
        );
        assert_eq!(
            lines[2],
            "| std | none | 98.0 % | 2.0 % (200) † | 0.0 % (1000) | – |"
        );
        assert!(lines[5].starts_with("† written before"), "{md}");
        assert_eq!(
            lines[3],
            "| std | ere (K 5, M 1, L2 δ 0.5, ρ 0) | 97.3 % | – | – | ≤ 31.3 % (1000) |"
        );
        let err = matrix_markdown(text, "cifar10").unwrap_err().to_string();
        assert!(err.contains("fashion-mnist, mnist"), "{err}");
        assert!(matrix_markdown("[]", "mnist").is_err());
    }

    /// A row whose survivors no convergence check re-attacked is marked, and so is
    /// only such a row: not one that ran a check, not one with no survivors to check,
    /// not one written before rows recorded their checks.
    #[test]
    fn a_row_no_check_ran_on_is_marked() {
        let row = |eps: f64, worst: f64, checks: Value| {
            json!({"dataset": "mnist", "classifier": "std", "defence": "none",
                "norm": "linf", "eps": eps, "worst_case": worst, "n": 1000, "clean": 0.98,
                "flags": [], "upper_bound": false, "checks_broken": checks})
        };
        let mut unrecorded = row(0.4, 0.1, Value::Null);
        unrecorded.as_object_mut().unwrap().remove("checks_broken");
        let text = json!({"rows": [
            row(0.1, 0.5, json!({})),
            row(0.2, 0.3, json!({"restarts": 4})),
            row(0.3, 0.0, json!({})),
            unrecorded,
        ]})
        .to_string();
        let md = matrix_markdown(&text, "mnist").unwrap();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(
            lines[2],
            "| std | none | 98.0 % | 50.0 % (1000) ° | 30.0 % (1000) | 0.0 % (1000) | 10.0 % (1000) |",
            "{md}"
        );
        assert!(lines[4].starts_with("° no convergence check ran"), "{md}");
    }
}

#[cfg(test)]
mod upsert_tests {
    use super::*;

    fn report(radius: f32, worst: f64) -> Value {
        json!({
            "rows": [{"defence": "ere", "norm": "linf", "eps": 0.3, "n": 10, "clean": 1.0,
                      "worst_case": worst, "wilson95": [0.0, 1.0]}],
            "settings": {"defences": {"ere": {"radius": radius}}},
            "protocol": {"attacks": ["apgd-ce"]},
            "model_sha256": "m", "fingerprint": "f", "commit": "c",
        })
    }

    /// What `upsert` writes reads back: a clean (ε = 0) row is kept and the matrix
    /// prints; a report row the readers would refuse is refused before the file
    /// is replaced.
    #[test]
    fn what_is_written_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        let mut clean = report(1.0, 0.9);
        clean["rows"][0]["eps"] = json!(0.0);
        upsert(&path, &clean, "mnist", "cnn", "p.toml", false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(matrix_markdown(&text, "mnist").is_ok());
        let mut broken = report(1.0, 0.9);
        broken["rows"][0]["worst_case"] = Value::Null;
        let err = upsert(&path, &broken, "mnist", "cnn", "p.toml", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`worst_case` is missing"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    /// A row on fewer images does not replace one on more (unless asked), and a
    /// run on the TRAIN hold-out never goes into the summary.
    #[test]
    fn smaller_runs_and_other_splits_do_not_replace_test_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        upsert(&path, &report(1.0, 0.4), "mnist", "cnn", "p.toml", false).unwrap();
        let mut small = report(1.0, 0.9);
        small["rows"][0]["n"] = json!(2);
        let err = upsert(&path, &small, "mnist", "cnn", "p.toml", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("10 images") && err.contains("on 2"), "{err}");
        let mut validation = report(1.0, 0.9);
        validation["settings"]["data"] = json!({"name": "mnist", "split": "validation"});
        let err = upsert(&path, &validation, "mnist", "cnn", "p.toml", true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`validation` split"), "{err}");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["rows"][0]["worst_case"], json!(0.4));
        // Asked for, the smaller row replaces it.
        upsert(&path, &small, "mnist", "cnn", "p.toml", true).unwrap();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["rows"][0]["n"], json!(2));
    }

    /// Two purifier settings keep two rows; the same setting measured again
    /// replaces its row.
    #[test]
    fn rows_of_other_purifier_settings_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        upsert(&path, &report(0.05, 0.1), "mnist", "cnn", "p.toml", false).unwrap();
        upsert(&path, &report(1.0, 0.4), "mnist", "cnn", "p.toml", false).unwrap();
        upsert(&path, &report(1.0, 0.5), "mnist", "cnn", "p.toml", false).unwrap();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut worst: Vec<f64> = doc["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["worst_case"].as_f64().unwrap())
            .collect();
        worst.sort_by(f64::total_cmp);
        assert_eq!(worst, [0.1, 0.5]);
        // A row written before the setting was recorded is replaced by a new row of
        // the same model file.
        let mut legacy = doc.clone();
        for r in legacy["rows"].as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("purifier");
        }
        std::fs::write(&path, legacy.to_string()).unwrap();
        upsert(&path, &report(0.05, 0.2), "mnist", "cnn", "p.toml", false).unwrap();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let rows = doc["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["worst_case"].as_f64(), Some(0.2));
    }

    /// The row's caveats travel with its figure: the worst case before the
    /// checks, what each check broke, and its sanity flags.
    #[test]
    fn rows_carry_their_checks_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        let mut r = report(0.5, 0.4);
        r["rows"][0]["worst_case_before_checks"] = json!(0.6);
        r["rows"][0]["checks_broken"] = json!({"restarts": 2});
        r["rows"][0]["flags"] =
            json!(["FLAG ere linf 0.3: Square (gradient-free) broke 2.0 points"]);
        upsert(&path, &r, "mnist", "cnn", "p.toml", false).unwrap();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let row = &doc["rows"][0];
        assert_eq!(row["worst_case_before_checks"].as_f64(), Some(0.6));
        assert_eq!(row["checks_broken"]["restarts"].as_u64(), Some(2));
        assert_eq!(row["flags"].as_array().map(Vec::len), Some(1));
        assert_eq!(row["upper_bound"], json!(false));
        r["rows"][0]["upper_bound"] = json!(true);
        upsert(&path, &r, "mnist", "cnn", "p.toml", false).unwrap();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["rows"][0]["upper_bound"], json!(true));
        // A report without flags gives an empty list, never a missing key.
        upsert(&path, &report(0.5, 0.4), "mnist", "cnn", "p.toml", false).unwrap();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["rows"][0]["flags"], json!([]));
    }

    /// Evaluations that finish together each keep their rows: the read, the
    /// change and the write of one happen under a lock the other waits for.
    #[test]
    fn concurrent_upserts_lose_no_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        std::thread::scope(|s| {
            for i in 0..8 {
                let path = &path;
                s.spawn(move || {
                    let mut r = report(0.5, 0.4);
                    r["rows"][0]["eps"] = json!(0.05 * (i + 1) as f64);
                    upsert(path, &r, "mnist", "cnn", "p.toml", false).unwrap();
                });
            }
        });
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["rows"].as_array().unwrap().len(), 8);
    }

    /// A classifier name belongs to one model file: rows of another model under the
    /// same name are refused, and with `replace_other_models` all of them go.
    #[test]
    fn rows_of_another_model_under_the_same_name_are_refused_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        let mut l2 = report(0.5, 0.4);
        l2["rows"][0]["norm"] = json!("l2");
        upsert(&path, &report(0.5, 0.4), "mnist", "cnn", "p.toml", false).unwrap();
        upsert(&path, &l2, "mnist", "cnn", "p.toml", false).unwrap();
        let mut other = report(0.5, 0.9);
        other["model_sha256"] = json!("n");
        let err = upsert(&path, &other, "mnist", "cnn", "p.toml", false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("cnn") && msg.contains("--replace-rows"),
            "{msg}"
        );
        assert!(check_same_model(&path, "mnist", "cnn", "n").is_err());
        // Another name, another data set, or the same model: no conflict.
        check_same_model(&path, "mnist", "cnn2", "n").unwrap();
        check_same_model(&path, "fashion-mnist", "cnn", "n").unwrap();
        check_same_model(&path, "mnist", "cnn", "m").unwrap();
        check_same_model(&dir.path().join("missing.json"), "mnist", "cnn", "n").unwrap();
        // The file is unchanged by the refusal.
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["rows"].as_array().unwrap().len(), 2);
        // Replacing removes both rows of the old model, not only the one re-measured.
        let (added, removed) = upsert(&path, &other, "mnist", "cnn", "p.toml", true).unwrap();
        assert_eq!((added, removed), (1, 2));
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let rows = doc["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["worst_case"].as_f64(), Some(0.9));
    }
}
