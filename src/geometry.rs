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

/// Per-dimension standardisation, an optional first step before centering (`--standardize`):
/// `z_j = (x_j − μ_j) · s_j` in f32 (a subtraction then a multiplication, each rounded), with
/// `μ` and `s = 1 / max(σ, 1e-6 · max σ)` estimated on the calibration rows. EP then runs
/// unchanged on `z`. A region's direction `e` in z-space is `σ ⊙ e` in activation space.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    /// Per-dimension mean μ (f32, length D).
    pub mean: Vec<f32>,
    /// Per-dimension inverse standard deviation s (f32, length D).
    pub inv_std: Vec<f32>,
}

impl Scaling {
    /// Estimates μ and σ (population standard deviation) of every dimension over the rows of
    /// `batches` (each `n_b × d`), in f64: two passes, rows in order within a column (columns
    /// in parallel), so the result does not depend on threads. `s_j = 1 / max(σ_j, 1e-6 · max σ)`
    /// guards constant dimensions.
    pub fn estimate(batches: &[&[f32]], d: usize) -> Result<Self> {
        if d == 0 || batches.iter().any(|b| b.len() % d != 0) {
            return Err(Error::param(
                "rows",
                format!("values are not whole rows of width {d}"),
            ));
        }
        let n: usize = batches.iter().map(|b| b.len() / d).sum();
        if n == 0 {
            return Err(Error::EmptyInput("no rows to standardise on".into()));
        }
        let column = |j: usize| {
            batches
                .iter()
                .flat_map(move |b| b.iter().skip(j).step_by(d))
        };
        let stats: Vec<(f64, f64)> = (0..d)
            .into_par_iter()
            .map(|j| {
                let mean = column(j).map(|&v| v as f64).sum::<f64>() / n as f64;
                let var = column(j)
                    .map(|&v| (v as f64 - mean) * (v as f64 - mean))
                    .sum::<f64>()
                    / n as f64;
                (mean, var.sqrt())
            })
            .collect();
        let max_sd = stats.iter().map(|s| s.1).fold(0.0f64, f64::max);
        if !(max_sd > 0.0 && max_sd.is_finite()) {
            return Err(Error::param(
                "standardize",
                "every dimension is constant over the calibration rows: nothing to standardise",
            ));
        }
        let floor = 1e-6 * max_sd;
        Ok(Scaling {
            mean: stats.iter().map(|s| s.0 as f32).collect(),
            inv_std: stats
                .iter()
                .map(|s| (1.0 / s.1.max(floor)) as f32)
                .collect(),
        })
    }

    /// Width D.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// `z = (x − μ) · s` of every row of `rows` (`n × D`).
    pub fn apply(&self, rows: &[f32]) -> Vec<f32> {
        let d = self.dim();
        let mut out = vec![0.0f32; rows.len()];
        out.par_chunks_mut(d)
            .zip(rows.par_chunks(d))
            .for_each(|(o, x)| {
                for (((o, &x), &m), &s) in o.iter_mut().zip(x).zip(&self.mean).zip(&self.inv_std) {
                    *o = (x - m) * s;
                }
            });
        out
    }

    /// A z-space vector mapped to activation space: `σ ⊙ v` (σ = 1/s).
    pub fn to_activation_space(&self, v: &[f32]) -> Vec<f32> {
        v.iter().zip(&self.inv_std).map(|(&v, &s)| v / s).collect()
    }

    /// Checks that both vectors have width `d` and finite values, `s > 0`.
    pub fn check(&self, d: usize) -> Result<()> {
        if self.mean.len() != d || self.inv_std.len() != d {
            return Err(Error::DimensionMismatch {
                what: "standardisation".into(),
                expected: d,
                found: self.mean.len(),
            });
        }
        if self.mean.iter().any(|v| !v.is_finite())
            || self.inv_std.iter().any(|v| !(v.is_finite() && *v > 0.0))
        {
            return Err(Error::param(
                "standardize",
                "the standardisation holds a non-finite mean or a non-positive scale",
            ));
        }
        Ok(())
    }
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
    fn standardisation_is_estimated_in_f64_and_guards_constant_dimensions() {
        let rows = [1.0f32, 5.0, 7.0, 3.0, 5.0, 7.0];
        let s = Scaling::estimate(&[&rows[..3], &rows[3..]], 3).unwrap();
        assert_eq!(s.mean, [2.0, 5.0, 7.0]);
        // σ = (1, 0, 0): the constant dimensions get 1 / (1e-6 · 1).
        assert_eq!(s.inv_std, [1.0, 1e6, 1e6]);
        assert_eq!(s.apply(&rows), [-1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(s.to_activation_space(&[2.0, 1e6, 0.0]), [2.0, 1.0, 0.0]);
        assert!(Scaling::estimate(&[&[3.0f32, 3.0][..]], 2).is_err());
        assert!(Scaling::estimate(&[&rows[..2]], 3).is_err());
    }

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
