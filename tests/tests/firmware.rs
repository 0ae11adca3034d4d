//! The on-target check: builds `tests/firmware` for the Cortex-M4F once per model —
//! the shipped default `fixtures/mnist-robust-int8.psm` (int8 activations: the DSP
//! kernels of `pursamere-m4`), its float form `fixtures/mnist-robust.psm`, the dense
//! purifier model `fixtures/mnist.psm`, the trained convolutional pair
//! `fixtures/mnist-conv.psm` and the random-weight `fixtures/tiny-conv.psm` (strided
//! convs, ×2 upsampling, residual) — runs each
//! under QEMU (mps2-an386), and asserts for each that every purified image's digest,
//! its logits' digest and its label equal those of the core on the host
//! (bit-identical), that the firmware
//! fits the memory budget, that its footprint has not grown more than 5 % over its
//! entry in `tests/firmware/footprint.json`, and that its executed instructions per
//! image have not grown more than 5 % over its entry in `tests/firmware/cost.json`.
//!
//! Needs `qemu-system-arm` and the `thumbv7em-none-eabihf` target. Without them the
//! test says it was skipped and why — unless `PURSAMERE_REQUIRE_QEMU=1` (set by CI),
//! which turns a missing tool into a failure.
//!
//! After an intended change: `PURSAMERE_UPDATE_FOOTPRINT=1` rewrites the footprint
//! entries, `PURSAMERE_UPDATE_COST=1` the cost entries
//! (`cargo test -p pursamere-tests --test firmware`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use object::{Object, ObjectSection};
use pursamere_core::{digest_f32, Model};
use pursamere_trainer::data::{load_mnist_dir, Split};

const FLASH_BUDGET: u64 = 1024 * 1024;
const RAM_BUDGET: u64 = 64 * 1024;
/// Images the firmware runs by default (build.rs).
const IMAGES: usize = 16;
/// Instructions per SysTick tick under `-icount shift=0` (one instruction = 1 ns,
/// SysTick at the MPS2 board's 25 MHz).
const INSTRUCTIONS_PER_TICK: u64 = 40;

/// Serialises the read–modify–write of the shared JSON files between the tests.
static FILES: Mutex<()> = Mutex::new(());

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

/// Builds the firmware with `model` (a path from the repository root) in its own
/// target directory, and runs it; returns its console output and the ELF's path.
fn run_firmware(dir: &Path, model: &str, key: &str) -> (String, PathBuf) {
    let target = dir.join("target/check").join(key);
    let setup = |c: &mut Command| {
        // The outer `cargo test` must not leak its settings into the inner build.
        for v in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "PURSAMERE_MODEL",
            "PURSAMERE_FW_IMAGES",
            "PURSAMERE_FW_IDX_IMAGES",
            "PURSAMERE_FW_IDX_LABELS",
            "PURSAMERE_FW_ITERS",
            "PURSAMERE_FW_NOISE_SAMPLES",
        ] {
            c.env_remove(v);
        }
        c.env("PURSAMERE_MODEL", root().join(model))
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(dir);
    };
    let mut build = Command::new("cargo");
    build.args(["build", "--release"]);
    setup(&mut build);
    let st = build.status().expect("run cargo build for the firmware");
    assert!(st.success(), "firmware build with {model} failed");
    let mut run = Command::new("cargo");
    run.args(["run", "--release", "--quiet"]);
    setup(&mut run);
    let out = run.output().expect("run the firmware under QEMU");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "firmware with {model} exited with {:?}:\n{text}",
        out.status
    );
    (
        text,
        target.join("thumbv7em-none-eabihf/release/pursamere-firmware"),
    )
}

fn value(log: &str, key: &str) -> u64 {
    log.lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim().parse::<u64>().expect(key))
        })
        .unwrap_or_else(|| panic!("`{key}` missing from the firmware output:\n{log}"))
}

