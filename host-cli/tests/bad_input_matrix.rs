//! Every subcommand × every class of bad input: a missing, empty or corrupt/foreign
//! file, an out-of-range or non-finite number or a zero size, an output that cannot
//! be written, a standard output that is full or closed.
//!
//! Each case asserts: a non-zero exit status that is not a panic (101) or a signal,
//! no "panicked" on stderr, a message on stderr that names the problem (the flag or
//! the file), and nothing left in the working folder (every case runs in an empty
//! folder of its own and writes its outputs there).
//!
//! Inputs are tiny: the shipped fixtures, generated 8 × 8 IDX files and one training
//! run of one epoch on them; nothing here needs `../shared`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;

mod common;
use common::{bin, fixtures, write_bands, write_idx_gz};

fn p(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

/// Inputs shared by all cases, made once.
struct Inputs {
    _dir: tempfile::TempDir,
    /// A path that does not exist.
    missing: PathBuf,
    /// A file of 0 bytes.
    empty: PathBuf,
    /// A valid 28 × 28 grayscale PNG (foreign wherever a model, checkpoint, IDX
    /// file, log, protocol or safetensors file is expected).
    png: PathBuf,
    /// Random bytes.
    garbage: PathBuf,
    /// A regular file, for outputs "under a regular file".
    file: PathBuf,
    /// The shipped model and sample.
    psm: PathBuf,
    idx: PathBuf,
    sample: PathBuf,
    /// An empty folder.
    empty_dir: PathBuf,
    /// MNIST-layout folders whose IDX files are empty / PNG files.
    empty_data: PathBuf,
    foreign_data: PathBuf,
    /// Generated 8 × 8 data (train and test) and a one-epoch run on it.
    data: PathBuf,
    run: PathBuf,
    /// Run folders whose checkpoints are empty / PNG files.
    empty_run: PathBuf,
    foreign_run: PathBuf,
    /// A one-image, one-attack evaluation protocol.
    protocol: PathBuf,
    /// A firmware log that matches the shipped model on image 0.
    log: PathBuf,
}

const IDX_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

fn inputs() -> &'static Inputs {
    static INPUTS: OnceLock<Inputs> = OnceLock::new();
    INPUTS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let png = d.join("picture.png");
        let pixels: Vec<u8> = (0..784).map(|i| (i % 251) as u8).collect();
        std::fs::write(
            &png,
            pursamere_trainer::data::encode_png_gray(28, 28, &pixels).unwrap(),
        )
        .unwrap();
        let empty = d.join("empty.bin");
        std::fs::write(&empty, b"").unwrap();
        let garbage = d.join("garbage.bin");
        std::fs::write(
            &garbage,
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let file = d.join("regular-file");
        std::fs::write(&file, b"x").unwrap();
        let empty_dir = d.join("empty-dir");
        std::fs::create_dir(&empty_dir).unwrap();
        let (empty_data, foreign_data) = (d.join("empty-data"), d.join("foreign-data"));
        for (folder, bytes) in [
            (&empty_data, Vec::new()),
            (&foreign_data, std::fs::read(&png).unwrap()),
        ] {
            std::fs::create_dir(folder).unwrap();
            for n in IDX_NAMES {
                std::fs::write(folder.join(n), &bytes).unwrap();
            }
        }
        let data = d.join("data");
        write_bands(&data, 8, 4, &[("train", 300, 1), ("t10k", 50, 2)]);
        let run = d.join("run");
        let o = bin()
            .args(["train", "--data", &p(&data), "--out", &p(&run)])
            .args(["--den-epochs", "1", "--cls-epochs", "1"])
            .args(["--den-hidden", "8", "--cls-hidden", "8"])
            .args(["--validation", "50", "--batch-size", "50", "--quiet"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (empty_run, foreign_run) = (d.join("empty-run"), d.join("foreign-run"));
        for (folder, bytes) in [
            (&empty_run, Vec::new()),
            (&foreign_run, std::fs::read(&png).unwrap()),
        ] {
            std::fs::create_dir(folder).unwrap();
            for n in ["denoiser.ckpt", "classifier.ckpt"] {
                std::fs::write(folder.join(n), &bytes).unwrap();
            }
        }
        let protocol = d.join("protocol.toml");
        std::fs::write(
            &protocol,
            "images = 1\nbatch = 1\nsteps = 1\nlinf_eps = [0.3]\nattacks = [\"transfer\"]\ndefences = [\"none\"]\nrestart_check = false\n",
        )
        .unwrap();
        let golden: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixtures().join("golden.json")).unwrap())
                .unwrap();
        let g = &golden["images"][0];
        let log = d.join("board.log");
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
        Inputs {
            missing: d.join("no-such-file"),
            empty,
            png,
            garbage,
            file,
            psm: fixtures().join("mnist.psm"),
            idx: fixtures().join("mnist-sample/t10k-images-idx3-ubyte.gz"),
            sample: fixtures().join("mnist-sample"),
            empty_dir,
            empty_data,
            foreign_data,
            data,
            run,
            empty_run,
            foreign_run,
            protocol,
            log,
            _dir: dir,
        }
    })
}

