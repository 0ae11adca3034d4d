//! The `asm!` kernels against their portable twins on values a model's images
//! rarely reach: NaN, infinities, subnormals, both clamps, the rounding edges of
//! the quantisation, multipliers from tiny to huge, lengths with a tail. The
//! firmware runs it once at boot under QEMU (`tests/firmware`), where the `asm!`
//! versions are the ones compiled; on the host both sides are the portable code.

use crate::dsp::{
    dense_pairs, dot22_pairs, dot2_steps, pair5_run, portable_dense_pairs, portable_dot22_pairs,
    portable_dot2_steps, portable_pair5_run, portable_quantize_bytes,
    portable_quantize_halves_rows, portable_stride2_rows, quantize_bytes, quantize_halves_rows,
    stride2_rows,
};

/// Values at the quantiser's edges (with the multipliers below: both clamps, the
/// half-way points of the rounding, the saturating conversion) and IEEE specials.
const EDGES: [f32; 23] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    -0.5,
    127.5,
    -127.5,
    -128.5,
    -127.499_99,
    126.499_99,
    1.0e-40,
    -1.0e-40,
    f32::MIN_POSITIVE,
    f32::MAX,
    f32::MIN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    -f32::NAN,
    2.147_483_6e9,
    -2.147_483_6e9,
    3.0e9,
];

/// Input multipliers: a calibrated one, 1, tiny, huge, negative, zero, NaN.
const MULTIPLIERS: [f32; 7] = [127.0 / 3.5, 1.0, 1.0e-30, 1.0e30, -2.0, 0.0, f32::NAN];

/// A fixed pseudo-random sequence (Numerical Recipes' LCG), for the integer kernels.
struct Lcg(u32);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        self.0
    }

    /// Two signed halfwords in [−128, 127] (a quantised input pair), from top bits.
    fn halves(&mut self) -> u32 {
        let a = (self.next() >> 24) as u8 as i8 as i16 as u16;
        let b = (self.next() >> 24) as u8 as i8 as i16 as u16;
        u32::from(a) | (u32::from(b) << 16)
    }
}

/// Whether every `asm!` kernel of this build gives its portable twin's bits on the
/// edge cases above (quantisation to bytes, with and without the ReLU, and to rows
/// of halfwords; the single-channel 3×3 loops (any stride, and stride 2) with special
/// scales and biases; the 2 × 2
/// block and two-row int8 loops on pseudo-random data, dirty output buffers).
#[inline(never)]
pub fn kernels_match_portable() -> bool {
    quantisation_matches() && pair5_matches() && dot_loops_match()
}

#[inline(never)]
fn quantisation_matches() -> bool {
    // 23 values, then shifted by one and by two: every value meets each position in
    // a group of four and the tail.
    for m in MULTIPLIERS {
        for shift in 0..3 {
            let mut x = [0.0f32; EDGES.len()];
            for (i, v) in x.iter_mut().enumerate() {
                *v = EDGES.get((i + shift) % EDGES.len()).copied().unwrap_or(0.0);
            }
            let (mut a, mut b) = ([0x5au8; 25], [0xa5u8; 25]);
            quantize_bytes::<false>(&x, m, &mut a);
            portable_quantize_bytes::<false>(&x, m, &mut b);
            let same = a.get(..x.len()) == b.get(..x.len());
            quantize_bytes::<true>(&x, m, &mut a);
            portable_quantize_bytes::<true>(&x, m, &mut b);
            let same_relu = a.get(..x.len()) == b.get(..x.len());
            // Two rows of eight as halfwords, 18 bytes apart (the plane's stride);
            // the two bytes between rows keep their (equal) fill.
            let (mut c, mut d) = ([0x5au8; 34], [0x5au8; 34]);
            quantize_halves_rows(&x, 8, m, &mut c, 18, 2);
            portable_quantize_halves_rows(&x, 8, m, &mut d, 18, 2);
            let same_halves = c == d;
            if !(same && same_relu && same_halves) {
                return false;
            }
        }
    }
    true
}

