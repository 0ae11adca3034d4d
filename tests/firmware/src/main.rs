//! Firmware for the on-target check: parses the embedded model, purifies and
//! classifies the embedded images with the core, prints
//!
//! `model bytes <n> crc32 <the file's stored CRC-32>`
//! `config iters <K> noise_samples <M>`
//!
//! then one line per image
//!
//! `image <i> label <true> purified <label> crc32 <digest of the purified f32 bytes>
//! logits <digest of the logits' f32 bytes>`
//!
//! then footprint and cost lines and the closing line `done ok <n> images` (`done
//! error` if something failed), and exits through semihosting (0 = every image ran).
//! `pursamere firmware-check --log` and the cross-check test compare the lines with
//! the host build of the core; a log without the closing line, or with fewer image
//! lines than it announces, is incomplete and fails the check.
//!
//! The model, the images and the purifier settings are chosen at build time
//! (`PURSAMERE_MODEL`, `PURSAMERE_FW_IMAGES`, … — see build.rs and the README's
//! "Flashing to a device"); build.rs validates them and sizes the buffers.
#![no_std]
#![no_main]

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::{syst::SystClkSource, SYST};
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprintln};
use pursamere_core::{digest_f32, Model};

/// What build.rs derived from the model: `D`, `CLASSES`, `SCRATCH`, `ITERS`,
/// `NOISE_SAMPLES`.
mod config {
    include!(concat!(env!("OUT_DIR"), "/config.rs"));
}
use config::{CLASSES, D, ITERS, NOISE_SAMPLES, SCRATCH};

static MODEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/model.psm"));
static IMAGES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/images.bin"));
static LABELS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/labels.bin"));
/// Value painted over the free stack to measure its high-water mark.
const PAINT: u32 = 0xDEAD_BEEF;

extern "C" {
    /// Top of the stack (cortex-m-rt).
    static _stack_start: u32;
    /// First byte after the static RAM sections (cortex-m-rt).
    static __sheap: u32;
}

