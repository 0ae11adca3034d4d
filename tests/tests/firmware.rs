//! The on-target check: builds `tests/firmware` for the Cortex-M4F, runs it under
//! QEMU (mps2-an386), and asserts that every purified image's digest and label equal
//! those of the core on the host (bit-identical), that the firmware fits the memory
//! budget, and that its footprint has not grown more than 5 % over
//! `tests/firmware/footprint.json`.
//!
//! Needs `qemu-system-arm` and the `thumbv7em-none-eabihf` target. Without them the
//! test says it was skipped and why — unless `PURSAMERE_REQUIRE_QEMU=1` (set by CI),
//! which turns a missing tool into a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSection};
use pursamere_core::{digest_f32, Model};
use pursamere_trainer::data::{load_mnist_dir, Split};

const FLASH_BUDGET: u64 = 1024 * 1024;
const RAM_BUDGET: u64 = 64 * 1024;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn missing_tool() -> Option<String> {
    if Command::new("qemu-system-arm")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("qemu-system-arm is not installed (Debian package qemu-system-arm)".into());
    }
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match targets {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("thumbv7em-none-eabihf") => None,
        _ => Some("the thumbv7em-none-eabihf target is not installed (rustup target add thumbv7em-none-eabihf)".into()),
    }
}

/// Builds and runs the firmware; returns its console output.
fn run_firmware(dir: &Path) -> String {
    let clean = |c: &mut Command| {
        // The outer `cargo test` must not leak its settings into the inner build.
        for v in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "PURSAMERE_FW_ITERS",
            "PURSAMERE_FW_NOISE_SAMPLES",
        ] {
            c.env_remove(v);
        }
    };
    let mut build = Command::new("cargo");
    build.args(["build", "--release"]).current_dir(dir);
    clean(&mut build);
    let st = build.status().expect("run cargo build for the firmware");
    assert!(st.success(), "firmware build failed");
    let mut run = Command::new("cargo");
    run.args(["run", "--release", "--quiet"]).current_dir(dir);
    clean(&mut run);
    let out = run.output().expect("run the firmware under QEMU");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "firmware exited with {:?}:\n{text}",
        out.status
    );
    text
}

fn value(log: &str, key: &str) -> u64 {
    log.lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim().parse::<u64>().expect(key))
        })
        .unwrap_or_else(|| panic!("`{key}` missing from the firmware output:\n{log}"))
}

#[test]
fn firmware_under_qemu_is_bit_identical_with_host_and_within_budget() {
    if let Some(why) = missing_tool() {
        if std::env::var("PURSAMERE_REQUIRE_QEMU").is_ok_and(|v| v == "1") {
            panic!("PURSAMERE_REQUIRE_QEMU=1 but {why}");
        }
        eprintln!("SKIPPED firmware_under_qemu: {why}");
        return;
    }
    let dir = root().join("tests/firmware");
    let log = run_firmware(&dir);
    // The closing line announces the image count (firmware-check fails a log without it).
    assert!(log.contains("done ok 16 images"), "{log}");

    // Host side: the same 16 images through the core.
    let bytes = std::fs::read(root().join("fixtures/mnist.psm")).unwrap();
    let model = Model::parse(&bytes).unwrap();
    let sample = load_mnist_dir(&root().join("fixtures/mnist-sample"), Split::Test).unwrap();
    let cfg = model.purifier_config();
    let mut scratch = vec![0.0; model.scratch_len_fast()];
    let mut logits = vec![0.0; 10];
    let mut out = vec![0.0; 784];
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("image ")).collect();
    assert_eq!(lines.len(), 16, "{log}");
    for (i, line) in lines.iter().enumerate() {
        model
            .purify(&sample.image_f32(i).unwrap(), &cfg, &mut out, &mut scratch)
            .unwrap();
        let label = model.classify(&out, &mut logits, &mut scratch).unwrap();
        let want = format!(
            "image {i} label {} purified {label} crc32 {:08x}",
            sample.labels[i],
            digest_f32(&out)
        );
        assert_eq!(*line, want, "firmware and host differ");
    }

    // Footprint.
    let elf =
        std::fs::read(dir.join("target/thumbv7em-none-eabihf/release/pursamere-firmware")).unwrap();
    let obj = object::File::parse(&*elf).unwrap();
    let size = |name: &str| obj.section_by_name(name).map_or(0, |s| s.size());
    let text = size(".vector_table") + size(".text");
    let (rodata, data, bss) = (
        size(".rodata"),
        size(".data"),
        size(".bss") + size(".uninit"),
    );
    let stack = value(&log, "stack_bytes");
    let flash = text + rodata + data;
    let ram = data + bss + stack;
    eprintln!("footprint: text {text} rodata {rodata} data {data} bss {bss} stack {stack}; flash {flash} / {FLASH_BUDGET}, RAM {ram} / {RAM_BUDGET}");
    assert!(
        flash <= FLASH_BUDGET,
        "flash {flash} exceeds the 1 MiB budget"
    );
    assert!(ram <= RAM_BUDGET, "RAM {ram} exceeds the 64 KiB budget");

    let path = dir.join("footprint.json");
    let current = serde_json::json!({"text": text, "rodata": rodata, "data": data, "bss": bss, "stack": stack});
    if std::env::var("PURSAMERE_UPDATE_FOOTPRINT").is_ok_and(|v| v == "1") {
        let mut doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for k in ["text", "rodata", "data", "bss", "stack"] {
            doc[k] = current[k].clone();
        }
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
        return;
    }
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let e = |k: &str| expected[k].as_u64().unwrap();
    let (flash0, ram0) = (
        e("text") + e("rodata") + e("data"),
        e("data") + e("bss") + e("stack"),
    );
    assert!(
        flash * 100 <= flash0 * 105,
        "flash grew from {flash0} to {flash} bytes (> 5 %); if intended, update tests/firmware/footprint.json (PURSAMERE_UPDATE_FOOTPRINT=1)"
    );
    assert!(
        ram * 100 <= ram0 * 105,
        "RAM grew from {ram0} to {ram} bytes (> 5 %); if intended, update tests/firmware/footprint.json (PURSAMERE_UPDATE_FOOTPRINT=1)"
    );
}
