//! The quantisation rule of the format: symmetric int8, one scale per output row.
//!
//! `scale[o] = max_i |w[o][i]| / 127` (a row of zeros gets scale 1 so that every
//! stored scale is finite and positive), `q[o][i] = round_half_away(w[o][i] / scale[o])`
//! clamped to `[-127, 127]`; dequantised weight `q · scale`. The trainer calls these
//! functions, so there is one definition.

/// Scale of one row of f32 weights.
pub fn row_scale(row: &[f32]) -> f32 {
    let max = row.iter().fold(0.0f32, |m, &w| {
        let a = libm::fabsf(w);
        if a > m {
            a
        } else {
            m
        }
    });
    if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        1.0
    }
}

/// Quantises one weight with `scale`.
pub fn quantize_value(w: f32, scale: f32) -> i8 {
    let q = libm::roundf(w / scale);
    if q >= 127.0 {
        127
    } else if q <= -127.0 {
        -127
    } else if q.is_nan() {
        0
    } else {
        q as i8
    }
}

/// Quantises a row-major `[rows][cols]` matrix: writes `q` (`rows·cols` values) and
/// `scales` (`rows` values). Returns `false` (writing nothing) when the lengths
/// disagree.
pub fn quantize_per_channel(
    weights: &[f32],
    cols: usize,
    q: &mut [i8],
    scales: &mut [f32],
) -> bool {
    if cols == 0 || !weights.len().is_multiple_of(cols) {
        return false;
    }
    let rows = weights.len() / cols;
    if q.len() != weights.len() || scales.len() != rows {
        return false;
    }
    for ((row, qrow), s) in weights
        .chunks_exact(cols)
        .zip(q.chunks_exact_mut(cols))
        .zip(scales)
    {
        *s = row_scale(row);
        for (qi, &w) in qrow.iter_mut().zip(row) {
            *qi = quantize_value(w, *s);
        }
    }
    true
}
