//! Every model file whose robustness the documents report is the file that was
//! measured: `docs/eval/summary.json` ties each row to a model's SHA-256, so a fixture
//! replaced (retrained, re-exported, re-quantised) without measuring it again would
//! leave the documents describing another file. This test fails then, naming the file
//! and the classifier its rows were filed under.

use std::path::Path;

use pursamere_core::Model;
use pursamere_trainer::eval::results::sha256_hex;

/// Each measured fixture, and the data set and classifier name its rows are filed under.
const MEASURED: &[(&str, &str, &str)] = &[
    ("mnist.psm", "mnist", "standard"),
    ("mnist-robust.psm", "mnist", "cnn106k-pgd-max-l2e25"),
    (
        "mnist-robust-int8.psm",
        "mnist",
        "cnn106k-pgd-max-l2e25-int8",
    ),
    (
        "previous/mnist-robust-wide-e8.psm",
        "mnist",
        "cnn106k-pgd-max",
    ),
    (
        "previous/mnist-robust-wide-e8-int8.psm",
        "mnist",
        "cnn106k-pgd-max-int8",
    ),
    ("fashion.psm", "fashion-mnist", "standard"),
    (
        "fashion-robust.psm",
        "fashion-mnist",
        "fashion-cnn106k-pgd-max",
    ),
];

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn every_measured_fixture_is_the_file_its_rows_name() {
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("docs/eval/summary.json")).expect("docs/eval/summary.json"),
    )
    .expect("summary.json is JSON");
    let rows = summary["rows"].as_array().expect("summary.json has rows");
    for &(file, dataset, classifier) in MEASURED {
        let bytes = std::fs::read(root().join("fixtures").join(file))
            .unwrap_or_else(|e| panic!("fixtures/{file}: {e}"));
        assert!(
            Model::parse(&bytes).is_ok(),
            "fixtures/{file} does not parse"
        );
        let sha = sha256_hex(&bytes);
        let filed: Vec<&str> = rows
            .iter()
            .filter(|r| r["dataset"] == dataset && r["classifier"] == classifier)
            .filter_map(|r| r["model_sha256"].as_str())
            .collect();
        assert!(
            !filed.is_empty(),
            "no {dataset} rows filed under {classifier} (fixtures/{file})"
        );
        assert!(
            filed.iter().all(|&s| s == sha),
            "fixtures/{file} (SHA-256 {sha}) is not the file the rows of {classifier} were \
             measured on ({dataset}: {filed:?}): measure it again (`pursamere eval --summary … \
             --replace-rows`) or restore the measured file"
        );
    }
}
