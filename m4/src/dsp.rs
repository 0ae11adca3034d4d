//! The five Armv7E-M DSP instructions the kernels use, with portable emulations
//! elsewhere (so that the host tests run the same algorithm, lane for lane).
//!
//! * `sxtb16(x)`: bytes 0 and 2 of `x`, sign-extended to the low and high halfwords;
//! * `sxtb16_ror8(x)`: bytes 1 and 3, likewise;
//! * `smlad(a, b, acc)`: `acc + a.lo · b.lo + a.hi · b.hi` on signed halfwords
//!   (modulo 2³²; the kernels' sums never wrap: the core bounds the fan-in);
//! * `ssat8(x)`: `x` clamped to [−128, 127];
//! * `usat7(x)`: `x` clamped to [0, 127] (`USAT #7`).
//!
//! Stable Rust has no intrinsics for them (`core::arch::arm`'s DSP intrinsics are
//! unstable), so on Arm they are single `asm!` instructions, marked `pure` and
//! `nomem` so that the compiler may schedule them like arithmetic.

#[cfg(pursamere_dsp)]
mod imp {
    #[inline(always)]
    pub fn sxtb16(x: u32) -> u32 {
        let r: u32;
        // SAFETY: one register-to-register instruction of Armv7E-M (this module is
        // compiled only where the target has the DSP extension); no memory, no stack.
        unsafe {
            core::arch::asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x,
                options(pure, nomem, nostack, preserves_flags));
        }
        r
    }

    #[inline(always)]
    pub fn sxtb16_ror8(x: u32) -> u32 {
        let r: u32;
        // SAFETY: as for `sxtb16`.
        unsafe {
            core::arch::asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x,
                options(pure, nomem, nostack, preserves_flags));
        }
        r
    }

    /// Half a step of `dot2_steps` (four inputs against two rows); a step is two.
    macro_rules! dot2_half_step {
        () => {
            concat!(
                "ldr {x}, [{xp}], #4\n",
                "ldr {w0}, [{p0}], #4\n",
                "ldr {w1}, [{p1}], #4\n",
                "sxtb16 {xa}, {x}\n",
                "sxtb16 {xb}, {x}, ror #8\n",
                "sxtb16 {x}, {w0}\n",
                "smlad {a0}, {x}, {xa}, {a0}\n",
                "sxtb16 {w0}, {w0}, ror #8\n",
                "smlad {a0}, {w0}, {xb}, {a0}\n",
                "sxtb16 {x}, {w1}\n",
                "smlad {a1}, {x}, {xa}, {a1}\n",
                "sxtb16 {w1}, {w1}, ror #8\n",
                "smlad {a1}, {w1}, {xb}, {a1}\n",
            )
        };
    }

    /// Half a step of `dot4i_steps` (four inputs against four rows); a step is two.
    macro_rules! dot4i_half_step {
        () => {
            concat!(
                "ldr {x}, [{xp}], #4\n",
                "ldr {w}, [{wp}], #4\n",
                "ldr {v}, [{wp}], #4\n",
                "sxtb16 {xa}, {x}\n",
                "sxtb16 {xb}, {x}, ror #8\n",
                "sxtb16 {x}, {w}\n",
                "smlad {a0}, {x}, {xa}, {a0}\n",
                "sxtb16 {w}, {w}, ror #8\n",
                "smlad {a0}, {w}, {xb}, {a0}\n",
                "sxtb16 {x}, {v}\n",
                "smlad {a1}, {x}, {xa}, {a1}\n",
                "sxtb16 {v}, {v}, ror #8\n",
                "smlad {a1}, {v}, {xb}, {a1}\n",
                "ldr {w}, [{wp}], #4\n",
                "ldr {v}, [{wp}], #4\n",
                "sxtb16 {x}, {w}\n",
                "smlad {a2}, {x}, {xa}, {a2}\n",
                "sxtb16 {w}, {w}, ror #8\n",
                "smlad {a2}, {w}, {xb}, {a2}\n",
                "sxtb16 {x}, {v}\n",
                "smlad {a3}, {x}, {xa}, {a3}\n",
                "sxtb16 {v}, {v}, ror #8\n",
                "smlad {a3}, {v}, {xb}, {a3}\n",
            )
        };
    }

    /// `steps` steps of eight inputs against two rows (see the portable version).
    #[inline(always)]
    pub fn dot2_steps(x: &[u8], r0: &[u8], r1: &[u8], steps: usize, acc: [i32; 2]) -> [i32; 2] {
        let bytes = steps.saturating_mul(8);
        if steps == 0 || x.len() < bytes || r0.len() < bytes || r1.len() < bytes {
            return super::portable_dot2_steps(x, r0, r1, steps, acc);
        }
        let [mut a0, mut a1] = acc;
        // The three loads of a half-step are adjacent (the M4 pipelines a load that
        // follows a load: 2 + 1 + 1 cycles instead of 2 + 2 + 2).
        // SAFETY: each pointer advances by 8 bytes per step and reads only bytes it
        // passes over; the three slices hold at least `8 · steps` bytes (checked
        // above) and `steps ≥ 1`. Single-word LDRs may be unaligned on the M4
        // (CCR.UNALIGN_TRP is clear out of reset, as the compiler itself assumes for
        // this target). No stack, no writes to memory.
        unsafe {
            core::arch::asm!(
                "2:",
                dot2_half_step!(),
                dot2_half_step!(),
                "subs {n}, {n}, #1",
                "bne 2b",
                xp = inout(reg) x.as_ptr() => _,
                p0 = inout(reg) r0.as_ptr() => _,
                p1 = inout(reg) r1.as_ptr() => _,
                n = inout(reg) steps => _,
                a0 = inout(reg) a0,
                a1 = inout(reg) a1,
                x = out(reg) _,
                w0 = out(reg) _,
                w1 = out(reg) _,
                xa = out(reg) _,
                xb = out(reg) _,
                options(nostack, readonly),
            );
        }
        [a0, a1]
    }

    /// `steps` steps of eight inputs against four interleaved rows (see the
    /// portable version).
    #[inline(always)]
    pub fn dot4i_steps(x: &[u8], w: &[u8], steps: usize, acc: [i32; 4]) -> [i32; 4] {
        let bytes = steps.saturating_mul(8);
        if steps == 0 || x.len() < bytes || w.len() < 4 * bytes {
            return super::portable_dot4i_steps(x, w, steps, acc);
        }
        let [mut a0, mut a1, mut a2, mut a3] = acc;
        // SAFETY: `xp` advances by 8 bytes and `wp` by 32 per step, reading only the
        // bytes they pass over; the slices hold at least `8 · steps` and `32 · steps`
        // bytes (checked above) and `steps ≥ 1`. Unaligned single-word LDRs are
        // allowed on the M4 (see `dot2_steps`). No stack, no writes to memory.
        unsafe {
            core::arch::asm!(
                "2:",
                dot4i_half_step!(),
                dot4i_half_step!(),
                "subs {n}, {n}, #1",
                "bne 2b",
                xp = inout(reg) x.as_ptr() => _,
                wp = inout(reg) w.as_ptr() => _,
                n = inout(reg) steps => _,
                a0 = inout(reg) a0,
                a1 = inout(reg) a1,
                a2 = inout(reg) a2,
                a3 = inout(reg) a3,
                x = out(reg) _,
                w = out(reg) _,
                v = out(reg) _,
                xa = out(reg) _,
                xb = out(reg) _,
                options(nostack, readonly),
            );
        }
        [a0, a1, a2, a3]
    }

    /// Two positions' sums of the single-channel 3×3 loop (ten pair words from
    /// `{xp}`, in r0–r3), moved to the FPU registers `$a` and `$b`: LDM fills its
    /// registers in ascending order, so the three loads (4 + 3 + 3 words) put every
    /// word where the SMLAD chain expects it, the running sum staying out of the
    /// next load's registers.
    macro_rules! pair5_two_positions {
        ($a:literal, $b:literal) => {
            concat!(
                "ldm {xp}!, {{r0, r1, r2, r3}}\n",
                "smuad r0, r0, {w0}\n",
                "smlad r0, r1, {w1}, r0\n",
                "smlad r0, r2, {w2}, r0\n",
                "smlad r0, r3, {w3}, r0\n",
                "ldm {xp}!, {{r1, r2, r3}}\n",
                "smlad r0, r1, {w4}, r0\n",
                "smuad r2, r2, {w0}\n",
                "smlad r2, r3, {w1}, r2\n",
                "vmov ",
                $a,
                ", r0\n",
                "ldm {xp}!, {{r0, r1, r3}}\n",
                "smlad r2, r0, {w2}, r2\n",
                "smlad r2, r1, {w3}, r2\n",
                "smlad r2, r3, {w4}, r2\n",
                "vmov ",
                $b,
                ", r2",
            )
        };
    }

    /// The single-channel 3×3 convolution's inner loop (see the portable version):
    /// four output positions per iteration, five pair words each.
    #[inline(always)]
    pub fn pair5_run(patches: &[u32], w: [u32; 5], scale: f32, bias: f32, y: &mut [f32]) {
        let quads = y.len() / 4;
        if quads == 0 || patches.len() < 20 * quads {
            return super::portable_pair5_run(patches, w, scale, bias, y);
        }
        let (head, tail) = y.split_at_mut(4 * quads);
        let [w0, w1, w2, w3, w4] = w;
        // r0–r3 are named for LDM (see `pair5_two_positions`), s0–s3 for VSTM.
        // Scale and bias enter through r0 and r1 and move to s4 and s5 (the `sreg`
        // operand class needs the `vfp2` feature, which this single-precision FPU
        // lacks).
        // SAFETY: `xp` advances by 80 bytes and `yp` by 16 per iteration, `quads ≥ 1`
        // times, so `xp` reads exactly the first `20 · quads` words of `patches`
        // (checked above to be there) and `yp` writes exactly `head` (`4 · quads`
        // floats, exclusively borrowed). Word loads are aligned (`u32` slices). No
        // stack.
        unsafe {
            core::arch::asm!(
                "vmov s4, r0",
                "vmov s5, r1",
                "2:",
                pair5_two_positions!("s0", "s1"),
                pair5_two_positions!("s2", "s3"),
                "vcvt.f32.s32 s0, s0",
                "vcvt.f32.s32 s1, s1",
                "vcvt.f32.s32 s2, s2",
                "vcvt.f32.s32 s3, s3",
                "vmul.f32 s0, s0, s4",
                "vmul.f32 s1, s1, s4",
                "vmul.f32 s2, s2, s4",
                "vmul.f32 s3, s3, s4",
                "vadd.f32 s0, s0, s5",
                "vadd.f32 s1, s1, s5",
                "vadd.f32 s2, s2, s5",
                "vadd.f32 s3, s3, s5",
                "vstmia {yp}!, {{s0, s1, s2, s3}}",
                "subs {n}, {n}, #1",
                "bne 2b",
                xp = inout(reg) patches.as_ptr() => _,
                yp = inout(reg) head.as_mut_ptr() => _,
                n = inout(reg) quads => _,
                w0 = in(reg) w0,
                w1 = in(reg) w1,
                w2 = in(reg) w2,
                w3 = in(reg) w3,
                w4 = in(reg) w4,
                inout("r0") scale.to_bits() => _,
                inout("r1") bias.to_bits() => _,
                out("r2") _,
                out("r3") _,
                out("s0") _,
                out("s1") _,
                out("s2") _,
                out("s3") _,
                out("s4") _,
                out("s5") _,
                options(nostack),
            );
        }
        if let Some(rest) = patches.get(20 * quads..) {
            super::portable_pair5_run(rest, w, scale, bias, tail);
        }
    }

    #[inline(always)]
    pub fn ssat8(x: i32) -> i32 {
        let r: i32;
        // SAFETY: as for `sxtb16`. SSAT may set the sticky Q flag (never read here).
        unsafe {
            core::arch::asm!("ssat {r}, #8, {x}", r = lateout(reg) r, x = in(reg) x,
                options(pure, nomem, nostack));
        }
        r
    }

    #[inline(always)]
    pub fn usat7(x: i32) -> i32 {
        let r: i32;
        // SAFETY: as for `sxtb16`. USAT may set the sticky Q flag (never read here).
        unsafe {
            core::arch::asm!("usat {r}, #7, {x}", r = lateout(reg) r, x = in(reg) x,
                options(pure, nomem, nostack));
        }
        r
    }

    #[inline(always)]
    pub fn smlad(a: u32, b: u32, acc: i32) -> i32 {
        let r: i32;
        // SAFETY: as for `sxtb16`. SMLAD may set the sticky Q flag (never read
        // here), so flags are not declared preserved.
        unsafe {
            core::arch::asm!("smlad {r}, {a}, {b}, {acc}", r = lateout(reg) r, a = in(reg) a,
                b = in(reg) b, acc = in(reg) acc, options(pure, nomem, nostack));
        }
        r
    }
}

