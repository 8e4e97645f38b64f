//! Activations with known structure, for comparing EP with SAEs where the truth is known:
//! `x = μ + Σ_{j ∈ S(x)} a_j f_j + ε`, with `F` unit ground-truth features `f_j`, a shared offset
//! `μ` (so centering matters, as in real residual streams), one dominant feature per row drawn
//! with Zipf-like frequencies (real features are heavy-tailed), a few weaker secondary features,
//! and isotropic noise. Deterministic in the seed: rows are generated independently from
//! counter-based streams, so any thread count gives the same bytes.

use crate::error::{Error, Result};
use crate::rng::{mix, CounterRng};
use rayon::prelude::*;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    /// Width D.
    pub dim: usize,
    /// Rows.
    pub rows: usize,
    /// Ground-truth features F.
    pub features: usize,
    /// Secondary features per row (besides the dominant one).
    pub secondary: usize,
    /// Zipf exponent of the dominant feature's frequency (0 = uniform).
    pub zipf: f64,
    /// Expected norm of the noise vector, relative to a unit feature (each coordinate gets
    /// N(0, (noise/√D)²)), so the signal-to-noise ratio does not depend on D.
    pub noise: f64,
    /// Norm of the shared offset μ, relative to a unit feature.
    pub offset_norm: f64,
    /// Seed of the features and the offset.
    pub seed: u64,
    /// Seed of the rows: the same `seed` with another `row_seed` gives new rows of the same
    /// features (a held-out set).
    pub row_seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            dim: 256,
            rows: 20_000,
            features: 512,
            secondary: 3,
            zipf: 1.0,
            noise: 0.1,
            offset_norm: 2.0,
            seed: 0,
            row_seed: 0,
        }
    }
}

/// Generated activations and their truth.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// `rows × dim`.
    pub activations: Vec<f32>,
    /// `features × dim`, unit rows.
    pub features: Vec<f32>,
    /// The shared offset μ (`dim`).
    pub offset: Vec<f32>,
    /// Each row's dominant feature.
    pub dominant: Vec<i64>,
}

impl SyntheticSpec {
    fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.rows == 0 || self.features == 0 {
            return Err(Error::param(
                "synthetic",
                "dim, rows and features must be positive",
            ));
        }
        if self.secondary >= self.features {
            return Err(Error::param(
                "secondary",
                "must be smaller than the number of features",
            ));
        }
        for (name, v) in [
            ("zipf", self.zipf),
            ("noise", self.noise),
            ("offset-norm", self.offset_norm),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::param(
                    "synthetic",
                    format!("{name} must be finite and ≥ 0, got {v}"),
                ));
            }
        }
        Ok(())
    }

    /// Generates the activations.
    pub fn generate(&self) -> Result<Synthetic> {
        self.validate()?;
        let (d, f) = (self.dim, self.features);
        let mut features = vec![0.0f32; f * d];
        features.par_chunks_mut(d).enumerate().for_each(|(j, row)| {
            let mut rng = CounterRng::new(self.seed, 1 + j as u64);
            let mut norm = 0.0f64;
            let v: Vec<f64> = (0..d).map(|_| rng.gaussian()).collect();
            for x in &v {
                norm += x * x;
            }
            let inv = 1.0 / norm.sqrt();
            for (o, x) in row.iter_mut().zip(&v) {
                *o = (x * inv) as f32;
            }
        });
        let mut rng = CounterRng::new(self.seed, 0);
        let offset: Vec<f32> = {
            let v: Vec<f64> = (0..d).map(|_| rng.gaussian()).collect();
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter()
                .map(|x| (x / n * self.offset_norm) as f32)
                .collect()
        };
        // Cumulative Zipf weights of the dominant feature.
        let mut cdf: Vec<f64> = (0..f)
            .map(|j| 1.0 / ((j + 1) as f64).powf(self.zipf))
            .collect();
        let total: f64 = cdf.iter().sum();
        let mut acc = 0.0;
        for w in cdf.iter_mut() {
            acc += *w / total;
            *w = acc;
        }
        let stream0 = 1 + f as u64;
        let sigma = self.noise / (d as f64).sqrt();
        let mut activations = vec![0.0f32; self.rows * d];
        let mut dominant = vec![0i64; self.rows];
        activations
            .par_chunks_mut(d)
            .zip(dominant.par_iter_mut())
            .enumerate()
            .for_each(|(i, (row, dom))| {
                let mut rng = CounterRng::new(self.seed ^ mix(self.row_seed), stream0 + i as u64);
                let u = rng.uniform();
                let main = cdf.partition_point(|&c| c < u).min(f - 1);
                *dom = main as i64;
                let mut x: Vec<f64> = offset.iter().map(|&o| o as f64).collect();
                let a = 1.0 + rng.uniform();
                for (xi, fi) in x.iter_mut().zip(&features[main * d..(main + 1) * d]) {
                    *xi += a * *fi as f64;
                }
                for _ in 0..self.secondary {
                    // `%` (bias below f / 2⁶⁴) rather than an exact draw: it keeps the bytes
                    // that earlier versions wrote for the same seeds.
                    let j = (rng.next_u64() % f as u64) as usize;
                    let b = 0.3 * rng.uniform();
                    for (xi, fi) in x.iter_mut().zip(&features[j * d..(j + 1) * d]) {
                        *xi += b * *fi as f64;
                    }
                }
                for (o, xi) in row.iter_mut().zip(&x) {
                    *o = (xi + sigma * rng.gaussian()) as f32;
                }
            });
        Ok(Synthetic {
            activations,
            features,
            offset,
            dominant,
        })
    }
}