#[inline(never)]
fn pair5_matches() -> bool {
    let mut rng = Lcg(0x2545_f491);
    // 11 positions: two groups of four and a tail of three.
    let mut patches = [0u32; 55];
    for p in patches.iter_mut() {
        *p = rng.halves();
    }
    let w = [
        rng.halves(),
        rng.halves(),
        rng.halves(),
        rng.halves(),
        rng.halves(),
    ];
    let specials = [
        (0.01f32, -0.3f32),
        (f32::INFINITY, 0.0),
        (f32::NAN, 1.0),
        (1.0e-39, f32::NEG_INFINITY),
        (-0.0, -0.0),
        (3.0e38, 3.0e38),
    ];
    // The stride-2 rows: two rows of width 6 (a group of four and a last pair),
    // 2 + 3 · 6 = 20 words each, from the same pseudo-random halfword pairs.
    let stream = patches.get(..40).unwrap_or(&[]);
    specials.iter().all(|&(scale, bias)| {
        let (mut a, mut b) = ([1.5f32; 11], [-2.5f32; 11]);
        pair5_run(&patches, w, scale, bias, &mut a);
        portable_pair5_run(&patches, w, scale, bias, &mut b);
        let (mut c, mut d) = ([1.5f32; 12], [-2.5f32; 12]);
        stride2_rows(stream, w, 6, scale, bias, &mut c);
        portable_stride2_rows(stream, w, 6, scale, bias, &mut d);
        a.iter().zip(&b).all(|(u, v)| u.to_bits() == v.to_bits())
            && c.iter().zip(&d).all(|(u, v)| u.to_bits() == v.to_bits())
    })
}

#[inline(never)]
fn dot_loops_match() -> bool {
    let mut rng = Lcg(0x9e37_79b9);
    // dot22_pairs: three pairs of rows, three steps (24 inputs of two positions,
    // expanded into halfword pairs).
    let mut x = [0u32; 24];
    for v in x.iter_mut() {
        *v = rng.halves();
    }
    let mut w = [0u32; 36];
    for v in w.iter_mut() {
        *v = rng.next();
    }
    let (mut a, mut b) = ([7i32; 12], [-7i32; 12]);
    dot22_pairs(&x, &w, 3, &mut a);
    portable_dot22_pairs(&x, &w, 3, &mut b);
    // dot2_steps: two rows, five steps of eight bytes, a running sum.
    let mut q = [0u8; 40];
    let (mut r0, mut r1) = ([0u8; 40], [0u8; 40]);
    for ((qv, u), v) in q.iter_mut().zip(r0.iter_mut()).zip(r1.iter_mut()) {
        (*qv, *u, *v) = (
            (rng.next() >> 24) as u8,
            (rng.next() >> 24) as u8,
            (rng.next() >> 24) as u8,
        );
    }
    let acc = [-12_345, 67_890];
    let same_dot2 =
        a == b && dot2_steps(&q, &r0, &r1, 5, acc) == portable_dot2_steps(&q, &r0, &r1, 5, acc);
    // dense_pairs: three pairs of rows of 16 inputs (one pass of the loop), a seventh row left
    // over, scales and biases with the IEEE specials, outputs in dirty buffers.
    let mut weights = [0u8; 7 * 16];
    for v in weights.iter_mut() {
        *v = (rng.next() >> 24) as u8;
    }
    let mut scales = [0u8; 28];
    let mut biases = [0u8; 28];
    for (k, (s, b)) in scales
        .chunks_exact_mut(4)
        .zip(biases.chunks_exact_mut(4))
        .enumerate()
    {
        let e = |i: usize| EDGES.get(i % EDGES.len()).copied().unwrap_or(0.0);
        s.copy_from_slice(&e(3 * k + 1).to_le_bytes());
        b.copy_from_slice(&e(5 * k + 2).to_le_bytes());
    }
    let (mut ya, mut yb) = ([1.5f32; 7], [-2.5f32; 7]);
    let q16 = q.get(..16).unwrap_or(&[]);
    let na = dense_pairs(q16, &weights, &scales, &biases, &mut ya);
    let nb = portable_dense_pairs(q16, &weights, &scales, &biases, &mut yb);
    let bits = |y: &[f32; 7]| {
        y.map(|v| {
            if v.is_nan() {
                f32::NAN.to_bits()
            } else {
                v.to_bits()
            }
        })
    };
    let same_pairs = na == 3 && nb == 3 && bits(&ya)[..6] == bits(&yb)[..6];
    same_dot2 && same_pairs
}
