//! The deterministic noise generator: `(seed, m, i) → ε_m[i] ~ N(0, 1)` as f32.
//!
//! Counter-based, so any element can be produced on its own, in any order, on any
//! target, and the trainer (or a Python/JAX user) can reproduce the purifier's noise
//! bit for bit. Two generators share the 64 random bits of steps 1–3; which one a model
//! uses is part of its numeric definition and follows from its file's format version
//! ([`NoiseGenerator`]):
//!
//! 1. `counter = (m as u64) << 32 | (i as u64)`.
//! 2. `state = seed + (counter + 1) * 0x9E3779B97F4A7C15` (wrapping u64 arithmetic):
//!    the SplitMix64 state after `counter + 1` steps from `seed`.
//! 3. `h = mix(state)` with SplitMix64's finaliser
//!    `z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31`.
//!
//! **Box–Muller in f32** ([`box_muller_f32`], format version 3, every new model): f32
//! arithmetic only — the Cortex-M4F's FPU does it in hardware, where the f64 generator
//! runs in software (about 6,400 instructions per value against about 100). Every
//! operation below is one IEEE-754 binary32 operation rounded to nearest, evaluated in
//! the order written (no fused multiply–add), so every conforming target gives the same
//! bits:
//!
//! 4. `u1 = ((h >> 40) + 1) · 2⁻²⁴` in `(0, 1]`; `b = (h >> 16) & 0xFFFFFF`, quadrant
//!    `q = b >> 22`, `t = (b & 0x3FFFFF) · 2⁻²²` in `[0, 1)` (all exact), so that
//!    `2π u2 = π/2 · (q + t)`.
//! 5. `ln u1`: split `u1 = 2^e · a` with `a` in `[1, 2)` from the bits; if `a > √2`
//!    (the f32 `0x3fb504f3`), `a ← a · 0.5`, `e ← e + 1`. Then `s = (a − 1) / (a + 1)`,
//!    `z = s · s`, `p = L4; p = L3 + z·p; p = L2 + z·p; p = L1 + z·p; p = L0 + z·p`,
//!    `ln u1 = e · LN2 + s · p` with `L_k = 2/(2k+1)` and `LN2 = ln 2`, rounded to f32.
//! 6. `r = sqrt(−2 · ln u1)`, the correctly rounded f32 square root.
//! 7. With `a = t` if `t ≤ 0.5`, else `a = 1 − t` (exact), `a2 = a · a`:
//!    `c = C4; c = C3 + a2·c; c = C2 + a2·c; c = C1 + a2·c; cos = 1 + a2·c` and
//!    `v = S4; v = S3 + a2·v; v = S2 + a2·v; v = S1 + a2·v; v = S0 + a2·v; sin = a · v`,
//!    the Taylor polynomials of `cos(π/2·a)` and `sin(π/2·a)` with
//!    `C_k = (−1)^k (π/2)^{2k} / (2k)!`, `S_k = (−1)^k (π/2)^{2k+1} / (2k+1)!` rounded to
//!    f32. For `t > 0.5` the two swap (`cos(π/2·t) = sin(π/2·(1 − t))`). Then
//!    `cos(2π u2)` is `cos, −sin, −cos, sin` for `q = 0, 1, 2, 3`.
//! 8. `ε = r · cos(2π u2)`.
//!
//! Against exact Box–Muller of the same `u1, u2` the result is within 1.4·10⁻⁷ relative
//! (checked on 200,000 values in the tests); `|ε| ≤ 5.77` (`u1 ≥ 2⁻²⁴`).
//!
//! **Box–Muller in f64** ([`box_muller_f64`], format versions 1 and 2):
//!
//! 4. `u1 = ((h >> 32) + 1) / 2^32` in `(0, 1]`, `u2 = (h & 0xFFFF_FFFF) / 2^32` in `[0, 1)`,
//!    both exact in f64.
//! 5. Box–Muller, cosine branch only, in f64 with `libm` (pure software, so identical
//!    everywhere): `z = sqrt(-2 ln u1) * cos(2π u2)`, `2π` being the f64 constant
//!    `core::f64::consts::TAU`; the result is rounded to the nearest f32.
//!
//! Only the cosine branch is used so that each index depends on one hash and nothing else.
//!
//! Both recipes in Python (they reproduce the pinned values of the core's tests,
//! `core/tests/noise.rs`):
//!
//! ```text
//! import math, struct
//! import numpy as np
//! M = (1 << 64) - 1
//! def mix(z):
//!     z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
//!     z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
//!     return z ^ (z >> 31)
//! def bits(seed, m, i):
//!     return mix((seed + (((m << 32) | i) + 1) * 0x9E3779B97F4A7C15) & M)
//! def normal_f64(seed, m, i):                     # format versions 1 and 2
//!     h = bits(seed, m, i)
//!     u1 = ((h >> 32) + 1) / 2**32
//!     u2 = (h & 0xFFFFFFFF) / 2**32
//!     z = math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
//!     return struct.unpack('<f', struct.pack('<f', z))[0]   # round to f32
//! f32 = np.float32
//! def from_bits(u): return np.frombuffer(struct.pack('<I', u), dtype=np.float32)[0]
//! def to_bits(x): return struct.unpack('<I', struct.pack('<f', x))[0]
//! L = [f32(2 / (2 * k + 1)) for k in range(5)]
//! C = [f32((-1)**k * (math.pi / 2)**(2 * k) / math.factorial(2 * k)) for k in range(5)]
//! S = [f32((-1)**k * (math.pi / 2)**(2 * k + 1) / math.factorial(2 * k + 1)) for k in range(5)]
//! def normal_f32(seed, m, i):                     # format version 3
//!     h = bits(seed, m, i)
//!     u1 = f32((h >> 40) + 1) * f32(2.0**-24)
//!     b = (h >> 16) & 0xFFFFFF
//!     q, t = b >> 22, f32(b & 0x3FFFFF) * f32(2.0**-22)
//!     ub = to_bits(u1)
//!     e, a = ((ub >> 23) & 0xFF) - 127, from_bits((ub & 0x7FFFFF) | 0x3F800000)
//!     if a > from_bits(0x3fb504f3):
//!         a, e = a * f32(0.5), e + 1
//!     s = (a - f32(1)) / (a + f32(1))
//!     z, p = s * s, L[4]
//!     for c in L[3::-1]: p = c + z * p
//!     r = np.sqrt(f32(-2) * (f32(e) * f32(math.log(2)) + s * p))
//!     a = t if t <= f32(0.5) else f32(1) - t
//!     a2, c, v = a * a, C[4], S[4]
//!     for k in C[3:0:-1]: c = k + a2 * c
//!     for k in S[3::-1]: v = k + a2 * v
//!     cos, sin = f32(1) + a2 * c, a * v
//!     if t > f32(0.5): cos, sin = sin, cos
//!     return float(r * [cos, -sin, -cos, sin][q])
//! ```

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function (Steele, Lea, Flood 2014).
#[inline]
fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 64 random bits behind `ε_m[i]` for `seed` (steps 1–3 of the module recipe).
#[inline]
pub fn noise_bits(seed: u64, m: u32, i: u32) -> u64 {
    let counter = (u64::from(m) << 32) | u64::from(i);
    splitmix64_mix(seed.wrapping_add(counter.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
}

/// Which generator turns the 64 random bits of an index into its standard normal value.
///
/// Part of a model's numeric definition, fixed by its file's format version: models
/// written as version 1 or 2 keep [`NoiseGenerator::BoxMullerF64`] (so their
/// purifications never change), every model written now uses
/// [`NoiseGenerator::BoxMullerF32`] and is stamped version 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum NoiseGenerator {
    /// Box–Muller in f64 ([`box_muller_f64`]): format versions 1 and 2.
    BoxMullerF64,
    /// Box–Muller in f32 with fixed polynomials ([`box_muller_f32`]): format version 3.
    #[default]
    BoxMullerF32,
}

impl NoiseGenerator {
    /// `ε_m[i]` for `seed`.
    #[inline]
    pub fn sample(self, seed: u64, m: u32, i: u32) -> f32 {
        match self {
            NoiseGenerator::BoxMullerF64 => box_muller_f64(seed, m, i),
            NoiseGenerator::BoxMullerF32 => box_muller_f32(seed, m, i),
        }
    }

    /// Fills `out` with `ε_m[0..out.len()]` for one noise index `m`.
    pub fn fill(self, seed: u64, m: u32, out: &mut [f32]) {
        for (i, o) in (0u32..).zip(out.iter_mut()) {
            *o = self.sample(seed, m, i);
        }
    }

    /// The oldest file format version whose models use this generator.
    pub fn format_version(self) -> u16 {
        match self {
            NoiseGenerator::BoxMullerF64 => 1,
            NoiseGenerator::BoxMullerF32 => 3,
        }
    }

    /// The generator of a model stored as format version `version`.
    pub fn for_format_version(version: u16) -> Self {
        if version >= 3 {
            NoiseGenerator::BoxMullerF32
        } else {
            NoiseGenerator::BoxMullerF64
        }
    }

    /// A short name for reports, metadata and error messages.
    pub fn name(self) -> &'static str {
        match self {
            NoiseGenerator::BoxMullerF64 => "box-muller-f64",
            NoiseGenerator::BoxMullerF32 => "box-muller-f32",
        }
    }

    /// The generator [`NoiseGenerator::name`] names.
    pub fn from_name(name: &str) -> Option<Self> {
        [NoiseGenerator::BoxMullerF64, NoiseGenerator::BoxMullerF32]
            .into_iter()
            .find(|g| g.name() == name)
    }
}

