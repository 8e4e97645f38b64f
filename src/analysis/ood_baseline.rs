//! The OOD signal against an honest baseline. EP's detector is the cosine distance of a row to
//! its nearest exemplar (and whether it is within θ). The baseline is the same detector built
//! without clustering: a uniform random sample, of the dictionary's size K, of the reference
//! activations (those the dictionary was built from, or like them), and the cosine distance of
//! a row to its k-th nearest sampled activation, all on the dictionary's centered unit sphere.
//! Both are scored the same way on the same rows: per set the distances' statistics, the rate
//! within θ, and the ROC-AUC of each OOD set against the in-distribution set (OOD positive,
//! larger distance = more OOD), side by side.
//!
//! The in-distribution rows should be held out from the reference rows (a sampled row scored
//! against itself is at distance 0); the caller chooses them.

use crate::build::uniform_below;
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::eval::metrics::roc_auc;
use crate::eval::ood::percentile_sorted;
use crate::linalg::matmul_abt;
use serde::Serialize;

/// `size` distinct indices of `0..n`, uniform, seeded (a partial Fisher–Yates shuffle over the
/// build's counter-based generator), in ascending order.
pub fn sample_indices(n: usize, size: usize, seed: u64) -> Result<Vec<usize>> {
    if size == 0 || size > n {
        return Err(Error::param(
            "sample size",
            format!("{size} rows cannot be sampled from {n} reference rows"),
        ));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..size {
        let j = i + uniform_below(seed, i as u64, (n - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut s = idx[..size].to_vec();
    s.sort_unstable();
    Ok(s)
}

/// For every row of `u` (unit directions, `n × d`), the cosine distances to its `ks`-th nearest
/// rows of `sample` (unit, `m × d`; `ks` 1-based, each ≤ m): `out[i][row]`.
pub fn knn_distances(sample: &[f32], u: &[f32], d: usize, ks: &[usize]) -> Vec<Vec<f32>> {
    let m = sample.len() / d;
    let n = u.len() / d;
    let kmax = ks.iter().copied().max().unwrap_or(1);
    let mut out = vec![Vec::with_capacity(n); ks.len()];
    let block = (1usize << 24) / m.max(1);
    let block = block.clamp(1, 4096);
    let mut sims = vec![0.0f32; block.min(n.max(1)) * m];
    for start in (0..n).step_by(block) {
        let b = block.min(n - start);
        let s = &mut sims[..b * m];
        matmul_abt(&u[start * d..(start + b) * d], sample, d, s);
        for row in s.chunks_mut(m) {
            // The kmax largest similarities, descending.
            let (top, nth, _) = row.select_nth_unstable_by(kmax - 1, |a, b| b.total_cmp(a));
            let mut best: Vec<f32> = top.to_vec();
            best.push(*nth);
            best.sort_by(|a, b| b.total_cmp(a));
            for (o, &k) in out.iter_mut().zip(ks) {
                o.push((1.0 - best[k - 1]).clamp(0.0, 2.0));
            }
        }
    }
    out
}

/// One detector's numbers on one set.
#[derive(Debug, Clone, Serialize)]
pub struct DetectorStats {
    pub mean: f64,
    pub median: f64,
    pub p90: f64,
    /// Share of rows with distance ≤ θ (the dictionary's θ, for both detectors).
    pub within_theta_rate: f64,
    /// ROC-AUC of the distance, this set (positive) against the in-distribution set; `None`
    /// for the in-distribution set.
    pub auroc: Option<f64>,
}

/// One set's row in the side-by-side report.
#[derive(Debug, Clone, Serialize)]
pub struct SetReport {
    pub name: String,
    pub rows: usize,
    /// EP: distance to the nearest exemplar.
    pub ep: DetectorStats,
    /// EP's binary signal: outside θ (1) or inside (0), as a score; its AUROC.
    pub ep_outside_theta_auroc: Option<f64>,
    /// The baseline per k (same order as [`OodBaselineReport::ks`]).
    pub knn: Vec<DetectorStats>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct OodBaselineReport {
    pub theta: f64,
    pub regions: usize,
    pub sample_size: usize,
    pub reference_rows: usize,
    pub seed: u64,
    pub ks: Vec<usize>,
    pub in_distribution: SetReport,
    pub out_of_distribution: Vec<SetReport>,
    /// Per OOD set: EP's AUROC minus the best baseline AUROC (positive: EP wins).
    pub ep_minus_best_knn_auroc: Vec<f64>,
}

fn stats(dist: &[f32], theta: f64) -> DetectorStats {
    let mut s: Vec<f64> = dist.iter().map(|&v| v as f64).collect();
    s.sort_by(f64::total_cmp);
    DetectorStats {
        mean: s.iter().sum::<f64>() / s.len() as f64,
        median: percentile_sorted(&s, 50.0),
        p90: percentile_sorted(&s, 90.0),
        within_theta_rate: s.iter().filter(|&&v| v <= theta).count() as f64 / s.len() as f64,
        auroc: None,
    }
}

fn auroc_vs(ood: &[f32], ind: &[f32]) -> Result<f64> {
    let scores: Vec<f64> = ood.iter().chain(ind).map(|&v| v as f64).collect();
    let labels: Vec<bool> = (0..scores.len()).map(|i| i < ood.len()).collect();
    roc_auc(&scores, &labels)
}

/// Options of [`ood_baseline`].
#[derive(Debug, Clone)]
pub struct OodBaselineOptions {
    /// Sampled reference rows (default: the dictionary's K).
    pub sample_size: Option<usize>,
    /// The k of the k-NN distances (1-based).
    pub ks: Vec<usize>,
    pub seed: u64,
}

/// The side-by-side report. `reference`, `in_dist` and each OOD set are raw activations
/// (`n × D`, row-major); the sample is drawn from `reference`. Returns the report and the
/// sampled reference row indices.
pub fn ood_baseline(
    dict: &Dictionary,
    reference: &[f32],
    in_dist: (&str, &[f32]),
    ood: &[(String, Vec<f32>)],
    options: &OodBaselineOptions,
) -> Result<(OodBaselineReport, Vec<usize>)> {
    let d = dict.dim();
    if ood.is_empty() {
        return Err(Error::param(
            "ood",
            "at least one out-of-distribution set is needed",
        ));
    }
    for (name, rows) in [("reference", reference), (in_dist.0, in_dist.1)]
        .into_iter()
        .chain(ood.iter().map(|(n, r)| (n.as_str(), r.as_slice())))
    {
        if rows.len() % d != 0 {
            return Err(Error::DimensionMismatch {
                what: format!("{name} activations"),
                expected: d,
                found: rows.len(),
            });
        }
        if rows.is_empty() {
            return Err(Error::EmptyInput(format!("{name}: no rows")));
        }
    }
    if dict.is_empty() {
        return Err(Error::EmptyInput("the dictionary has no region".into()));
    }
    // Both detectors work in the dictionary's space (standardised rows for a standardised one).
    let reference = dict.to_space(reference);
    let reference: &[f32] = &reference;
    let in_dist_rows = dict.to_space(in_dist.1);
    let in_dist = (in_dist.0, &in_dist_rows[..]);
    let ood: Vec<(String, Vec<f32>)> = ood
        .iter()
        .map(|(n, r)| (n.clone(), dict.to_space(r).into_owned()))
        .collect();
    let ood = &ood[..];
    let size = options.sample_size.unwrap_or(dict.len());
    let n_ref = reference.len() / d;
    let idx = sample_indices(n_ref, size, options.seed)?;
    if let Some(&k) = options.ks.iter().find(|&&k| k == 0 || k > size) {
        return Err(Error::param(
            "k",
            format!("k = {k} must be between 1 and the sample size {size}"),
        ));
    }
    if options.ks.is_empty() {
        return Err(Error::param("k", "give at least one k"));
    }
    let mut picked = Vec::with_capacity(size * d);
    for &i in &idx {
        picked.extend_from_slice(&reference[i * d..(i + 1) * d]);
    }
    let sample = dict.directions(&picked)?;
    let theta = dict.theta();
    let score = |name: &str, rows: &[f32]| -> Result<(SetReport, Vec<f32>, Vec<Vec<f32>>)> {
        let u = dict.directions(rows)?;
        let (_, ep) = dict.assign_directions(&u);
        let knn = knn_distances(&sample, &u, d, &options.ks);
        Ok((
            SetReport {
                name: name.to_string(),
                rows: ep.len(),
                ep: stats(&ep, theta),
                ep_outside_theta_auroc: None,
                knn: knn.iter().map(|k| stats(k, theta)).collect(),
            },
            ep,
            knn,
        ))
    };
    let (in_report, in_ep, in_knn) = score(in_dist.0, in_dist.1)?;
    let outside = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|&x| if (x as f64) <= theta { 0.0 } else { 1.0 })
            .collect()
    };
    let mut out = vec![];
    let mut margins = vec![];
    for (name, rows) in ood {
        let (mut rep, ep, knn) = score(name, rows)?;
        rep.ep.auroc = Some(auroc_vs(&ep, &in_ep)?);
        rep.ep_outside_theta_auroc = Some(auroc_vs(&outside(&ep), &outside(&in_ep))?);
        let mut best = f64::MIN;
        for (st, (k_ood, k_in)) in rep.knn.iter_mut().zip(knn.iter().zip(&in_knn)) {
            let a = auroc_vs(k_ood, k_in)?;
            best = best.max(a);
            st.auroc = Some(a);
        }
        margins.push(rep.ep.auroc.unwrap() - best);
        out.push(rep);
    }
    Ok((
        OodBaselineReport {
            theta,
            regions: dict.len(),
            sample_size: size,
            reference_rows: n_ref,
            seed: options.seed,
            ks: options.ks.clone(),
            in_distribution: in_report,
            out_of_distribution: out,
            ep_minus_best_knn_auroc: margins,
        },
        idx,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_distinct_seeded_and_cover_the_range() {
        let a = sample_indices(100, 10, 1).unwrap();
        assert_eq!(a, sample_indices(100, 10, 1).unwrap());
        assert_ne!(a, sample_indices(100, 10, 2).unwrap());
        let mut b = a.clone();
        b.dedup();
        assert_eq!(b.len(), 10);
        assert_eq!(sample_indices(5, 5, 3).unwrap(), vec![0, 1, 2, 3, 4]);
        assert!(sample_indices(5, 6, 3).is_err());
        // Every index is drawn about equally often.
        let mut hits = [0usize; 20];
        for s in 0..2000 {
            for i in sample_indices(20, 5, s).unwrap() {
                hits[i] += 1;
            }
        }
        assert!(hits.iter().all(|&h| (400..600).contains(&h)), "{hits:?}");
    }

    #[test]
    fn knn_distances_by_hand() {
        // Sample: e0, e1, (e0+e1)/√2 in 2-D; row e0: distances 0, 1 − 1/√2, 1.
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let sample = [1.0, 0.0, 0.0, 1.0, s, s];
        let out = knn_distances(&sample, &[1.0, 0.0], 2, &[1, 2, 3]);
        assert!(out[0][0].abs() < 1e-6);
        assert!((out[1][0] - (1.0 - s)).abs() < 1e-6);
        assert!((out[2][0] - 1.0).abs() < 1e-6);
    }
}
