//! The float dense layer — int8 weights × f32 inputs, the core's numeric definition
//! (`Dense::forward`) — on the Cortex-M4F: what the purifier's dense denoiser runs.
//!
//! The core's dot product puts element `i` into lane `i mod 16`, each lane adding its
//! terms in increasing `i`, then sums the sixteen lanes by a fixed tree; on Arm it
//! runs the lanes in two passes of eight over the row, so that the sums, the inputs
//! and the weights of a pass fit the 32 single-precision registers. Compiled from
//! Rust, each term is `LDRSB`, `VMOV`, `VCVT`, `VLDR`, `VMUL`, `VADD`, with every
//! load between two arithmetic instructions, where the M4 cannot pipeline it (two
//! cycles): about 9 cycles per multiply–add. Here one pass over a row is an `asm!`
//! loop that loads its eight weights of each sixteen as two words and its eight inputs
//! with one `VLDM`, then widens (`SXTB` with rotation, `VMOV`, `VCVT`), multiplies and
//! adds; the VJP's four-row update (`gx[i]` plus four products, in row order) is
//! another, four elements at a time. The same operations on the same values in the
//! same order per element (a product of two floats does not depend on their order).
//! The core keeps the rest of the order — the passes' tail, the reduction tree, the
//! scale and bias (`Dense::forward_with`), and for the VJP which rows are skipped and
//! how they are grouped (`Dense::vjp_with`) — so these loops only keep the contract
//! of one pass and of one four-row update, and give the core's bits: checked on the
//! host against the core (the portable twins below are the same algorithm) and under
//! QEMU by the firmware test, which compares every purified image's digest with the
//! host.

use pursamere_core::Dense;

/// Lanes of the core's dot product.
const LANES: usize = 16;
/// Lanes of one pass.
const HALF: usize = LANES / 2;

/// One pass of the two-pass dot product: `acc[l] + Σ_{c < chunks} w[16c + l] ·
/// x[16c + l]` for `l < 8`, each lane's terms in increasing `c` (`w` and `x` start at
/// the pass's first lane and hold at least `16 · (chunks − 1) + 8` values).
#[cfg(not(pursamere_fpu))]
#[inline(always)]
fn half_pass(w: &[u8], x: &[f32], chunks: usize, acc: [f32; HALF]) -> [f32; HALF] {
    portable_half_pass(w, x, chunks, acc)
}

#[inline(always)]
fn portable_half_pass(w: &[u8], x: &[f32], chunks: usize, acc: [f32; HALF]) -> [f32; HALF] {
    let mut acc = acc;
    for (wc, xc) in w.chunks(LANES).zip(x.chunks(LANES)).take(chunks) {
        for ((a, &wi), &xi) in acc.iter_mut().zip(wc).zip(xc) {
            *a += f32::from(wi as i8) * xi;
        }
    }
    acc
}