/// `ε_m[i]` for `seed` by Box–Muller in f64 (format versions 1 and 2), exactly as
/// the module documentation gives it.
pub fn box_muller_f64(seed: u64, m: u32, i: u32) -> f32 {
    let h = noise_bits(seed, m, i);
    const TWO_POW_32: f64 = 4_294_967_296.0;
    let u1 = ((h >> 32) as f64 + 1.0) / TWO_POW_32;
    let u2 = (h & 0xFFFF_FFFF) as f64 / TWO_POW_32;
    let r = libm::sqrt(-2.0 * libm::log(u1));
    (r * libm::cos(core::f64::consts::TAU * u2)) as f32
}

/// `L_k = 2 / (2k + 1)`: `ln a = s · Σ L_k s^{2k}` with `s = (a − 1)/(a + 1)`.
const LN_COEFFS: [f32; 5] = [
    f32::from_bits(0x4000_0000),
    f32::from_bits(0x3f2a_aaab),
    f32::from_bits(0x3ecc_cccd),
    f32::from_bits(0x3e92_4925),
    f32::from_bits(0x3e63_8e39),
];
/// `C_k = (−1)^k (π/2)^{2k} / (2k)!` for `k = 1..=4` (`C_0 = 1`).
const COS_COEFFS: [f32; 4] = [
    f32::from_bits(0xbf9d_e9e6),
    f32::from_bits(0x3e81_e0f8),
    f32::from_bits(0xbcaa_e9e4),
    f32::from_bits(0x3a70_fa83),
];
/// `S_k = (−1)^k (π/2)^{2k+1} / (2k+1)!` for `k = 0..=4`.
const SIN_COEFFS: [f32; 5] = [
    f32::from_bits(0x3fc9_0fdb),
    f32::from_bits(0xbf25_5de7),
    f32::from_bits(0x3da3_35e3),
    f32::from_bits(0xbb99_6966),
    f32::from_bits(0x3928_3c1a),
];
/// `ln 2` rounded to f32.
const LN2_F32: f32 = f32::from_bits(0x3f31_7218);
/// `√2` rounded to f32.
const SQRT2_F32: f32 = f32::from_bits(0x3fb5_04f3);
/// `2⁻²⁴` and `2⁻²²`, exact.
const TWO_POW_M24: f32 = f32::from_bits(0x3380_0000);
const TWO_POW_M22: f32 = f32::from_bits(0x3480_0000);