/// How standard output is connected.
#[derive(Clone, Copy, PartialEq)]
enum Stdout {
    /// Captured (the ordinary case).
    Piped,
    /// `/dev/full`: every write fails with "no space left".
    Full,
    /// A pipe whose reader has gone away (`pursamere … | head -0`).
    Closed,
}

/// One bad-input case.
struct Case {
    args: Vec<String>,
    /// Words of which stderr must hold at least one (the flag or the file).
    names: Vec<String>,
    stdout: Stdout,
    /// Complete outputs that may stay in the working folder (besides temporaries,
    /// which never may): those written before the failing step.
    may_leave: Option<&'static str>,
}

fn case(args: &[&str], names: &[&str]) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        names: names.iter().map(|s| s.to_string()).collect(),
        stdout: Stdout::Piped,
        may_leave: None,
    }
}

fn run_in(dir: &Path, c: &Case) -> Output {
    let mut cmd = bin();
    cmd.args(&c.args).current_dir(dir);
    match c.stdout {
        Stdout::Piped => cmd.output().unwrap(),
        Stdout::Full => {
            let full = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap();
            cmd.stdout(full).output().unwrap()
        }
        Stdout::Closed => {
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            let mut child = cmd.stdout(writer).stderr(Stdio::piped()).spawn().unwrap();
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            Output {
                status: child.wait().unwrap(),
                stdout: Vec::new(),
                stderr: err.into_bytes(),
            }
        }
    }
}

/// Everything under `dir`, as relative paths.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            out.push(
                path.strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
            if path.is_dir() {
                todo.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Runs every case in an empty folder of its own; returns a description of each
/// case that misbehaved.
fn failures(cases: &[Case]) -> Vec<String> {
    let mut bad = Vec::new();
    for c in cases {
        let work = tempfile::tempdir().unwrap();
        let o = run_in(work.path(), c);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let what = format!("pursamere {}", c.args.join(" "));
        // `PURSAMERE_MATRIX_SHOW=1 cargo test --test bad_input_matrix -- --nocapture`
        // lists every case with its exit status and message, for reading them.
        if std::env::var_os("PURSAMERE_MATRIX_SHOW").is_some() {
            eprintln!("{what}\n    -> {:?}: {}", o.status.code(), err.trim());
        }
        let mut why = Vec::new();
        match (c.stdout, o.status.code()) {
            // A reader that went away: a quiet stop is the expected outcome.
            (Stdout::Closed, Some(0)) => {}
            (_, Some(0)) => why.push("exit status 0".to_owned()),
            (_, Some(101)) => why.push("exit status 101 (panic)".to_owned()),
            (_, None) => why.push(format!("killed by a signal ({:?})", o.status)),
            _ => {}
        }
        if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
            why.push("a panic message".to_owned());
        }
        let quiet_stop = c.stdout == Stdout::Closed && o.status.code() == Some(0);
        if quiet_stop {
            // Progress notes on stderr are fine; an error message is not.
            if err.contains("error") {
                why.push("an error message on a quiet stop".to_owned());
            }
        } else if !c.names.iter().any(|n| err.contains(n.as_str())) {
            why.push(format!("stderr names none of {:?}", c.names));
        }
        let left = files_under(work.path());
        let left: Vec<&String> = left
            .iter()
            .filter(|f| {
                // Outputs written completely before the report failed may stay.
                let allowed = c.stdout != Stdout::Piped
                    || c.may_leave.is_some_and(|prefix| f.starts_with(prefix));
                f.ends_with(".tmp") || !allowed
            })
            .collect();
        if !left.is_empty() {
            why.push(format!("left behind {left:?}"));
        }
        if !why.is_empty() {
            bad.push(format!(
                "{what}\n    {}\n    stderr: {}",
                why.join("; "),
                err.trim()
            ));
        }
    }
    bad
}