#[cfg(pursamere_fpu)]
#[inline(always)]
fn half_pass(w: &[u8], x: &[f32], chunks: usize, acc: [f32; HALF]) -> [f32; HALF] {
    let need = (LANES * chunks).saturating_sub(HALF);
    if chunks == 0 || w.len() < need || x.len() < need {
        return portable_half_pass(w, x, chunks, acc);
    }
    let mut acc = acc;
    // r0, r1: the pass's eight weight bytes; r2, r3: two of them widened. s0–s7 the
    // lane sums, s8–s15 the inputs, s16–s23 the widened weights, then the products
    // (the `sreg` operand class needs the `vfp2` feature, which this single-precision
    // FPU lacks, so the sums go through memory at the ends).
    // SAFETY: `wp` advances by 16 bytes and `xp` by 64 (16 floats) per iteration,
    // `chunks ≥ 1` times; each iteration reads 8 bytes at `wp` and 8 floats at `xp`,
    // so the last reads end at byte 16·(chunks − 1) + 8 of `w` and float
    // 16·(chunks − 1) + 8 of `x`, both checked above. Word loads may be unaligned
    // (allowed on the M4 for LDR); VLDM reads f32-aligned memory (`x` is a `&[f32]`).
    // `acc` is read at the start and written at the end (8 floats, exclusively
    // borrowed). No stack.
    unsafe {
        core::arch::asm!(
            "vldmia {ap}, {{s0-s7}}",
            "2:",
            "ldr r0, [{wp}]",
            "ldr r1, [{wp}, #4]",
            "vldmia {xp}, {{s8-s15}}",
            "adds {wp}, {wp}, #16",
            "adds {xp}, {xp}, #64",
            "sxtb r2, r0",
            "sxtb r3, r0, ror #8",
            "vmov s16, r2",
            "vmov s17, r3",
            "sxtb r2, r0, ror #16",
            "asrs r3, r0, #24",
            "vmov s18, r2",
            "vmov s19, r3",
            "sxtb r2, r1",
            "sxtb r3, r1, ror #8",
            "vmov s20, r2",
            "vmov s21, r3",
            "sxtb r2, r1, ror #16",
            "asrs r3, r1, #24",
            "vmov s22, r2",
            "vmov s23, r3",
            "vcvt.f32.s32 s16, s16",
            "vcvt.f32.s32 s17, s17",
            "vcvt.f32.s32 s18, s18",
            "vcvt.f32.s32 s19, s19",
            "vcvt.f32.s32 s20, s20",
            "vcvt.f32.s32 s21, s21",
            "vcvt.f32.s32 s22, s22",
            "vcvt.f32.s32 s23, s23",
            "vmul.f32 s16, s16, s8",
            "vmul.f32 s17, s17, s9",
            "vmul.f32 s18, s18, s10",
            "vmul.f32 s19, s19, s11",
            "vmul.f32 s20, s20, s12",
            "vmul.f32 s21, s21, s13",
            "vmul.f32 s22, s22, s14",
            "vmul.f32 s23, s23, s15",
            "vadd.f32 s0, s0, s16",
            "vadd.f32 s1, s1, s17",
            "vadd.f32 s2, s2, s18",
            "vadd.f32 s3, s3, s19",
            "vadd.f32 s4, s4, s20",
            "vadd.f32 s5, s5, s21",
            "vadd.f32 s6, s6, s22",
            "vadd.f32 s7, s7, s23",
            "subs {n}, {n}, #1",
            "bne 2b",
            "vstmia {ap}, {{s0-s7}}",
            wp = inout(reg) w.as_ptr() => _,
            xp = inout(reg) x.as_ptr() => _,
            n = inout(reg) chunks => _,
            ap = in(reg) acc.as_mut_ptr(),
            out("r0") _,
            out("r1") _,
            out("r2") _,
            out("r3") _,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s8") _, out("s9") _, out("s10") _, out("s11") _,
            out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _,
            out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            options(nostack),
        );
    }
    acc
}

/// `Dense::forward` of the core for `batch` samples one after another, its passes
/// in the `asm!` loop ([`Dense::forward_with`]: the tail, the reduction tree, the
/// scale and the bias are the core's).
pub(crate) fn dense_forward_batch(layer: &Dense<'_>, xs: &[f32], ys: &mut [f32], batch: usize) {
    let (n, m) = (layer.inputs as usize, layer.outputs as usize);
    if n == 0 || m == 0 {
        return;
    }
    for (x, y) in xs.chunks_exact(n).zip(ys.chunks_exact_mut(m)).take(batch) {
        layer.forward_with(x, y, |w, x, chunks| half_pass(w, x, chunks, [0.0; HALF]));
    }
}

/// `gx[i] = (((gx[i] + w0[i]·c0) + w1[i]·c1) + w2[i]·c2) + w3[i]·c3` for `i < 4·quads`
/// (the core's `axpy4`: four rows of the VJP, in row order per element; every row
/// and `gx` hold at least `4 · quads` values).
#[cfg(not(pursamere_fpu))]
#[inline(always)]
fn axpy4_quads(gx: &mut [f32], rows: [&[u8]; 4], c: [f32; 4], quads: usize) {
    portable_axpy4(gx, rows, c, 4 * quads);
}

/// The core's `axpy4` on the first `len` elements.
#[inline(always)]
fn portable_axpy4(gx: &mut [f32], rows: [&[u8]; 4], c: [f32; 4], len: usize) {
    let w = |b: u8| f32::from(b as i8);
    let [r0, r1, r2, r3] = rows;
    for ((((g, &a), &b), &d), &e) in gx.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3).take(len) {
        *g = (((*g + w(a) * c[0]) + w(b) * c[1]) + w(d) * c[2]) + w(e) * c[3];
    }
}

