//! The evaluation's worker threads change nothing but the time: a run on one
//! thread and a run on three write the same records and check records (every job's
//! images and seeds come from its image block, never from the thread or the order
//! in which jobs finish), and a run stopped part-way resumes on threads to the same
//! result.

use std::collections::BTreeMap;
use std::path::Path;

use pursamere_trainer::eval::{self, EvalOptions, Protocol, SilentObserver};
use serde_json::Value;

// Weak gradient attacks and a short Square, so that many verdicts hang on the seed.
const PROTOCOL: &str = "images = 16\nbatch = 2\nsteps = 2\nrestarts = 1\n\
    linf_eps = [0.15]\nl2_eps = [1.5]\ndefences = [\"none\", \"ere\"]\n\
    attacks = [\"apgd-ce\", \"square\"]\nsquare_queries = 60\nrestart_check = true\n";

fn run(out: &Path, threads: usize, count: Option<usize>) {
    run_protocol(out, PROTOCOL, threads, count);
}

fn run_protocol(out: &Path, protocol: &str, threads: usize, count: Option<usize>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let bytes = std::fs::read(root.join("mnist.psm")).unwrap();
    let model = pursamere_core::Model::parse(&bytes).unwrap();
    let p = Protocol::from_toml(protocol)
        .unwrap()
        .resolved(count, None)
        .unwrap();
    let data = pursamere_trainer::data::load_mnist_dir(
        &root.join("mnist-sample"),
        pursamere_trainer::data::Split::Test,
    )
    .unwrap();
    let mut purifier = model.purifier_config();
    // Two purification steps: the exact unrolled gradient stays cheap.
    purifier.iters = 2;
    let opts = EvalOptions {
        out: out.to_path_buf(),
        fresh: false,
        commit: "test".into(),
        data_name: "mnist".into(),
        purifier,
        threads: Some(threads),
    };
    eval::run(&bytes, &data, &p, &opts, &SilentObserver).unwrap();
}

/// The records of `file` in `dir` by key, without their timings.
fn records(dir: &Path, file: &str) -> BTreeMap<String, Value> {
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            if let Value::Object(m) = &mut v {
                m.remove("seconds");
            }
            let key = format!(
                "{} {} {} {} {}",
                v["check"], v["index"], v["defence"], v["norm"], v["eps"]
            );
            (key, v)
        })
        .collect()
}

/// Fails naming the records that differ (and how many), not printing both sets.
fn assert_same(got: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>, what: &str) {
    let differ: Vec<&String> = want
        .keys()
        .chain(got.keys())
        .filter(|k| got.get(*k) != want.get(*k))
        .collect();
    assert!(
        differ.is_empty(),
        "{what}: {} records differ, e.g. {:?}: {:?} against {:?}",
        differ.len(),
        differ[0],
        got.get(differ[0]),
        want.get(differ[0])
    );
}

#[test]
fn worker_threads_give_the_same_records_and_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, three, resumed) = (
        tmp.path().join("one"),
        tmp.path().join("three"),
        tmp.path().join("resumed"),
    );
    run(&one, 1, None);
    run(&three, 3, None);
    // Stopped after its first six images (on two threads), then resumed on three.
    run(&resumed, 2, Some(6));
    run(&resumed, 3, None);

    let base = records(&one, "results.jsonl");
    // 16 images × 2 defences × 2 threats.
    assert_eq!(base.len(), 64);
    let robust = base
        .values()
        .filter(|r| {
            r["correct"]
                .as_object()
                .unwrap()
                .values()
                .all(|c| c == true)
        })
        .count();
    let clean = base.values().filter(|r| r["clean_correct"] == true).count();
    assert!(
        robust > 0 && robust < clean,
        "the attacks should break some images and not others ({robust} of {clean})"
    );
    let base_checks = records(&one, "checks.jsonl");
    assert!(
        !base_checks.is_empty(),
        "the restart check ran on no survivor"
    );
    assert_same(&records(&three, "results.jsonl"), &base, "three threads");
    assert_same(
        &records(&resumed, "results.jsonl"),
        &base,
        "stopped and resumed",
    );
    // The checks of the uninterrupted runs: the same survivors in the same chunks.
    assert_same(
        &records(&three, "checks.jsonl"),
        &base_checks,
        "three threads' checks",
    );
}

/// `check_every_eps` checks the survivors of the smaller budgets too, and since it
/// changes no record, turning it on in a finished run's protocol resumes that run
/// and adds exactly the checks a run with it from the start has.
#[test]
fn check_every_eps_adds_the_smaller_budgets_checks_to_a_finished_run() {
    let base = "images = 12\nbatch = 4\nsteps = 2\nrestarts = 1\n\
        linf_eps = [0.05, 0.1]\ndefences = [\"none\"]\nattacks = [\"apgd-ce\"]\n\
        restart_check = true\n";
    let every = format!("{base}check_every_eps = true\n");
    let tmp = tempfile::tempdir().unwrap();
    let (extended, fresh) = (tmp.path().join("extended"), tmp.path().join("fresh"));
    let budgets = |dir: &Path| -> Vec<String> {
        let mut e: Vec<String> = records(dir, "checks.jsonl")
            .values()
            .map(|c| c["eps"].to_string())
            .collect();
        e.dedup();
        e
    };
    run_protocol(&extended, base, 2, None);
    assert_eq!(budgets(&extended), ["0.1"], "the largest ε only");
    let main = records(&extended, "results.jsonl");
    run_protocol(&extended, &every, 2, None);
    run_protocol(&fresh, &every, 2, None);
    let checks = records(&extended, "checks.jsonl");
    let mut all: Vec<String> = checks.values().map(|c| c["eps"].to_string()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all, ["0.05", "0.1"], "every ε");
    assert_same(&records(&extended, "results.jsonl"), &main, "main records");
    assert_same(&records(&fresh, "checks.jsonl"), &checks, "checks");
    // The report's row at the smaller ε names the check that ran on it.
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(extended.join("report.json")).unwrap())
            .unwrap();
    let row = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["eps"].as_f64().is_some_and(|e| (e - 0.05).abs() < 1e-6))
        .unwrap();
    assert!(row["checks_broken"].get("restarts").is_some(), "{row}");
}
