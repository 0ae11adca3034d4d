//! The results directory: per-example records bound to the settings that made them.
//!
//! `settings.json` holds the full settings (model hash, purifier settings of every
//! defence, protocol, data); every record in `results.jsonl` and `checks.jsonl`
//! carries the fingerprint (SHA-256) of those settings. A run whose settings differ
//! from the directory's is refused, naming every differing field, so a report can
//! never mix configurations or show another configuration's numbers.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::EvalError;

/// Files the evaluation owns in its output directory (removed by `fresh`).
pub const OWNED_FILES: [&str; 8] = [
    "settings.json",
    "data.json",
    "results.jsonl",
    "checks.jsonl",
    "report.md",
    "report.json",
    "report.png",
    "settings.json.tmp",
];

/// The file an evaluation holds an exclusive lock on while it writes to its
/// directory (an advisory `flock`, released when the process ends however it
/// ends): a second evaluation on the same directory would append the same records
/// twice, interleaved. `scripts/eval-checkpoint.sh merge` takes it too.
pub const LOCK_FILE: &str = "eval.lock";

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of a digest.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (lower-case hex) of a data set's image shape, pixels and labels: what
/// a result made on those images is bound to. (Here, not in `data`: that file is
/// also compiled into the fuzz crate, which has no `sha2`.)
pub fn dataset_sha256(data: &crate::data::Dataset) -> String {
    let mut h = Sha256::new();
    for v in [data.channels, data.rows, data.cols, data.len()] {
        h.update((v as u64).to_le_bytes());
    }
    h.update(&data.pixels);
    h.update(&data.labels);
    hex(&h.finalize())
}

/// The fingerprint of a settings object: SHA-256 of its canonical JSON (keys sorted).
pub fn fingerprint(settings: &Value) -> String {
    sha256_hex(settings.to_string().as_bytes())
}

/// One evaluated (example, defence, threat).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Fingerprint of the settings that produced the record.
    pub fingerprint: String,
    /// Image index in the split.
    pub index: usize,
    /// Defence name.
    pub defence: String,
    /// `linf` or `l2`.
    pub norm: String,
    /// Budget.
    pub eps: f32,
    /// The deployed system classifies the clean image correctly.
    pub clean_correct: bool,
    /// Attack name → still correct after it (only attacks that ran: in the cascade
    /// an attack does not run on an example an earlier attack broke).
    pub correct: BTreeMap<String, bool>,
    /// Norm of the margin loss's exact gradient through the purifier at the clean
    /// input (masking indicator).
    pub grad_norm: Option<f32>,
    /// Attack name → seconds spent per image of its batch.
    pub seconds: BTreeMap<String, f64>,
}

impl Record {
    /// Correct on the clean input and after every attack.
    pub fn robust(&self) -> bool {
        self.clean_correct && self.correct.values().all(|&c| c)
    }
}

/// One re-attack of a survivor (restart check or step doubling).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckRecord {
    /// Fingerprint of the settings that produced the record.
    pub fingerprint: String,
    /// `restarts` or `double-steps`.
    pub check: String,
    /// Image index.
    pub index: usize,
    /// Defence name.
    pub defence: String,
    /// `linf` or `l2`.
    pub norm: String,
    /// Budget.
    pub eps: f32,
    /// The re-attack broke the example.
    pub broken: bool,
}

/// An open results directory.
pub struct ResultsDir {
    dir: PathBuf,
    fingerprint: String,
    /// Records of this fingerprint already in the directory.
    pub records: Vec<Record>,
    /// Check records of this fingerprint already in the directory.
    pub checks: Vec<CheckRecord>,
    sink: std::fs::File,
    check_sink: std::fs::File,
    /// Held (locked) for as long as the directory is open.
    _lock: std::fs::File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Paths of the fields where `a` and `b` differ, with both values.
pub fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &p,
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{path}: {a} in the directory, {b} now")),
        _ => {}
    }
}

/// Parsed lines of a JSONL file: (line number, record or parse error).
type Lines<T> = Vec<(usize, Result<T, String>)>;

fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Lines<T>, EvalError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(l) {
            Ok(r) => out.push((i + 1, Ok(r))),
            // A killed run may leave a half-written last line: drop it.
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => out.push((i + 1, Err(e.to_string()))),
        }
    }
    Ok(out)
}