fn assert_all(cases: Vec<Case>) {
    let bad = failures(&cases);
    assert!(
        bad.is_empty(),
        "{} of {} cases misbehaved:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}

#[test]
fn missing_files() {
    let i = inputs();
    let m = p(&i.missing);
    let n = ["no-such-file"];
    let (idx, psm) = (p(&i.idx), p(&i.psm));
    assert_all(vec![
        case(&["train", "--data", &m, "--out", "out"], &n),
        case(&["train", "--config", &m], &n),
        case(&["export", "--run", &m, "--out", "out"], &n),
        case(&["purify", &m], &n),
        case(&["purify", "--idx", &m], &n),
        case(&["purify", "--idx", &idx, "--labels", &m], &n),
        case(&["purify", "--idx", &idx, "--model", &m], &n),
        case(&["classify", &m], &n),
        case(&["classify", "--idx", &m], &n),
        case(&["classify", "--idx", &idx, "--model", &m], &n),
        case(&["inspect", &m], &n),
        case(&["inspect", "--model", &m], &n),
        case(&["upgrade", "--model", &m, "--out", "out"], &n),
        case(&["summary", "--file", &m], &n),
        case(&["verify", "--model", &m, "--data", &p(&i.sample)], &n),
        case(&["verify", "--float", &m, "--data", &p(&i.sample)], &n),
        case(&["verify", "--data", &m], &n),
        case(
            &[
                "eval",
                "--protocol",
                &m,
                "--data",
                &p(&i.sample),
                "--out",
                "out",
            ],
            &n,
        ),
        case(
            &[
                "eval",
                "--protocol",
                &p(&i.protocol),
                "--data",
                &m,
                "--out",
                "out",
            ],
            &n,
        ),
        case(
            &[
                "eval",
                "--protocol",
                &p(&i.protocol),
                "--data",
                &p(&i.sample),
                "--model",
                &m,
                "--out",
                "out",
            ],
            &n,
        ),
        case(&["firmware-check", "--log", &m], &n),
        case(&["firmware-check", "--log", &p(&i.log), "--model", &m], &n),
        case(
            &[
                "fixtures",
                "--run",
                &m,
                "--data",
                &p(&i.sample),
                "--out",
                "out",
            ],
            &n,
        ),
        case(
            &[
                "fixtures",
                "--run",
                &p(&i.run),
                "--data",
                &m,
                "--out",
                "out",
            ],
            &n,
        ),
        // The shipped model's float weights beside a model without them.
        case(&["verify", "--model", &psm, "--data", &m], &n),
    ]);
}

#[test]
fn empty_files() {
    let i = inputs();
    let e = p(&i.empty);
    let n = ["empty.bin"];
    let idx = p(&i.idx);
    let ed = p(&i.empty_data);
    assert_all(vec![
        case(&["train", "--data", &ed, "--out", "out"], &["empty-data"]),
        case(
            &["train", "--data", &p(&i.empty_dir), "--out", "out"],
            &["empty-dir"],
        ),
        case(&["train", "--config", &e], &["--data", "--out"]),
        case(
            &["export", "--run", &p(&i.empty_run), "--out", "out"],
            &["empty-run"],
        ),
        case(
            &["export", "--run", &p(&i.empty_dir), "--out", "out"],
            &["empty-dir"],
        ),
        case(&["purify", &e, "--out", "out"], &n),
        case(&["purify", "--idx", &e, "--out", "out"], &n),
        case(
            &["purify", "--idx", &idx, "--labels", &e, "--out", "out"],
            &n,
        ),
        case(
            &["purify", "--idx", &idx, "--model", &e, "--out", "out"],
            &n,
        ),
        case(&["classify", &e], &n),
        case(&["classify", "--idx", &e], &n),
        case(&["classify", "--idx", &idx, "--model", &e], &n),
        case(&["inspect", &e], &n),
        case(&["upgrade", "--model", &e, "--out", "out"], &n),
        case(&["summary", "--file", &e], &n),
        case(&["verify", "--model", &e, "--data", &p(&i.sample)], &n),
        case(&["verify", "--float", &e, "--data", &p(&i.sample)], &n),
        case(&["verify", "--data", &ed], &["empty-data"]),
        case(&["verify", "--data", &p(&i.empty_dir)], &["empty-dir"]),
        case(
            &[
                "eval",
                "--protocol",
                &e,
                "--data",
                &p(&i.sample),
                "--out",
                "out",
            ],
            &["empty.bin", "images"],
        ),
        case(
            &[
                "eval",
                "--protocol",
                &p(&i.protocol),
                "--data",
                &ed,
                "--out",
                "out",
            ],
            &["empty-data"],
        ),
        case(
            &[
                "eval",
                "--protocol",
                &p(&i.protocol),
                "--data",
                &p(&i.sample),
                "--model",
                &e,
                "--out",
                "out",
            ],
            &n,
        ),
        case(&["firmware-check", "--log", &e], &n),
        case(&["firmware-check", "--log", &p(&i.log), "--model", &e], &n),
        case(
            &[
                "fixtures",
                "--run",
                &p(&i.empty_run),
                "--data",
                &p(&i.sample),
                "--out",
                "out",
            ],
            &["empty-run"],
        ),
    ]);
}

#[test]
fn corrupt_and_foreign_files() {
    let i = inputs();
    let (png, garbage, psm) = (p(&i.png), p(&i.garbage), p(&i.psm));
    let (pn, gn) = (["picture.png"], ["garbage.bin"]);
    let idx = p(&i.idx);
    let fd = p(&i.foreign_data);
    let fr = p(&i.foreign_run);
    assert_all(vec![
        case(&["train", "--data", &fd, "--out", "out"], &["foreign-data"]),
        case(&["train", "--config", &png], &pn),
        case(&["export", "--run", &fr, "--out", "out"], &["foreign-run"]),
        // A model given as an image, an image given as IDX, labels or a model.
        case(&["purify", &psm, "--out", "out"], &["mnist.psm"]),
        case(&["purify", &garbage, "--out", "out"], &gn),
        case(&["purify", "--idx", &png, "--out", "out"], &pn),
        case(
            &["purify", "--idx", &idx, "--labels", &png, "--out", "out"],
            &pn,
        ),
        case(
            &["purify", "--idx", &idx, "--labels", &idx, "--out", "out"],
            &["labels"],
        ),
        case(
            &["purify", "--idx", &idx, "--model", &png, "--out", "out"],
            &pn,
        ),
        case(&["classify", &psm], &["mnist.psm"]),
        case(&["classify", "--idx", &garbage], &gn),
        case(&["classify", "--model", &png, &png], &pn),
        case(&["classify", "--model", &garbage, &png], &gn),
        case(&["inspect", &png], &pn),
        case(&["inspect", &garbage], &gn),
        case(&["upgrade", "--model", &png, "--out", "out"], &pn),
        case(&["upgrade", "--model", &garbage, "--out", "out"], &gn),
        case(&["summary", "--file", &garbage], &gn),
        case(&["summary", "--file", &png], &pn),
        case(&["inspect", &idx], &["t10k-images"]),
        case(&["verify", "--model", &png, "--data", &p(&i.sample)], &pn),
        case(&["verify", "--float", &png, "--data", &p(&i.sample)], &pn),
        case(
            &["verify", "--float", &psm, "--data", &p(&i.sample)],
            &["mnist.psm"],
        ),
        case(&["verify", "--data", &fd], &["foreign-data"]),
        case(
            &[
                "eval",
                "--protocol",
                &png,
                "--data",
                &p(&i.sample),
                "--out",
                "out",
            ],
            &pn,
        ),
        case(
            &[
                "eval",
                "--protocol",
                &p(&i.protocol),
                "--data",
                &fd,
                "--out",
                "out",
            ],
            &["foreign-data"],
        ),
        case(
            &[
                "eval",
                "--protocol",
                &p(&i.protocol),
                "--data",
                &p(&i.sample),
                "--model",
                &png,
                "--out",
                "out",
            ],
            &pn,
        ),
        case(&["firmware-check", "--log", &png], &pn),
        case(&["firmware-check", "--log", &garbage], &gn),
        case(
            &["firmware-check", "--log", &p(&i.log), "--model", &png],
            &pn,
        ),
        case(
            &[
                "fixtures",
                "--run",
                &fr,
                "--data",
                &p(&i.sample),
                "--out",
                "out",
            ],
            &["foreign-run"],
        ),
        // A model of other input size than the data.
        case(
            &[
                "classify",
                "--idx",
                &p(&i.data.join("t10k-images-idx3-ubyte.gz")),
            ],
            &["8x8", "28x28"],
        ),
    ]);
}

/// Files of the right kind but the wrong content: a summary row whose figures are
/// strings or missing (printed as 0 % before), data and a run that are not 28 × 28
/// for `fixtures` (a panic before), a --side that makes 4 channels (a silently
/// wrong model before).
#[test]
fn wrong_shapes_and_mistyped_records() {
    let i = inputs();
    let (data, run) = (p(&i.data), p(&i.run));
    let dir = tempfile::tempdir().unwrap();
    let row = r#"{"dataset": "mnist", "classifier": "c", "defence": "none", "norm": "linf", "eps": 0.3, "n": 10, "clean": 0.9, "worst_case": 0.5}"#;
    let mut files = Vec::new();
    let doc = |r: String| format!("{{\"rows\": [{r}]}}");
    for (name, text) in [
        ("strings.json", doc(row.replace("0.3", "\"0.3\""))),
        (
            "missing.json",
            doc(row.replace(r#", "worst_case": 0.5"#, "")),
        ),
        ("cut.json", doc(row.to_owned())[..40].to_owned()),
    ] {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        files.push((p(&f), name));
    }
    let mut cases: Vec<Case> = files
        .iter()
        .map(|(f, name)| case(&["summary", "--file", f], &[name]))
        .collect();
    cases.push(case(
        &["fixtures", "--run", &run, "--data", &data, "--out", "out"],
        &["--data"],
    ));
    cases.push(case(
        &["export", "--run", &run, "--out", "out", "--side", "4"],
        &["--side"],
    ));
    // Flags that would be ignored, a range past the last index, a width that
    // overflows (an allocation panic before).
    cases.push(case(
        &[
            "train",
            "--data",
            &data,
            "--out",
            "out",
            "--what",
            "classifier",
            "--adv-eps",
            "0.1",
        ],
        &["--adversarial"],
    ));
    let protocol = p(&i.protocol);
    let sample = p(&i.sample);
    cases.push(case(
        &[
            "eval",
            "--protocol",
            &protocol,
            "--data",
            &sample,
            "--out",
            "out",
            "--start",
            "18446744073709551615",
            "--count",
            "2",
        ],
        &["--start"],
    ));
    cases.push(case(
        &[
            "train",
            "--data",
            &data,
            "--out",
            "out",
            "--quiet",
            "--validation",
            "50",
            "--cls-hidden",
            "18446744073709551615",
        ],
        &["dense18446744073709551615"],
    ));
    // A folder another `train` is writing to (its lock held here), and retraining
    // one network of a run on another split than the other network's.
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    let held = std::fs::File::create(busy.join("train.lock")).unwrap();
    held.try_lock().unwrap();
    let busy_s = p(&busy);
    cases.push(case(
        &[
            "train",
            "--data",
            &data,
            "--out",
            &busy_s,
            "--quiet",
            "--validation",
            "50",
        ],
        &["in use"],
    ));
    let copy = dir.path().join("run-copy");
    std::fs::create_dir(&copy).unwrap();
    for f in std::fs::read_dir(&i.run).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
    }
    let copy_s = p(&copy);
    cases.push(case(
        &[
            "train",
            "--data",
            &data,
            "--out",
            &copy_s,
            "--what",
            "classifier",
            "--force",
            "--validation",
            "100",
            "--quiet",
        ],
        &["denoiser.ckpt", "--validation 100"],
    ));
    // Resuming an evaluation on other images under the same data set name (a
    // copy of the sample with other labels): refused, not mixed into its records.
    let ev = p(&dir.path().join("ev"));
    let o = bin()
        .args([
            "eval",
            "--protocol",
            &protocol,
            "--data",
            &sample,
            "--out",
            &ev,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let relabelled = dir.path().join("copy/mnist-sample");
    std::fs::create_dir_all(&relabelled).unwrap();
    let labels: Vec<u8> = (0..256u32).map(|k| ((k + 1) % 10) as u8).collect();
    write_idx_gz(
        &relabelled.join("t10k-labels-idx1-ubyte.gz"),
        0x801,
        &[256],
        &labels,
    );
    std::fs::copy(
        i.sample.join("t10k-images-idx3-ubyte.gz"),
        relabelled.join("t10k-images-idx3-ubyte.gz"),
    )
    .unwrap();
    cases.push(case(
        &[
            "eval",
            "--protocol",
            &protocol,
            "--data",
            &p(&relabelled),
            "--out",
            &ev,
        ],
        &["other images"],
    ));
    // ... and with another batch: its images would be attacked in other groups,
    // with other random starts, than its records were.
    let rebatched = dir.path().join("rebatched.toml");
    std::fs::write(
        &rebatched,
        std::fs::read_to_string(&i.protocol)
            .unwrap()
            .replace("batch = 1", "batch = 2"),
    )
    .unwrap();
    cases.push(case(
        &[
            "eval",
            "--protocol",
            &p(&rebatched),
            "--data",
            &sample,
            "--out",
            &ev,
        ],
        &["batch: 1 in the directory, 2 now"],
    ));
    // Resuming a training run on other images of the same count.
    let other = dir.path().join("other-data");
    write_bands(&other, 8, 4, &[("train", 300, 9), ("t10k", 50, 10)]);
    cases.push(case(
        &[
            "train",
            "--data",
            &p(&other),
            "--out",
            &copy_s,
            "--resume",
            "--validation",
            "50",
            "--quiet",
        ],
        &["other training images"],
    ));
    // Fine-tuning an 8 × 8 classifier on 28 × 28 images.
    let big = dir.path().join("big-data");
    write_bands(&big, 28, 4, &[("train", 100, 3)]);
    let init = p(&i.run.join("classifier.ckpt"));
    cases.push(case(
        &[
            "train",
            "--data",
            &p(&big),
            "--out",
            "out",
            "--what",
            "classifier",
            "--init-classifier",
            &init,
            "--validation",
            "50",
            "--quiet",
        ],
        &["--init-classifier"],
    ));
    // Float weights of an 8 × 8 model beside the shipped 28 × 28 one.
    let small = dir.path().join("small");
    let o = bin()
        .args(["export", "--run", &run, "--side", "8", "--out", &p(&small)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = p(&small.join("model.safetensors"));
    cases.push(case(
        &[
            "verify",
            "--data",
            &p(&i.sample),
            "--float",
            &st,
            "--count",
            "1",
        ],
        &["model.safetensors"],
    ));
    assert_all(cases);
    drop(held);
}

#[test]
fn out_of_range_and_non_finite_numbers() {
    let i = inputs();
    let (idx, data, run, sample) = (p(&i.idx), p(&i.data), p(&i.run), p(&i.sample));
    let train = |extra: &[&str], names: &[&str]| {
        let mut a = vec!["train", "--data", &data, "--out", "out", "--quiet"];
        a.extend_from_slice(extra);
        case(&a, names)
    };
    let export = |extra: &[&str], names: &[&str]| {
        let mut a = vec!["export", "--run", &run, "--out", "out", "--side", "8"];
        a.extend_from_slice(extra);
        case(&a, names)
    };
    let purify = |cmd: &'static str, extra: &[&str], names: &[&str]| {
        let mut a = vec![cmd, "--idx", &idx];
        if cmd == "purify" {
            a.extend_from_slice(&["--out", "out"]);
        } else if extra
            .iter()
            .any(|f| ["--sigma", "--iters", "--noise-samples", "--eta"].contains(f))
        {
            a.push("--purify");
        }
        a.extend_from_slice(extra);
        case(&a, names)
    };
    let verify = |extra: &[&str], names: &[&str]| {
        let mut a = vec!["verify", "--data", &sample];
        a.extend_from_slice(extra);
        case(&a, names)
    };
    let eval = |extra: &[&str], names: &[&str]| {
        let mut a = vec![
            "eval",
            "--protocol",
            i.protocol.to_str().unwrap(),
            "--data",
            &sample,
            "--out",
            "out",
        ];
        a.extend_from_slice(extra);
        case(&a, names)
    };
    let mut cases = vec![
        train(&["--den-hidden", "0"], &["--den-hidden"]),
        train(&["--cls-hidden", "0"], &["--cls-hidden"]),
        train(&["--batch-size", "0"], &["--batch-size"]),
        train(&["--lr", "nan"], &["--lr"]),
        train(&["--lr=-1"], &["--lr"]),
        train(&["--sigmas", "nan"], &["--sigmas"]),
        train(&["--sigmas", "0"], &["--sigmas"]),
        train(&["--den-epochs=-1"], &["--den-epochs"]),
        // The message says "cannot hold out N validation examples" without the flag
        // (its wording is train.rs's, which this branch leaves alone).
        train(
            &["--validation", "1000000"],
            &["--validation", "validation examples"],
        ),
        train(
            &["--adversarial", "pgd", "--adv-eps", "nan"],
            &["--adv-eps"],
        ),
        train(&["--adversarial", "pgd", "--adv-eps=-1"], &["--adv-eps"]),
        train(
            &["--adversarial", "pgd", "--adv-step-size", "inf"],
            &["--adv-step-size"],
        ),
        train(
            &["--adversarial", "trades", "--trades-beta", "nan"],
            &["--trades-beta"],
        ),
        train(
            &["--adversarial", "pgd-max", "--adv-second-eps=-1"],
            &["--adv-second-eps"],
        ),
        // A method's own setting with another method would be ignored: refused.
        train(
            &["--adversarial", "pgd", "--trades-beta", "3"],
            &["--trades-beta applies only to --adversarial trades"],
        ),
        train(
            &["--adversarial", "trades", "--adv-second-eps", "1.5"],
            &["--adv-second-eps applies only to --adversarial pgd-max"],
        ),
        export(&["--sigma", "nan"], &["sigma"]),
        export(&["--sigma", "0"], &["sigma"]),
        export(&["--noise-samples", "0"], &["noise samples"]),
        export(&["--iters", "10001"], &["iterations"]),
        export(&["--eta=-1"], &["eta"]),
        export(&["--radius", "inf"], &["delta"]),
        export(&["--rho", "nan"], &["rho"]),
        case(
            &["export", "--run", &run, "--out", "out", "--side", "0"],
            &["--side"],
        ),
        case(
            &["export", "--run", &run, "--out", "out", "--side", "9"],
            &["--side"],
        ),
        case(
            &["export", "--run", &run, "--out", "out", "--side=-1"],
            &["--side"],
        ),
        verify(&["--eps", "nan"], &["--eps"]),
        verify(&["--eps=-1"], &["--eps"]),
        verify(&["--eps", "inf"], &["--eps"]),
        verify(&["--count", "0"], &["--count"]),
        verify(&["--count=-1"], &["--count"]),
        verify(&["--start", "1000000", "--count", "1"], &["--start"]),
        verify(&["--steps=-1"], &["--steps"]),
        verify(&["--sigma", "nan", "--count", "1"], &["sigma"]),
        case(&["demo", "--eps", "nan"], &["--eps"]),
        case(&["demo", "--eps=-1"], &["--eps"]),
        case(&["demo", "--count", "0"], &["--count"]),
        case(&["demo", "--count", "300"], &["--count"]),
        case(&["demo", "--start", "256"], &["--start"]),
        case(
            &["demo", "--start", &usize::MAX.to_string(), "--count", "2"],
            &["--start"],
        ),
        case(&["demo", "--steps=-1"], &["--steps"]),
        eval(&["--count", "0"], &["--count", "images"]),
        eval(&["--start", "1000000"], &["--start"]),
        eval(&["--sigma", "nan"], &["sigma"]),
        eval(&["--iters", "10001"], &["iterations"]),
        case(
            &[
                "fixtures",
                "--run",
                &run,
                "--data",
                &sample,
                "--out",
                "out",
                "--tune-images",
                "0",
            ],
            &["--tune-images"],
        ),
    ];
    for cmd in ["purify", "classify"] {
        cases.extend([
            purify(cmd, &["--count", "0"], &["--count"]),
            purify(cmd, &["--count=-1"], &["--count"]),
            purify(cmd, &["--start", "256"], &["--start"]),
            purify(cmd, &["--start", &usize::MAX.to_string()], &["--start"]),
            purify(cmd, &["--sigma", "nan"], &["sigma"]),
            purify(cmd, &["--iters", "10001"], &["iterations"]),
            purify(cmd, &["--noise-samples", "0"], &["noise samples"]),
            purify(cmd, &["--eta", "inf"], &["eta"]),
        ]);
    }
    // Numbers inside files: a protocol and a firmware log.
    let dir = tempfile::tempdir().unwrap();
    let protos = [
        ("nan-eps.toml", "images = 1\nlinf_eps = [nan]\nattacks = [\"transfer\"]\ndefences = [\"none\"]\n", "linf_eps"),
        ("neg-eps.toml", "images = 1\nlinf_eps = [-0.1]\nattacks = [\"transfer\"]\ndefences = [\"none\"]\n", "linf_eps"),
        ("zero-steps.toml", "images = 1\nsteps = 0\nlinf_eps = [0.3]\nattacks = [\"transfer\"]\ndefences = [\"none\"]\n", "steps"),
        ("zero-batch.toml", "images = 1\nbatch = 0\nlinf_eps = [0.3]\nattacks = [\"transfer\"]\ndefences = [\"none\"]\n", "batch"),
        ("neg-images.toml", "images = -1\nlinf_eps = [0.3]\nattacks = [\"transfer\"]\ndefences = [\"none\"]\n", "images"),
    ];
    for (name, text, word) in protos {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        cases.push(case(
            &[
                "eval",
                "--protocol",
                &p(&path),
                "--data",
                &sample,
                "--out",
                "out",
            ],
            &[word],
        ));
    }
    let logs = [
        (
            "huge-index.log",
            "image 99999999999999999999 label 7 purified 7 crc32 00000000 logits 00000000\n",
        ),
        (
            "neg-label.log",
            "image 0 label -1 purified 7 crc32 00000000 logits 00000000\n",
        ),
        (
            "bad-crc.log",
            "image 0 label 7 purified 7 crc32 nan logits 00000000\n",
        ),
        (
            "beyond-sample.log",
            "image 300 label 7 purified 7 crc32 00000000 logits 00000000\n",
        ),
    ];
    for (name, text) in logs {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        cases.push(case(
            &["firmware-check", "--log", &p(&path)],
            &[name, "line 1", "image"],
        ));
    }
    assert_all(cases);
}

#[test]
fn unwritable_outputs() {
    let i = inputs();
    let (data, run, sample, idx) = (p(&i.data), p(&i.run), p(&i.sample), p(&i.idx));
    let proc_out = "/proc/pursamere-no-such-dir/out".to_owned();
    let under_file = p(&i.file.join("out"));
    let mut cases = Vec::new();
    for out in [&proc_out, &under_file] {
        let names = [out.as_str(), "--out"];
        cases.extend([
            case(
                &[
                    "train",
                    "--data",
                    &data,
                    "--out",
                    out,
                    "--den-epochs",
                    "1",
                    "--cls-epochs",
                    "1",
                    "--validation",
                    "50",
                    "--quiet",
                ],
                &names,
            ),
            case(
                &["export", "--run", &run, "--out", out, "--side", "8"],
                &names,
            ),
            case(
                &[
                    "purify", "--idx", &idx, "--count", "1", "--iters", "1", "--out", out,
                ],
                &names,
            ),
            case(&["demo", "--out", out], &names),
            // The dense fixture is format version 1: there is something to upgrade.
            case(&["upgrade", "--model", &p(&i.psm), "--out", out], &names),
            case(
                &[
                    "eval",
                    "--protocol",
                    &p(&i.protocol),
                    "--data",
                    &sample,
                    "--out",
                    out,
                ],
                &names,
            ),
            case(
                &["fixtures", "--run", &run, "--data", &sample, "--out", out],
                &names,
            ),
        ]);
    }
    // The summary file eval adds its rows to, written after the work: the
    // evaluation's own (resumable) results in --out stay.
    let mut c = case(
        &[
            "eval",
            "--protocol",
            &p(&i.protocol),
            "--data",
            &sample,
            "--out",
            "out",
            "--summary",
            &proc_out,
            "--classifier",
            "standard",
        ],
        &[proc_out.as_str()],
    );
    c.may_leave = Some("out");
    cases.push(c);
    assert_all(cases);
}

#[test]
fn full_or_closed_standard_output() {
    let i = inputs();
    let summary = p(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/eval/summary.json"));
    let (idx, psm, sample, data, run) = (p(&i.idx), p(&i.psm), p(&i.sample), p(&i.data), p(&i.run));
    let commands: Vec<Vec<&str>> = vec![
        vec!["inspect", &psm],
        vec!["inspect", &psm, "--json"],
        vec!["classify", "--idx", &idx, "--count", "2"],
        vec!["classify", "--idx", &idx, "--count", "2", "--json"],
        vec![
            "purify", "--idx", &idx, "--count", "1", "--iters", "1", "--no-png",
        ],
        vec!["firmware-check", "--log", i.log.to_str().unwrap()],
        vec!["firmware-check", "--log", i.log.to_str().unwrap(), "--json"],
        vec![
            "verify", "--data", &sample, "--count", "2", "--steps", "1", "--iters", "1",
        ],
        vec!["demo", "--count", "2", "--steps", "1", "--out", "out"],
        vec![
            "eval",
            "--protocol",
            i.protocol.to_str().unwrap(),
            "--data",
            &sample,
            "--out",
            "out",
        ],
        vec!["export", "--run", &run, "--out", "out", "--side", "8"],
        vec!["summary", "--file", &summary],
        vec![
            "train",
            "--data",
            &data,
            "--out",
            "out",
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
            "--json",
        ],
        vec!["--help"],
        vec!["inspect", "--help"],
    ];
    let mut cases = Vec::new();
    for args in &commands {
        for stdout in [Stdout::Full, Stdout::Closed] {
            if stdout == Stdout::Full && !Path::new("/dev/full").exists() {
                continue;
            }
            let mut c = case(args, &["cannot write to standard output"]);
            c.stdout = stdout;
            cases.push(c);
        }
    }
    assert_all(cases);
}
