//! `pursamere firmware-check`: compares a log captured from the firmware (QEMU or a
//! real board) with the core on the host, bit for bit.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use pursamere_core::digest_f32;
use pursamere_trainer::data::dataset_from_idx_bytes;

use super::demo::{SAMPLE_IMAGES, SAMPLE_LABELS};
use super::images::{model_bytes, parse_model};
use super::read_file;

#[derive(Args, Debug)]
pub struct FirmwareCheckArgs {
    /// Log printed by the firmware (lines `image <i> label <l> purified <p> crc32 <hex>
    /// logits <hex>`).
    #[arg(long)]
    pub log: PathBuf,
    /// Model the firmware embeds (.psm, what `PURSAMERE_MODEL` was at build time);
    /// default: the shipped model. A log that names another model (its `model
    /// bytes … crc32 …` line) fails.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// IDX images the firmware embeds (`PURSAMERE_FW_IDX_IMAGES`, gzipped or raw);
    /// default: the shipped MNIST sample.
    #[arg(long, requires = "labels")]
    pub idx: Option<PathBuf>,
    /// IDX labels of --idx (`PURSAMERE_FW_IDX_LABELS`).
    #[arg(long, requires = "idx")]
    pub labels: Option<PathBuf>,
    /// Machine-readable output (one entry per image, the verdict and its reasons).
    #[arg(long)]
    pub json: bool,
}

/// One `image` line of a firmware log.
#[derive(Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Image index in the sample.
    pub index: usize,
    /// True label.
    pub label: usize,
    /// Label after purification.
    pub purified: usize,
    /// CRC-32 of the purified image's f32 bytes.
    pub crc32: u32,
    /// CRC-32 of the classifier's logits (f32 bytes) on the purified image: the
    /// classification bit for bit, not only its argmax.
    pub logits_crc32: u32,
}

/// How a firmware log ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Closing {
    /// `done ok <n> images`: the firmware ran `n` images.
    Ok(usize),
    /// `done error`: the firmware stopped on an error.
    Error,
    /// No closing line: the log is cut off (or from an old firmware).
    Missing,
}

/// A parsed firmware log.
#[derive(Debug)]
pub struct Log {
    /// The `image` lines.
    pub lines: Vec<LogLine>,
    /// The closing line.
    pub closing: Closing,
    /// `model bytes <n> crc32 <hex>`: the embedded model's length and stored CRC-32
    /// (absent from logs of older firmware).
    pub model: Option<(usize, u32)>,
    /// `config iters <K> noise_samples <M>`: the purifier settings the firmware ran.
    pub config: Option<(u32, u32)>,
}