/// Paints the stack between the end of static RAM and the current stack pointer
/// minus a safety margin. The only `unsafe` of the firmware; it touches memory no
/// Rust object owns yet.
#[inline(never)]
fn paint_stack() -> (usize, usize) {
    let bottom = core::ptr::addr_of!(__sheap) as usize;
    let top = core::ptr::addr_of!(_stack_start) as usize;
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = (bottom + 3) & !3;
    while p + 256 < sp {
        // SAFETY: [bottom, sp - 256) is RAM above .bss that no live object uses.
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
    (bottom, top)
}

/// Bytes of stack ever used: from the top down to the lowest word not painted.
fn stack_high_water(bottom: usize, top: usize) -> usize {
    let mut p = (bottom + 3) & !3;
    while p < top {
        // SAFETY: reading RAM inside the stack region.
        if unsafe { core::ptr::read_volatile(p as *const u32) } != PAINT {
            break;
        }
        p += 4;
    }
    top - p
}

/// SysTick wraps (the counter is 24 bits).
static WRAPS: AtomicU32 = AtomicU32::new(0);
const RELOAD: u32 = 0x00FF_FFFF;

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// SysTick ticks since start. Under QEMU with `-icount shift=0` one instruction is
/// one virtual nanosecond and SysTick runs at the MPS2 board clock (25 MHz), so one
/// tick is 40 instructions: deterministic, whatever the host does.
fn ticks() -> u64 {
    loop {
        let w = WRAPS.load(Ordering::Relaxed);
        let v = SYST::get_current();
        if WRAPS.load(Ordering::Relaxed) == w {
            return u64::from(w) * (u64::from(RELOAD) + 1) + u64::from(RELOAD - v);
        }
    }
}

#[entry]
fn main() -> ! {
    let (bottom, top) = paint_stack();
    if let Some(mut p) = cortex_m::Peripherals::take() {
        p.SYST.set_clock_source(SystClkSource::Core);
        p.SYST.set_reload(RELOAD);
        p.SYST.clear_current();
        p.SYST.enable_interrupt();
        p.SYST.enable_counter();
    }
    let images = run();
    let used = stack_high_water(bottom, top);
    hprintln!("stack_bytes {}", used);
    // No painted word left: the stack reached the static RAM below it (and may have
    // overwritten it, or run past the start of RAM), so nothing above is trusted.
    let images = if top - used <= (bottom + 3) & !3 {
        hprintln!("stack overflow: the stack reached the static RAM below it");
        None
    } else {
        images
    };
    match images {
        Some(n) => {
            hprintln!("done ok {} images", n);
        }
        None => {
            hprintln!("done error");
        }
    }
    debug::exit(if images.is_some() {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    loop {
        cortex_m::asm::wfi();
    }
}

/// Purifies and classifies every image; the number of images, or `None` after an
/// error (already printed).
#[inline(never)]
fn run() -> Option<usize> {
    // The asm kernels against their portable twins on NaN, infinities, clamps and
    // rounding edges, which the embedded images may never reach.
    #[cfg(feature = "kernel-self-check")]
    if !pursamere_m4::kernels_match_portable() {
        hprintln!("kernel self-check failed: an asm kernel differs from its portable twin");
        return None;
    }
    let model = match Model::parse(MODEL) {
        Ok(m) => m,
        Err(e) => {
            hprintln!("model error: {}", e);
            return None;
        }
    };
    let stored_crc = MODEL
        .len()
        .checked_sub(4)
        .and_then(|i| MODEL.get(i..))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes);
    hprintln!("model bytes {} crc32 {:08x}", MODEL.len(), stored_crc);
    // The file's purifier settings, or the build-time overrides PURSAMERE_FW_ITERS
    // and PURSAMERE_FW_NOISE_SAMPLES (the cost table in BENCHMARKS.md).
    let mut cfg = model.purifier_config();
    cfg.iters = ITERS;
    cfg.noise_samples = NOISE_SAMPLES;
    hprintln!(
        "config iters {} noise_samples {}",
        cfg.iters,
        cfg.noise_samples
    );
    let need = model
        .purify_scratch_len(&cfg)
        .max(model.classify_scratch_len());
    if model.input_len() != D || model.num_classes() != CLASSES || need > SCRATCH {
        hprintln!(
            "model needs {} scratch floats, firmware has {} (build.rs sizes them; rebuild)",
            need,
            SCRATCH
        );
        return None;
    }
    hprintln!("scratch_bytes {}", 4 * model.purify_scratch_len(&cfg));
    // On the stack (build.rs checks that they fit the RAM of memory.x with room for
    // the call stack); the model's parsing temporaries share their slots.
    let mut scratch = [0.0f32; SCRATCH];
    let mut x = [0.0f32; D];
    let mut out = [0.0f32; D];
    let mut logits = [0.0f32; CLASSES];
    let start = ticks();
    #[cfg(feature = "layer-profile")]
    pursamere_phase_mark();
    for (i, (img, &label)) in IMAGES.chunks_exact(D).zip(LABELS).enumerate() {
        for (v, &p) in x.iter_mut().zip(img) {
            *v = f32::from(p) / 255.0;
        }
        if let Err(e) =
            model.purify_with(&pursamere_m4::M4Kernels, &x, &cfg, &mut out, &mut scratch)
        {
            hprintln!("image {} purify error: {}", i, e);
            return None;
        }
        let l = match model.classify_with(&pursamere_m4::M4Kernels, &out, &mut logits, &mut scratch)
        {
            Ok(l) => l,
            Err(e) => {
                hprintln!("image {} classify error: {}", i, e);
                return None;
            }
        };
        hprintln!(
            "image {} label {} purified {} crc32 {:08x} logits {:08x}",
            i,
            label,
            l,
            digest_f32(&out),
            digest_f32(&logits)
        );
    }
    #[cfg(feature = "layer-profile")]
    pursamere_phase_mark();
    let images = IMAGES.len() / D;
    let per_image = (ticks() - start) / images.max(1) as u64;
    hprintln!("systick_ticks_per_image {}", per_image);
    // The noise generator alone: one noise vector, as a purification draws M of them
    // (BENCHMARKS.md, scripts/fw-noise-cost.sh).
    let start = ticks();
    cfg.noise.fill(cfg.seed, 0, &mut x);
    let noise = ticks() - start;
    hprintln!(
        "noise_ticks {} values {} first {:08x}",
        noise,
        D,
        x.first().map_or(0, |v| v.to_bits())
    );
    #[cfg(feature = "layer-profile")]
    profile_layers(&model, &mut scratch);
    Some(images)
}

/// Times every layer of both networks on its own at batch 1 (the path a
/// purification with the minimum scratch takes), forward then VJP, on fixed
/// pseudo-random inputs, and prints
///
/// `layer <network> <index> <kind> macs <n> forward_ticks <t> vjp_ticks <t>`
///
/// (one tick = 40 instructions under QEMU). The VJP's output gradient is the
/// forward's output, so no row of a dense VJP is skipped as zero: the full cost.
#[cfg(feature = "layer-profile")]
fn profile_layers(model: &Model<'_>, scratch: &mut [f32]) {
    let spec = model.spec();
    for (name, net) in [
        ("denoiser", &spec.denoiser),
        ("classifier", &spec.classifier),
    ] {
        let mut len = D;
        // Two int8 dense layers in a row run as a pair in a classification
        // (`DenseKernels::int8_dense_pair_forward`): the first writes its outputs as
        // the second's int8 inputs. Each half is timed as it runs there; the second
        // half's bytes are quantised before its window.
        let mut second_of_pair: Option<usize> = None;
        for (i, layer) in net.layers.iter().enumerate() {
            let out_len = layer.output_len(len);
            use pursamere_core::Layer;
            let pair_second = match (layer, net.layers.get(i + 1), net.layers.get(i + 2)) {
                (Layer::Int8Dense(_), Some(Layer::Relu), Some(Layer::Int8Dense(q)))
                | (Layer::Int8Dense(_), Some(Layer::Int8Dense(q)), _)
                    if second_of_pair != Some(i) =>
                {
                    let relu_between = matches!(net.layers.get(i + 1), Some(Layer::Relu));
                    second_of_pair = Some(if relu_between { i + 2 } else { i + 1 });
                    Some((q.input_multiplier, relu_between))
                }
                _ => None,
            };
            let buffers = scratch.split_at_mut_checked(len).and_then(|(x, rest)| {
                let (y, rest) = rest.split_at_mut_checked(out_len)?;
                let (gx, _) = rest.split_at_mut_checked(len)?;
                Some((x, y, gx))
            });
            let Some((x, y, gx)) = buffers else {
                hprintln!("layer {} {} skipped: scratch too small", name, i);
                break;
            };
            let mut state = 0x2545_f491_u32 ^ (i as u32);
            for v in x.iter_mut() {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *v = (state >> 8) as f32 * (1.0 / 16_777_216.0);
            }
            let relu_input = i > 0 && matches!(net.layers.get(i - 1), Some(Layer::Relu));
            let mut qbuf = [0u8; 256];
            if let (true, Layer::Int8Dense(d)) = (second_of_pair == Some(i), layer) {
                let m = d.input_multiplier;
                for (q, &v) in qbuf.iter_mut().zip(x.iter()) {
                    *q = if relu_input {
                        pursamere_core::quantize_relu_activation(v, m) as u8
                    } else {
                        pursamere_core::quantize_activation(v, m) as u8
                    };
                }
            }
            if let (Layer::Int8Dense(q), Some(_)) = (layer, pair_second) {
                // The float outputs the timed half does not write: the VJP's gradient.
                pursamere_core::DenseKernels::int8_dense_forward(
                    &pursamere_m4::M4Kernels,
                    q,
                    x,
                    y,
                    relu_input,
                );
            }
            // Phase marks around each half for scripts/fw_cycle_estimate.py (the few
            // instructions of a mark or a timer read fall inside the windows).
            pursamere_phase_mark();
            let t0 = ticks();
            // The kernels a classification runs (the int8 layers on the DSP path). A
            // ReLU that feeds an int8 layer is fused into that layer's input
            // quantisation there: its forward is not run (about 0 ticks), and the
            // int8 layer after it quantises relu(x).
            {
                use pursamere_core::DenseKernels;
                let int8 = |l: Option<&Layer<'_>>| {
                    matches!(l, Some(Layer::Int8Dense(_) | Layer::Int8Conv2d(_)))
                };
                let kernels = pursamere_m4::M4Kernels;
                let len_ok = |ok: bool| {
                    if !ok {
                        hprintln!("layer {} {}: the pair kernels refused it", name, i);
                    }
                };
                match layer {
                    Layer::Int8Dense(q) if second_of_pair == Some(i) => len_ok(
                        pursamere_m4::int8_dense_quantized(q, qbuf.get(..len).unwrap_or(&[]), y),
                    ),
                    Layer::Int8Dense(q) => match pair_second {
                        Some((m, relu_out)) => len_ok(pursamere_m4::int8_dense_requantized(
                            q,
                            x,
                            relu_input,
                            m,
                            relu_out,
                            qbuf.get_mut(..out_len).unwrap_or(&mut []),
                        )),
                        None => kernels.int8_dense_forward(q, x, y, relu_input),
                    },
                    Layer::Int8Conv2d(q) => kernels.int8_conv_forward(q, x, y, relu_input),
                    Layer::Relu if int8(net.layers.get(i + 1)) => {}
                    Layer::Dense(d) => kernels.dense_forward_batch(d, x, y, 1, &mut []),
                    other => other.forward(x, y),
                }
            }
            let t1 = ticks();
            pursamere_phase_mark();
            // The device kernels' VJP where they have one (the float dense layer),
            // the core's elsewhere; the forward's output stands in for the gradient.
            match layer {
                pursamere_core::Layer::Dense(d) => pursamere_core::DenseKernels::dense_vjp_batch(
                    &pursamere_m4::M4Kernels,
                    d,
                    y,
                    gx,
                    1,
                    &mut [],
                ),
                other => other.vjp(x, y, gx),
            }
            let t2 = ticks();
            pursamere_phase_mark();
            hprintln!(
                "layer {} {} {} macs {} forward_ticks {} vjp_ticks {}",
                name,
                i,
                layer.kind_name(),
                layer.macs(),
                t1 - t0,
                t2 - t1
            );
            len = out_len;
        }
    }
}

/// Does nothing, visibly: QEMU's execution trace shows each call, and
/// scripts/fw_cycle_estimate.py prices the instructions between consecutive calls
/// (the image loop, then each layer's forward and VJP).
#[cfg(feature = "layer-profile")]
#[no_mangle]
#[inline(never)]
extern "C" fn pursamere_phase_mark() {
    cortex_m::asm::nop();
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    hprintln!("panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
