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
}

/// The loops that also use FPU registers (to park loop state, or to dequantise):
/// the hard-float targets only; elsewhere their portable twins run (on a DSP
/// target without the FPU still with single `SMLAD`/`SXTB16` instructions).
#[cfg(all(pursamere_dsp, pursamere_fpu))]
mod fpu {
    /// One group of `dot22_pairs` (four inputs of two positions against two rows):
    /// the rows' words in r2, r3 (LDM fills ascending registers), unpacked once for
    /// both positions into r4, r2 and r5, r3; each position's two expanded words in
    /// r0, r1; the sums in r8–r11; `wp` in r12, `xp` in lr.
    macro_rules! dot22_group {
        () => {
            concat!(
                "ldm r12!, {{r2, r3}}\n",
                "sxtb16 r4, r2\n",
                "sxtb16 r2, r2, ror #8\n",
                "sxtb16 r5, r3\n",
                "sxtb16 r3, r3, ror #8\n",
                "ldm lr!, {{r0, r1}}\n",
                "smlad r8, r0, r4, r8\n",
                "smlad r8, r1, r2, r8\n",
                "smlad r9, r0, r5, r9\n",
                "smlad r9, r1, r3, r9\n",
                "ldm lr!, {{r0, r1}}\n",
                "smlad r10, r0, r4, r10\n",
                "smlad r10, r1, r2, r10\n",
                "smlad r11, r0, r5, r11\n",
                "smlad r11, r1, r3, r11\n",
            )
        };
    }

    /// Every pair of interleaved rows against one expanded pair of positions (see
    /// the portable version).
    #[inline(always)]
    pub fn dot22_pairs(x: &[u32], w: &[u32], steps: usize, sums: &mut [i32]) {
        let pairs = sums.len() / 4;
        if steps == 0
            || pairs == 0
            || x.len() < steps.saturating_mul(8)
            || w.len() < pairs.saturating_mul(steps).saturating_mul(4)
        {
            return super::portable_dot22_pairs(x, w, steps, sums);
        }
        let end = x.as_ptr().wrapping_add(8 * steps);
        // Twelve registers hold the four sums, both pointers, the unpacked rows and
        // the expanded inputs; what the loops keep besides (the inputs' end and
        // start, where the sums go, the pairs left) waits in s0–s3 and comes back
        // through r0, free between steps. One call runs every pair of rows, so
        // the compiler's spills and reloads around the loop happen once per
        // position pair, not once per row pair.
        // SAFETY: per pair, `xp` (lr) starts at `x` and advances by 32 bytes per
        // step until it reaches `end`, `8 · steps` words in (checked to be inside
        // `x`, `steps ≥ 1`); `wp` (r12) advances by 16 bytes per step through
        // `pairs · steps` steps, `4 · pairs · steps` words (checked to be inside
        // `w`); the STM writes four words per pair, `4 · pairs` words of `sums`
        // (exclusively borrowed). All are `u32`/`i32` slices, so LDM and STM are
        // word-aligned. No stack.
        unsafe {
            core::arch::asm!(
                "vmov s0, r0",
                "vmov s1, lr",
                "vmov s2, r1",
                "vmov s3, r2",
                "3:",
                "mov.w r8, #0",
                "mov.w r9, #0",
                "mov.w r10, #0",
                "mov.w r11, #0",
                "2:",
                dot22_group!(),
                dot22_group!(),
                "vmov r0, s0",
                "cmp lr, r0",
                "bne 2b",
                "vmov r0, s2",
                "stm r0!, {{r8, r9, r10, r11}}",
                "vmov s2, r0",
                "vmov lr, s1",
                "vmov r0, s3",
                "subs r0, r0, #1",
                "vmov s3, r0",
                "bne 3b",
                inout("r0") end => _,
                inout("r1") sums.as_mut_ptr() => _,
                inout("r2") pairs => _,
                out("r3") _,
                out("r4") _,
                out("r5") _,
                out("r8") _,
                out("r9") _,
                out("r10") _,
                out("r11") _,
                inout("r12") w.as_ptr() => _,
                inout("lr") x.as_ptr() => _,
                out("s0") _,
                out("s1") _,
                out("s2") _,
                out("s3") _,
                options(nostack),
            );
        }
    }