/// Parses a firmware log: its `image` lines, its `model` and `config` lines and
/// its closing `done` line (other lines are ignored).
pub fn parse_log(text: &str) -> Result<Log> {
    let mut out = Vec::new();
    let mut closing = Closing::Missing;
    let mut model = None;
    let mut config = None;
    // A capture stopped mid-line ends without a newline: its last line is cut off.
    let cut_line = (!text.is_empty() && !text.ends_with('\n')).then(|| text.lines().count());
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"model") && f.get(1) == Some(&"bytes") {
            let bad = || {
                anyhow::anyhow!(
                    "line {}: `{line}` is not `model bytes <n> crc32 <hex>`",
                    n + 1
                )
            };
            let ["model", "bytes", len, "crc32", crc] = f[..] else {
                return Err(bad());
            };
            model = Some((
                len.parse().map_err(|_| bad())?,
                u32::from_str_radix(crc, 16).map_err(|_| bad())?,
            ));
            continue;
        }
        if f.first() == Some(&"config") {
            let bad = || {
                anyhow::anyhow!(
                    "line {}: `{line}` is not `config iters <K> noise_samples <M>`",
                    n + 1
                )
            };
            let ["config", "iters", k, "noise_samples", m] = f[..] else {
                return Err(bad());
            };
            config = Some((k.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?));
            continue;
        }
        if f.first() == Some(&"done") {
            closing = match f[1..] {
                ["ok", count, "images"] => Closing::Ok(count.parse().map_err(|_| {
                    anyhow::anyhow!("line {}: `{line}` is not `done ok <n> images`", n + 1)
                })?),
                ["error", ..] => Closing::Error,
                _ => bail!(
                    "line {}: `{line}` is not `done ok <n> images` or `done error`",
                    n + 1
                ),
            };
            continue;
        }
        if f.first() != Some(&"image")
            || f.get(3) == Some(&"purify")
            || f.get(3) == Some(&"classify")
        {
            continue;
        }
        let bad = || {
            if cut_line == Some(n + 1) {
                anyhow::anyhow!(
                    "line {}: `{line}` is cut off: the log ends in the middle of an image line \
                     (the capture stopped before the firmware finished)",
                    n + 1
                )
            } else {
                anyhow::anyhow!(
                    "line {}: `{line}` is not `image <i> label <l> purified <p> crc32 <hex> logits <hex>` \
                     (a firmware from before the logits digest: rebuild it)",
                    n + 1
                )
            }
        };
        if f.len() != 10
            || f[2] != "label"
            || f[4] != "purified"
            || f[6] != "crc32"
            || f[8] != "logits"
        {
            return Err(bad());
        }
        out.push(LogLine {
            index: f[1].parse().map_err(|_| bad())?,
            label: f[3].parse().map_err(|_| bad())?,
            purified: f[5].parse().map_err(|_| bad())?,
            crc32: u32::from_str_radix(f[7], 16).map_err(|_| bad())?,
            logits_crc32: u32::from_str_radix(f[9], 16).map_err(|_| bad())?,
        });
    }
    Ok(Log {
        lines: out,
        closing,
        model,
        config,
    })
}

/// Why a log is incomplete: images missing or repeated, closing line absent or
/// announcing another count, or the firmware's own error. Empty when complete.
pub fn incompleteness(log: &Log) -> Vec<String> {
    let mut why = Vec::new();
    let n = match log.closing {
        Closing::Ok(n) => n,
        Closing::Error => {
            why.push("the firmware reported an error (`done error`)".to_owned());
            log.lines.len()
        }
        Closing::Missing => {
            why.push(
                "the log lacks the firmware's closing line `done ok <n> images`: it is cut off, or the firmware stopped early"
                    .to_owned(),
            );
            log.lines.len()
        }
    };
    // By index, not a vector of `n` counters: `n` is whatever the log's closing
    // line says, and a corrupt one may say 2^62.
    let mut count: std::collections::BTreeMap<usize, usize> = Default::default();
    for l in &log.lines {
        *count.entry(l.index).or_default() += 1;
    }
    let extra: Vec<usize> = count.range(n..).map(|(&i, _)| i).collect();
    let seen = count.range(..n).count();
    let missing = listed(
        (0..n).filter(|i| !count.contains_key(i)).take(LISTED + 1),
        n - seen,
    );
    let twice = listed(
        count
            .iter()
            .filter(|&(_, &c)| c > 1)
            .map(|(&i, _)| i)
            .take(LISTED + 1),
        count.values().filter(|&&c| c > 1).count(),
    );
    if matches!(log.closing, Closing::Ok(_)) && log.lines.len() != n {
        why.push(format!(
            "the firmware ran {n} images but the log has {} image lines",
            log.lines.len()
        ));
    }
    if log.lines.is_empty() {
        why.push("the log has no image lines".to_owned());
    }
    if !missing.is_empty() {
        why.push(format!("images missing: {missing}"));
    }
    if !twice.is_empty() {
        why.push(format!("images reported more than once: {twice}"));
    }
    if !extra.is_empty() && matches!(log.closing, Closing::Ok(_)) {
        let len = extra.len();
        why.push(format!(
            "image indices beyond the {n} the firmware ran: {}",
            listed(extra.into_iter().take(LISTED + 1), len)
        ));
    }
    why
}

/// How many image indices a reason lists before it gives only the count.
const LISTED: usize = 20;