impl ResultsDir {
    /// Opens (creating it if needed) `dir` for `settings`; with `fresh`, removes the
    /// files an earlier evaluation left there first. Refuses a directory whose
    /// records were made with other settings.
    pub fn open(dir: &Path, settings: &Value, fresh: bool) -> Result<Self, EvalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        // Before anything is read or removed: `fresh` must not delete the files of a
        // run that is still writing them.
        let lock_path = dir.join(LOCK_FILE);
        let lock = crate::train::try_lock_file(&lock_path)
            .map_err(io_err(&lock_path))?
            .ok_or_else(|| EvalError::InUse {
                dir: dir.to_path_buf(),
            })?;
        if fresh {
            for f in OWNED_FILES {
                let p = dir.join(f);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&p)(e)),
                }
            }
        }
        let fp = fingerprint(settings);
        let settings_path = dir.join("settings.json");
        let results = dir.join("results.jsonl");
        let checks = dir.join("checks.jsonl");
        let stored: Option<Value> = match std::fs::read_to_string(&settings_path) {
            Ok(t) => Some(serde_json::from_str(&t).map_err(|e| EvalError::Stale {
                dir: dir.to_path_buf(),
                differences: vec![format!("settings.json is not valid JSON ({e})")],
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&settings_path)(e)),
        };
        let has_records = [&results, &checks]
            .iter()
            .any(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false));
        match &stored {
            Some(old) if fingerprint(old) != fp => {
                let mut differences = Vec::new();
                diff(old, settings, "", &mut differences);
                return Err(EvalError::Stale {
                    dir: dir.to_path_buf(),
                    differences,
                });
            }
            None if has_records => {
                return Err(EvalError::Stale {
                    dir: dir.to_path_buf(),
                    differences: vec![
                        "the directory holds results without settings.json (written by an older \
                         version, or by hand): their settings are unknown"
                            .into(),
                    ],
                })
            }
            _ => {}
        }
        if stored.is_none() {
            let text = serde_json::to_string_pretty(settings).unwrap_or_default();
            crate::train::write_atomic(&settings_path, text.as_bytes())
                .map_err(io_err(&settings_path))?;
        }
        let mut records = Vec::new();
        for (line, r) in read_jsonl::<Record>(&results)? {
            match r {
                Ok(r) if r.fingerprint == fp => records.push(r),
                Ok(r) => {
                    return Err(EvalError::Stale {
                        dir: dir.to_path_buf(),
                        differences: vec![format!(
                        "results.jsonl line {line} has fingerprint {} but settings.json has {fp}",
                        r.fingerprint
                    )],
                    })
                }
                Err(e) => {
                    return Err(EvalError::Stale {
                        dir: dir.to_path_buf(),
                        differences: vec![format!(
                            "results.jsonl line {line} is not a record ({e})"
                        )],
                    })
                }
            }
        }
        let mut check_records = Vec::new();
        for (line, r) in read_jsonl::<CheckRecord>(&checks)? {
            match r {
                Ok(r) if r.fingerprint == fp => check_records.push(r),
                _ => {
                    return Err(EvalError::Stale {
                        dir: dir.to_path_buf(),
                        differences: vec![format!(
                            "checks.jsonl line {line} is not a check record of these settings"
                        )],
                    })
                }
            }
        }
        // Cut a half-written last line (a killed run; `read_jsonl` skipped it) so
        // appended records start cleanly and the file stays readable on every
        // later resume.
        for p in [&results, &checks] {
            if let Ok(t) = std::fs::read(p) {
                if !t.is_empty() && !t.ends_with(b"\n") {
                    let keep = t.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(p)
                        .and_then(|f| f.set_len(keep as u64))
                        .map_err(io_err(p))?;
                }
            }
        }
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(io_err(p))
        };
        let sink = open(&results)?;
        let check_sink = open(&checks)?;
        Ok(ResultsDir {
            dir: dir.to_path_buf(),
            fingerprint: fp,
            records,
            checks: check_records,
            sink,
            check_sink,
            _lock: lock,
        })
    }

    /// Binds the directory to the images evaluated (their [`dataset_sha256`]) and
    /// to the protocol's `batch`, kept in `data.json` beside the settings — not in
    /// them, so that the fingerprints of runs made before it existed still hold.
    /// A resume on other images under the same data set name (another copy, other
    /// labels) is refused, and so is one with another batch: the images attacked
    /// together share their random starts, so records of two batch sizes could not
    /// be reproduced by one run. A directory without the file, or without the batch
    /// in it (an older run), is bound now.
    pub fn bind_data(&self, sha256: &str, images: usize, batch: usize) -> Result<(), EvalError> {
        let path = self.dir.join("data.json");
        let now = serde_json::json!({"sha256": sha256, "images": images, "batch": batch});
        let stale = |difference: String| EvalError::Stale {
            dir: self.dir.clone(),
            differences: vec![difference],
        };
        match std::fs::read_to_string(&path) {
            Ok(t) => {
                let then: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if then["sha256"] != now["sha256"] {
                    return Err(stale(format!(
                        "its records were made on other images ({} images, SHA-256 {}…) than --data holds now ({images} images, SHA-256 {}…)",
                        then["images"],
                        then["sha256"].as_str().unwrap_or("?").get(..12).unwrap_or("?"),
                        sha256.get(..12).unwrap_or(sha256)
                    )));
                }
                match then.get("batch") {
                    Some(b) if *b == now["batch"] => Ok(()),
                    Some(b) => Err(stale(format!(
                        "batch: {b} in the directory, {batch} now (images attacked together share their random starts)"
                    ))),
                    None => crate::train::write_atomic(&path, now.to_string().as_bytes())
                        .map_err(io_err(&path)),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::train::write_atomic(&path, now.to_string().as_bytes()).map_err(io_err(&path))
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The settings' fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keys `(index, defence, norm, ε bits)` of the records already present.
    pub fn finished(&self) -> HashSet<(usize, String, String, u32)> {
        self.records
            .iter()
            .map(|r| (r.index, r.defence.clone(), r.norm.clone(), r.eps.to_bits()))
            .collect()
    }

    /// Appends records (flushed at once: a killed run keeps them).
    pub fn append(&mut self, recs: Vec<Record>) -> Result<(), EvalError> {
        let path = self.dir.join("results.jsonl");
        for r in recs {
            let line = serde_json::to_string(&r).map_err(|e| EvalError::Protocol(e.to_string()))?;
            writeln!(self.sink, "{line}").map_err(io_err(&path))?;
            self.records.push(r);
        }
        self.sink.flush().map_err(io_err(&path))
    }

    /// Appends check records.
    pub fn append_checks(&mut self, recs: Vec<CheckRecord>) -> Result<(), EvalError> {
        let path = self.dir.join("checks.jsonl");
        for r in recs {
            let line = serde_json::to_string(&r).map_err(|e| EvalError::Protocol(e.to_string()))?;
            writeln!(self.check_sink, "{line}").map_err(io_err(&path))?;
            self.checks.push(r);
        }
        self.check_sink.flush().map_err(io_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fp: &str, index: usize) -> Record {
        Record {
            fingerprint: fp.to_owned(),
            index,
            defence: "none".into(),
            norm: "linf".into(),
            eps: 0.3,
            clean_correct: true,
            correct: BTreeMap::new(),
            grad_norm: None,
            seconds: BTreeMap::new(),
        }
    }

    /// Two evaluations never write to one directory at once: the second is refused
    /// (even with `fresh`, which would delete the first one's records), and may
    /// open it once the first has closed it.
    #[test]
    fn a_directory_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let settings = serde_json::json!({"x": 1});
        let mut first = ResultsDir::open(dir.path(), &settings, false).unwrap();
        let fp = first.fingerprint().to_owned();
        first.append(vec![record(&fp, 0)]).unwrap();
        for fresh in [false, true] {
            let err = ResultsDir::open(dir.path(), &settings, fresh)
                .err()
                .expect("refused while in use");
            assert!(matches!(err, EvalError::InUse { .. }), "{err}");
            assert!(err.to_string().contains("eval.lock"), "{err}");
        }
        assert!(dir.path().join("results.jsonl").exists());
        drop(first);
        let again = ResultsDir::open(dir.path(), &settings, false).unwrap();
        assert_eq!(again.records.len(), 1);
    }

    /// Records are bound to the images: other images under the same settings are
    /// refused, the same images accepted, and `fresh` starts over.
    #[test]
    fn records_are_bound_to_the_images() {
        let dir = tempfile::tempdir().unwrap();
        let settings = serde_json::json!({"x": 1});
        ResultsDir::open(dir.path(), &settings, false)
            .unwrap()
            .bind_data("aaaa", 10, 32)
            .unwrap();
        let r = ResultsDir::open(dir.path(), &settings, false).unwrap();
        r.bind_data("aaaa", 10, 32).unwrap();
        let err = r.bind_data("bbbb", 10, 32).unwrap_err().to_string();
        assert!(err.contains("other images"), "{err}");
        // Another batch groups the images into other attacks: refused too.
        let err = r.bind_data("aaaa", 10, 16).unwrap_err().to_string();
        assert!(err.contains("batch: 32 in the directory, 16 now"), "{err}");
        drop(r);
        ResultsDir::open(dir.path(), &settings, true)
            .unwrap()
            .bind_data("bbbb", 10, 16)
            .unwrap();
        // A directory bound before the batch was recorded takes the batch of its
        // next run, and holds it from then on.
        let data = dir.path().join("data.json");
        std::fs::write(&data, r#"{"images":10,"sha256":"bbbb"}"#).unwrap();
        let r = ResultsDir::open(dir.path(), &settings, false).unwrap();
        r.bind_data("bbbb", 10, 8).unwrap();
        let err = r.bind_data("bbbb", 10, 16).unwrap_err().to_string();
        assert!(err.contains("batch: 8 in the directory"), "{err}");
    }

    /// A run killed in the middle of writing a line resumes, and so does every
    /// later run: the half line is cut, not kept in the middle of the file.
    #[test]
    fn a_half_written_line_is_cut_and_every_later_resume_works() {
        let dir = tempfile::tempdir().unwrap();
        let settings = serde_json::json!({"x": 1});
        let mut r = ResultsDir::open(dir.path(), &settings, false).unwrap();
        let fp = r.fingerprint().to_owned();
        r.append(vec![record(&fp, 0), record(&fp, 1)]).unwrap();
        drop(r);
        let path = dir.path().join("results.jsonl");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"fingerprint\":\"");
        std::fs::write(&path, text).unwrap();
        let mut r = ResultsDir::open(dir.path(), &settings, false).unwrap();
        assert_eq!(r.records.len(), 2);
        r.append(vec![record(&fp, 2)]).unwrap();
        drop(r);
        let r = ResultsDir::open(dir.path(), &settings, false).unwrap();
        assert_eq!(
            r.records.iter().map(|x| x.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }
}