#[cfg(not(pursamere_dsp))]
mod imp {
    #[inline(always)]
    fn byte(x: u32, k: u32) -> u32 {
        u32::from((((x >> (8 * k)) & 0xff) as u8 as i8 as i16) as u16)
    }

    #[inline(always)]
    pub fn sxtb16(x: u32) -> u32 {
        byte(x, 0) | (byte(x, 2) << 16)
    }

    #[inline(always)]
    pub fn sxtb16_ror8(x: u32) -> u32 {
        byte(x, 1) | (byte(x, 3) << 16)
    }

    #[inline(always)]
    pub fn ssat8(x: i32) -> i32 {
        x.clamp(-128, 127)
    }

    #[inline(always)]
    pub fn usat7(x: i32) -> i32 {
        x.clamp(0, 127)
    }

    #[inline(always)]
    pub fn smlad(a: u32, b: u32, acc: i32) -> i32 {
        let lo = i32::from(a as u16 as i16) * i32::from(b as u16 as i16);
        let hi = i32::from((a >> 16) as u16 as i16) * i32::from((b >> 16) as u16 as i16);
        acc.wrapping_add(lo).wrapping_add(hi)
    }

    pub(crate) use super::portable_dot2_steps as dot2_steps;
    pub(crate) use super::portable_dot4i_steps as dot4i_steps;
    pub(crate) use super::portable_pair5_run as pair5_run;
}