/// Reads a JSON file of per-model entries, or rewrites `key`'s entry with `current`
/// when `update` is set; returns the committed entry.
fn entry(path: &Path, key: &str, current: &serde_json::Value, update: bool) -> serde_json::Value {
    let _guard = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let mut doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if update {
        doc["models"][key] = current.clone();
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
    }
    let e = doc["models"][key].clone();
    assert!(
        e.is_object(),
        "{} has no entry for {key}; add it with the update variable the file's `about` names",
        path.display()
    );
    e
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// What one model measured on the device: flash and RAM bytes, instructions per image.
struct Measured {
    flash: u64,
    ram: u64,
    instructions: u64,
}

/// The whole check for one model (a path from the repository root); `None` when
/// QEMU or the target is missing (and PURSAMERE_REQUIRE_QEMU is not set).
fn check(model_path: &str) -> Option<Measured> {
    if let Some(why) = missing_tool() {
        if flag("PURSAMERE_REQUIRE_QEMU") {
            panic!("PURSAMERE_REQUIRE_QEMU=1 but {why}");
        }
        eprintln!("SKIPPED firmware_under_qemu ({model_path}): {why}");
        return None;
    }
    let key = Path::new(model_path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let dir = root().join("tests/firmware");
    let (log, elf) = run_firmware(&dir, model_path, key.trim_end_matches(".psm"));
    // The closing line announces the image count (firmware-check fails a log without it).
    assert!(log.contains(&format!("done ok {IMAGES} images")), "{log}");

    // Host side: the same images through the core.
    let bytes = std::fs::read(root().join(model_path)).unwrap();
    let model = Model::parse(&bytes).unwrap();
    let cfg = model.purifier_config();
    // The firmware names the model it embeds and the settings it ran.
    let crc = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
    assert!(
        log.lines()
            .any(|l| l == format!("model bytes {} crc32 {crc:08x}", bytes.len())),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l
            == format!(
                "config iters {} noise_samples {}",
                cfg.iters, cfg.noise_samples
            )),
        "{log}"
    );
    let sample = load_mnist_dir(&root().join("fixtures/mnist-sample"), Split::Test).unwrap();
    let mut scratch = vec![0.0; model.scratch_len_fast()];
    let mut logits = vec![0.0; model.num_classes()];
    let mut out = vec![0.0; model.input_len()];
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("image ")).collect();
    assert_eq!(lines.len(), IMAGES, "{log}");
    let mut moved = 0;
    // The host's SIMD kernels (chosen for this CPU at run time) must give the
    // device's bits too.
    let kernels = pursamere_accel::Accel::detect().prepare(&model);
    let mut fast = vec![0.0; model.input_len()];
    for (i, line) in lines.iter().enumerate() {
        let x = sample.image_f32(i).unwrap();
        model.purify(&x, &cfg, &mut out, &mut scratch).unwrap();
        model
            .purify_with(&kernels, &x, &cfg, &mut fast, &mut scratch)
            .unwrap();
        assert_eq!(
            digest_f32(&fast),
            digest_f32(&out),
            "{:?} kernels and the core differ ({model_path})",
            kernels.level()
        );
        moved += usize::from(out != x);
        let label = model.classify(&out, &mut logits, &mut scratch).unwrap();
        let want = format!(
            "image {i} label {} purified {label} crc32 {:08x} logits {:08x}",
            sample.labels[i],
            digest_f32(&out),
            digest_f32(&logits)
        );
        assert_eq!(*line, want, "firmware and host differ ({model_path})");
    }
    // The comparison is not vacuous: purification changed the images (or, with the
    // purifier off, K = 0, left every one exactly as it was).
    if cfg.iters > 0 {
        assert!(moved > 0, "purification moved no image ({model_path})");
    } else {
        assert_eq!(moved, 0, "K = 0 moved an image ({model_path})");
    }

    // Footprint.
    let elf = std::fs::read(&elf).unwrap();
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
    eprintln!("footprint {key}: text {text} rodata {rodata} data {data} bss {bss} stack {stack}; flash {flash} / {FLASH_BUDGET}, RAM {ram} / {RAM_BUDGET}");
    assert!(
        flash <= FLASH_BUDGET,
        "flash {flash} exceeds the 1 MiB budget ({key})"
    );
    assert!(
        ram <= RAM_BUDGET,
        "RAM {ram} exceeds the 64 KiB budget ({key})"
    );
    let current = serde_json::json!({"text": text, "rodata": rodata, "data": data, "bss": bss, "stack": stack});
    let expected = entry(
        &dir.join("footprint.json"),
        &key,
        &current,
        flag("PURSAMERE_UPDATE_FOOTPRINT"),
    );
    let e = |k: &str| expected[k].as_u64().unwrap();
    let (flash0, ram0) = (
        e("text") + e("rodata") + e("data"),
        e("data") + e("bss") + e("stack"),
    );
    assert!(
        flash * 100 <= flash0 * 105,
        "{key}: flash grew from {flash0} to {flash} bytes (> 5 %); if intended, update tests/firmware/footprint.json (PURSAMERE_UPDATE_FOOTPRINT=1)"
    );
    assert!(
        ram * 100 <= ram0 * 105,
        "{key}: RAM grew from {ram0} to {ram} bytes (> 5 %); if intended, update tests/firmware/footprint.json (PURSAMERE_UPDATE_FOOTPRINT=1)"
    );

    // Cost: executed instructions per image (purify + classify), deterministic
    // under `-icount shift=0` (the same build gives the same count on every run).
    let instructions = value(&log, "systick_ticks_per_image") * INSTRUCTIONS_PER_TICK;
    eprintln!(
        "cost {key}: {instructions} instructions per image (K {}, M {})",
        cfg.iters, cfg.noise_samples
    );
    // The noise generator alone (`noise_ticks <t> values <n> first <bits>`): the
    // first value must be the host's, and its cost is tracked like the whole.
    let noise_line = log
        .lines()
        .find_map(|l| l.strip_prefix("noise_ticks "))
        .unwrap_or_else(|| panic!("no noise_ticks line in the firmware output:\n{log}"));
    let f: Vec<&str> = noise_line.split_whitespace().collect();
    let [t, "values", n, "first", first] = f[..] else {
        panic!("bad noise_ticks line: {noise_line}")
    };
    let (noise_ticks, values): (u64, u64) = (t.parse().unwrap(), n.parse().unwrap());
    assert_eq!(
        first,
        format!("{:08x}", cfg.noise.sample(cfg.seed, 0, 0).to_bits()),
        "{key}: the firmware's first noise value differs from the host's"
    );
    let noise_per_value = noise_ticks * INSTRUCTIONS_PER_TICK / values;
    eprintln!(
        "cost {key}: {noise_per_value} instructions per noise value ({})",
        cfg.noise.name()
    );
    let current = serde_json::json!({
        "iters": cfg.iters,
        "noise_samples": cfg.noise_samples,
        "instructions_per_image": instructions,
        "noise_generator": cfg.noise.name(),
        "noise_instructions_per_value": noise_per_value,
    });
    let expected = entry(
        &dir.join("cost.json"),
        &key,
        &current,
        flag("PURSAMERE_UPDATE_COST"),
    );
    assert_eq!(
        (
            expected["iters"].as_u64(),
            expected["noise_samples"].as_u64()
        ),
        (Some(u64::from(cfg.iters)), Some(u64::from(cfg.noise_samples))),
        "{key}: tests/firmware/cost.json was measured with other purifier settings; update it (PURSAMERE_UPDATE_COST=1)"
    );
    let cost0 = expected["instructions_per_image"].as_u64().unwrap();
    assert!(
        instructions * 100 <= cost0 * 105,
        "{key}: instructions per image grew from {cost0} to {instructions} (> 5 %); if intended, update tests/firmware/cost.json (PURSAMERE_UPDATE_COST=1)"
    );
    if let Some(noise0) = expected["noise_instructions_per_value"].as_u64() {
        assert_eq!(
            expected["noise_generator"].as_str(),
            Some(cfg.noise.name()),
            "{key}: tests/firmware/cost.json was measured with another noise generator; update it (PURSAMERE_UPDATE_COST=1)"
        );
        assert!(
            noise_per_value * 100 <= noise0 * 105,
            "{key}: instructions per noise value grew from {noise0} to {noise_per_value} (> 5 %); if intended, update tests/firmware/cost.json (PURSAMERE_UPDATE_COST=1)"
        );
    }
    if instructions * 100 < cost0 * 95 {
        eprintln!("note: {key} got more than 5 % cheaper ({cost0} -> {instructions} instructions per image); tighten tests/firmware/cost.json with PURSAMERE_UPDATE_COST=1");
    }
    Some(Measured {
        flash,
        ram,
        instructions,
    })
}

