//! The deterministic noise generator: `(seed, m, i) → ε_m[i] ~ N(0, 1)` as f32.
//!
//! Counter-based, so any element can be produced on its own, in any order, on any
//! target, and the trainer (or a Python/JAX user) can reproduce the purifier's noise
//! bit for bit. The recipe, in full:
//!
//! 1. `counter = (m as u64) << 32 | (i as u64)`.
//! 2. `state = seed + (counter + 1) * 0x9E3779B97F4A7C15` (wrapping u64 arithmetic):
//!    the SplitMix64 state after `counter + 1` steps from `seed`.
//! 3. `h = mix(state)` with SplitMix64's finaliser
//!    `z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31`.
//! 4. `u1 = ((h >> 32) + 1) / 2^32` in `(0, 1]`, `u2 = (h & 0xFFFF_FFFF) / 2^32` in `[0, 1)`,
//!    both exact in f64.
//! 5. Box–Muller, cosine branch only, in f64 with `libm` (pure software, so identical
//!    everywhere): `z = sqrt(-2 ln u1) * cos(2π u2)`, `2π` being the f64 constant
//!    `core::f64::consts::TAU`; the result is rounded to the nearest f32.
//!
//! Only the cosine branch is used so that each index depends on one hash and nothing else.
//!
//! The same recipe in Python (it reproduces the pinned values of the core's golden test):
//!
//! ```text
//! import math, struct
//! M = (1 << 64) - 1
//! def mix(z):
//!     z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
//!     z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
//!     return z ^ (z >> 31)
//! def normal(seed, m, i):
//!     h = mix((seed + (((m << 32) | i) + 1) * 0x9E3779B97F4A7C15) & M)
//!     u1 = ((h >> 32) + 1) / 2**32
//!     u2 = (h & 0xFFFFFFFF) / 2**32
//!     z = math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
//!     return struct.unpack('<f', struct.pack('<f', z))[0]   # round to f32
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

/// The standard normal value `ε_m[i]` for `seed`, exactly as the module documentation gives it.
pub fn standard_normal(seed: u64, m: u32, i: u32) -> f32 {
    let h = noise_bits(seed, m, i);
    const TWO_POW_32: f64 = 4_294_967_296.0;
    let u1 = ((h >> 32) as f64 + 1.0) / TWO_POW_32;
    let u2 = (h & 0xFFFF_FFFF) as f64 / TWO_POW_32;
    let r = libm::sqrt(-2.0 * libm::log(u1));
    (r * libm::cos(core::f64::consts::TAU * u2)) as f32
}

/// Fills `out` with `ε_m[0..out.len()]` for one noise index `m`.
pub fn fill_standard_normal(seed: u64, m: u32, out: &mut [f32]) {
    for (i, o) in (0u32..).zip(out.iter_mut()) {
        *o = standard_normal(seed, m, i);
    }
}
