//! End-to-end tests of the `pursamere` binary on generated data: the main path of
//! every subcommand, and bad input giving a clear message, exit code 1 (2 for usage
//! errors) and no partial output.

use std::path::Path;
use std::process::Output;

mod common;
use common::{bin, fixtures, run, text, write_bands, write_idx_gz};

/// An MNIST-layout directory of 8×8 synthetic images.
fn data_dir(dir: &Path) {
    data_dir_with(dir, 4, 400, 100);
}

/// Generated IDX files (8 × 8 images of `classes` bands) in `dir`.
fn data_dir_with(dir: &Path, classes: usize, train: u32, test: u32) {
    write_bands(dir, 8, classes, &[("train", train, 1), ("t10k", test, 2)]);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn train_export_inspect_verify_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run_dir = tmp.path().join("run");
    std::fs::create_dir(&data).unwrap();
    data_dir(&data);

    let o = run(&[
        "train",
        "--data",
        s(&data),
        "--out",
        s(&run_dir),
        "--den-epochs",
        "3",
        "--cls-epochs",
        "6",
        "--den-hidden",
        "24",
        "--cls-hidden",
        "16",
        "--validation",
        "50",
        "--batch-size",
        "32",
        "--lr",
        "0.005",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(run_dir.join("denoiser.ckpt").exists() && run_dir.join("classifier.ckpt").exists());

    // --out defaults to the run folder; the file names in it are fixed.
    let psm = run_dir.join("model.psm");
    let o = run(&[
        "export",
        "--run",
        s(&run_dir),
        "--side",
        "8",
        "--dataset",
        "bands",
        "--iters",
        "3",
        "--noise-samples",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("quantisation error"));
    assert!(run_dir.join("model.safetensors").exists());

    let o = run(&["inspect", s(&psm), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["dataset"], "bands");
    assert_eq!(v["input_shape"], serde_json::json!([1, 8, 8]));
    assert_eq!(v["purifier"]["iters"], 3);
    assert_eq!(v["layers"].as_array().unwrap().len(), 6);
    let o = run(&["inspect", s(&psm)]);
    assert!(text(&o).contains("scratch RAM"), "{}", text(&o));

    let o = run(&[
        "verify",
        "--model",
        s(&psm),
        "--data",
        s(&data),
        "--count",
        "60",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["images"], 60);
    assert_eq!(v["passed"], true);
    assert!(
        v["clean"]["accuracy_without_purification_core"]
            .as_f64()
            .unwrap()
            > 0.9,
        "{v}"
    );
    assert!(
        v["clean"]["core_vs_dequantised_reference"]["label_agreement"]
            .as_f64()
            .unwrap()
            >= 0.995
    );
    assert!(v["agreement_float_all"].as_f64().unwrap() >= 0.99, "{v}");

    // Resume with other settings is refused, naming the file.
    let o = run(&[
        "train",
        "--data",
        s(&data),
        "--out",
        s(&run_dir),
        "--what",
        "classifier",
        "--cls-epochs",
        "5",
        "--cls-hidden",
        "16",
        "--validation",
        "50",
        "--resume",
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("classifier.ckpt"), "{}", text(&o));
}

#[test]
fn bad_input_is_reported_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    // Missing file.
    let o = run(&["inspect", s(&d.join("missing.psm"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("missing.psm"), "{}", text(&o));

    // Not a model / truncated model / wrong version.
    let junk = d.join("junk.psm");
    std::fs::write(&junk, b"hello world, not a model").unwrap();
    let o = run(&["inspect", s(&junk)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("magic"), "{}", text(&o));
    // Version 5 does not exist yet (1 to 4 do).
    let mut v5 = b"PSMR".to_vec();
    v5.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    std::fs::write(&junk, &v5).unwrap();
    let o = run(&["inspect", s(&junk)]);
    assert!(
        text(&o).contains("version 5 is not supported"),
        "{}",
        text(&o)
    );

    // Bad data directory.
    let o = run(&[
        "train",
        "--data",
        s(&d.join("nodata")),
        "--out",
        s(&d.join("r")),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("nodata"), "{}", text(&o));
    assert!(
        !d.join("r").exists(),
        "no output directory for a failed run"
    );

    // Nonsensical settings.
    let o = run(&[
        "train",
        "--data",
        s(d),
        "--out",
        s(&d.join("r")),
        "--sigmas",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--sigmas"), "{}", text(&o));

    // Usage error.
    let o = run(&["inspect", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn demo_runs_on_the_shipped_model_without_data() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("pursamere-demo.png");
    let o = run(&[
        "demo",
        "--count",
        "16",
        "--steps",
        "10",
        "--out",
        s(tmp.path()),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    // The shipped default is an adversarially trained CNN with the purifier off
    // (K = 0): the demo's PGD is white-box on it, and says so.
    assert!(
        t.contains("classifier alone") && t.contains("purifier off (K = 0)"),
        "{t}"
    );
    assert!(t.contains("white-box PGD"), "{t}");
    assert!(!t.contains("purified, then classified"), "{t}");
    // What it defends against, from the measured summary of this very model.
    assert!(
        t.contains("white-box worst case of this system") && t.contains("L-inf 0.3 "),
        "{t}"
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let o = run(&["demo", "--count", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--count"));
}

fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, data: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(data).unwrap();
}

#[test]
fn purify_and_classify_png_and_idx_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sample = pursamere_trainer::data::load_mnist_dir(
        &fixtures().join("mnist-sample"),
        pursamere_trainer::data::Split::Test,
    )
    .unwrap();
    let png0 = d.join("seven.png");
    write_png(
        &png0,
        28,
        28,
        png::ColorType::Grayscale,
        sample.image(0).unwrap(),
    );
    let out = d.join("out");

    // The shipped default (no --model) has the purifier off (K = 0): the image
    // comes back exactly as it went in.
    let o = run(&["purify", s(&png0), "--out", s(&out), "--raw", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let raw = std::fs::read(out.join("seven.purified.f32")).unwrap();
    let pixels: Vec<u8> = sample
        .image(0)
        .unwrap()
        .iter()
        .flat_map(|&p| (f32::from(p) / 255.0).to_le_bytes())
        .collect();
    assert_eq!(raw, pixels);
    // PNG in, PNG + raw out, with the dense purifier model, whose outputs
    // golden.json holds.
    let dense = fixtures().join("mnist.psm");
    let o = run(&[
        "purify",
        s(&png0),
        "--model",
        s(&dense),
        "--out",
        s(&out),
        "--raw",
        "--json",
        "--force",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("golden.json")).unwrap()).unwrap();
    assert_eq!(
        v["images"][0]["crc32"],
        golden["images"][0]["purified_crc32"]
    );
    assert_eq!(
        v["images"][0]["label_after"],
        golden["images"][0]["purified_prediction"]
    );
    let raw = std::fs::read(out.join("seven.purified.f32")).unwrap();
    assert_eq!(raw.len(), 784 * 4);
    assert!(out.join("seven.purified.png").exists());

    // IDX range in; classify with and without purification.
    let idx = fixtures().join("mnist-sample/t10k-images-idx3-ubyte.gz");
    let o = run(&[
        "classify",
        "--model",
        s(&dense),
        "--idx",
        s(&idx),
        "--start",
        "0",
        "--count",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for i in 0..4 {
        assert_eq!(
            v["images"][i]["label"],
            golden["images"][i]["clean_prediction"]
        );
    }
    let o = run(&[
        "classify",
        "--model",
        s(&dense),
        "--idx",
        s(&idx),
        "--start",
        "5",
        "--count",
        "1",
        "--purify",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["images"][0]["label"],
        golden["images"][5]["purified_prediction"]
    );
    assert_eq!(v["images"].as_array().unwrap().len(), 1);

    // Overrides change the result; --iters 0 returns the input unchanged.
    let o = run(&[
        "purify",
        "--model",
        s(&dense),
        "--idx",
        s(&idx),
        "--start",
        "0",
        "--count",
        "1",
        "--iters",
        "0",
        "--out",
        s(&out),
        "--json",
        "--no-png",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["images"][0]["max_abs_change"], 0.0);

    // The shipped default classifies the seven too.
    let o = run(&["classify", s(&png0)]);
    assert!(
        o.status.success() && text(&o).contains("seven"),
        "{}",
        text(&o)
    );
}

#[test]
fn purify_rejects_bad_images_models_and_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = d.join("out");
    let small = d.join("small.png");
    write_png(&small, 20, 20, png::ColorType::Grayscale, &[0; 400]);
    let o = run(&["purify", s(&small), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("20x20") && text(&o).contains("28x28"),
        "{}",
        text(&o)
    );
    let rgb = d.join("rgb.png");
    write_png(&rgb, 28, 28, png::ColorType::Rgb, &[0; 28 * 28 * 3]);
    let o = run(&["purify", s(&rgb), "--out", s(&out)]);
    assert!(
        text(&o).contains("RGB") && text(&o).contains("grayscale"),
        "{}",
        text(&o)
    );
    assert!(!out.exists(), "nothing written for rejected input");

    let idx = fixtures().join("mnist-sample/t10k-images-idx3-ubyte.gz");
    let o = run(&[
        "classify",
        "--idx",
        s(&idx),
        "--start",
        "250",
        "--count",
        "50",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("outside the 256 images"), "{}", text(&o));
    // The largest index is out of range, not an overflow panic.
    let o = run(&[
        "classify",
        "--idx",
        s(&idx),
        "--start",
        &usize::MAX.to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("outside the 256 images"), "{}", text(&o));
    // The old --range spelling is refused, pointing to --start/--count.
    let o = run(&["classify", "--idx", s(&idx), "--range", "0..2"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--range") && text(&o).contains("--start FIRST --count N"),
        "{}",
        text(&o)
    );

    for (flag, value, word) in [
        ("--sigma", "0", "sigma"),
        ("--sigma", "NaN", "sigma"),
        ("--radius=-0.1", "", "delta"),
        ("--iters", "10001", "iterations"),
        ("--eta=-1", "", "eta"),
        ("--noise-samples", "0", "noise samples"),
    ] {
        let mut args = vec![
            "purify",
            "--idx",
            s(&idx),
            "--start",
            "0",
            "--count",
            "1",
            "--out",
            s(&out),
            flag,
        ];
        if !value.is_empty() {
            args.push(value);
        }
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{flag} {value}");
        assert!(text(&o).contains(word), "{flag} {value}: {}", text(&o));
    }

    // Corrupt and truncated model files.
    let psm = std::fs::read(fixtures().join("mnist.psm")).unwrap();
    let trunc = d.join("trunc.psm");
    std::fs::write(&trunc, &psm[..1000]).unwrap();
    let o = run(&["classify", "--model", s(&trunc), "--idx", s(&idx)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("trunc.psm") && text(&o).contains("truncated"),
        "{}",
        text(&o)
    );
    let mut bad = psm.clone();
    bad[5000] ^= 0x10;
    let corrupt = d.join("corrupt.psm");
    std::fs::write(&corrupt, &bad).unwrap();
    let o = run(&["inspect", s(&corrupt)]);
    assert!(text(&o).contains("CRC"), "{}", text(&o));
}

/// `firmware-check` against the dense fixture model (fixtures/mnist.psm), whose
/// outputs fixtures/golden.json holds.
fn fw_check(args: &[&str]) -> Output {
    let model = fixtures().join("mnist.psm");
    let mut all = vec!["firmware-check", "--model", s(&model)];
    all.extend_from_slice(args);
    run(&all)
}

/// `log` with each image line's placeholder `logits 00000000` replaced by the
/// digest of the logits the host computes for it (firmware-check's own
/// `host_logits_crc32`; golden.json holds no logits digests). The logits check
/// itself is tested in the command's unit tests and by the QEMU firmware test.
fn with_host_logits(log: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let probe = tmp.path().join("probe.log");
    std::fs::write(&probe, log).unwrap();
    let o = fw_check(&["--log", s(&probe), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut out = String::new();
    for line in log.lines() {
        let host = v["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|im| line.starts_with(&format!("image {} ", im["image"])));
        match host {
            Some(im) => {
                let h = im["host_logits_crc32"].as_str().unwrap();
                out += &line.replace("logits 00000000", &format!("logits {h}"));
            }
            None => out += line,
        }
        out.push('\n');
    }
    out
}

#[test]
fn firmware_check_compares_a_board_log_with_the_host() {
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("golden.json")).unwrap()).unwrap();
    let mut log = String::from("scratch_bytes 38592\n");
    for i in 0..4 {
        let g = &golden["images"][i];
        log += &format!(
            "image {i} label {} purified {} crc32 {} logits 00000000\n",
            g["label"],
            g["purified_prediction"],
            g["purified_crc32"].as_str().unwrap()
        );
    }
    log += "done ok 4 images\n";
    let log = with_host_logits(&log);
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("board.log");
    std::fs::write(&good, &log).unwrap();
    let o = fw_check(&["--log", s(&good)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("PASS: 4 images"));

    let first_crc = golden["images"][0]["purified_crc32"].as_str().unwrap();
    let bad = tmp.path().join("bad.log");
    std::fs::write(&bad, log.replacen(first_crc, "00000000", 1)).unwrap();
    let o = fw_check(&["--log", s(&bad)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("DIFFERENT") && text(&o).contains("FAIL: 1 of 4"),
        "{}",
        text(&o)
    );

    // Incomplete logs fail even though every line present is bit-identical.
    let image_lines: Vec<&str> = log.lines().filter(|l| l.starts_with("image")).collect();
    let cut = tmp.path().join("cut.log");
    for (body, why) in [
        // Cut off: no closing line.
        (
            format!("scratch_bytes 38592\n{}\n", image_lines[..3].join("\n")),
            "closing line",
        ),
        // An older firmware's closing line without the count.
        (
            format!("{}\ndone ok\n", image_lines.join("\n")),
            "not `done ok <n> images`",
        ),
        // A missing image.
        (
            format!(
                "{}\n{}\ndone ok 4 images\n",
                image_lines[..2].join("\n"),
                image_lines[3]
            ),
            "images missing: 2",
        ),
        // The count does not match.
        (
            format!("{}\ndone ok 16 images\n", image_lines.join("\n")),
            "ran 16 images but the log has 4",
        ),
        // The firmware stopped on an error.
        (
            format!("{}\ndone error\n", image_lines[..2].join("\n")),
            "reported an error",
        ),
        // A repeated image.
        (
            format!(
                "{}\n{}\ndone ok 4 images\n",
                image_lines[..3].join("\n"),
                image_lines[0]
            ),
            "more than once: 0",
        ),
    ] {
        std::fs::write(&cut, &body).unwrap();
        let o = fw_check(&["--log", s(&cut)]);
        assert_eq!(o.status.code(), Some(1), "{why}: {}", text(&o));
        assert!(
            text(&o).contains(why) && !text(&o).contains("PASS"),
            "{why}: {}",
            text(&o)
        );
    }
    // --model names the model the firmware embeds.
    let o = run(&[
        "firmware-check",
        "--log",
        s(&good),
        "--model",
        s(&fixtures().join("mnist.psm")),
    ]);
    assert!(o.status.success(), "{}", text(&o));

    let junk = tmp.path().join("junk.log");
    std::fs::write(&junk, "image 0 label seven\n").unwrap();
    let o = fw_check(&["--log", s(&junk)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("line 1"), "{}", text(&o));
    std::fs::write(&junk, "hello\n").unwrap();
    let o = fw_check(&["--log", s(&junk)]);
    assert!(text(&o).contains("no `image` lines"), "{}", text(&o));
}

#[test]
fn train_reads_a_toml_run_file_and_flags_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    data_dir(&data);
    let run_dir = tmp.path().join("run");
    let cfg = tmp.path().join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "data = {:?}\nout = {:?}\nwhat = \"classifier\"\ncls_epochs = 1\ncls_hidden = [12]\nvalidation = 50\nquiet = true\nlr = 0.5\n",
            s(&data),
            s(&run_dir)
        ),
    )
    .unwrap();
    // The file says lr = 0.5; the command line overrides it.
    let o = run(&["train", "--config", s(&cfg), "--lr", "0.002"]);
    assert!(o.status.success(), "{}", text(&o));
    let ck = pursamere_trainer::train::load_checkpoint(&run_dir.join("classifier.ckpt")).unwrap();
    assert_eq!(ck.config.lr, 0.002);
    // A list flag on the command line replaces the file's list (not appended to it).
    let o = run(&[
        "train",
        "--config",
        s(&cfg),
        "--cls-hidden",
        "10",
        "--force",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let ck = pursamere_trainer::train::load_checkpoint(&run_dir.join("classifier.ckpt")).unwrap();
    assert_eq!(ck.net.layers.len(), 3, "one hidden layer");
    assert!(
        matches!(
            ck.net.layers[0],
            pursamere_trainer::model::FloatLayer::Dense { outputs: 10, .. }
        ),
        "{:?}",
        ck.net.layers[0]
    );
    assert_eq!(ck.config.epochs, 1);
    assert!(!run_dir.join("denoiser.ckpt").exists());

    std::fs::write(&cfg, "den_epochs = [").unwrap();
    let o = run(&["train", "--config", s(&cfg)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("run file"), "{}", text(&o));
}

#[test]
fn eval_runs_a_protocol_resumes_and_rejects_bad_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let proto = tmp.path().join("p.toml");
    std::fs::write(
        &proto,
        "images = 3\nbatch = 2\nsteps = 2\nsquare_queries = 20\nlinf_eps = [0.3, 0.1]\nattacks = [\"square\", \"transfer\", \"bpda\", \"full\", \"apgd-ce\"]\ndefences = [\"none\", \"ere\"]\nconvergence_check = true\nstep_schedule = \"cosine\"\nlosses = [\"ce\", \"margin\"]\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let data = fixtures().join("mnist-sample");
    // The dense purifier model: its purifier is on (the shipped default's is off).
    let dense = fixtures().join("mnist.psm");
    let eval = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--protocol",
            s(&proto),
            "--data",
            s(&data),
            "--out",
            s(out),
        ];
        if !extra.contains(&"--model") {
            args.extend_from_slice(&["--model", s(&dense)]);
        }
        args.extend_from_slice(extra);
        run(&args)
    };
    let o = eval(&out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0]["defence"], "none");
    assert_eq!(rows[0]["n"], 3);
    // The report names the model, the settings and the commit.
    let model_hash = report["model_sha256"].as_str().unwrap();
    assert_eq!(model_hash.len(), 64);
    assert_eq!(report["fingerprint"].as_str().unwrap().len(), 64);
    assert!(!report["commit"].as_str().unwrap().is_empty());
    // Attacks run in cascade order whatever order the protocol lists them in.
    let attacks: Vec<&str> = report["protocol"]["attacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(attacks, ["transfer", "apgd-ce", "full", "bpda", "square"]);
    let lines = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, 12);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("worst case")
            && md.contains("Seconds per image")
            && md.contains(model_hash)
            && md.contains("Convergence checks"),
        "{md}"
    );
    // Rows come in increasing ε whatever order the protocol lists them in.
    assert_eq!(rows[0]["eps"].as_f64().unwrap() as f32, 0.1);
    // Robust accuracy never exceeds clean accuracy, and the cascade never rises.
    for r in rows {
        let clean = r["clean"].as_f64().unwrap();
        assert!(r["worst_case"].as_f64().unwrap() <= clean);
        let mut prev = clean;
        for a in &attacks {
            if let Some(v) = r["after_attack"][a].as_f64() {
                assert!(v <= prev + 1e-12, "{r}");
                prev = v;
            }
        }
    }
    // The plot is a real PNG: one 520x420 panel (L-inf budgets only).
    let png_bytes = std::fs::read(out.join("report.png")).unwrap();
    let info = png::Decoder::new(std::io::Cursor::new(png_bytes))
        .read_info()
        .unwrap()
        .info()
        .clone();
    assert_eq!((info.width, info.height), (520, 420));

    // Running again resumes: nothing is recomputed or duplicated.
    let o = eval(&out, &[]);
    assert!(
        o.status.success() && text(&o).contains("resuming: 12 records"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl"))
            .unwrap()
            .lines()
            .count(),
        12
    );
    // More images on the command line extend the same run.
    let o = eval(&out, &["--count", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl"))
            .unwrap()
            .lines()
            .count(),
        16
    );

    // The summary: its rows need a name, and a name belongs to one model file —
    // both refused before any work, the file untouched.
    let summary = tmp.path().join("summary.json");
    let sum = s(&summary);
    let o = eval(&out, &["--count", "4", "--summary", sum]);
    assert!(
        !o.status.success() && text(&o).contains("--classifier") && !summary.exists(),
        "{}",
        text(&o)
    );
    let o = eval(
        &out,
        &["--count", "4", "--summary", sum, "--classifier", "dense"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let filed = doc["rows"].as_array().unwrap();
    assert_eq!(filed.len(), 4);
    for r in filed {
        assert_eq!(r["classifier"], "dense");
        assert_eq!(r["model_sha256"].as_str(), Some(model_hash));
        // Every row says what stands behind it (the convergence check runs on the
        // largest ε's survivors only) and carries its flags.
        assert!(r["flags"].is_array(), "{r}");
        assert!(r["upper_bound"].is_boolean(), "{r}");
        let checked = r["checks_broken"].as_object().unwrap();
        let largest = r["eps"].as_f64().unwrap() as f32 == 0.3;
        let survivors = r["worst_case_before_checks"].as_f64().unwrap() > 0.0;
        assert_eq!(
            checked.contains_key("double-steps"),
            largest && survivors,
            "{r}"
        );
    }
    let before = std::fs::read(&summary).unwrap();
    let other_out = tmp.path().join("other-model");
    let int8 = fixtures().join("mnist-robust-int8.psm");
    let o = eval(
        &other_out,
        &[
            "--model",
            s(&int8),
            "--summary",
            sum,
            "--classifier",
            "dense",
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("--replace-rows") && !other_out.exists(),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&summary).unwrap(), before);

    // Other settings into the same directory: refused, naming what differs, and
    // nothing is written; --fresh starts over.
    let before = std::fs::read(out.join("results.jsonl")).unwrap();
    for (extra, field) in [
        (&["--iters", "2"][..], "defences.ere.iters"),
        (&["--radius", "0.05"][..], "defences.ere.radius"),
        (&["--model", s(&fixtures().join("mnist.psm"))][..], ""),
    ] {
        let o = eval(&out, extra);
        if field.is_empty() {
            // The same model given explicitly is the same settings.
            assert!(o.status.success(), "{}", text(&o));
            continue;
        }
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {}", text(&o));
        assert!(
            text(&o).contains(field) && text(&o).contains("--fresh"),
            "{extra:?}: {}",
            text(&o)
        );
    }
    assert_eq!(std::fs::read(out.join("results.jsonl")).unwrap(), before);
    let o = eval(&out, &["--iters", "2", "--fresh", "--count", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("resuming"), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl"))
            .unwrap()
            .lines()
            .count(),
        8
    );
    // A protocol change is refused too (here: the steps).
    let text_proto = std::fs::read_to_string(&proto).unwrap();
    std::fs::write(&proto, text_proto.replace("steps = 2", "steps = 3")).unwrap();
    let o = eval(&out, &["--iters", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("protocol.steps"), "{}", text(&o));
    // Results of an older version (no settings.json) are refused, not mixed in.
    let old = tmp.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("results.jsonl"), "{\"index\":0}\n").unwrap();
    let o = eval(&old, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("without settings.json"), "{}", text(&o));

    std::fs::write(
        &proto,
        "images = 3\nsteps = 2\nlinf_eps = [0.3]\nattacks = [\"magic\"]\ndefences = [\"none\"]\n",
    )
    .unwrap();
    let o = eval(&out, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("unknown attack `magic`"), "{}", text(&o));
    // The surrogate attack applies to sign-step purifiers only.
    std::fs::write(&proto, "images = 2\nsteps = 2\nlinf_eps = [0.3]\nattacks = [\"full\", \"surrogate\"]\ndefences = [\"ere\"]\nrestart_check = false\n").unwrap();
    for (step, applies) in [("sign", true), ("gradient", false)] {
        let out = tmp.path().join(format!("out-{step}"));
        let o = eval(&out, &["--step", step, "--eta", "0.05"]);
        assert!(o.status.success(), "{}", text(&o));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        let per = &report["rows"][0]["after_attack"];
        assert!(per["full"].is_number(), "{report}");
        // Only when the full attack left something for it to attack.
        if per["full"].as_f64().unwrap() > 0.0 {
            assert_eq!(per["surrogate"].is_number(), applies, "{step}: {report}");
        }
    }
    let base = "steps = 2\nlinf_eps = [0.3]\nattacks = [\"full\"]\ndefences = [\"ere\"]\n";
    for (bad, msg) in [
        (
            "images = 3\nstep_schedule = \"wobbly\"",
            "unknown step_schedule `wobbly`",
        ),
        ("images = 3\nsplit = \"train\"", "unknown split `train`"),
        ("images = 3\nbatch = 0", "at least 1"),
        ("images = 3\nsplit = \"validation\"", "train-images"),
        ("", "--count"),
        ("images = 3\npreset = \"gold\"", "unknown preset `gold`"),
    ] {
        std::fs::write(&proto, format!("{base}{bad}\n")).unwrap();
        let o = eval(&out, &[]);
        assert_eq!(o.status.code(), Some(1), "{bad}");
        assert!(text(&o).contains(msg), "{bad}: {}", text(&o));
    }
    for (bad, msg) in [
        ("attacks = []", "`attacks` is empty"),
        ("defences = []", "`defences` is empty"),
        ("attacks = [\"full\", \"full\"]", "listed twice"),
        (
            "attacks = [\"square\"]\nsquare_target = \"gpu\"",
            "unknown square_target `gpu`",
        ),
    ] {
        let p =
            "images = 3\nsteps = 2\nlinf_eps = [0.3]\nattacks = [\"full\"]\ndefences = [\"ere\"]\n"
                .lines()
                .filter(|l| !l.starts_with(bad.split(' ').next().unwrap()))
                .collect::<Vec<_>>()
                .join("\n");
        std::fs::write(&proto, format!("{p}\n{bad}\n")).unwrap();
        let o = eval(&out, &[]);
        assert_eq!(o.status.code(), Some(1), "{bad}");
        assert!(text(&o).contains(msg), "{bad}: {}", text(&o));
    }
    std::fs::write(&proto, "images = 3\nbogus = 1\n").unwrap();
    let o = eval(&out, &[]);
    assert!(text(&o).contains("not a valid protocol"), "{}", text(&o));
}

/// Runs `args` with standard output a pipe whose reading end is already closed.
fn run_into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = bin()
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let status = child.wait().unwrap();
    Output {
        status,
        stdout: Vec::new(),
        stderr: err.into_bytes(),
    }
}

#[test]
fn closed_or_full_stdout_is_not_a_panic() {
    let psm = fixtures().join("mnist.psm");
    let idx = fixtures().join("mnist-sample/t10k-images-idx3-ubyte.gz");
    let tmp = tempfile::tempdir().unwrap();
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("golden.json")).unwrap()).unwrap();
    let g = &golden["images"][0];
    let log = tmp.path().join("board.log");
    std::fs::write(
        &log,
        format!(
            "image 0 label {} purified {} crc32 {} logits 00000000\ndone ok 1 images\n",
            g["label"],
            g["purified_prediction"],
            g["purified_crc32"].as_str().unwrap()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let cases: Vec<Vec<&str>> = vec![
        vec!["inspect", s(&psm)],
        vec!["inspect", s(&psm), "--json"],
        vec!["classify", "--idx", s(&idx), "--start", "0", "--count", "2"],
        vec![
            "purify",
            "--idx",
            s(&idx),
            "--start",
            "0",
            "--count",
            "1",
            "--iters",
            "1",
            "--out",
            s(&out),
            "--force",
        ],
        vec!["firmware-check", "--log", s(&log)],
    ];
    for args in &cases {
        // A reader that went away (`pursamere inspect | head -1`): a quiet stop.
        let o = run_into_closed_pipe(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        assert!(o.stderr.is_empty(), "{args:?}: {}", text(&o));
        // A full disk: an error message, exit code 1, no panic.
        if Path::new("/dev/full").exists() {
            let full = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap();
            let o = bin().args(args).stdout(full).output().unwrap();
            assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
            let t = text(&o);
            assert!(
                t.contains("cannot write to standard output") && !t.contains("panicked"),
                "{args:?}: {t}"
            );
        }
    }
}

#[test]
fn verify_rejects_bad_numbers_and_foreign_files_before_work() {
    let psm = fixtures().join("mnist.psm");
    let data = fixtures().join("mnist-sample");
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", "--model", s(&psm), "--data", s(&data)];
        args.extend_from_slice(extra);
        run(&args)
    };
    for (extra, want) in [
        (
            &["--eps", "nan"][..],
            "--eps must be finite and >= 0, got NaN",
        ),
        (&["--eps=-1"][..], "--eps must be finite and >= 0, got -1"),
        (&["--eps", "inf"][..], "--eps must be finite"),
        (&["--count", "0"][..], "--count must be at least 1"),
        (
            &["--float", s(&psm), "--count", "1"][..],
            "this is a .psm model file, not a .safetensors file",
        ),
    ] {
        let o = verify(extra);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {t}");
        assert!(t.contains(want), "{extra:?}: {t}");
        assert!(
            !t.contains("panicked") && !t.contains("HeaderTooLarge") && !t.contains("outside"),
            "{extra:?}: {t}"
        );
    }
}

#[test]
fn error_messages_name_each_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A missing IDX file: the OS error once, not `…: X: X`.
    let o = run(&["classify", "--idx", s(&d.join("missing.gz"))]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert_eq!(t.matches("os error 2").count(), 1, "{t}");
    assert!(t.contains("missing.gz"), "{t}");
    // An empty IDX file is called empty, not "magic 0x00000000".
    let empty = d.join("empty-idx");
    std::fs::write(&empty, b"").unwrap();
    let o = run(&["classify", "--idx", s(&empty)]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.contains("empty") && !t.contains("magic"), "{t}");
    // A corrupt gzip stream: its cause once.
    let gz = fixtures().join("mnist-sample/t10k-images-idx3-ubyte.gz");
    let bytes = std::fs::read(gz).unwrap();
    let cut = d.join("cut.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let o = run(&["classify", "--idx", s(&cut)]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let line = stderr.lines().next().unwrap_or("");
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, p) in parts.iter().enumerate().skip(1) {
        assert_ne!(Some(p), parts.get(i - 1), "{t}");
    }
}

#[test]
fn demo_checks_its_output_path_before_the_work() {
    let tmp = tempfile::tempdir().unwrap();
    // A folder under a regular file cannot be created.
    std::fs::write(tmp.path().join("file"), b"x").unwrap();
    let target = tmp.path().join("file/sub");
    let start = std::time::Instant::now();
    let o = run(&["demo", "--out", s(&target)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("--out") && t.contains("file/sub"), "{t}");
    // --out is the folder: the old file spelling is refused with the new one.
    let o = run(&["demo", "--out", s(&tmp.path().join("x.png"))]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("names the output folder"), "{}", text(&o));
    assert!(!tmp.path().join("x.png").exists());
    // Nothing of the demo's work was done or printed.
    assert!(!t.contains("PurSAMERE demo"), "{t}");
    assert!(start.elapsed().as_secs() < 20);
    let o = run(&["demo", "--eps", "nan"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--eps"));
}

#[test]
fn purify_refuses_inputs_whose_outputs_would_collide() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sample = pursamere_trainer::data::load_mnist_dir(
        &fixtures().join("mnist-sample"),
        pursamere_trainer::data::Split::Test,
    )
    .unwrap();
    for (dir, i) in [("a", 0), ("b", 1)] {
        std::fs::create_dir(d.join(dir)).unwrap();
        write_png(
            &d.join(dir).join("x.png"),
            28,
            28,
            png::ColorType::Grayscale,
            sample.image(i).unwrap(),
        );
    }
    let out = d.join("out");
    let (a, b) = (d.join("a/x.png"), d.join("b/x.png"));
    let o = run(&["purify", s(&a), s(&b), "--out", s(&out), "--iters", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("a/x.png") && t.contains("b/x.png") && t.contains("x.purified"),
        "{t}"
    );
    assert!(!out.exists(), "nothing written");
    // Distinct names are fine.
    std::fs::rename(&b, d.join("b/y.png")).unwrap();
    let o = run(&[
        "purify",
        s(&a),
        s(&d.join("b/y.png")),
        "--out",
        s(&out),
        "--iters",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("x.purified.png").exists() && out.join("y.purified.png").exists());
}

#[test]
fn train_validates_sizes_before_reading_data() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r");
    for (flags, want) in [
        (&["--den-hidden", "0"][..], "--den-hidden 0"),
        (&["--cls-hidden", "8,0"][..], "--cls-hidden 8,0"),
        (
            &["--den-epochs", "0"][..],
            "--den-epochs must be at least 1",
        ),
        (
            &["--cls-epochs", "0"][..],
            "--cls-epochs must be at least 1",
        ),
        (
            &["--batch-size", "0"][..],
            "--batch-size must be at least 1",
        ),
        (&["--lr", "nan"][..], "--lr"),
    ] {
        let mut args = vec!["train", "--data", "no-such-data", "--out", s(&out)];
        args.extend_from_slice(flags);
        let o = run(&args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{flags:?}: {t}");
        assert!(
            t.contains(want) && !t.contains("panicked"),
            "{flags:?}: {t}"
        );
        assert!(!out.exists(), "{flags:?}: nothing created");
    }
    // Only the networks being trained are checked.
    let o = run(&[
        "train",
        "--data",
        "no-such-data",
        "--out",
        s(&out),
        "--what",
        "classifier",
        "--den-epochs",
        "0",
    ]);
    assert!(text(&o).contains("no-such-data"), "{}", text(&o));
}

#[test]
fn train_never_overwrites_or_misresumes_a_run_and_export_writes_both_files_or_none() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    data_dir(&data);
    let run_dir = tmp.path().join("run");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            s(&data),
            "--out",
            s(&run_dir),
            "--den-epochs",
            "1",
            "--cls-epochs",
            "1",
            "--den-hidden",
            "8",
            "--cls-hidden",
            "8",
            "--validation",
            "50",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    // --resume with nothing to resume.
    let o = train(&["--resume"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("holds no checkpoint"), "{}", text(&o));

    let o = train(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("Ctrl-C") && text(&o).contains("--resume"),
        "{}",
        text(&o)
    );
    let ckpt = run_dir.join("denoiser.ckpt");
    let before = std::fs::read(&ckpt).unwrap();

    // Starting again in the same directory is refused, naming the way out.
    let o = train(&["--seed", "5"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains(s(&run_dir)) && t.contains("--resume") && t.contains("--force"),
        "{t}"
    );
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "checkpoint untouched"
    );

    // Resuming with another architecture or setting names the flag and both values.
    for (extra, want) in [
        (
            &["--den-hidden", "12"][..],
            "--den-hidden 12 (the checkpoint has 8)",
        ),
        (
            &["--cls-hidden", "8,8"][..],
            "--cls-hidden 8,8 (the checkpoint has 8)",
        ),
        (
            &["--lr", "0.01"][..],
            "--lr 0.01 (the checkpoint has 0.001)",
        ),
        (
            &["--sigmas", "0.25,0.5"][..],
            "--sigmas 0.25,0.5 (the checkpoint has 0.5)",
        ),
        (&["--residual"][..], "--residual"),
        (
            &["--den-epochs", "3"][..],
            "--den-epochs 3 (the checkpoint has 1)",
        ),
        (
            &["--validation", "60"][..],
            "--validation 60 (the run has 50)",
        ),
    ] {
        let mut args = vec!["--resume"];
        args.extend_from_slice(extra);
        let o = train(&args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {t}");
        assert!(t.contains(want), "{extra:?}: {t}");
        assert!(
            !t.contains("TrainConfig") && !t.contains("Objective") && !t.contains('{'),
            "{extra:?}: {t}"
        );
    }
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "checkpoint untouched"
    );

    // The same flags resume (nothing left to do); --force starts afresh.
    let o = train(&["--resume"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("resuming after epoch 1 of 1"),
        "{}",
        text(&o)
    );
    let o = train(&["--force", "--seed", "5"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(std::fs::read(&ckpt).unwrap(), before, "--force retrained");

    // Every run holds out the same images whatever its --seed: a run of seed 5
    // resumes; one from before the hold-out was fixed (no `holdout_seed` in its
    // side file: it drew the hold-out with its --seed) is refused, because
    // resuming would train on images it held out.
    let side = run_dir.join("train-data.json");
    let now: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&side).unwrap()).unwrap();
    assert_eq!(now["holdout_seed"], 0, "{now}");
    let o = train(&["--resume", "--seed", "5"]);
    assert!(o.status.success(), "{}", text(&o));
    let mut old = now.clone();
    old.as_object_mut().unwrap().remove("holdout_seed");
    std::fs::write(&side, old.to_string()).unwrap();
    let after = std::fs::read(&ckpt).unwrap();
    let o = train(&["--resume", "--seed", "5"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("hold-out was drawn with seed 5") && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&ckpt).unwrap(), after, "checkpoint untouched");

    // export: when the second file cannot be written, neither is left behind (no
    // .psm, no temporary). A directory in the way of the .safetensors temporary
    // makes that write fail.
    let out = tmp.path().join("exported");
    std::fs::create_dir_all(out.join("model.safetensors.tmp")).unwrap();
    let export_to = |extra: &[&str]| {
        let mut args = vec![
            "export",
            "--run",
            s(&run_dir),
            "--out",
            s(&out),
            "--side",
            "8",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let o = export_to(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("model.safetensors"), "{}", text(&o));
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "model.safetensors.tmp")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    std::fs::remove_dir(out.join("model.safetensors.tmp")).unwrap();
    // An existing model is overwritten only with --force.
    let psm = out.join("model.psm");
    std::fs::write(&psm, b"older model").unwrap();
    let o = export_to(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("model.psm") && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&psm).unwrap(), b"older model");
    // The removed --safetensors flag says where the float weights go now.
    let o = export_to(&["--safetensors", "x.safetensors"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("model.safetensors"), "{}", text(&o));
    // Export is byte-reproducible, both files.
    let st = out.join("model.safetensors");
    let export = || {
        let o = export_to(&["--force"]);
        assert!(o.status.success(), "{}", text(&o));
        (std::fs::read(&psm).unwrap(), std::fs::read(&st).unwrap())
    };
    assert_eq!(export(), export());
}

#[test]
fn train_adversarially_resumes_only_with_the_same_attack() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    data_dir(&data);
    let out = tmp.path().join("run");
    let base = [
        "train",
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--what",
        "classifier",
        "--cls-hidden",
        "16",
        "--cls-epochs",
        "2",
        "--validation",
        "100",
        "--quiet",
        "--adversarial",
        "trades",
        "--adv-eps",
        "0.2",
        "--adv-steps",
        "3",
    ];
    let o = run(&base);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("classifier.ckpt").exists());
    // Resuming with another attack setting names the flag and both values.
    let mut other = base.to_vec();
    other.extend_from_slice(&["--resume", "--adv-eps", "0.3"]);
    let o = run(&other);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("--adv-eps 0.3 (the checkpoint has 0.2)"),
        "{}",
        text(&o)
    );
    // ... and the method with its own setting.
    let mut other = base.to_vec();
    other.extend_from_slice(&[
        "--resume",
        "--adversarial",
        "pgd-max",
        "--adv-second-eps",
        "1.5",
    ]);
    let o = run(&other);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("--adversarial pgd-max --adv-second-eps 1.5 (the checkpoint has trades"),
        "{}",
        text(&o)
    );
    // Resuming without --adversarial is refused too.
    let mut plain = base[..14].to_vec();
    plain.push("--resume");
    let o = run(&plain);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("adversarially trained"), "{}", text(&o));
    // Bad settings are refused before any work.
    for (flag, value) in [
        ("--adv-eps", "nan"),
        ("--adv-steps", "0"),
        ("--trades-beta", "nan"),
        ("--adv-second-eps", "inf"),
    ] {
        let mut bad = base.to_vec();
        bad.extend_from_slice(&["--force", flag, value]);
        let o = run(&bad);
        assert_eq!(o.status.code(), Some(1), "{flag}");
        assert!(text(&o).contains(flag), "{flag}: {}", text(&o));
    }
}

/// Width and height of a PNG file.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let be = |o: usize| u32::from_be_bytes(bytes[o..o + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn demo_picture_is_annotated_and_labels_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("pursamere-demo.png");
    let dir = s(tmp.path());
    let o = run(&["demo", "--count", "20", "--steps", "5", "--out", dir]);
    assert!(o.status.success(), "{}", text(&o));
    // Three columns of a 4 x 4 block of 84-pixel images, with headers and labels.
    assert_eq!(png_size(&png), (1336, 608));
    let t = text(&o);
    assert!(t.contains("the first 16 images"), "{t}");
    assert!(t.contains("true") && t.contains("K = 0 adv"), "{t}");
    // One row per image shown: index and true label (the sample starts 7 2 1 0).
    let rows: Vec<&str> = t
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4 && f[0].parse::<usize>().is_ok_and(|i| i < 16)
        })
        .collect();
    assert_eq!(rows.len(), 16, "{t}");
    assert!(rows[0].split_whitespace().nth(1) == Some("7"), "{t}");
    assert!(rows[3].split_whitespace().nth(1) == Some("0"), "{t}");
    // Fewer images: fewer rows in the picture.
    let o = run(&["demo", "--count", "4", "--steps", "2", "--out", dir]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "an existing picture needs --force"
    );
    assert!(text(&o).contains("--force"), "{}", text(&o));
    let o = run(&[
        "demo", "--count", "4", "--steps", "2", "--out", dir, "--force",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(png_size(&png), (1336, 608 - 3 * 118));
    // --json: per-image labels and accuracies, nothing else on stdout.
    let o = run(&[
        "demo", "--count", "8", "--steps", "2", "--json", "--out", dir, "--force",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["images"], 8);
    let per = v["per_image"].as_array().unwrap();
    assert_eq!(per.len(), 8);
    assert_eq!(per[0]["true"], "7");
    assert!(v["accuracy"]["purified_adversarial"].as_f64().is_some());
}

#[test]
fn inspect_takes_model_flag_or_positional_and_defaults_to_the_shipped_model() {
    let psm = fixtures().join("mnist-robust-int8.psm");
    let json_of = |args: &[&str]| -> serde_json::Value {
        let o = run(args);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let by_flag = json_of(&["inspect", "--model", s(&psm), "--json"]);
    let by_pos = json_of(&["inspect", s(&psm), "--json"]);
    let shipped = json_of(&["inspect", "--json"]);
    assert_eq!(by_flag["file"], s(&psm));
    assert_eq!(by_flag["layers"], by_pos["layers"]);
    assert_eq!(by_flag["purifier"], shipped["purifier"]);
    assert_eq!(by_flag["bytes"], shipped["bytes"]);
    assert_eq!(shipped["file"], "shipped MNIST model");
    let o = run(&["inspect"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("classes: 0, 1, 2"), "{}", text(&o));
    // Both at once is a usage error.
    let o = run(&["inspect", "--model", s(&psm), s(&psm)]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn verify_defaults_to_the_shipped_model() {
    let o = run(&[
        "verify",
        "--data",
        s(&fixtures().join("mnist-sample")),
        "--count",
        "8",
        "--steps",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["images"], 8);
    assert_eq!(v["passed"], true);
}

#[test]
fn classify_shows_true_labels_and_refuses_purifier_flags_it_would_ignore() {
    let idx = fixtures().join("mnist-sample/t10k-images-idx3-ubyte.gz");
    let labels = fixtures().join("mnist-sample/t10k-labels-idx1-ubyte.gz");
    // The label file beside the images is found; the sample starts 7 2 1 0 4 1 4 9.
    let o = run(&["classify", "--idx", s(&idx), "--start", "4", "--count", "3"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("true") && t.contains("predicted"), "{t}");
    assert!(t.contains("accuracy: 3 of 3 correct"), "{t}");
    let o = run(&[
        "classify",
        "--idx",
        s(&idx),
        "--labels",
        s(&labels),
        "--start",
        "0",
        "--count",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let trues: Vec<u64> = (0..4)
        .map(|i| v["images"][i]["true_label"].as_u64().unwrap())
        .collect();
    assert_eq!(trues, [7, 2, 1, 0]);
    assert_eq!(v["images"][0]["true_class"], "7");
    assert!(v["accuracy"].as_f64().is_some());
    // --start/--count and --range select the same images.
    let o2 = run(&[
        "classify",
        "--idx",
        s(&idx),
        "--start",
        "0",
        "--count",
        "4",
        "--json",
    ]);
    let v2: serde_json::Value = serde_json::from_slice(&o2.stdout).unwrap();
    assert_eq!(v["images"], v2["images"]);
    // A label file that is not one, or does not match the images, is refused.
    let o = run(&["classify", "--idx", s(&idx), "--labels", s(&idx)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let tmp = tempfile::tempdir().unwrap();
    let short = tmp.path().join("short-labels-idx1-ubyte.gz");
    write_idx_gz(&short, 0x801, &[3], &[1, 2, 3]);
    let o = run(&["classify", "--idx", s(&idx), "--labels", s(&short)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("3 labels"), "{}", text(&o));
    // Purifier flags without --purify would be ignored: refused, naming the flag.
    let o = run(&["classify", "--idx", s(&idx), "--iters", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("--iters") && text(&o).contains("--purify"),
        "{}",
        text(&o)
    );
    let o = run(&[
        "classify",
        "--idx",
        s(&idx),
        "--count",
        "2",
        "--purify",
        "--iters",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["purifier"]["iters"], 2);
    // Selection errors name the flags.
    let o = run(&["classify", "--idx", s(&idx), "--count", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--count"), "{}", text(&o));
    let o = run(&[
        "classify",
        "--idx",
        s(&idx),
        "--start",
        "250",
        "--count",
        "10",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--start 250 --count 10"), "{}", text(&o));
    // Every command that selects images does it with the same two flags.
    for cmd in ["purify", "classify", "verify", "demo", "eval"] {
        let help = text(&run(&[cmd, "--help"]));
        assert!(
            help.contains("--start <START>") && help.contains("--count <COUNT>"),
            "{cmd}: {help}"
        );
        assert!(
            !help.contains("--range") && !help.contains("--images"),
            "{cmd}: {help}"
        );
    }
    let o = run(&["eval", "--images", "4"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("renamed --count"), "{}", text(&o));
}

#[test]
fn purifier_help_shows_the_export_defaults() {
    // fixtures/mnist.psm was exported with the defaults; the shipped default model
    // differs only in K = 0 (its purifier is off), which --iters's help names.
    let o = run(&["inspect", s(&fixtures().join("mnist.psm")), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = &v["purifier"];
    let o = run(&["inspect", "--json"]);
    let shipped: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shipped["purifier"]["iters"], 0);
    let o = run(&["purify", "--help"]);
    assert!(
        text(&o).contains("the shipped default model: 0"),
        "{}",
        text(&o)
    );
    for cmd in ["purify", "classify", "verify", "export", "eval"] {
        let o = run(&[cmd, "--help"]);
        let help = text(&o).replace('\n', " ");
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for (flag, key) in [
            ("--sigma", "sigma"),
            ("--noise-samples", "noise_samples"),
            ("--iters", "iters"),
            ("--eta", "eta"),
            ("--rho", "rho"),
            ("--radius", "radius"),
            ("--noise-seed", "seed"),
        ] {
            let at = help
                .find(&format!("{flag} <"))
                .unwrap_or_else(|| panic!("{cmd} --help lacks {flag}: {help}"));
            let line = &help[at..];
            let value = p[key].as_f64().unwrap();
            let tag = "new exports: ";
            let at = line
                .find(tag)
                .filter(|&i| i < 300)
                .unwrap_or_else(|| panic!("{cmd} --help: {flag} shows no default: {line}"));
            let shown: f64 = line[at + tag.len()..]
                .split([')', ',', ';'])
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!((shown - value).abs() < 1e-6, "{cmd} --help: {flag}: {line}");
        }
    }
}

#[test]
fn firmware_check_reports_json() {
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("golden.json")).unwrap()).unwrap();
    let mut log = String::new();
    for i in 0..3 {
        let g = &golden["images"][i];
        log += &format!(
            "image {i} label {} purified {} crc32 {} logits 00000000\n",
            g["label"],
            g["purified_prediction"],
            g["purified_crc32"].as_str().unwrap()
        );
    }
    let log = with_host_logits(&log);
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("board.log");
    std::fs::write(&good, format!("{log}done ok 3 images\n")).unwrap();
    let o = fw_check(&["--log", s(&good), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["passed"], true);
    assert_eq!(v["images"].as_array().unwrap().len(), 3);
    assert_eq!(v["images"][1]["same"], true);
    // A cut-off log: JSON still, with the reason, and exit 1.
    let cut = tmp.path().join("cut.log");
    std::fs::write(&cut, &log).unwrap();
    let o = fw_check(&["--log", s(&cut), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["passed"], false);
    assert!(!v["incomplete"].as_array().unwrap().is_empty());
}

#[test]
fn train_reports_json_and_fashion_models_name_their_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    data_dir_with(&data, 10, 200, 40);
    let run_dir = tmp.path().join("run");
    let o = run(&[
        "train",
        "--data",
        s(&data),
        "--out",
        s(&run_dir),
        "--den-epochs",
        "1",
        "--cls-epochs",
        "2",
        "--den-hidden",
        "8",
        "--cls-hidden",
        "8",
        "--validation",
        "40",
        "--batch-size",
        "32",
        "--quiet",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let nets = v["networks"].as_array().unwrap();
    assert_eq!(nets.len(), 2);
    assert_eq!(nets[0]["network"], "denoiser");
    assert_eq!(nets[1]["network"], "classifier");
    assert_eq!(nets[1]["epochs"], 2);
    assert!(nets[1]["validation_accuracy"].as_f64().is_some());
    assert!(nets[0]["validation_loss"].as_f64().is_some());

    let psm = tmp.path().join("fashion/model.psm");
    let o = run(&[
        "export",
        "--run",
        s(&run_dir),
        "--out",
        s(&tmp.path().join("fashion")),
        "--side",
        "8",
        "--dataset",
        "fashion-mnist",
        "--iters",
        "1",
        "--noise-samples",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["inspect", "--model", s(&psm), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["classes"][0], "T-shirt/top");
    assert_eq!(v["classes"][9], "Ankle boot");
    let idx = data.join("t10k-images-idx3-ubyte.gz");
    let o = run(&[
        "classify",
        "--model",
        s(&psm),
        "--idx",
        s(&idx),
        "--count",
        "5",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ];
    for img in v["images"].as_array().unwrap() {
        let t = img["true_label"].as_u64().unwrap() as usize;
        assert_eq!(img["true_class"], names[t]);
        assert!(names.contains(&img["class"].as_str().unwrap()));
    }
}

#[test]
fn purify_reports_the_true_label_when_known() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = fixtures().join("mnist-sample/t10k-images-idx3-ubyte.gz");
    let out = tmp.path().join("out");
    let o = run(&[
        "purify",
        "--idx",
        s(&idx),
        "--start",
        "1",
        "--count",
        "2",
        "--iters",
        "1",
        "--no-png",
        "--out",
        s(&out),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["images"][0]["true_label"], 2);
    assert_eq!(v["images"][1]["true_label"], 1);
    let o = run(&[
        "purify",
        "--idx",
        s(&idx),
        "--start",
        "0",
        "--count",
        "1",
        "--iters",
        "1",
        "--no-png",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let row = text(&o)
        .lines()
        .find(|l| l.starts_with("idx-0"))
        .unwrap()
        .to_owned();
    assert_eq!(row.split_whitespace().nth(1), Some("7"), "{row}");
}

#[test]
fn verify_checks_a_convolutional_model_against_its_float_mirror() {
    use pursamere_core::{encoded_len, write_model, Conv2d, Layer, Model};
    let tmp = tempfile::tempdir().unwrap();
    // The shipped model with a 3×3 convolution (1 → 1 channel, padding 1) after a
    // ReLU at the end of its denoiser: the float reference mirrors it.
    let (weights, scales, bias) = ([1u8; 9], 0.01f32.to_le_bytes(), [0u8; 4]);
    let shipped = std::fs::read(fixtures().join("mnist.psm")).unwrap();
    let model = Model::parse(&shipped).unwrap();
    let mut spec = model.spec().clone();
    spec.denoiser.layers.push(Layer::Relu).unwrap();
    spec.denoiser
        .layers
        .push(Layer::Conv2d(Conv2d {
            in_channels: 1,
            out_channels: 1,
            height: 28,
            width: 28,
            kernel: 3,
            stride: 1,
            padding: 1,
            weights: &weights,
            scales: &scales,
            bias: &bias,
        }))
        .unwrap();
    let index = spec.denoiser.layers.len() - 1;
    let mut bytes = vec![0u8; encoded_len(&spec).unwrap()];
    let n = write_model(&spec, &mut bytes).unwrap();
    bytes.truncate(n);
    let conv = tmp.path().join("conv.psm");
    std::fs::write(&conv, &bytes).unwrap();
    // The core takes it.
    let o = run(&["inspect", s(&conv)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Float weights beside it (the dequantised ones: every pass must then agree).
    let fm = pursamere_trainer::model::FloatModel::from_spec(Model::parse(&bytes).unwrap().spec())
        .unwrap();
    std::fs::write(
        tmp.path().join("conv.safetensors"),
        pursamere_trainer::safetensors_io::to_safetensors(&fm).unwrap(),
    )
    .unwrap();
    // verify runs the core against the float reference through the conv layer.
    let data = fixtures().join("mnist-sample");
    let o = run(&[
        "verify",
        "--model",
        s(&conv),
        "--data",
        s(&data),
        "--count",
        "2",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(!t.contains("FAIL") && !t.contains("panicked"), "{t}");
    let _ = index;
}

#[test]
fn an_unknown_key_in_a_run_file_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, "cls_epochs = 2\nbogus_key = 3\n").unwrap();
    let out = tmp.path().join("r");
    let o = run(&[
        "train",
        "--config",
        s(&cfg),
        "--data",
        "d",
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(
        t.contains("unknown key `bogus_key`")
            && t.contains("cls_epochs")
            && !t.contains("--bogus-key"),
        "{t}"
    );
    assert!(!out.exists());
}

#[test]
fn upgrade_rewrites_an_older_model_with_the_f32_noise_and_golden_only_follows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A copy of the shipped fixtures (model and sample), to regenerate golden.json in.
    let fx = d.join("fx");
    std::fs::create_dir_all(fx.join("mnist-sample")).unwrap();
    for f in ["mnist.psm", "golden.json"] {
        std::fs::copy(fixtures().join(f), fx.join(f)).unwrap();
    }
    for f in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        std::fs::copy(
            fixtures().join("mnist-sample").join(f),
            fx.join("mnist-sample").join(f),
        )
        .unwrap();
    }
    let golden = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap()
    };
    // --golden-only reproduces the committed golden.json of the shipped (f64) model.
    let o = run(&["fixtures", "--golden-only", "--out", s(&fx)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--force"), "{}", text(&o));
    let o = run(&["fixtures", "--golden-only", "--out", s(&fx), "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(golden(&fx), golden(&fixtures()));
    assert_eq!(golden(&fx)["noise_generator"], "box-muller-f64");

    // Upgrade: a new file, the same weights, version 3, the f32 generator.
    let old = fixtures().join("mnist.psm");
    let new = d.join("up").join("mnist.psm");
    let o = run(&["upgrade", "--model", s(&old), "--out", s(&d.join("up"))]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("box-muller-f32"), "{}", text(&o));
    let (a, b) = (std::fs::read(&old).unwrap(), std::fs::read(&new).unwrap());
    assert_eq!(a.len(), b.len());
    assert_eq!(&b[4..6], &[3, 0]);
    assert_eq!(a[12..a.len() - 4], b[12..b.len() - 4], "payload unchanged");
    let o = run(&["inspect", s(&new), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format_version"], 3);
    assert_eq!(v["noise_generator"], "box-muller-f32");
    // Again: nothing to do. Onto an existing file: only with --force.
    let o = run(&["upgrade", "--model", s(&new), "--out", s(&d.join("x"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("nothing to upgrade"), "{}", text(&o));
    assert!(!d.join("x").exists());
    let o = run(&["upgrade", "--model", s(&old), "--out", s(&d.join("up"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--force"), "{}", text(&o));
    assert_eq!(std::fs::read(&new).unwrap(), b);
    let junk = d.join("junk.psm");
    std::fs::write(&junk, b"not a model").unwrap();
    let o = run(&["upgrade", "--model", s(&junk), "--out", s(&d.join("y"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("junk.psm"), "{}", text(&o));
    assert!(!d.join("y").exists());

    // The upgraded model's golden vectors: other purified bits, the new generator.
    std::fs::copy(&new, fx.join("mnist.psm")).unwrap();
    let o = run(&["fixtures", "--golden-only", "--out", s(&fx), "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    let g = golden(&fx);
    assert_eq!(g["noise_generator"], "box-muller-f32");
    assert_eq!(g["format_version"], 3);
    let crcs = |v: &serde_json::Value| -> Vec<String> {
        v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["purified_crc32"].as_str().unwrap().to_owned())
            .collect()
    };
    let (was, now) = (crcs(&golden(&fixtures())), crcs(&g));
    assert_eq!(was.len(), now.len());
    assert!(was.iter().zip(&now).all(|(a, b)| a != b));
    // A purification with the upgraded file agrees with its golden vector.
    let o = run(&[
        "purify",
        "--model",
        s(&new),
        "--idx",
        s(&fx.join("mnist-sample/t10k-images-idx3-ubyte.gz")),
        "--count",
        "1",
        "--out",
        s(&d.join("p")),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["images"][0]["crc32"], g["images"][0]["purified_crc32"]);
}

#[test]
fn eval_denoise_defence_runs_with_a_residual_denoiser() {
    // The board conv model's denoiser has a residual skip (`x + r(x)`); the one-shot
    // denoise defence used to be refused for it.
    let tmp = tempfile::tempdir().unwrap();
    let proto = tmp.path().join("p.toml");
    std::fs::write(
        &proto,
        "images = 2\nsteps = 3\nrestart_check = false\nlinf_eps = [0.3]\nattacks = [\"full\", \"bpda\"]\ndefences = [\"none\", \"denoise\"]\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = run(&[
        "eval",
        "--protocol",
        s(&proto),
        "--data",
        s(&fixtures().join("mnist-sample")),
        "--model",
        s(&fixtures().join("mnist-conv.psm")),
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let denoise = rows.iter().find(|r| r["defence"] == "denoise").unwrap();
    assert_eq!(denoise["n"], 2);
    assert!(denoise["clean"].as_f64().unwrap() > 0.0, "{denoise}");
    assert!(denoise["after_attack"]["full"].is_number(), "{denoise}");
}

#[test]
fn train_behind_a_purifier_fine_tunes_resumes_and_rejects_bad_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    data_dir(&data);
    let base = tmp.path().join("base");
    let common = |out: &Path| {
        vec![
            "train".to_owned(),
            "--data".into(),
            s(&data).into(),
            "--out".into(),
            s(out).into(),
            "--validation".into(),
            "50".into(),
            "--batch-size".into(),
            "32".into(),
            "--quiet".into(),
        ]
    };
    let run_owned = |args: Vec<String>| run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut args = common(&base);
    args.extend(
        [
            "--den-epochs",
            "1",
            "--cls-epochs",
            "2",
            "--den-hidden",
            "16",
            "--cls-hidden",
            "16",
        ]
        .map(String::from),
    );
    let o = run_owned(args);
    assert!(o.status.success(), "{}", text(&o));
    // Two purifiers of the same denoiser (K 2 and K 3), and one with K 0 (off).
    let export = |iters: &str, name: &str| {
        let out = tmp.path().join(name);
        let o = run(&[
            "export",
            "--run",
            s(&base),
            "--side",
            "8",
            "--dataset",
            "bands",
            "--iters",
            iters,
            "--noise-samples",
            "1",
            "--out",
            s(&out),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        out.join("model.psm")
    };
    let (k2, k3, off) = (export("2", "k2"), export("3", "k3"), export("0", "off"));
    let ckpt = base.join("classifier.ckpt");
    let behind = tmp.path().join("behind");
    let fine_tune = |psm: &Path, extra: &[&str]| {
        let mut args = common(&behind);
        args.extend(
            [
                "--what",
                "classifier",
                "--purified-by",
                s(psm),
                "--init-classifier",
                s(&ckpt),
                "--adversarial",
                "pgd",
                "--adv-eps",
                "0.2",
                "--adv-steps",
                "2",
                "--cls-epochs",
                "1",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|v| v.to_string()));
        run_owned(args)
    };
    let o = fine_tune(&k2, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(behind.join("classifier.ckpt").exists());
    // Fine-tuning keeps the starting classifier's architecture and exports as usual.
    let o = run(&[
        "export",
        "--run",
        s(&behind),
        "--denoiser",
        s(&k2),
        "--side",
        "8",
        "--dataset",
        "bands",
        "--iters",
        "2",
        "--noise-samples",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // Resuming behind another purifier is refused, naming the flag.
    let o = fine_tune(&k3, &["--resume"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--purified-by"), "{}", text(&o));
    // A purifier that is off, the wrong --what, and --cls-arch with --init-classifier.
    let o = fine_tune(&off, &["--force"]);
    assert!(
        !o.status.success() && text(&o).contains("purifier is off"),
        "{}",
        text(&o)
    );
    let mut args = common(&tmp.path().join("x"));
    args.extend(["--purified-by", s(&k2)].map(String::from));
    let o = run_owned(args);
    assert!(
        !o.status.success() && text(&o).contains("--what classifier"),
        "{}",
        text(&o)
    );
    let o = fine_tune(&k2, &["--force", "--cls-arch", "dense8"]);
    assert!(
        !o.status.success() && text(&o).contains("drop --cls-arch"),
        "{}",
        text(&o)
    );
    // No --init-classifier from a denoiser checkpoint.
    let mut args = common(&tmp.path().join("y"));
    args.extend(
        [
            "--what",
            "classifier",
            "--init-classifier",
            s(&base.join("denoiser.ckpt")),
        ]
        .map(String::from),
    );
    let o = run_owned(args);
    assert!(
        !o.status.success() && text(&o).contains("not a 10-class classifier"),
        "{}",
        text(&o)
    );
}

#[test]
fn int8_converts_the_classifier_reports_accuracy_and_refuses_what_it_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // 28 × 28 generated images in the MNIST layout, for the shipped model.
    let data = d.join("data");
    write_bands(&data, 28, 10, &[("train", 300, 3)]);
    let model = fixtures().join("mnist-robust.psm");
    let out = d.join("q");
    let args = |extra: &[&str]| {
        let mut v = vec![
            "int8",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--calibration",
            "50",
            "--validation",
            "100",
        ];
        v.extend_from_slice(extra);
        v.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let runv = |v: Vec<String>| bin().args(v).output().unwrap();
    let o = runv(args(&[]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("format version 4"), "{}", text(&o));
    assert!(
        text(&o).contains("100 TRAIN hold-out images"),
        "{}",
        text(&o)
    );
    let q = out.join("mnist-robust-int8.psm");
    let written = std::fs::read(&q).unwrap();
    assert_eq!(u16::from_le_bytes([written[4], written[5]]), 4);

    // The converted model inspects and classifies.
    let o = run(&["inspect", s(&q)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).matches("int8 input").count(), 4, "{}", text(&o));
    let o = run(&[
        "classify",
        "--model",
        s(&q),
        "--idx",
        s(&data.join("train-images-idx3-ubyte.gz")),
        "--count",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));

    // No silent overwrite; --force overwrites.
    let o = runv(args(&[]));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--force"), "{}", text(&o));
    let o = runv(args(&["--force"]));
    assert!(o.status.success(), "{}", text(&o));

    // An int8 model has nothing left to convert; the output folder stays clean.
    let again = d.join("again");
    let o = run(&[
        "int8",
        "--model",
        s(&q),
        "--data",
        s(&data),
        "--out",
        s(&again),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("already int8"), "{}", text(&o));
    assert!(!again.join("mnist-robust-int8-int8.psm").exists());

    // Images of another size are refused by name.
    let small = d.join("small");
    std::fs::create_dir_all(&small).unwrap();
    data_dir(&small);
    let o = run(&[
        "int8",
        "--model",
        s(&model),
        "--data",
        s(&small),
        "--out",
        s(&again),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("64 values"), "{}", text(&o));

    // verify compares with float weights: an int8 model has none of its own, and
    // the error says which file it looked for.
    let o = run(&["verify", "--model", s(&q), "--data", s(&data)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("mnist-robust-int8.safetensors"),
        "{}",
        text(&o)
    );
}

#[test]
fn summary_prints_the_measured_matrix() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/eval/summary.json");
    let o = run(&["summary", "--file", s(&file)]);
    assert!(o.status.success(), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    // The header names every MNIST threat, and the shipped default has its line.
    assert!(
        t.starts_with(
            "| classifier | defence | clean | L∞ 0.1 | L∞ 0.2 | L∞ 0.3 | L2 1 | L2 1.5 | L2 2 |"
        ),
        "{t}"
    );
    // A separator cell per column, and no trailing space (a Markdown linter's complaint).
    assert_eq!(
        t.lines().nth(1),
        Some("| --- | --- | --- | --- | --- | --- | --- | --- | --- |"),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.starts_with("| cnn106k-pgd-max-int8 | none | 96.4 % |")),
        "{t}"
    );
    let o = run(&["summary", "--file", s(&file), "--dataset", "cifar10"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("cifar10") && text(&o).contains("mnist"),
        "{}",
        text(&o)
    );
}
