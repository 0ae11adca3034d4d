//! x86-64 kernels. Every function here is `unsafe`: the caller guarantees the CPU
//! feature and the buffer lengths (`shapes_ok` in the crate root).

pub(crate) mod avx512 {
    //! AVX-512F: one `__m512` holds the sixteen partial sums of a dot product, lane
    //! `l` for the elements `i ≡ l (mod 16)`, exactly as the portable kernel keeps
    //! them; `mul` then `add` (never FMA).
    // Register tiles read most clearly as `acc[r][s]` over index ranges.
    #![allow(clippy::needless_range_loop)]

    use core::arch::x86_64::*;
    use pursamere_core::Dense;

    /// Most samples processed together (registers: `R × S` accumulators).
    const S_MAX: usize = 8;
    /// Rows of a VJP block whose coefficients are gathered at once.
    const CHUNK: usize = 512;
    /// Room for a block's coefficients and row indices, and for the last full-width
    /// store of their packing.
    const CS_LEN: usize = CHUNK + 16;

    /// Sixteen int8 weights at `p` as f32 (exact).
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn widen16(p: *const u8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())))
    }

    /// The first `t < 16` int8 weights at `p` as f32, zeros after them.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn widen_part(p: *const u8, t: usize) -> __m512 {
        let mut b = [0u8; 16];
        core::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), t.min(16));
        widen16(b.as_ptr())
    }

    /// A weight element the kernels read: an int8 byte from the model file, or the
    /// same weight already widened to f32 (exact either way).
    pub(crate) trait Elem: Copy {
        /// Sixteen weights at `p` as f32.
        unsafe fn load16(p: *const Self) -> __m512;
        /// The first `t < 16` weights at `p` as f32, zeros after them.
        unsafe fn load_part(p: *const Self, t: usize) -> __m512;
    }

    impl Elem for u8 {
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl")]
        unsafe fn load16(p: *const u8) -> __m512 {
            widen16(p)
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl")]
        unsafe fn load_part(p: *const u8, t: usize) -> __m512 {
            widen_part(p, t)
        }
    }

    impl Elem for f32 {
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl")]
        unsafe fn load16(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl")]
        unsafe fn load_part(p: *const f32, t: usize) -> __m512 {
            _mm512_maskz_loadu_ps(((1u32 << t.min(16)) - 1) as __mmask16, p)
        }
    }

    /// The core's fixed reduction tree: `s[k] + s[k+8]`, then `+4`, `+2`, `+1`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn tree(a: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(a);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
        let s8 = _mm256_add_ps(lo, hi);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
    }

    /// [`tree`] of eight vectors at once, with the same additions in the same operand
    /// order: the first level per vector (256-bit halves), the next three across
    /// pairs of vectors, so that eight sums cost about half the operations of eight
    /// trees — they weigh when the rows are short (256 inputs: 16 products per sum).
    /// `v[j]`'s sum lands in lane `[0, 4, 1, 5, 2, 6, 3, 7][j]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn tree8(v: &[__m512; 8]) -> __m256 {
        // Lanes k and k + 8.
        let mut h = [_mm256_setzero_ps(); 8];
        for (hj, &vj) in h.iter_mut().zip(v) {
            let lo = _mm512_castps512_ps256(vj);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(vj), 1));
            *hj = _mm256_add_ps(lo, hi);
        }
        // Lanes k and k + 4: [h₂ⱼ | h₂ⱼ₊₁], one 128-bit half each.
        let mut q = [_mm256_setzero_ps(); 4];
        for (j, qj) in q.iter_mut().enumerate() {
            let (a, b) = (h[2 * j], h[2 * j + 1]);
            *qj = _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            );
        }
        // Lanes k and k + 2.
        let mut r = [_mm256_setzero_ps(); 2];
        for (j, rj) in r.iter_mut().enumerate() {
            let (a, b) = (_mm256_castps_pd(q[2 * j]), _mm256_castps_pd(q[2 * j + 1]));
            *rj = _mm256_add_ps(
                _mm256_castpd_ps(_mm256_unpacklo_pd(a, b)),
                _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)),
            );
        }
        // Lanes 0 and 1.
        _mm256_add_ps(
            _mm256_shuffle_ps::<0x88>(r[0], r[1]),
            _mm256_shuffle_ps::<0xDD>(r[0], r[1]),
        )
    }

    /// Where [`tree8`] leaves the sum of its input `j`.
    const TREE8_LANE: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

    /// Dot products of `R` rows (at `w`, stride `n`) with `S` samples (at `xs`,
    /// stride `n`): `out[r][s]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn fwd_tile<E: Elem, const R: usize, const S: usize>(
        w: *const E,
        n: usize,
        xs: *const f32,
        layer: &Dense<'_>,
        o: usize,
        ys: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); S]; R];
        let chunks = n / 16;
        for k in 0..chunks {
            let mut wv = [_mm512_setzero_ps(); R];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = E::load16(w.add(r * n + 16 * k));
            }
            for s in 0..S {
                let xv = _mm512_loadu_ps(xs.add(s * n + 16 * k));
                for r in 0..R {
                    acc[r][s] = _mm512_add_ps(acc[r][s], _mm512_mul_ps(wv[r], xv));
                }
            }
        }
        let t = n % 16;
        if t > 0 {
            let base = 16 * chunks;
            let mask: __mmask16 = (1u16 << t) - 1;
            let mut wv = [_mm512_setzero_ps(); R];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = E::load_part(w.add(r * n + base), t);
            }
            for s in 0..S {
                let xv = _mm512_maskz_loadu_ps(mask, xs.add(s * n + base));
                for r in 0..R {
                    acc[r][s] =
                        _mm512_mask_add_ps(acc[r][s], mask, acc[r][s], _mm512_mul_ps(wv[r], xv));
                }
            }
        }
        let m = layer.outputs as usize;
        for r in 0..R {
            let scale = f32_at(layer.scales.as_ptr(), o + r);
            let bias = f32_at(layer.bias.as_ptr(), o + r);
            let y = ys.add(o + r);
            if S == 8 {
                // `dot · scale + bias` for the eight samples at once: a multiply then
                // an add, lane by lane, as the core does.
                let mut v = [_mm512_setzero_ps(); 8];
                v.copy_from_slice(&acc[r][..8]);
                let dots = tree8(&v);
                let out = _mm256_add_ps(
                    _mm256_mul_ps(dots, _mm256_set1_ps(scale)),
                    _mm256_set1_ps(bias),
                );
                let mut lanes = [0.0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), out);
                for (s, &lane) in TREE8_LANE.iter().enumerate() {
                    *y.add(s * m) = lanes[lane];
                }
            } else {
                for s in 0..S {
                    *y.add(s * m) = tree(acc[r][s]) * scale + bias;
                }
            }
        }
    }

    /// Little-endian f32 number `k` of `bytes` (in bounds: checked by the caller).
    #[inline(always)]
    unsafe fn f32_at(bytes: *const u8, k: usize) -> f32 {
        f32::from_le_bytes(core::ptr::read_unaligned(
            bytes.add(4 * k).cast::<[u8; 4]>(),
        ))
    }

    /// Forward of `S` samples starting at `xs`/`ys`.
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn fwd_group<E: Elem, const S: usize>(
        layer: &Dense<'_>,
        w: *const E,
        xs: *const f32,
        ys: *mut f32,
    ) {
        const R: usize = 3;
        let (n, m) = (layer.inputs as usize, layer.outputs as usize);
        let mut o = 0;
        while o + R <= m {
            fwd_tile::<E, R, S>(w.add(o * n), n, xs, layer, o, ys);
            o += R;
        }
        if o + 2 <= m {
            fwd_tile::<E, 2, S>(w.add(o * n), n, xs, layer, o, ys);
            o += 2;
        }
        while o < m {
            fwd_tile::<E, 1, S>(w.add(o * n), n, xs, layer, o, ys);
            o += 1;
        }
    }

    /// The core's batched dense forward pass (`Dense::forward_batch`), same bits.
    ///
    /// # Safety
    /// AVX-512F present; `weights ≥ n·m`, `scales`/`bias ≥ 4m` bytes,
    /// `xs ≥ batch·n`, `ys ≥ batch·m`, `n, m > 0`.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(crate) unsafe fn forward<E: Elem>(
        layer: &Dense<'_>,
        w: &[E],
        xs: &[f32],
        ys: &mut [f32],
        batch: usize,
    ) {
        let (n, m) = (layer.inputs as usize, layer.outputs as usize);
        let w = w.as_ptr();
        let mut s0 = 0;
        while s0 < batch {
            let (x, y) = (xs.as_ptr().add(s0 * n), ys.as_mut_ptr().add(s0 * m));
            let left = batch - s0;
            s0 += if left >= S_MAX {
                fwd_group::<E, S_MAX>(layer, w, x, y);
                S_MAX
            } else if left >= 4 {
                fwd_group::<E, 4>(layer, w, x, y);
                4
            } else if left >= 2 {
                fwd_group::<E, 2>(layer, w, x, y);
                2
            } else {
                fwd_group::<E, 1>(layer, w, x, y);
                1
            };
        }
    }

    /// `gx[s][i..i + 16·T] += Σ_j w[idx[j]][i..] · cs[s][j]` in increasing `j`, for a
    /// tile of `T` vectors (`tail` < 16 limits the last vector to that many lanes;
    /// `first`: `gx` holds nothing yet, the sums start from +0).
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn vjp_tile<E: Elem, const T: usize, const S: usize>(
        w: *const E,
        n: usize,
        idx: &[u32],
        cs: &[[f32; CS_LEN]; S],
        gx: *mut f32,
        tail: usize,
        first: bool,
    ) {
        let mask: __mmask16 = if tail >= 16 { !0 } else { (1u16 << tail) - 1 };
        // The first block of rows starts from +0 in registers, the others from what
        // the earlier blocks left in `gx` (the same sums either way).
        let mut acc = [[_mm512_setzero_ps(); T]; S];
        if !first {
            for (s, a) in acc.iter_mut().enumerate() {
                for (t, v) in a.iter_mut().enumerate() {
                    *v = _mm512_maskz_loadu_ps(
                        if t + 1 == T { mask } else { !0 },
                        gx.add(s * n + 16 * t),
                    );
                }
            }
        }
        for (j, &o) in idx.iter().enumerate() {
            let row = w.add(o as usize * n);
            let mut wv = [_mm512_setzero_ps(); T];
            for (t, v) in wv.iter_mut().enumerate() {
                *v = if t + 1 == T && tail < 16 {
                    E::load_part(row.add(16 * t), tail)
                } else {
                    E::load16(row.add(16 * t))
                };
            }
            for s in 0..S {
                // `j < idx.len() ≤ CHUNK < CS_LEN`: in bounds (the caller packs at
                // most `CHUNK` rows).
                let cb = _mm512_set1_ps(*cs[s].get_unchecked(j));
                for t in 0..T {
                    acc[s][t] = _mm512_add_ps(acc[s][t], _mm512_mul_ps(wv[t], cb));
                }
            }
        }
        for (s, a) in acc.iter().enumerate() {
            for (t, v) in a.iter().enumerate() {
                _mm512_mask_storeu_ps(
                    gx.add(s * n + 16 * t),
                    if t + 1 == T { mask } else { !0 },
                    *v,
                );
            }
        }
    }

    /// VJP of `S` samples starting at `gys`/`gxs`.
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn vjp_group<E: Elem, const S: usize>(
        layer: &Dense<'_>,
        w: *const E,
        gys: *const f32,
        gxs: *mut f32,
    ) {
        let (n, m) = (layer.inputs as usize, layer.outputs as usize);
        let mut idx = [0u32; CS_LEN];
        // One row per sample of this group (zeroed per call: no more than needed).
        let mut cs = [[0.0f32; CS_LEN]; S];
        let mut o0 = 0;
        while o0 < m {
            let end = (o0 + CHUNK).min(m);
            // The rows of this block with a non-zero coefficient `scale · gy` for some
            // sample (skipping the others changes no bit: see `DenseKernels`), sixteen
            // rows at a time, packed by a compress (the full-width stores may write up
            // to 15 lanes past the count: `CS_LEN` leaves room).
            let mut cnt = 0;
            let mut o = o0;
            while o < end {
                let valid: __mmask16 = if end - o >= 16 {
                    !0
                } else {
                    (1u16 << (end - o)) - 1
                };
                let scale = _mm512_maskz_loadu_ps(valid, layer.scales.as_ptr().add(4 * o).cast());
                let mut c = [_mm512_setzero_ps(); S];
                // The bits of every coefficient but the sign, or-ed over the samples:
                // non-zero exactly where some `c != 0.0` (a NaN counts, ±0 does not).
                let mut bits = _mm512_setzero_si512();
                for (s, cv) in c.iter_mut().enumerate() {
                    let gy = _mm512_maskz_loadu_ps(valid, gys.add(s * m + o));
                    *cv = _mm512_mul_ps(scale, gy);
                    bits = _mm512_or_si512(bits, _mm512_castps_si512(*cv));
                }
                let magnitude = _mm512_and_si512(bits, _mm512_set1_epi32(0x7fff_ffff));
                let any = _mm512_mask_test_epi32_mask(valid, magnitude, magnitude);
                for (s, cv) in c.iter().enumerate() {
                    _mm512_storeu_ps(
                        cs[s].as_mut_ptr().add(cnt),
                        _mm512_maskz_compress_ps(any, *cv),
                    );
                }
                let rows = _mm512_add_epi32(
                    _mm512_set1_epi32(o as i32),
                    _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                );
                _mm512_storeu_si512(
                    idx.as_mut_ptr().add(cnt).cast(),
                    _mm512_maskz_compress_epi32(any, rows),
                );
                cnt += any.count_ones() as usize;
                o += 16;
            }
            let idx = &idx[..cnt];
            let mut i = 0;
            if S <= 4 {
                while i + 96 <= n {
                    vjp_tile::<E, 6, S>(w.add(i), n, idx, &cs, gxs.add(i), 16, o0 == 0);
                    i += 96;
                }
            }
            while i + 48 <= n {
                vjp_tile::<E, 3, S>(w.add(i), n, idx, &cs, gxs.add(i), 16, o0 == 0);
                i += 48;
            }
            if i + 32 <= n {
                vjp_tile::<E, 2, S>(w.add(i), n, idx, &cs, gxs.add(i), 16, o0 == 0);
                i += 32;
            }
            if i + 16 <= n {
                vjp_tile::<E, 1, S>(w.add(i), n, idx, &cs, gxs.add(i), 16, o0 == 0);
                i += 16;
            }
            if i < n {
                let t = n - i;
                vjp_tile::<E, 1, S>(w.add(i), n, idx, &cs, gxs.add(i), t, o0 == 0);
            }
            o0 = end;
        }
    }

    /// The core's batched dense VJP (`Dense::vjp_batch`), same bits.
    ///
    /// # Safety
    /// As for [`forward`], with `gxs ≥ batch·n`, `gys ≥ batch·m`.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(crate) unsafe fn vjp<E: Elem>(
        layer: &Dense<'_>,
        w: &[E],
        gys: &[f32],
        gxs: &mut [f32],
        batch: usize,
    ) {
        let (n, m) = (layer.inputs as usize, layer.outputs as usize);
        let w = w.as_ptr();
        let mut s0 = 0;
        while s0 < batch {
            let (gy, gx) = (gys.as_ptr().add(s0 * m), gxs.as_mut_ptr().add(s0 * n));
            let left = batch - s0;
            s0 += if left >= 4 {
                vjp_group::<E, 4>(layer, w, gy, gx);
                4
            } else if left >= 2 {
                vjp_group::<E, 2>(layer, w, gy, gx);
                2
            } else {
                vjp_group::<E, 1>(layer, w, gy, gx);
                1
            };
        }
    }
}
