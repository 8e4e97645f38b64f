//! Calibration: the center `c` (spherical mean direction × projected magnitude, the reference's
//! schema v2) and the threshold `θ` = mean over calibration batches of the within-batch p-th
//! percentile of pairwise cosine distances.
//!
//! The percentile is **exact** (the order statistic of the f64 distances between the f32 unit
//! directions, selected without holding the `n(n−1)/2` distances) and computed by the backend:
//! [`Backend::pairwise_percentile`], whose CPU twin is
//! [`crate::backend::cpu::pairwise_distance_percentile`]. So θ does not depend on threads,
//! tiling or hardware, and both backends give the same value.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::geometry::{self, NORM_EPSILON};
use rayon::prelude::*;

pub use crate::backend::cpu::calibrate::{check_percentile, PercentileMethod};

/// The result of calibration.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// The center `c` (length D).
    pub center: Vec<f32>,
    /// The threshold θ (cosine distance).
    pub theta: f64,
    /// The percentile p in (0, 100).
    pub percentile: f64,
    /// How the percentile was interpolated.
    pub method: PercentileMethod,
    /// Rows used (whole batches, so it may exceed the requested budget by less than a batch).
    pub n_activations: u64,
    /// Rows per calibration batch.
    pub batch_size: usize,
    /// The p-th percentile of each calibration batch with ≥ 2 rows, in order.
    pub batch_percentiles: Vec<f64>,
    /// Per-dimension standardisation applied to every row before centering (`--standardize`);
    /// the center and θ are then those of the standardised rows.
    pub scaling: Option<geometry::Scaling>,
}

impl Calibration {
    /// Width D.
    pub fn dim(&self) -> usize {
        self.center.len()
    }
}

/// Streaming sums for the center: `Σx` and `Σ x/(‖x‖+1e-12)` in f64, accumulated row by row in
/// stream order (parallel over columns only, so the result is deterministic).
#[derive(Debug, Clone)]
pub struct CenterAccumulator {
    sum_x: Vec<f64>,
    sum_unit: Vec<f64>,
    rows: u64,
}

impl CenterAccumulator {
    /// An empty accumulator for width `d`.
    pub fn new(d: usize) -> Self {
        CenterAccumulator {
            sum_x: vec![0.0; d],
            sum_unit: vec![0.0; d],
            rows: 0,
        }
    }

    /// Adds the rows of an `n × d` matrix; values that are not whole rows of width `d` are an
    /// error (nothing is added).
    pub fn add(&mut self, rows: &[f32]) -> Result<()> {
        let d = self.sum_x.len();
        if d == 0 || rows.len() % d != 0 {
            return Err(Error::param(
                "rows",
                format!("{} values are not whole rows of width {d}", rows.len()),
            ));
        }
        let n = rows.len() / d;
        let inv_norms: Vec<f64> = rows
            .par_chunks(d)
            .map(|r| 1.0 / (geometry::norm(r) + NORM_EPSILON))
            .collect();
        // Columns in parallel, rows in order within a column: deterministic sums.
        const COLS: usize = 64;
        self.sum_x
            .par_chunks_mut(COLS)
            .zip(self.sum_unit.par_chunks_mut(COLS))
            .enumerate()
            .for_each(|(ci, (sx, su))| {
                let c0 = ci * COLS;
                for (i, inv) in inv_norms.iter().enumerate() {
                    let row = &rows[i * d + c0..i * d + c0 + sx.len()];
                    for ((a, b), &v) in sx.iter_mut().zip(su.iter_mut()).zip(row) {
                        *a += v as f64;
                        *b += v as f64 * inv;
                    }
                }
            });
        self.rows += n as u64;
        Ok(())
    }

    /// Rows added so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The center: `dir = normalize(mean unit vector)`, `mag = mean(x)·dir`, `c = dir·mag`.
    pub fn center(&self) -> Result<Vec<f32>> {
        if self.rows == 0 {
            return Err(Error::EmptyInput("no calibration rows".into()));
        }
        let t = self.rows as f64;
        let mean_unit: Vec<f64> = self.sum_unit.iter().map(|s| s / t).collect();
        let norm = mean_unit.iter().map(|v| v * v).sum::<f64>().sqrt();
        let dir: Vec<f64> = mean_unit
            .iter()
            .map(|v| v / (norm + NORM_EPSILON))
            .collect();
        let mag: f64 = self.sum_x.iter().zip(&dir).map(|(s, d)| s / t * d).sum();
        Ok(dir.iter().map(|d| (d * mag) as f32).collect())
    }
}

