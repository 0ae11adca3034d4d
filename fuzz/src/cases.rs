//! One function per fuzz target: each takes arbitrary bytes and must return without
//! panicking. Shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`) and the
//! corpus replay test (`tests/tests/fuzz_corpus.rs`), which both provide
//! `crate::data` (the trainer's `data` module).

use pursamere_core::{Model, PurifierConfig, CRC_LEN, PREFIX_LEN};

/// Largest scratch (in floats) a fuzzed model may ask for; bigger models are parsed
/// but not run (memory, not correctness, would be tested).
const MAX_SCRATCH: usize = 1 << 22;
/// Largest nominal multiply–accumulate count of one run (keeps every input fast).
const MAX_MACS: u64 = 4_000_000;

/// `parse_and_run`: [`Model::parse`] on the bytes as they are, then on a copy whose
/// payload length and CRC are made consistent (so mutations get past the checksum);
/// every model that parses is run through `classify`, `denoise` and `purify` with
/// its own purifier settings capped to at most 2 iterations and 2 noise samples.
/// Errors are expected; a panic is a bug.
pub fn parse_and_run(data: &[u8]) {
    if let Ok(model) = Model::parse(data) {
        run_model(&model, data.len());
    }
    if data.len() >= PREFIX_LEN + CRC_LEN {
        let mut fixed = data.to_vec();
        let n = fixed.len();
        let body = (n - PREFIX_LEN - CRC_LEN) as u32;
        fixed[8..12].copy_from_slice(&body.to_le_bytes());
        let crc = crc32(&fixed[..n - CRC_LEN]);
        fixed[n - CRC_LEN..].copy_from_slice(&crc.to_le_bytes());
        if fixed != data {
            if let Ok(model) = Model::parse(&fixed) {
                run_model(&model, n);
            }
        }
    }
}

fn run_model(model: &Model<'_>, salt: usize) {
    let d = model.input_len();
    let classes = model.num_classes();
    if d > MAX_SCRATCH || classes > MAX_SCRATCH {
        return;
    }
    // A fixed pattern in [0, 1]; some inputs get a NaN, which must be refused.
    let mut input: Vec<f32> = (0..d)
        .map(|i| ((i.wrapping_mul(37).wrapping_add(salt)) % 256) as f32 / 255.0)
        .collect();
    if salt.is_multiple_of(7) {
        if let Some(x) = input.first_mut() {
            *x = f32::NAN;
        }
    }

    if model.classifier_macs() <= MAX_MACS && model.classify_scratch_len() <= MAX_SCRATCH {
        let mut logits = vec![0f32; classes];
        let mut scratch = vec![0f32; model.classify_scratch_len()];
        let _ = model.classify(&input, &mut logits, &mut scratch);
        // Too small a scratch must be an error, not a panic.
        let short = model.classify_scratch_len().saturating_sub(1);
        let _ = model.classify(&input, &mut logits, &mut scratch[..short]);
    }

    if model.denoiser_macs() <= MAX_MACS && model.denoise_scratch_len() <= MAX_SCRATCH {
        let mut out = vec![0f32; d];
        let mut scratch = vec![0f32; model.denoise_scratch_len()];
        let _ = model.denoise(&input, &mut out, &mut scratch);
    }

    let stored = model.purifier_config();
    let cfg = PurifierConfig {
        iters: stored.iters.min(2),
        noise_samples: stored.noise_samples.min(2),
        ..stored
    };
    // Both the minimum scratch (one noise sample at a time) and the batched one.
    let len = if salt.is_multiple_of(2) {
        model.purify_scratch_len(&cfg)
    } else {
        model.purify_scratch_len_batched(&cfg, cfg.noise_samples as usize)
    };
    if model.purify_macs(&cfg) <= MAX_MACS && len <= MAX_SCRATCH {
        let mut out = vec![0f32; d];
        let mut scratch = vec![0f32; len];
        let _ = model.purify(&input, &cfg, &mut out, &mut scratch);
    }
}

/// CRC-32 (ISO-HDLC), as the `.psm` frame uses it.
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// `idx`: the IDX reader on arbitrary bytes. Layout of a fuzz input: two bytes
/// (little-endian) giving where the image file ends, modulo the rest's length; one
/// byte giving the number of classes; then the image file's bytes followed by the
/// label file's bytes (each raw or gzipped, as on disk).
pub fn idx(data: &[u8]) {
    let [s0, s1, classes, rest @ ..] = data else {
        let _ = crate::data::dataset_from_idx_bytes("fuzz", data, data, 10);
        return;
    };
    let split = usize::from(u16::from_le_bytes([*s0, *s1])) % (rest.len() + 1);
    let (images, labels) = rest.split_at(split);
    if let Ok(set) =
        crate::data::dataset_from_idx_bytes("fuzz", images, labels, usize::from(*classes))
    {
        // What callers do next must hold for whatever was accepted.
        assert_eq!(set.pixels.len(), set.len() * set.image_len());
        for i in 0..set.len() {
            let _ = set.image_f32(i);
        }
    }
}

/// `png`: [`read_png_8bit`](crate::data::read_png_8bit) and `read_png_gray` on the
/// bytes written to a temporary file (the readers take a path).
pub fn png(data: &[u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!(
        "pursamere-fuzz-{}-{}.png",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let read = crate::data::read_png_8bit(&path);
    let gray = crate::data::read_png_gray(&path);
    let _ = std::fs::remove_file(&path);
    if let Ok((w, h, channels, samples)) = read {
        assert_eq!(samples.len(), w * h * channels);
    }
    if let Ok((w, h, pixels)) = gray {
        assert_eq!(pixels.len(), w * h);
    }
}