/// For each ground-truth feature, the best |cosine| with any learned direction; returns
/// (mean of those maxima, fraction above `cutoff`). Directions need not be unit.
pub fn feature_recovery(truth: &[f32], learned: &[f32], d: usize, cutoff: f64) -> (f64, f64) {
    let normed = |m: &[f32]| -> Vec<f32> {
        m.chunks(d)
            .flat_map(|r| {
                let n = r
                    .iter()
                    .map(|&v| (v as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-30);
                r.iter().map(move |&v| (v as f64 / n) as f32)
            })
            .collect()
    };
    let (t, l) = (normed(truth), normed(learned));
    let (nt, nl) = (t.len() / d, l.len() / d);
    if nt == 0 || nl == 0 {
        return (0.0, 0.0);
    }
    let mut sims = vec![0.0f32; nt * nl];
    crate::linalg::matmul_abt(&t, &l, d, &mut sims);
    let best: Vec<f64> = sims
        .chunks(nl)
        .map(|r| r.iter().fold(0.0f64, |m, &s| m.max((s as f64).abs())))
        .collect();
    let mean = best.iter().sum::<f64>() / nt as f64;
    let frac = best.iter().filter(|&&b| b > cutoff).count() as f64 / nt as f64;
    (mean, frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_unit_features_and_zipf_frequencies() {
        let spec = SyntheticSpec {
            dim: 32,
            rows: 4000,
            features: 8,
            ..Default::default()
        };
        let a = spec.generate().unwrap();
        let b = spec.generate().unwrap();
        assert_eq!(a.activations, b.activations);
        for r in a.features.chunks(32) {
            let n: f64 = r.iter().map(|&v| (v as f64).powi(2)).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
        // Zipf(1) over 8: feature 0 has weight 1/H_8 ≈ 0.368, feature 7 ≈ 0.046.
        let count = |j| a.dominant.iter().filter(|&&x| x == j).count() as f64 / 4000.0;
        assert!((count(0) - 0.368).abs() < 0.03, "{}", count(0));
        assert!((count(7) - 0.046).abs() < 0.02, "{}", count(7));
        // The truth recovers itself exactly; random directions do not.
        let (m, f) = feature_recovery(&a.features, &a.features, 32, 0.9);
        assert!((m - 1.0).abs() < 1e-5 && f == 1.0);
        let other = SyntheticSpec {
            seed: 9,
            ..spec.clone()
        }
        .generate()
        .unwrap();
        let (m2, f2) = feature_recovery(&a.features, &other.features, 32, 0.9);
        assert!(m2 < 0.8 && f2 == 0.0, "{m2} {f2}");
        // Another row seed: the same features and offset, other rows.
        let held = SyntheticSpec {
            row_seed: 1,
            ..spec.clone()
        }
        .generate()
        .unwrap();
        assert_eq!(held.features, a.features);
        assert_eq!(held.offset, a.offset);
        assert_ne!(held.activations[..32], a.activations[..32]);
    }

    #[test]
    fn bad_specs_are_refused() {
        let bad = SyntheticSpec {
            secondary: 8,
            features: 8,
            ..Default::default()
        };
        assert!(bad.generate().is_err());
        let bad = SyntheticSpec {
            noise: f64::NAN,
            ..Default::default()
        };
        assert!(bad.generate().unwrap_err().to_string().contains("noise"));
    }
}