/// [`calibrate_batches_on`] after standardising every dimension ([`geometry::Scaling`],
/// estimated on these same rows in f64): the center and θ are those of the standardised rows, and
/// the calibration carries the scaling.
pub fn calibrate_standardized_on(
    backend: &Backend,
    batches: &[Vec<f32>],
    d: usize,
    percentile: f64,
    method: PercentileMethod,
    batch_size: usize,
) -> std::result::Result<Calibration, CalibrationError> {
    let views: Vec<&[f32]> = batches.iter().map(Vec::as_slice).collect();
    let scaling = geometry::Scaling::estimate(&views, d)?;
    let z: Vec<Vec<f32>> = batches.iter().map(|b| scaling.apply(b)).collect();
    let mut cal = calibrate_batches_on(backend, &z, d, percentile, method, batch_size)?;
    cal.scaling = Some(scaling);
    Ok(cal)
}

/// Calibrates from batches of raw activations (each `n_b × d`): the center from all rows, then
/// θ as the mean of the per-batch percentiles (batches with fewer than 2 rows are skipped, as in
/// the reference; every other batch counts equally, even a short last one).
///
/// A row equal to the final center is an error reported as `(batch index, row index)` through
/// [`CalibrationError::ZeroNorm`], so the caller can name its file and row.
pub fn calibrate_batches(
    batches: &[Vec<f32>],
    d: usize,
    percentile: f64,
    method: PercentileMethod,
    batch_size: usize,
) -> std::result::Result<Calibration, CalibrationError> {
    calibrate_batches_on(&Backend::Cpu, batches, d, percentile, method, batch_size)
}

/// [`calibrate_batches`] with the per-batch percentiles computed on `backend` (the value is the
/// same on every backend).
pub fn calibrate_batches_on(
    backend: &Backend,
    batches: &[Vec<f32>],
    d: usize,
    percentile: f64,
    method: PercentileMethod,
    batch_size: usize,
) -> std::result::Result<Calibration, CalibrationError> {
    check_percentile(percentile)?;
    let mut acc = CenterAccumulator::new(d);
    for b in batches {
        acc.add(b)?;
    }
    let center = acc.center()?;
    let mut batch_percentiles = Vec::new();
    for (bi, b) in batches.iter().enumerate() {
        if b.len() / d < 2 {
            continue;
        }
        let u = geometry::directions(b, &center).map_err(|z| CalibrationError::ZeroNorm {
            batch: bi,
            row: z.index,
        })?;
        batch_percentiles.push(backend.pairwise_percentile(&u, d, percentile, method)?);
    }
    if batch_percentiles.is_empty() {
        return Err(
            Error::EmptyInput("calibration needs a batch with at least 2 rows".into()).into(),
        );
    }
    let theta = batch_percentiles.iter().sum::<f64>() / batch_percentiles.len() as f64;
    // Distances are not clamped (as in the reference), so (nearly) parallel directions give a
    // θ of rounding size, positive or negative: no usable threshold.
    if theta.is_nan() || theta < MIN_CALIBRATED_THETA {
        return Err(Error::param(
            "threshold",
            format!(
                "calibration gave θ = {theta:e} (the {percentile}th percentile of pairwise distances); \
                 the calibration rows have (nearly) identical directions after centering; \
                 choose a higher percentile or more varied calibration data"
            ),
        )
        .into());
    }
    Ok(Calibration {
        center,
        theta,
        percentile,
        method,
        n_activations: acc.rows(),
        batch_size,
        batch_percentiles,
        scaling: None,
    })
}

/// Errors of [`calibrate_batches`].
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error(transparent)]
    Lib(#[from] Error),
    /// Row `row` of calibration batch `batch` equals the center.
    #[error("calibration batch {batch}, row {row}: zero norm after centering")]
    ZeroNorm { batch: usize, row: usize },
}

