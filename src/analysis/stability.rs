//! Stability across seeds: dictionaries built on the same corpus in different document orders
//! (`build --shuffle-seed S`), matched pairwise ([`match_dictionaries`]: Hungarian on the cosine
//! of the mean directions, or of the exemplars), and the reference's per-region stability
//! predictor `D_i = log10(N_i · c_i²)` (N members, c coherence) against whether the region
//! persisted.
//!
//! For every ordered pair (A, B) of different dictionaries, a region of A **persists in B** when
//! its Hungarian partner in B has cosine ≥ the cutoff. A region **persists** when it persists in
//! every other dictionary. Reported: per dictionary and per pair the fraction of regions that
//! persist; per region N, c, D, its matched cosine in each other dictionary and their mean; the
//! ROC-AUC of D as a predictor of persisting (over every region of every dictionary, and per
//! dictionary), beside the AUROCs of log10 N and of c alone; and Spearman's correlation of D
//! with the mean matched cosine (the reference's `exp_stability_predictor` view).

use super::spearman;
use crate::dictionary::{Basis, Dictionary};
use crate::error::{Error, Result};
use crate::eval::matching::match_dictionaries;
use crate::eval::metrics::roc_auc;
use serde::Serialize;

/// One region's record.
#[derive(Debug, Clone, Serialize)]
pub struct RegionStability {
    pub dictionary: usize,
    pub region: usize,
    pub members: u64,
    pub coherence: f64,
    /// `log10(N · c²)` (`None` when `N · c²` is 0).
    pub d: Option<f64>,
    /// Per other dictionary (in input order, this one skipped): the cosine of the Hungarian
    /// partner (`None`: no partner, when this dictionary has more regions).
    pub matched_cos: Vec<Option<f64>>,
    /// Mean of `matched_cos`, an unmatched region counting 0.
    pub mean_matched_cos: f64,
    /// Other dictionaries it persists in.
    pub persisted_in: usize,
    /// Persists in every other dictionary.
    pub persisted: bool,
}

/// A dictionary's summary.
#[derive(Debug, Clone, Serialize)]
pub struct DictionaryStability {
    pub name: String,
    pub regions: usize,
    pub theta: f64,
    pub order_seed: Option<u64>,
    /// Fraction of its regions that persist in every other dictionary.
    pub persisted_fraction: f64,
    /// Per other dictionary (input order, itself skipped): the fraction that persist there.
    pub persisted_fraction_by_other: Vec<f64>,
    /// AUROC of D for persisting, over this dictionary's regions (`None`: one class only).
    pub auroc_d: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct StabilityReport {
    pub basis: String,
    pub cutoff: f64,
    pub dictionaries: Vec<DictionaryStability>,
    /// Over every region of every dictionary.
    pub regions_total: usize,
    pub persisted_fraction: f64,
    /// AUROC of `D_i` for persisting, pooled (`None`: one class only).
    pub auroc_d: Option<f64>,
    /// The same for `log10 N` and for `c` alone.
    pub auroc_log_members: Option<f64>,
    pub auroc_coherence: Option<f64>,
    /// Spearman's ρ between D and the mean matched cosine, pooled.
    pub spearman_d_mean_cos: Option<f64>,
    pub regions: Vec<RegionStability>,
}

/// `log10(N · c²)` of region `k`.
pub fn stability_predictor(dict: &Dictionary, k: usize) -> Option<f64> {
    let v = dict.member_count(k) as f64 * dict.coherence(k).powi(2);
    (v > 0.0).then(|| v.log10())
}

fn auroc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let pos = labels.iter().filter(|&&l| l).count();
    if pos == 0 || pos == labels.len() {
        return None;
    }
    roc_auc(scores, labels).ok()
}