// The three Horner evaluations below are written out on purpose: a shared
// slice-and-fold helper gives the same bits but costs 29 % more instructions per
// value on the M4F (firmware built with opt-level "s" does not unroll it; measured by
// tests/firmware/cost.json).

/// `ln u` for `u` in `(0, 1]` (step 5 of the f32 recipe).
#[inline]
fn ln_unit_f32(u: f32) -> f32 {
    let bits = u.to_bits();
    // u ≥ 2⁻²⁴ is normal, so the biased exponent is in 103..=127.
    let mut e = ((bits >> 23) & 0xFF) as i32 - 127;
    let mut a = f32::from_bits((bits & 0x007F_FFFF) | 0x3F80_0000);
    if a > SQRT2_F32 {
        a *= 0.5;
        e += 1;
    }
    let s = (a - 1.0) / (a + 1.0);
    let z = s * s;
    let [l0, l1, l2, l3, l4] = LN_COEFFS;
    let mut p = l4;
    p = l3 + z * p;
    p = l2 + z * p;
    p = l1 + z * p;
    p = l0 + z * p;
    e as f32 * LN2_F32 + s * p
}

/// `cos(π/2 · (q + t))` for quadrant `q` in `0..4` and `t` in `[0, 1)` (step 7).
#[inline]
fn cos_quarter_turns_f32(q: u32, t: f32) -> f32 {
    let swap = t > 0.5;
    let a = if swap { 1.0 - t } else { t };
    let a2 = a * a;
    let [c1, c2, c3, c4] = COS_COEFFS;
    let mut c = c4;
    c = c3 + a2 * c;
    c = c2 + a2 * c;
    c = c1 + a2 * c;
    let cos = 1.0 + a2 * c;
    let [s0, s1, s2, s3, s4] = SIN_COEFFS;
    let mut v = s4;
    v = s3 + a2 * v;
    v = s2 + a2 * v;
    v = s1 + a2 * v;
    v = s0 + a2 * v;
    let sin = a * v;
    let (cos, sin) = if swap { (sin, cos) } else { (cos, sin) };
    match q & 3 {
        0 => cos,
        1 => -sin,
        2 => -cos,
        _ => sin,
    }
}

/// `ε_m[i]` for `seed` by Box–Muller in f32 (format version 3), exactly as the module
/// documentation gives it.
pub fn box_muller_f32(seed: u64, m: u32, i: u32) -> f32 {
    let h = noise_bits(seed, m, i);
    let u1 = ((h >> 40) as u32 + 1) as f32 * TWO_POW_M24;
    let b = ((h >> 16) & 0xFF_FFFF) as u32;
    let t = (b & 0x3F_FFFF) as f32 * TWO_POW_M22;
    let r = libm::sqrtf(-2.0 * ln_unit_f32(u1));
    r * cos_quarter_turns_f32(b >> 22, t)
}