/// The smallest θ calibration accepts: below it the calibration rows are (nearly) parallel
/// directions and the percentile is rounding noise.
pub const MIN_CALIBRATED_THETA: f64 = 1e-6;

/// `__metadata__["format"]` of a calibration file.
pub const FORMAT: &str = "exemplar-calibration";
/// Version of the calibration layout.
pub const FORMAT_VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct CalibrationHeader {
    theta: f64,
    percentile: f64,
    method: PercentileMethod,
    n_activations: u64,
    batch_size: usize,
    dim: usize,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    input_fingerprint: Option<String>,
    /// `"standardize"` when the file holds `scale_mean` and `scale_inv_std`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scaling: Option<String>,
}

impl Calibration {
    /// Saves the calibration as a safetensors file (`center`, `batch_percentiles`, metadata),
    /// atomically; see `docs/format.md`.
    pub fn save(
        &self,
        path: &std::path::Path,
        inputs: &[String],
        fingerprint: Option<&str>,
        force: bool,
    ) -> Result<()> {
        let header = CalibrationHeader {
            theta: self.theta,
            percentile: self.percentile,
            method: self.method,
            n_activations: self.n_activations,
            batch_size: self.batch_size,
            dim: self.dim(),
            inputs: inputs.to_vec(),
            input_fingerprint: fingerprint.map(String::from),
            scaling: self.scaling.as_ref().map(|_| "standardize".to_string()),
        };
        let meta = crate::tensorfile::header_metadata(FORMAT, FORMAT_VERSION, &header);
        let mut tensors = vec![
            crate::tensorfile::TensorOut::f32("center", vec![self.dim()], &self.center),
            crate::tensorfile::TensorOut::f64(
                "batch_percentiles",
                vec![self.batch_percentiles.len()],
                &self.batch_percentiles,
            ),
        ];
        if let Some(sc) = &self.scaling {
            tensors.push(crate::tensorfile::TensorOut::f32(
                "scale_mean",
                vec![self.dim()],
                &sc.mean,
            ));
            tensors.push(crate::tensorfile::TensorOut::f32(
                "scale_inv_std",
                vec![self.dim()],
                &sc.inv_std,
            ));
        }
        crate::tensorfile::write(path, tensors, &meta, force)
    }

    /// Loads a calibration file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let f = crate::tensorfile::TensorFile::open(path)?;
        let h: CalibrationHeader = f.header(FORMAT, FORMAT_VERSION, "calibration file")?;
        let center = f.f32("center", &[h.dim])?;
        let nb = f.shape("batch_percentiles")?.first().copied().unwrap_or(0);
        let batch_percentiles = f.f64("batch_percentiles", &[nb])?;
        geometry::check_threshold(h.theta).map_err(|e| Error::format(path, e.to_string()))?;
        check_percentile(h.percentile).map_err(|e| Error::format(path, e.to_string()))?;
        let scaling = match h.scaling.as_deref() {
            None => None,
            Some("standardize") => {
                let sc = geometry::Scaling {
                    mean: f.f32("scale_mean", &[h.dim])?,
                    inv_std: f.f32("scale_inv_std", &[h.dim])?,
                };
                sc.check(h.dim)
                    .map_err(|e| Error::format(path, e.to_string()))?;
                Some(sc)
            }
            Some(other) => {
                return Err(Error::format(
                    path,
                    format!("field `scaling` is `{other}`; only `standardize` is known"),
                ))
            }
        };
        Ok(Calibration {
            scaling,
            center,
            theta: h.theta,
            percentile: h.percentile,
            method: h.method,
            n_activations: h.n_activations,
            batch_size: h.batch_size,
            batch_percentiles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_are_not_whole_rows_are_an_error_not_a_panic() {
        let linear = PercentileMethod::Linear;
        let e = calibrate_batches(&[vec![1.0; 5]], 2, 5.0, linear, 4).unwrap_err();
        assert!(e.to_string().contains("not whole rows of width 2"), "{e}");
        let cpu = &Backend::Cpu;
        assert!(cpu.pairwise_percentile(&[1.0; 5], 2, 5.0, linear).is_err());
        assert!(cpu.pairwise_percentile(&[1.0; 4], 0, 5.0, linear).is_err());
        assert!(cpu.nearest(&[1.0; 3], &[1.0, 0.0], 2).is_err());
    }
}
