//! The OOD signal (spec §8.6): the cosine distance of each row to its nearest exemplar
//! ([`Dictionary::assign`]) on an in-distribution set and on out-of-distribution sets. Per set:
//! the within-θ rate and the distance's mean, median, p90, p99, min and max; per OOD set, the
//! ROC-AUC of the distance as a detector (OOD = positive, larger distance = more OOD).

use crate::data::{ActivationStream, StreamOptions};
use crate::error::{Error, Result};
use crate::eval::metrics::roc_auc;
use crate::Dictionary;
use serde::Serialize;
use std::path::PathBuf;

/// Distance statistics of one set.
#[derive(Debug, Clone, Serialize)]
pub struct DistanceStats {
    pub name: String,
    pub rows: usize,
    pub within_threshold_rate: f64,
    pub mean: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    /// ROC-AUC of the distance, this set (positive) vs the in-distribution set; `None` for the
    /// in-distribution set itself.
    pub auroc_vs_in_distribution: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct OodReport {
    pub theta: f64,
    pub in_distribution: DistanceStats,
    pub out_of_distribution: Vec<DistanceStats>,
}

/// Percentile `p` (0..=100) of sorted values, numpy's default linear interpolation.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (pos - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Nearest-exemplar distances of every row of `paths`, in stream order.
pub fn stream_distances(
    dict: &Dictionary,
    paths: &[PathBuf],
    options: StreamOptions,
) -> Result<Vec<f32>> {
    let mut stream = ActivationStream::open(paths, options)?;
    if stream.dim() != dict.dim() {
        return Err(Error::DimensionMismatch {
            what: paths[0].display().to_string(),
            expected: dict.dim(),
            found: stream.dim(),
        });
    }
    let mut out = Vec::with_capacity(stream.total_rows() as usize);
    while let Some(b) = stream.next_batch(16_384)? {
        out.extend(dict.assign(&b.data)?.1);
    }
    Ok(out)
}

/// Statistics of one set of distances (no AUROC).
pub fn distance_stats(dict: &Dictionary, name: &str, distances: &[f32]) -> Result<DistanceStats> {
    if distances.is_empty() {
        return Err(Error::EmptyInput(format!("{name}: no rows")));
    }
    let mut s: Vec<f64> = distances.iter().map(|&v| v as f64).collect();
    s.sort_by(f64::total_cmp);
    let within = dict
        .within_threshold(distances)
        .iter()
        .filter(|&&w| w)
        .count();
    Ok(DistanceStats {
        name: name.to_string(),
        rows: s.len(),
        within_threshold_rate: within as f64 / s.len() as f64,
        mean: s.iter().sum::<f64>() / s.len() as f64,
        median: percentile_sorted(&s, 50.0),
        p90: percentile_sorted(&s, 90.0),
        p99: percentile_sorted(&s, 99.0),
        min: s[0],
        max: s[s.len() - 1],
        auroc_vs_in_distribution: None,
    })
}

/// The report for named sets of distances: `in_dist` and each of `ood`.
pub fn ood_report(
    dict: &Dictionary,
    in_dist: (&str, &[f32]),
    ood: &[(String, Vec<f32>)],
) -> Result<OodReport> {
    if ood.is_empty() {
        return Err(Error::param(
            "ood",
            "at least one out-of-distribution set is needed",
        ));
    }
    let ind = distance_stats(dict, in_dist.0, in_dist.1)?;
    let mut out = Vec::new();
    for (name, dist) in ood {
        let mut st = distance_stats(dict, name, dist)?;
        let scores: Vec<f64> = dist.iter().chain(in_dist.1).map(|&v| v as f64).collect();
        let labels: Vec<bool> = (0..scores.len()).map(|i| i < dist.len()).collect();
        st.auroc_vs_in_distribution = Some(roc_auc(&scores, &labels)?);
        out.push(st);
    }
    Ok(OodReport {
        theta: dict.theta(),
        in_distribution: ind,
        out_of_distribution: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_like_numpy() {
        // np.percentile([1, 2, 3, 4], [50, 90]) = [2.5, 3.7]
        let s = [1.0, 2.0, 3.0, 4.0];
        assert!((percentile_sorted(&s, 50.0) - 2.5).abs() < 1e-12);
        assert!((percentile_sorted(&s, 90.0) - 3.7).abs() < 1e-12);
    }
}