/// "3, 4, 7" — or "3, 4, 7, … (9 in all)" when `all` exceeds [`LISTED`]; empty
/// when `all` is 0. `first` yields at most `LISTED + 1` indices.
fn listed(first: impl Iterator<Item = usize>, all: usize) -> String {
    let mut shown: Vec<String> = first.take(LISTED).map(|i| i.to_string()).collect();
    if all > LISTED {
        shown.push(format!("… ({all} in all)"));
    }
    shown.join(", ")
}

/// The CRC-32 a `.psm` file stores in its last four bytes (what the firmware
/// prints on its `model` line).
pub fn stored_crc(file: &[u8]) -> u32 {
    file.len()
        .checked_sub(4)
        .and_then(|i| file.get(i..))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes)
}

pub fn run(a: FirmwareCheckArgs) -> Result<i32> {
    let text = String::from_utf8_lossy(&read_file(&a.log)?).into_owned();
    let log = parse_log(&text).with_context(|| format!("reading {}", a.log.display()))?;
    let lines = &log.lines;
    if lines.is_empty() && log.closing == Closing::Missing {
        bail!(
            "{} has no `image` lines; is it a firmware log?",
            a.log.display()
        );
    }
    let bytes = model_bytes(&a.model)?;
    let model = parse_model(&bytes, &a.model)?;
    let model_name = a
        .model
        .as_ref()
        .map_or("the shipped model".to_owned(), |p| p.display().to_string());
    if let Some((len, crc)) = log.model {
        let ours = (bytes.len(), stored_crc(&bytes));
        if (len, crc) != ours {
            bail!(
                "{} was made by a firmware embedding a model of {len} bytes with CRC-32 {crc:08x}, \
                 but {model_name} has {} bytes and CRC-32 {:08x}: pass the model the firmware was built with \
                 (PURSAMERE_MODEL) as --model",
                a.log.display(),
                ours.0,
                ours.1
            );
        }
    }
    let sample = match (&a.idx, &a.labels) {
        (Some(images), Some(labels)) => dataset_from_idx_bytes(
            &images.display().to_string(),
            &read_file(images)?,
            &read_file(labels)?,
            model.num_classes(),
        )
        .with_context(|| format!("reading {} and {}", images.display(), labels.display()))?,
        _ => dataset_from_idx_bytes("fixtures/mnist-sample", SAMPLE_IMAGES, SAMPLE_LABELS, 10)?,
    };
    if sample.channels * sample.rows * sample.cols != model.input_len() {
        bail!(
            "the images are {} × {} × {}, but {model_name} takes {} values per image; \
             pass the images the firmware embeds (PURSAMERE_FW_IDX_IMAGES) as --idx and --labels",
            sample.channels,
            sample.rows,
            sample.cols,
            model.input_len()
        );
    }
    // The settings the firmware ran (it may override K and M at build time).
    let mut cfg = model.purifier_config();
    if let Some((k, m)) = log.config {
        cfg.iters = k;
        cfg.noise_samples = m;
        cfg.validate()
            .with_context(|| format!("the `config` line of {}", a.log.display()))?;
    }
    let mut scratch = vec![0.0; super::fast_scratch_len(&model, &cfg)];
    let mut logits = vec![0.0; model.num_classes()];
    let mut out = vec![0.0; model.input_len()];
    let mut mismatches = 0;
    let mut rows = Vec::new();
    for l in lines {
        let Some(x) = sample.image_f32(l.index) else {
            bail!(
                "image index {} is outside the {} sample images",
                l.index,
                sample.len()
            );
        };
        model.purify(&x, &cfg, &mut out, &mut scratch)?;
        let host_label = model.classify(&out, &mut logits, &mut scratch)?;
        let host_crc = digest_f32(&out);
        let host_logits = digest_f32(&logits);
        let ok = host_crc == l.crc32
            && host_logits == l.logits_crc32
            && host_label == l.purified
            && usize::from(sample.labels[l.index]) == l.label;
        mismatches += usize::from(!ok);
        rows.push((l, host_crc, host_logits, host_label, ok));
    }
    let incomplete = incompleteness(&log);
    let passed = mismatches == 0 && incomplete.is_empty();
    if a.json {
        let images: Vec<_> = rows
            .iter()
            .map(|(l, host_crc, host_logits, host_label, ok)| {
                serde_json::json!({
                    "image": l.index, "label": l.label,
                    "board_crc32": format!("{:08x}", l.crc32), "host_crc32": format!("{host_crc:08x}"),
                    "board_logits_crc32": format!("{:08x}", l.logits_crc32),
                    "host_logits_crc32": format!("{host_logits:08x}"),
                    "board_purified_label": l.purified, "host_purified_label": host_label,
                    "same": ok,
                })
            })
            .collect();
        let report = serde_json::json!({
            "log": a.log.display().to_string(),
            "model": model_name,
            "iters": cfg.iters,
            "noise_samples": cfg.noise_samples,
            "images": images,
            "different": mismatches,
            "incomplete": incomplete,
            "passed": passed,
        });
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(if passed { 0 } else { 1 });
    }
    outln!(
        "{:>5} {:>5} {:>12} {:>12} {:>13} {:>13} {:>10} {:>10}  result",
        "image",
        "label",
        "board crc32",
        "host crc32",
        "board logits",
        "host logits",
        "board",
        "host"
    )?;
    for (l, host_crc, host_logits, host_label, ok) in &rows {
        outln!(
            "{:>5} {:>5} {:>12} {:>12} {:>13} {:>13} {:>10} {:>10}  {}",
            l.index,
            l.label,
            format!("{:08x}", l.crc32),
            format!("{host_crc:08x}"),
            format!("{:08x}", l.logits_crc32),
            format!("{host_logits:08x}"),
            l.purified,
            host_label,
            if *ok { "same" } else { "DIFFERENT" }
        )?;
    }
    if passed {
        outln!(
            "PASS: {} images bit-identical with the host ({model_name}, K {}, M {})",
            lines.len(),
            cfg.iters,
            cfg.noise_samples
        )?;
        return Ok(0);
    }
    if mismatches > 0 {
        outln!(
            "FAIL: {mismatches} of {} images differ from the host",
            lines.len()
        )?;
    }
    for why in &incomplete {
        outln!("FAIL: incomplete log: {why}")?;
    }
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::demo::SHIPPED_PSM;
    use pursamere_core::Model;

    /// A log of the first `n` sample images as a firmware running the shipped
    /// model with K = `k`, M = `m` prints it, with its `model` and `config` lines.
    fn host_log(n: usize, k: u32, m: u32) -> String {
        let model = Model::parse(SHIPPED_PSM).unwrap();
        let sample = dataset_from_idx_bytes("sample", SAMPLE_IMAGES, SAMPLE_LABELS, 10).unwrap();
        let mut cfg = model.purifier_config();
        cfg.iters = k;
        cfg.noise_samples = m;
        let mut scratch = vec![0.0; crate::cmd::fast_scratch_len(&model, &cfg)];
        let mut out = vec![0.0; 784];
        let mut logits = vec![0.0; 10];
        let mut log = format!(
            "model bytes {} crc32 {:08x}\nconfig iters {k} noise_samples {m}\n",
            SHIPPED_PSM.len(),
            stored_crc(SHIPPED_PSM)
        );
        for i in 0..n {
            let x = sample.image_f32(i).unwrap();
            model.purify(&x, &cfg, &mut out, &mut scratch).unwrap();
            let l = model.classify(&out, &mut logits, &mut scratch).unwrap();
            log += &format!(
                "image {i} label {} purified {l} crc32 {:08x} logits {:08x}\n",
                sample.labels[i],
                digest_f32(&out),
                digest_f32(&logits)
            );
        }
        log + &format!("done ok {n} images\n")
    }

    fn check(log: &str, model: Option<PathBuf>) -> Result<i32> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("board.log");
        std::fs::write(&path, log).unwrap();
        run(FirmwareCheckArgs {
            log: path,
            model,
            idx: None,
            labels: None,
            json: true,
        })
    }

    /// A corrupt closing count neither exhausts memory nor lists 2^62 indices.
    #[test]
    fn a_huge_closing_count_is_an_incomplete_log() {
        let log = parse_log(
            "image 0 label 7 purified 7 crc32 0 logits 0\n\
             image 0 label 7 purified 7 crc32 0 logits 0\n\
             done ok 4611686018427387904 images\n",
        )
        .unwrap();
        let why = incompleteness(&log).join("; ");
        assert!(
            why.contains("images missing: 1, 2, 3")
                && why.contains("… (4611686018427387903 in all)")
                && why.contains("more than once: 0")
                && !why.contains(", 22,"),
            "{why}"
        );
        let log = parse_log(
            "image 5 label 7 purified 7 crc32 0 logits 0\n\
             image 9 label 7 purified 7 crc32 0 logits 0\n\
             done ok 2 images\n",
        )
        .unwrap();
        let why = incompleteness(&log).join("; ");
        assert!(
            why.contains("images missing: 0, 1")
                && why.contains("beyond the 2 the firmware ran: 5, 9"),
            "{why}"
        );
    }

    /// A capture stopped in the middle of a line says so.
    #[test]
    fn a_cut_off_line_is_named() {
        let full = "image 0 label 7 purified 7 crc32 0 logits 0\n";
        let err = parse_log(&format!("{full}image 1 label 2 purif"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("cut off"), "{err}");
        let err = parse_log(&format!("{full}image 1 label 2 purif\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rebuild"), "{err}");
    }

    #[test]
    fn parses_the_model_and_config_lines() {
        let log =
            parse_log("model bytes 12 crc32 0000abcd\nconfig iters 3 noise_samples 2\n").unwrap();
        assert_eq!(log.model, Some((12, 0xabcd)));
        assert_eq!(log.config, Some((3, 2)));
        assert!(parse_log("model bytes twelve crc32 00\n").is_err());
        assert!(parse_log("config iters 3\n").is_err());
        // Error lines of the firmware are not model lines.
        let log = parse_log("model error: bad magic\n").unwrap();
        assert_eq!(log.model, None);
    }

    #[test]
    fn the_logs_purifier_settings_are_the_ones_checked() {
        // K = 2, M = 1 (a build with PURSAMERE_FW_ITERS=2 PURSAMERE_FW_NOISE_SAMPLES=1).
        let log = host_log(3, 2, 1);
        assert_eq!(check(&log, None).unwrap(), 0);
        // Without the config line the file's K = 10, M = 4 are used, and the
        // images differ.
        let without: String = log
            .lines()
            .filter(|l| !l.starts_with("config"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(check(&without, None).unwrap(), 1);
    }

    #[test]
    fn the_logits_are_checked_bit_for_bit_and_an_old_line_is_refused() {
        let log = host_log(2, 0, 1);
        assert_eq!(check(&log, None).unwrap(), 0);
        // One bit of one image's logits digest changed: the labels still agree.
        let line = log.lines().find(|l| l.starts_with("image 1 ")).unwrap();
        let (head, hex) = line.rsplit_once(' ').unwrap();
        let flipped = format!("{head} {:08x}", u32::from_str_radix(hex, 16).unwrap() ^ 1);
        assert_eq!(check(&log.replace(line, &flipped), None).unwrap(), 1);
        // A line without the logits digest (an older firmware) is refused, naming
        // the format.
        let (old, _) = head.rsplit_once(" logits").unwrap();
        let err = check(&log.replace(line, old), None).unwrap_err();
        assert!(format!("{err:#}").contains("logits <hex>"), "{err:#}");
    }

    #[test]
    fn a_log_of_another_model_is_refused_with_the_way_out() {
        let log = host_log(1, 0, 1).replacen(
            &format!("crc32 {:08x}", stored_crc(SHIPPED_PSM)),
            "crc32 12345678",
            1,
        );
        let err = check(&log, None).unwrap_err().to_string();
        assert!(err.contains("12345678") && err.contains("--model"), "{err}");
    }
}