pub(crate) use imp::{
    dot2_steps, dot4i_steps, pair5_run, smlad, ssat8, sxtb16, sxtb16_ror8, usat7,
};

/// `acc[r] + Σ_{i < 8·steps} w_r[i] · x[i]` for four rows stored interleaved by
/// word (`w` = row 0 bytes 0–3, row 1 bytes 0–3, row 2, row 3, then bytes 4–7 of
/// each row, …): one weight pointer for four rows, so that the M4's `asm!` loop
/// keeps four sums, both pointers and the unpacked input in its twelve free
/// registers (46 instructions per 32 multiply–accumulates).
#[inline(always)]
pub(crate) fn portable_dot4i_steps(x: &[u8], w: &[u8], steps: usize, acc: [i32; 4]) -> [i32; 4] {
    let mut acc = acc;
    for (xq, wg) in x.chunks_exact(4).zip(w.chunks_exact(16)).take(2 * steps) {
        let xw = word(xq);
        let (xa, xb) = (imp::sxtb16(xw), imp::sxtb16_ror8(xw));
        for (a, wr) in acc.iter_mut().zip(wg.chunks_exact(4)) {
            let ww = word(wr);
            *a = imp::smlad(
                imp::sxtb16_ror8(ww),
                xb,
                imp::smlad(imp::sxtb16(ww), xa, *a),
            );
        }
    }
    acc
}