/// Matches every pair of `dicts` (name, dictionary; at least two, one width) on `basis` and
/// scores persistence at `cutoff`.
#[allow(clippy::needless_range_loop)] // r indexes every other dictionary's cosines
pub fn stability(
    dicts: &[(String, &Dictionary)],
    basis: Basis,
    cutoff: f64,
) -> Result<StabilityReport> {
    if dicts.len() < 2 {
        return Err(Error::param(
            "stability",
            "needs at least two dictionaries (built with different seeds)",
        ));
    }
    let n = dicts.len();
    // cos[i][j][r]: region r of i's partner cosine in j.
    let mut cos: Vec<Vec<Vec<Option<f64>>>> = dicts
        .iter()
        .map(|(_, d)| vec![vec![None; d.len()]; n])
        .collect();
    for i in 0..n {
        for j in i + 1..n {
            let m = match_dictionaries(dicts[i].1, dicts[j].1, basis, cutoff).map_err(|e| {
                Error::param(
                    "stability",
                    format!("matching {} with {}: {e}", dicts[i].0, dicts[j].0),
                )
            })?;
            for p in &m.pairs {
                cos[i][j][p.i_a] = Some(p.cos);
                cos[j][i][p.i_b] = Some(p.cos);
            }
        }
    }
    let mut regions = vec![];
    let mut summaries = vec![];
    for i in 0..n {
        let dict = dicts[i].1;
        let others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
        let mut by_other = vec![0usize; others.len()];
        let first = regions.len();
        for r in 0..dict.len() {
            let matched: Vec<Option<f64>> = others.iter().map(|&j| cos[i][j][r]).collect();
            let persisted_in = matched
                .iter()
                .enumerate()
                .filter(|(o, c)| {
                    let p = c.is_some_and(|c| c >= cutoff);
                    if p {
                        by_other[*o] += 1;
                    }
                    p
                })
                .count();
            regions.push(RegionStability {
                dictionary: i,
                region: r,
                members: dict.member_count(r),
                coherence: dict.coherence(r),
                d: stability_predictor(dict, r),
                mean_matched_cos: matched.iter().map(|c| c.unwrap_or(0.0)).sum::<f64>()
                    / matched.len() as f64,
                matched_cos: matched,
                persisted_in,
                persisted: persisted_in == others.len(),
            });
        }
        let own = &regions[first..];
        let (scores, labels): (Vec<f64>, Vec<bool>) = own
            .iter()
            .filter_map(|r| r.d.map(|d| (d, r.persisted)))
            .unzip();
        summaries.push(DictionaryStability {
            name: dicts[i].0.clone(),
            regions: dict.len(),
            theta: dict.theta(),
            order_seed: dict.info().order_seed,
            persisted_fraction: own.iter().filter(|r| r.persisted).count() as f64
                / dict.len().max(1) as f64,
            persisted_fraction_by_other: by_other
                .iter()
                .map(|&c| c as f64 / dict.len().max(1) as f64)
                .collect(),
            auroc_d: auroc(&scores, &labels),
        });
    }
    let with_d: Vec<&RegionStability> = regions.iter().filter(|r| r.d.is_some()).collect();
    let labels: Vec<bool> = with_d.iter().map(|r| r.persisted).collect();
    let d: Vec<f64> = with_d.iter().map(|r| r.d.unwrap()).collect();
    let all_labels: Vec<bool> = regions.iter().map(|r| r.persisted).collect();
    let log_n: Vec<f64> = regions
        .iter()
        .map(|r| (r.members.max(1) as f64).log10())
        .collect();
    let c: Vec<f64> = regions.iter().map(|r| r.coherence).collect();
    let mean_cos: Vec<f64> = with_d.iter().map(|r| r.mean_matched_cos).collect();
    Ok(StabilityReport {
        basis: crate::eval::compare::basis_name(basis).to_string(),
        cutoff,
        dictionaries: summaries,
        regions_total: regions.len(),
        persisted_fraction: all_labels.iter().filter(|&&p| p).count() as f64
            / regions.len().max(1) as f64,
        auroc_d: auroc(&d, &labels),
        auroc_log_members: auroc(&log_n, &all_labels),
        auroc_coherence: auroc(&c, &all_labels),
        spearman_d_mean_cos: spearman(&d, &mean_cos),
        regions,
    })
}