    /// The four integer sums in s0–s3 dequantised, `(acc as f32) · scale + bias`
    /// with the scale in s4 and the bias in s5 (the core's definition: a rounded
    /// product, then a rounded sum), and stored to `{yp}` (post-incremented).
    macro_rules! dequantize_four {
        () => {
            concat!(
                "vcvt.f32.s32 s0, s0\n",
                "vcvt.f32.s32 s1, s1\n",
                "vcvt.f32.s32 s2, s2\n",
                "vcvt.f32.s32 s3, s3\n",
                "vmul.f32 s0, s0, s4\n",
                "vmul.f32 s1, s1, s4\n",
                "vmul.f32 s2, s2, s4\n",
                "vmul.f32 s3, s3, s4\n",
                "vadd.f32 s0, s0, s5\n",
                "vadd.f32 s1, s1, s5\n",
                "vadd.f32 s2, s2, s5\n",
                "vadd.f32 s3, s3, s5\n",
                "vstmia {yp}!, {{s0, s1, s2, s3}}",
            )
        };
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
                dequantize_four!(),
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

    /// A dense layer's rows two at a time over a quantised input, dequantised (see
    /// the portable version): one `asm!` loop over the pairs of rows, each pair's
    /// sums in `dot2_steps`' loop, then both outputs dequantised and stored.
    #[inline(always)]
    pub fn dense_pairs(
        q: &[u8],
        weights: &[u8],
        scales: &[u8],
        biases: &[u8],
        y: &mut [f32],
    ) -> usize {
        let n = q.len();
        let pairs = super::dense_pairs_count(n, weights, scales, biases, y);
        if pairs == 0 {
            return 0;
        }
        // Sixteen inputs per iteration of the inner loop.
        let steps = n / 16;
        // Twelve core registers carry the loop (the input's start and cursor, both
        // rows' cursors, the step count, two sums, five temporaries); the scale,
        // bias and output cursors, the pair count and the step count live in s6–s10
        // between pairs and come in through temporaries.
        // SAFETY: `dense_pairs_count` checked that `n = 16 · steps ≥ 16`, that the
        // weights hold `2 · pairs` rows of `n` bytes, the scales and biases
        // `2 · pairs` floats (4 bytes each) and `y` `2 · pairs` floats; each pair reads
        // `q[..n]` once, its two rows (row 2p through `p0`, row 2p + 1 through `p1`,
        // which then move on to rows 2p + 2 and 2p + 3: `p0` takes `p1`, `p1`
        // moves on by `n`), two scales, two biases, and writes `y[2p], y[2p + 1]`, so
        // nothing past those bounds is touched. Single-word LDRs may be unaligned on
        // the M4 (as in `dot2_steps`); the scales and biases are read with LDR for
        // that reason (VLDR would fault); `y` is an `f32` slice, aligned for VSTM. No
        // stack.
        unsafe {
            core::arch::asm!(
                "vmov s6, {x}",
                "vmov s7, {w0}",
                "vmov s8, {w1}",
                "vmov s9, {xa}",
                "vmov s10, {xb}",
                "2:",
                "vmov {n}, s10",
                "mov {xp}, {xbase}",
                "mov {a0}, #0",
                "mov {a1}, #0",
                "3:",
                dot2_half_step!(),
                dot2_half_step!(),
                dot2_half_step!(),
                dot2_half_step!(),
                "subs {n}, {n}, #1",
                "bne 3b",
                "mov {p0}, {p1}",
                "sub {x}, {xp}, {xbase}",
                "add {p1}, {p1}, {x}",
                "vmov {x}, {w0}, s6, s7",
                "ldr {w1}, [{x}], #4",
                "ldr {xa}, [{x}], #4",
                "ldr {xb}, [{w0}], #4",
                "ldr {n}, [{w0}], #4",
                "vmov s6, s7, {x}, {w0}",
                "vmov s0, s1, {a0}, {a1}",
                "vmov s2, s3, {w1}, {xa}",
                "vmov s4, s5, {xb}, {n}",
                "vcvt.f32.s32 s0, s0",
                "vcvt.f32.s32 s1, s1",
                "vmul.f32 s0, s0, s2",
                "vmul.f32 s1, s1, s3",
                "vadd.f32 s0, s0, s4",
                "vadd.f32 s1, s1, s5",
                "vmov {x}, s8",
                "vstmia {x}!, {{s0, s1}}",
                "vmov s8, {x}",
                "vmov {x}, s9",
                "subs {x}, {x}, #1",
                "vmov s9, {x}",
                "bne 2b",
                xbase = in(reg) q.as_ptr(),
                xp = out(reg) _,
                p0 = inout(reg) weights.as_ptr() => _,
                p1 = inout(reg) weights.as_ptr().wrapping_add(n) => _,
                n = out(reg) _,
                a0 = out(reg) _,
                a1 = out(reg) _,
                x = inout(reg) scales.as_ptr() => _,
                w0 = inout(reg) biases.as_ptr() => _,
                w1 = inout(reg) y.as_mut_ptr() => _,
                xa = inout(reg) pairs => _,
                xb = inout(reg) steps => _,
                out("s0") _,
                out("s1") _,
                out("s2") _,
                out("s3") _,
                out("s4") _,
                out("s5") _,
                out("s6") _,
                out("s7") _,
                out("s8") _,
                out("s9") _,
                out("s10") _,
                options(nostack),
            );
        }
        pairs
    }

    /// Two positions of the stride-2 single-channel 3×3 loop, the carried words
    /// `V[2i]`, `H[i]` in r3, r4 on entry and exit (see the portable version): each
    /// LDM fills its three registers in ascending order, so that the second
    /// position's new `V[2i + 4]`, `H[i + 2]` land in r3, r4 again; each sum starts in
    /// the register of the word it consumes first and leaves through `$a` / `$b`.
    macro_rules! stride2_two_positions {
        ($a:literal, $b:literal) => {
            concat!(
                "ldm {xp}!, {{r0, r1, r2}}\n",
                "smuad r3, r3, {wa}\n",
                "smlad r3, r0, {wb}, r3\n",
                "smlad r3, r1, {wc}, r3\n",
                "smlad r3, r4, {wd}, r3\n",
                "smlad r3, r2, {we}, r3\n",
                "vmov ",
                $a,
                ", r3\n",
                "ldm {xp}!, {{r0, r3, r4}}\n",
                "smuad r1, r1, {wa}\n",
                "smlad r1, r0, {wb}, r1\n",
                "smlad r1, r3, {wc}, r1\n",
                "smlad r1, r2, {wd}, r1\n",
                "smlad r1, r4, {we}, r1\n",
                "vmov ",
                $b,
                ", r1\n",
            )
        };
    }

    /// The stride-2 single-channel 3×3 convolution's rows (see the portable
    /// version): per row, four positions per pass and a last pair when the width is
    /// 2 modulo 4; 63 cycles per four positions (36 multiply–accumulates) by the
    /// Cortex-M4's timings, dequantisation and stores included.
    #[inline(always)]
    pub fn stride2_rows(
        stream: &[u32],
        w: [u32; 5],
        ow: usize,
        scale: f32,
        bias: f32,
        y: &mut [f32],
    ) {
        let per_row = 2 + 3 * ow;
        let rows = (stream.len() / per_row).min(y.len() / ow.max(1));
        if ow < 4 || !ow.is_multiple_of(2) || rows == 0 {
            return super::portable_stride2_rows(stream, w, ow, scale, bias, y);
        }
        let quads = ow / 4;
        let [wa, wb, wc, wd, we] = w;
        // Scale, bias, the rows left and the passes per row wait in s4, s5, s7, s8
        // (`sreg` operands need the `vfp2` feature, which this single-precision FPU
        // lacks, so they enter through r0–r3); the passes left in the row in s6.
        // Twelve core registers hold the five weight words, both pointers and five
        // stream words. `$($pair)*`: the last pair of a row, in the variant for widths
        // of 2 modulo 4 (chosen here, not tested per row).
        // SAFETY: each row reads its `2 + 3 · ow` words from `xp` (LDM: 2, then 3 per
        // position: `4 · quads` positions, and 2 more with the pair, `ow` in all) and
        // writes its `ow` floats to `yp` (VSTM), `rows` times: exactly the first
        // `rows · per_row` words of `stream` and `rows · ow` floats of `y`
        // (exclusively borrowed), both checked above, with `rows ≥ 1` and
        // `quads ≥ 1`. Word-aligned (`u32`/`f32` slices). No stack.
        macro_rules! stride2_rows_asm {
            ($($pair:tt)*) => {
                unsafe {
                    core::arch::asm!(
                        "vmov s4, r0",
                        "vmov s5, r1",
                        "vmov s7, r2",
                        "vmov s8, r3",
                        "3:",
                        "ldm {xp}!, {{r3, r4}}",
                        "vmov r0, s8",
                        "vmov s6, r0",
                        "2:",
                        stride2_two_positions!("s0", "s1"),
                        stride2_two_positions!("s2", "s3"),
                        dequantize_four!(),
                        "vmov r0, s6",
                        "subs r0, r0, #1",
                        "vmov s6, r0",
                        "bne 2b",
                        $($pair)*
                        "vmov r0, s7",
                        "subs r0, r0, #1",
                        "vmov s7, r0",
                        "bne 3b",
                        xp = inout(reg) stream.as_ptr() => _,
                        yp = inout(reg) y.as_mut_ptr() => _,
                        wa = in(reg) wa,
                        wb = in(reg) wb,
                        wc = in(reg) wc,
                        wd = in(reg) wd,
                        we = in(reg) we,
                        inout("r0") scale.to_bits() => _,
                        inout("r1") bias.to_bits() => _,
                        inout("r2") rows => _,
                        inout("r3") quads => _,
                        out("r4") _,
                        out("s0") _,
                        out("s1") _,
                        out("s2") _,
                        out("s3") _,
                        out("s4") _,
                        out("s5") _,
                        out("s6") _,
                        out("s7") _,
                        out("s8") _,
                        options(nostack),
                    );
                }
            };
        }
        if ow % 4 == 2 {
            stride2_rows_asm!(
                stride2_two_positions!("s0", "s1"),
                "vcvt.f32.s32 s0, s0",
                "vcvt.f32.s32 s1, s1",
                "vmul.f32 s0, s0, s4",
                "vmul.f32 s1, s1, s4",
                "vadd.f32 s0, s0, s5",
                "vadd.f32 s1, s1, s5",
                "vstmia {yp}!, {{s0, s1}}",
            );
        } else {
            stride2_rows_asm!();
        }
    }

    /// Four values from `{xp}` (post-incremented) to `t`, the truncated
    /// `v · m + 127.5` (`m` in s4, 127.5 in s5), in r0–r3. The four conversions run
    /// back to back in the FPU and come out through two 64-bit `VMOV`s.
    macro_rules! quantize_four_truncated {
        () => {
            concat!(
                "vldmia {xp}!, {{s0, s1, s2, s3}}\n",
                "vmul.f32 s0, s0, s4\n",
                "vmul.f32 s1, s1, s4\n",
                "vmul.f32 s2, s2, s4\n",
                "vmul.f32 s3, s3, s4\n",
                "vadd.f32 s0, s0, s5\n",
                "vadd.f32 s1, s1, s5\n",
                "vadd.f32 s2, s2, s5\n",
                "vadd.f32 s3, s3, s5\n",
                "vcvt.s32.f32 s0, s0\n",
                "vcvt.s32.f32 s1, s1\n",
                "vcvt.s32.f32 s2, s2\n",
                "vcvt.s32.f32 s3, s3\n",
                "vmov r0, r1, s0, s1\n",
                "vmov r2, r3, s2, s3",
            )
        };
    }

    /// The quantisation loop of `quantize_bytes`: four values per pass
    /// ([`quantize_four_truncated`]), then `$clamp`, the clamp, packing and store of
    /// r0–r3 (r12 holds 127 in both halfwords).
    macro_rules! quantize_loop {
        ($x:expr, $q:expr, $quads:expr, $m:expr, $clamp:literal) => {
            // SAFETY: `xp` advances by 16 bytes per pass through `quads ≥ 1`
            // passes, reading the first `4 · quads` floats of `$x`; `qp` advances
            // through the bytes the caller sized for `4 · quads` values of
            // `$q` (exclusively borrowed). Word stores may be unaligned on the M4
            // (CCR.UNALIGN_TRP is clear out of reset, as the compiler itself
            // assumes). No stack.
            unsafe {
                core::arch::asm!(
                    "vmov s4, r0",
                    "vmov s5, r1",
                    "2:",
                    quantize_four_truncated!(),
                    $clamp,
                    "subs {n}, {n}, #1",
                    "bne 2b",
                    xp = inout(reg) $x.as_ptr() => _,
                    qp = inout(reg) $q.as_mut_ptr() => _,
                    n = inout(reg) $quads => _,
                    inout("r0") $m.to_bits() => _,
                    inout("r1") 127.5f32.to_bits() => _,
                    out("r2") _,
                    out("r3") _,
                    in("r12") 0x007f_007fu32,
                    out("s0") _,
                    out("s1") _,
                    out("s2") _,
                    out("s3") _,
                    out("s4") _,
                    out("s5") _,
                    options(nostack),
                );
            }
        };
    }

    /// `q[i] = quantize::<RELU>(x[i], m)` as one byte each (see the portable version).
    #[inline(always)]
    pub fn quantize_bytes<const RELU: bool>(x: &[f32], m: f32, q: &mut [u8]) {
        let quads = x.len().min(q.len()) / 4;
        let (Some((xh, xt)), Some((qh, qt))) = (
            x.split_at_checked(4 * quads),
            q.split_at_mut_checked(4 * quads),
        ) else {
            return;
        };
        if quads > 0 {
            if RELU {
                // usat7(max(t, 0) − 127) = usat7(usat8(t) − 127), two values at a
                // time: USAT, PKHBT (values 0 and 2, 1 and 3), SSUB16, USAT16 and
                // one ORR that interleaves the bytes: 11 cycles per four values,
                // against 15 (BIC, SUB, USAT each, three BFI).
                quantize_loop!(
                    xh,
                    qh,
                    quads,
                    m,
                    "usat r0, #8, r0
                    usat r1, #8, r1
                    usat r2, #8, r2
                    usat r3, #8, r3
                    pkhbt r0, r0, r2, lsl #16
                    pkhbt r1, r1, r3, lsl #16
                    ssub16 r0, r0, r12
                    ssub16 r1, r1, r12
                    usat16 r0, #7, r0
                    usat16 r1, #7, r1
                    orr r0, r0, r1, lsl #8
                    str r0, [{qp}], #4"
                );
            } else {
                // ssat8(max(t, 0) − 127) per value.
                quantize_loop!(
                    xh,
                    qh,
                    quads,
                    m,
                    "bic r0, r0, r0, asr #31
                    bic r1, r1, r1, asr #31
                    bic r2, r2, r2, asr #31
                    bic r3, r3, r3, asr #31
                    sub r0, r0, #127
                    sub r1, r1, #127
                    sub r2, r2, #127
                    sub r3, r3, #127
                    ssat r0, #8, r0
                    ssat r1, #8, r1
                    ssat r2, #8, r2
                    ssat r3, #8, r3
                    bfi r0, r1, #8, #8
                    bfi r0, r2, #16, #8
                    bfi r0, r3, #24, #8
                    str r0, [{qp}], #4"
                );
            }
        }
        super::portable_quantize_bytes::<RELU>(xt, m, qt);
    }

    /// The halfword quantisation of `rows` rows of `width` values of `x`, row `r` at
    /// byte `r · stride` of `q` (a plane with a zero border: one call for the image,
    /// not one per row; see the portable version).
    #[inline(always)]
    pub fn quantize_halves_rows(
        x: &[f32],
        width: usize,
        m: f32,
        q: &mut [u8],
        stride: usize,
        rows: usize,
    ) {
        let fits = rows
            .checked_sub(1)
            .and_then(|r| r.checked_mul(stride))
            .and_then(|b| b.checked_add(2 * width))
            .is_some_and(|end| end <= q.len());
        if width < 4
            || !width.is_multiple_of(4)
            || stride < 2 * width
            || !fits
            || x.len() < rows.saturating_mul(width)
        {
            return super::portable_quantize_halves_rows(x, width, m, q, stride, rows);
        }
        // SAFETY: row `r` reads floats `r · width .. (r + 1) · width` of `x` (`xp`
        // advances 16 bytes per pass, `width / 4` passes) and writes bytes
        // `r · stride .. r · stride + 2 · width` of `q` (`qp` advances 8 bytes per
        // pass, then `stride − 2 · width` to the next row), `rows ≥ 1` times: inside
        // both slices (checked above; `q` exclusively borrowed). Word stores may be
        // unaligned on the M4. No stack.
        unsafe {
            core::arch::asm!(
                "vmov s4, r0",
                "vmov s5, r1",
                "3:",
                "mov {n}, {quads}",
                "2:",
                // ssat8(max(t, 0) − 127) = ssat8(usat8(t) − 127): the clamp at 0
                // and the subtraction two values at a time (USAT, PKHBT, SSUB16,
                // SSAT16: 10 cycles per four values, against 14).
                quantize_four_truncated!(),
                "usat r0, #8, r0",
                "usat r1, #8, r1",
                "usat r2, #8, r2",
                "usat r3, #8, r3",
                "pkhbt r0, r0, r1, lsl #16",
                "pkhbt r2, r2, r3, lsl #16",
                "ssub16 r0, r0, {c127}",
                "ssub16 r2, r2, {c127}",
                "ssat16 r0, #8, r0",
                "ssat16 r2, #8, r2",
                "str r0, [{qp}], #4",
                "str r2, [{qp}], #4",
                "subs {n}, {n}, #1",
                "bne 2b",
                "add {qp}, {qp}, {skip}",
                "subs {rows}, {rows}, #1",
                "bne 3b",
                xp = inout(reg) x.as_ptr() => _,
                qp = inout(reg) q.as_mut_ptr() => _,
                n = out(reg) _,
                quads = in(reg) width / 4,
                skip = in(reg) stride - 2 * width,
                c127 = in(reg) 0x007f_007fu32,
                rows = inout(reg) rows => _,
                inout("r0") m.to_bits() => _,
                inout("r1") 127.5f32.to_bits() => _,
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
    }
}

pub(crate) use imp::{dot2_steps, smlad, ssat8, sxtb16, sxtb16_ror8, usat7};

#[cfg(all(pursamere_dsp, pursamere_fpu))]
pub(crate) use fpu::{
    dense_pairs, dot22_pairs, pair5_run, quantize_bytes, quantize_halves_rows, stride2_rows,
};
#[cfg(not(all(pursamere_dsp, pursamere_fpu)))]
pub(crate) use {
    portable_dense_pairs as dense_pairs, portable_dot22_pairs as dot22_pairs,
    portable_pair5_run as pair5_run, portable_quantize_bytes as quantize_bytes,
    portable_quantize_halves_rows as quantize_halves_rows, portable_stride2_rows as stride2_rows,
};

/// `sums[4q..4q + 4] = [s00, s10, s01, s11]` for each pair `q` of rows, `srp` the
/// sum over `8 · steps` inputs of the pair's row `r` with position `p`'s inputs:
/// the 2 × 2 blocks (two output channels, two output positions) of the int8
/// convolution. Each pair's two rows are interleaved by word (`w` = row 0 bytes 0–3
/// as a little-endian word, row 1 bytes 0–3, row 0 bytes 4–7, …; the pairs one after
/// the other, `4 · steps` words each) and each group of four inputs arrives already
/// unpacked, both positions in turn (`x` = position 0's `sxtb16(word)`,
/// `sxtb16_ror8(word)`, then position 1's, then the next group), so that a row word
/// is unpacked once for two positions and an input word never in the loop: 21
/// cycles per 16 multiply–accumulates by the Cortex-M4's timings (three two-word
/// LDMs, four SXTB16, eight SMLAD), against 25 for four rows of one position (the
/// loop this replaced).
#[inline(always)]
pub(crate) fn portable_dot22_pairs(x: &[u32], w: &[u32], steps: usize, sums: &mut [i32]) {
    for (s, wq) in sums.chunks_exact_mut(4).zip(w.chunks(4 * steps.max(1))) {
        let [mut a00, mut a10, mut a01, mut a11] = [0i32; 4];
        for (xg, wg) in x.chunks_exact(4).zip(wq.chunks_exact(2)).take(2 * steps) {
            if let (&[x0a, x0b, x1a, x1b], &[w0, w1]) = (xg, wg) {
                let (l0, h0) = (imp::sxtb16(w0), imp::sxtb16_ror8(w0));
                let (l1, h1) = (imp::sxtb16(w1), imp::sxtb16_ror8(w1));
                a00 = imp::smlad(x0b, h0, imp::smlad(x0a, l0, a00));
                a10 = imp::smlad(x0b, h1, imp::smlad(x0a, l1, a10));
                a01 = imp::smlad(x1b, h0, imp::smlad(x1a, l0, a01));
                a11 = imp::smlad(x1b, h1, imp::smlad(x1a, l1, a11));
            }
        }
        s.copy_from_slice(&[a00, a10, a01, a11]);
    }
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

/// `y[r · ow + i] = (Σ smlad) as f32 · scale + bias` for the rows `r` of the stride-2
/// single-channel 3×3 convolution's stream (`2 + 3 · ow` words per output row:
/// `V[0], H[0]`, then `V[2i + 1], V[2i + 2], H[i + 1]` for each position `i`; see
/// `int8_conv_single_3x3_s2`), with `w = [(w0, w3), (w1, w4), (w2, w5), (w6, w7),
/// (w8, 0)]`: position `i` sums `V[2i]·w[0] + V[2i+1]·w[1] + V[2i+2]·w[2] +
/// H[i]·w[3] + H[i+1]·w[4]`, the first and fourth words carried over from the
/// position before. As many rows as both `stream` and `y` hold.
#[inline(always)]
pub(crate) fn portable_stride2_rows(
    stream: &[u32],
    w: [u32; 5],
    ow: usize,
    scale: f32,
    bias: f32,
    y: &mut [f32],
) {
    let [wa, wb, wc, wd, we] = w;
    for (row, yr) in stream
        .chunks_exact(2 + 3 * ow)
        .zip(y.chunks_exact_mut(ow.max(1)))
    {
        if let [v0, h0, rest @ ..] = row {
            let (mut va, mut ha) = (*v0, *h0);
            for (t, yo) in rest.chunks_exact(3).zip(yr) {
                if let &[v1, v2, h1] = t {
                    let acc = imp::smlad(
                        h1,
                        we,
                        imp::smlad(
                            ha,
                            wd,
                            imp::smlad(v2, wc, imp::smlad(v1, wb, imp::smlad(va, wa, 0))),
                        ),
                    );
                    *yo = acc as f32 * scale + bias;
                    (va, ha) = (v2, h1);
                }
            }
        }
    }
}

/// [`portable_quantize_halves`] of `rows` rows of `width` values of `x`, row `r`
/// written at byte `r · stride` of `q` (rows that do not fit whole are skipped): the
/// single-channel 3×3 convolution's zero-bordered plane in one call.
#[inline(always)]
pub(crate) fn portable_quantize_halves_rows(
    x: &[f32],
    width: usize,
    m: f32,
    q: &mut [u8],
    stride: usize,
    rows: usize,
) {
    for (xrow, r) in x.chunks_exact(width.max(1)).take(rows).zip(0..) {
        let start = r * stride;
        if let Some(dst) = q.get_mut(start..start + 2 * width) {
            portable_quantize_halves(xrow, m, dst);
        }
    }
}

/// `q[i] = quantize::<RELU>(x[i], m)` as one two's-complement byte each, over the
/// shorter of `x` and `q`: the int8 layers' input quantisation (with `RELU`, of
/// `relu(x)`).
#[inline(always)]
pub(crate) fn portable_quantize_bytes<const RELU: bool>(x: &[f32], m: f32, q: &mut [u8]) {
    for (b, &v) in q.iter_mut().zip(x) {
        *b = crate::quantize::<RELU>(v, m) as i8 as u8;
    }
}

/// `q[2i..2i + 2] = quantize::<false>(x[i], m)` as a little-endian signed halfword
/// each (as many values as both hold): the single-channel 3×3 convolution's plane,
/// where two neighbouring values already form one `SMLAD` operand.
#[inline(always)]
pub(crate) fn portable_quantize_halves(x: &[f32], m: f32, q: &mut [u8]) {
    for (d, &v) in q.chunks_exact_mut(2).zip(x) {
        d.copy_from_slice(&(crate::quantize::<false>(v, m) as i16).to_le_bytes());
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

/// How many pairs of rows [`portable_dense_pairs`] (and its `asm!` twin) computes:
/// all whole pairs that the weights (rows of `n` bytes), scales, biases (4 bytes per
/// row) and `y` hold, or 0 when `n` is not a positive multiple of 16 (the `asm!`
/// loop's sixteen inputs per iteration).
#[inline(always)]
pub(crate) fn dense_pairs_count(
    n: usize,
    weights: &[u8],
    scales: &[u8],
    biases: &[u8],
    y: &[f32],
) -> usize {
    if n == 0 || !n.is_multiple_of(16) {
        return 0;
    }
    (weights.len() / (2 * n))
        .min(scales.len() / 8)
        .min(biases.len() / 8)
        .min(y.len() / 2)
}

/// `y[o] = (Σ_i w_o[i] · q[i]) as f32 · scale[o] + bias[o]` for the rows `o` of the
/// first [`dense_pairs_count`] pairs (`w_o` row `o` of `weights`, `q.len()` bytes;
/// scales and biases little-endian floats): the int8 dense layer's output loop,
/// two rows sharing each unpacked input word as in [`portable_dot2_steps`]. Returns
/// the number of pairs; the caller does the rest (an odd last row, a length not a
/// multiple of 16).
#[inline(always)]
pub(crate) fn portable_dense_pairs(
    q: &[u8],
    weights: &[u8],
    scales: &[u8],
    biases: &[u8],
    y: &mut [f32],
) -> usize {
    let n = q.len();
    let pairs = dense_pairs_count(n, weights, scales, biases, y);
    if pairs == 0 {
        return 0;
    }
    let mut params = scales_and_biases(scales, biases);
    let rows = weights.chunks_exact(2 * n);
    let outs = y.chunks_exact_mut(2);
    for (rr, yo) in rows.zip(outs).take(pairs) {
        let (r0, r1) = rr.split_at(n);
        let sums = portable_dot2_steps(q, r0, r1, n / 8, [0, 0]);
        for (yv, a) in yo.iter_mut().zip(sums) {
            if let Some((scale, bias)) = params.next() {
                *yv = super::dequantize(a, scale, bias);
            }
        }
    }
    pairs
}

/// A dense layer's scales and biases (little-endian floats, as the model stores them:
/// not necessarily aligned), decoded in row order.
#[inline(always)]
pub(crate) fn scales_and_biases<'a>(
    scales: &'a [u8],
    biases: &'a [u8],
) -> impl Iterator<Item = (f32, f32)> + 'a {
    let (scales, _) = scales.as_chunks::<4>();
    let (biases, _) = biases.as_chunks::<4>();
    scales
        .iter()
        .zip(biases)
        .map(|(s, b)| (f32::from_le_bytes(*s), f32::from_le_bytes(*b)))
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
