//! Geometry on the centered unit sphere: directions `u(x) = (x − c) / (‖x − c‖ + 1e-12)` and
//! cosine distances `d = clamp(1 − u·e, 0, 2)`.

use crate::error::{Error, Result};
use rayon::prelude::*;

/// The additive epsilon of the reference's normalisation.
pub const NORM_EPSILON: f64 = 1e-12;

/// Why a row could not be turned into a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroNormRow {
    /// Index of the row within the batch.
    pub index: usize,
}

/// The centered unit direction of every row of `rows` (`n × d`, row-major), computed per row:
/// the difference `x − c` in f32 (as the reference does in numpy), its squared norm in f64 in
/// the canonical lane order ([`crate::linalg::lane_sum_f64`], what a CUDA warp computes), then
/// each component multiplied by `1 / (‖x − c‖ + 1e-12)` in f64 and rounded to f32. Rows are independent, so the result does not
/// depend on batching or threads.
///
/// A row equal to the center has no direction; the first such row (lowest index) is returned as
/// an error so the caller can name its file and row.
pub fn directions(rows: &[f32], center: &[f32]) -> std::result::Result<Vec<f32>, ZeroNormRow> {
    let d = center.len();
    assert!(
        d > 0 && rows.len() % d == 0,
        "directions: rows are not n × d"
    );
    let mut out = vec![0.0f32; rows.len()];
    let zero: Option<usize> = out
        .par_chunks_mut(d)
        .zip(rows.par_chunks(d))
        .enumerate()
        .filter_map(|(i, (o, x))| (!direction_into(x, center, o)).then_some(i))
        .min();
    match zero {
        Some(index) => Err(ZeroNormRow { index }),
        None => Ok(out),
    }
}

/// Writes `u(x)` into `out`; returns false when `x − c` is exactly zero.
#[inline]
pub fn direction_into(x: &[f32], center: &[f32], out: &mut [f32]) -> bool {
    for ((o, &xi), &ci) in out.iter_mut().zip(x).zip(center) {
        *o = xi - ci;
    }
    let sq = crate::linalg::lane_sum_f64(out.len(), |i| out[i] as f64 * out[i] as f64);
    if sq == 0.0 {
        return false;
    }
    let inv = 1.0 / (sq.sqrt() + NORM_EPSILON);
    for o in out.iter_mut() {
        *o = (*o as f64 * inv) as f32;
    }
    true
}

/// Cosine distance from an (exact) similarity, clamped to `[0, 2]` like the reference's public
/// outputs.
#[inline]
pub fn distance_from_similarity(s: f64) -> f64 {
    (1.0 - s).clamp(0.0, 2.0)
}

/// Checks a threshold: finite and strictly positive.
pub fn check_threshold(theta: f64) -> Result<()> {
    if !(theta.is_finite() && theta > 0.0) {
        return Err(Error::param(
            "threshold",
            format!("θ must be a finite number > 0, got {theta}"),
        ));
    }
    Ok(())
}

/// Euclidean norm of a vector (f64, canonical lane order).
pub fn norm(v: &[f32]) -> f64 {
    crate::linalg::lane_sum_f64(v.len(), |i| v[i] as f64 * v[i] as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_are_unit_and_centered() {
        let c = [1.0f32, 1.0, 1.0];
        let rows = [4.0f32, 1.0, 5.0, 1.0, -2.0, 1.0];
        let u = directions(&rows, &c).unwrap();
        assert!((u[0] - 0.6).abs() < 1e-7 && u[1] == 0.0 && (u[2] - 0.8).abs() < 1e-7);
        assert_eq!(&u[3..], &[0.0, -1.0, 0.0]);
    }

    #[test]
    fn a_row_equal_to_the_center_is_reported() {
        let c = [1.0f32, 2.0];
        let rows = [0.0f32, 0.0, 1.0, 2.0, 1.0, 2.0];
        assert_eq!(directions(&rows, &c), Err(ZeroNormRow { index: 1 }));
    }
}