/// `y[i] = (Σ_j smlad(patch_i[j], w[j]) as f32) · scale + bias` for the output
/// positions `i` of one channel, each position's patch five words of two signed
/// halfwords (`patches` = position 0's five words, position 1's, …): the
/// single-channel 3×3 convolution, whose nine taps fill five `SMLAD`s (the tenth
/// product is a zero). The weights stay in registers for a whole run of positions.
#[inline(always)]
pub(crate) fn portable_pair5_run(
    patches: &[u32],
    w: [u32; 5],
    scale: f32,
    bias: f32,
    y: &mut [f32],
) {
    for (p, yo) in patches.chunks_exact(5).zip(y) {
        let acc = p
            .iter()
            .zip(w)
            .fold(0i32, |a, (&x, wj)| imp::smlad(x, wj, a));
        *yo = acc as f32 * scale + bias;
    }
}

/// Four little-endian bytes as a word (`0` past the end).
#[inline(always)]
pub(crate) fn word(c: &[u8]) -> u32 {
    match *c {
        [a, b, c, d, ..] => u32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// `acc[r] + Σ_{i < 8·steps} w_r[i] · x[i]` for two rows, eight inputs per step
/// (each input word unpacked once for both rows); on the M4 one `asm!` loop of
/// post-incrementing loads, 28 instructions per 16 multiply–accumulates (about 32
/// cycles by the Cortex-M4's published timings).
#[inline(always)]
pub(crate) fn portable_dot2_steps(
    x: &[u8],
    r0: &[u8],
    r1: &[u8],
    steps: usize,
    acc: [i32; 2],
) -> [i32; 2] {
    let [mut a0, mut a1] = acc;
    for ((xq, w0), w1) in x
        .chunks_exact(4)
        .zip(r0.chunks_exact(4))
        .zip(r1.chunks_exact(4))
        .take(2 * steps)
    {
        let xw = word(xq);
        let (xa, xb) = (imp::sxtb16(xw), imp::sxtb16_ror8(xw));
        let (w0, w1) = (word(w0), word(w1));
        a0 = imp::smlad(
            imp::sxtb16_ror8(w0),
            xb,
            imp::smlad(imp::sxtb16(w0), xa, a0),
        );
        a1 = imp::smlad(
            imp::sxtb16_ror8(w1),
            xb,
            imp::smlad(imp::sxtb16(w1), xa, a1),
        );
    }
    [a0, a1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_matches_the_architecture_manual() {
        // Bytes 0x80 (−128), 0x7f (127), 0xff (−1), 0x01 (1) from low to high.
        let x = 0x01ff_7f80u32;
        assert_eq!(sxtb16(x), 0xffff_ff80); // (−128, −1)
        assert_eq!(sxtb16_ror8(x), 0x0001_007f); // (127, 1)
        let a = 0xffff_0003u32; // (3, −1)
        let b = 0x0005_fffeu32; // (−2, 5)
        assert_eq!(smlad(a, b, 100), 100 - 6 - 5);
        assert_eq!(
            [
                ssat8(-129),
                ssat8(-128),
                ssat8(5),
                ssat8(127),
                ssat8(1 << 20)
            ],
            [-128, -128, 5, 127, 127]
        );
        assert_eq!(
            [
                usat7(i32::MIN),
                usat7(-1),
                usat7(0),
                usat7(5),
                usat7(127),
                usat7(128)
            ],
            [0, 0, 0, 5, 127, 127]
        );
    }
}