/// The shipped system's device budget (the device issue): flash ≤ 256 KiB, RAM ≤
/// 64 KiB, purify + classify ≤ 0.5 s at 168 MHz — read here as ≤ 84 M executed
/// instructions, a lower bound on cycles (BENCHMARKS.md has the cycle model).
const SHIPPED_FLASH_BUDGET: u64 = 256 * 1024;
const SHIPPED_INSTRUCTION_BUDGET: u64 = 84_000_000;

#[test]
fn shipped_default_under_qemu_is_bit_identical_and_within_the_device_budget() {
    // The shipped default: the robust CNN with its classifier in int8-activation form
    // (`pursamere int8`). The firmware runs its layers on the M4's SMLAD/SXTB16
    // `asm!` kernels (`pursamere-m4`), the host on the core's portable integer
    // kernels; the digests must agree.
    let Some(m) = check("fixtures/mnist-robust-int8.psm") else {
        return;
    };
    assert!(
        m.flash <= SHIPPED_FLASH_BUDGET,
        "the shipped default needs {} bytes of flash (budget {SHIPPED_FLASH_BUDGET})",
        m.flash
    );
    assert!(
        m.ram <= RAM_BUDGET,
        "the shipped default needs {} bytes of RAM",
        m.ram
    );
    assert!(
        m.instructions <= SHIPPED_INSTRUCTION_BUDGET,
        "the shipped default executes {} instructions per image (budget {SHIPPED_INSTRUCTION_BUDGET})",
        m.instructions
    );
}

#[test]
fn float_form_of_the_shipped_default_under_qemu_is_bit_identical_and_within_budget() {
    // The same network with float activations (the shipped default until the tenth
    // session; `pursamere int8` is made from it): the float kernels of the core.
    let Some(m) = check("fixtures/mnist-robust.psm") else {
        return;
    };
    assert!(
        m.flash <= SHIPPED_FLASH_BUDGET,
        "{} bytes of flash",
        m.flash
    );
    assert!(m.ram <= RAM_BUDGET, "{} bytes of RAM", m.ram);
}

#[test]
fn dense_purifier_model_under_qemu_is_bit_identical_with_host_and_within_budget() {
    // The earlier shipped system (MLP denoiser + MLP classifier, K = 10, M = 4).
    check("fixtures/mnist.psm");
}

#[test]
fn trained_conv_model_under_qemu_is_bit_identical_with_host_and_within_budget() {
    // Trained conv denoiser and conv classifier sized for the 64 KiB board
    // (fixtures/README.md says how they were trained).
    check("fixtures/mnist-conv.psm");
}

#[test]
fn conv_model_under_qemu_is_bit_identical_with_host_and_within_budget() {
    check("fixtures/tiny-conv.psm");
}