/// One row of [`axpy4_quads`]'s loop: the next four weights of the row at `{p}`
/// widened, times the coefficient in `$c`, added to s0–s3.
#[cfg(pursamere_fpu)]
macro_rules! axpy_row {
    ($p:literal, $c:literal) => {
        concat!(
            "ldr r1, [{",
            $p,
            "}], #4\n",
            "sxtb r2, r1\n",
            "sxtb r3, r1, ror #8\n",
            "vmov s4, r2\n",
            "vmov s5, r3\n",
            "sxtb r2, r1, ror #16\n",
            "asrs r3, r1, #24\n",
            "vmov s6, r2\n",
            "vmov s7, r3\n",
            "vcvt.f32.s32 s4, s4\n",
            "vcvt.f32.s32 s5, s5\n",
            "vcvt.f32.s32 s6, s6\n",
            "vcvt.f32.s32 s7, s7\n",
            "vmul.f32 s4, s4, ",
            $c,
            "\n",
            "vmul.f32 s5, s5, ",
            $c,
            "\n",
            "vmul.f32 s6, s6, ",
            $c,
            "\n",
            "vmul.f32 s7, s7, ",
            $c,
            "\n",
            "vadd.f32 s0, s0, s4\n",
            "vadd.f32 s1, s1, s5\n",
            "vadd.f32 s2, s2, s6\n",
            "vadd.f32 s3, s3, s7\n",
        )
    };
}

#[cfg(pursamere_fpu)]
#[inline(always)]
fn axpy4_quads(gx: &mut [f32], rows: [&[u8]; 4], c: [f32; 4], quads: usize) {
    let need = 4 * quads;
    if quads == 0 || gx.len() < need || rows.iter().any(|r| r.len() < need) {
        return portable_axpy4(gx, rows, c, need);
    }
    let [r0, r1, r2, r3] = rows;
    let cs = c;
    // SAFETY: each row pointer advances by 4 bytes and `gp` by 16 (4 floats) per
    // iteration, `quads ≥ 1` times: the loop reads the first `4 · quads` bytes of
    // each row and reads and writes the first `4 · quads` floats of `gx`, all
    // checked above (`gx` exclusively borrowed). Word loads of the rows may be
    // unaligned (allowed for LDR on the M4); `gx` is f32-aligned for VLDM/VSTM. The
    // four coefficients are read from `cs` (16 bytes). No stack.
    unsafe {
        core::arch::asm!(
            "vldmia {cp}, {{s16-s19}}",
            "2:",
            "vldmia {gp}, {{s0-s3}}",
            axpy_row!("p0", "s16"),
            axpy_row!("p1", "s17"),
            axpy_row!("p2", "s18"),
            axpy_row!("p3", "s19"),
            "vstmia {gp}!, {{s0-s3}}",
            "subs {n}, {n}, #1",
            "bne 2b",
            gp = inout(reg) gx.as_mut_ptr() => _,
            p0 = inout(reg) r0.as_ptr() => _,
            p1 = inout(reg) r1.as_ptr() => _,
            p2 = inout(reg) r2.as_ptr() => _,
            p3 = inout(reg) r3.as_ptr() => _,
            n = inout(reg) quads => _,
            cp = in(reg) cs.as_ptr(),
            out("r1") _,
            out("r2") _,
            out("r3") _,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _,
            options(nostack),
        );
    }
}

/// `Dense::vjp` of the core for `batch` samples: `gx = Wᵀ (scale ⊙ gy)`, rows in
/// increasing order four at a time, rows whose coefficient is exactly zero skipped.
pub(crate) fn dense_vjp_batch(layer: &Dense<'_>, gys: &[f32], gxs: &mut [f32], batch: usize) {
    let (n, m) = (layer.inputs as usize, layer.outputs as usize);
    if n == 0 || m == 0 {
        return;
    }
    for (gy, gx) in gys.chunks_exact(m).zip(gxs.chunks_exact_mut(n)).take(batch) {
        vjp(layer, gy, gx);
    }
}

/// The core's grouping of the VJP's rows ([`Dense::vjp_with`]) with the four-row
/// update above: the whole quads in the `asm!` loop, the last one to three elements
/// by the portable form.
fn vjp(layer: &Dense<'_>, gy: &[f32], gx: &mut [f32]) {
    layer.vjp_with(gy, gx, |gx, rows, c| {
        // The element count of the core's `axpy4`: the shortest of `gx` and the rows.
        let len = rows.iter().fold(gx.len(), |l, r| l.min(r.len()));
        let quads = len / 4;
        axpy4_quads(gx, rows, c, quads);
        if let (Some(g), [Some(a), Some(b), Some(d), Some(e)]) = (
            gx.get_mut(4 * quads..len),
            rows.map(|r| r.get(4 * quads..len)),
        ) {
            portable_axpy4(g, [a, b, d, e], c, len - 4 * quads);
        }
    });
}
