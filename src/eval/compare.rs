//! EP ↔ SAE correspondence (spec §8.2): do EP's regions and an SAE's features pick the same
//! samples? Both sides encode the same activations — SAE codes with [`Sae::encode`] (or tch on a
//! GPU), EP codes as the dense signed projections `(x − c)·w_k` over the exemplar and/or the mean
//! basis. For every feature on either side, the active set is the samples with code > 0 and the
//! top set `T_f` the `min(top_k, n_active)` active samples with the largest codes; a feature is
//! eligible when `n_active ≥ min_activations`. From the overlaps `|T_i ∩ T_j|` of eligible
//! features: best matches each way with precision/recall/F1, a Hungarian matching on F1, the
//! top-1 coherence of EP regions in SAE terms, and the headline "fraction of EP regions whose
//! best SAE match has F1 > 0.5".
//!
//! Deviations from the reference, all deterministic where it is arbitrary: top-set ties go to the
//! lowest sample index (the reference's argpartition order is unspecified); the SAE argmax of a
//! sample is the first maximal feature (numpy's rule, so an all-zero code counts as feature 0);
//! the Hungarian step runs on the eligible features that have any overlap at all (rows or
//! columns of zeros cannot raise the optimal total, and zero-overlap pairs are dropped anyway).
//!
//! Memory: codes are streamed in batches and never held as `n × F`; each feature keeps a bounded
//! heap of its best `max(top_k, 5)` samples, plus one SAE argmax per sample.

use super::assignment::linear_sum_assignment_by;
use super::median;
use crate::data::ActivationStream;
use crate::dictionary::{Basis, Dictionary, Readout};
use crate::error::{Error, Result};
use crate::sae::{EncodeDevice, Sae};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

/// Settings of a comparison.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// Size bound of the top sets (`--top-k`, the reference's `top_k_sae` = 100).
    pub top_k: usize,
    /// Features with fewer active samples are not eligible (reference: 20).
    pub min_activations: u64,
    /// EP bases compared.
    pub bases: Vec<Basis>,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            top_k: 100,
            min_activations: 20,
            bases: vec![Basis::Exemplar, Basis::Mean],
        }
    }
}

/// Samples whose top-5 SAE argmaxes the coherence step compares.
const COHERENCE_TOP: usize = 5;

/// A candidate of a top set: larger codes are better, then lower sample indices.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key {
    code: f32,
    sample: u64,
}

impl Eq for Key {}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.code
            .total_cmp(&other.code)
            .then(other.sample.cmp(&self.sample))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Per-feature active counts and bounded heaps of the best samples.
#[derive(Debug, Clone)]
struct FeatureTops {
    cap: usize,
    n_active: Vec<u64>,
    heaps: Vec<BinaryHeap<Reverse<Key>>>,
}

impl FeatureTops {
    fn new(features: usize, cap: usize) -> Self {
        FeatureTops {
            cap,
            n_active: vec![0; features],
            heaps: vec![BinaryHeap::new(); features],
        }
    }

    /// Adds a batch of `b` samples (numbered from `first`) given row-major `b × F` codes.
    fn update(&mut self, codes: &[f32], first: u64) {
        let f = self.heaps.len();
        let b = codes.len() / f;
        let cols = crate::linalg::transpose(codes, b, f);
        let cap = self.cap;
        self.heaps
            .par_iter_mut()
            .zip(self.n_active.par_iter_mut())
            .zip(cols.par_chunks(b.max(1)))
            .for_each(|((heap, n), col)| {
                for (r, &code) in col.iter().enumerate() {
                    if code > 0.0 {
                        *n += 1;
                        let key = Key {
                            code,
                            sample: first + r as u64,
                        };
                        if heap.len() < cap {
                            heap.push(Reverse(key));
                        } else if key > heap.peek().expect("cap ≥ 1").0 {
                            heap.pop();
                            heap.push(Reverse(key));
                        }
                    }
                }
            });
    }

    /// Each feature's kept samples, best first.
    fn finish(self) -> (Vec<u64>, Vec<Vec<u64>>) {
        let tops = self
            .heaps
            .into_par_iter()
            .map(|h| {
                let mut v: Vec<Key> = h.into_iter().map(|r| r.0).collect();
                v.sort_by(|a, b| b.cmp(a));
                v.into_iter().map(|k| k.sample).collect()
            })
            .collect();
        (self.n_active, tops)
    }
}

/// A best match of one feature on the other side.
#[derive(Debug, Clone, PartialEq)]
pub struct BestMatch {
    /// The feature whose best match this is (an SAE feature for SAE→EP, an EP region for EP→SAE).
    pub from: usize,
    /// Its best match on the other side.
    pub to: usize,
    /// `|T_from ∩ T_to|`.
    pub overlap: u64,
    /// `overlap / |T_from|`.
    pub precision: f64,
    /// `overlap / |T_to|`.
    pub recall: f64,
    pub f1: f64,
}

/// A pair of the Hungarian matching on F1.
#[derive(Debug, Clone, PartialEq)]
pub struct HungarianPair {
    pub sae_feature: usize,
    pub ep_feature: usize,
    pub overlap: u64,
    pub f1: f64,
}

/// Top-1 coherence: how many distinct SAE argmax features the top-5 samples of an EP region have.
#[derive(Debug, Clone, PartialEq)]
pub struct Coherence {
    /// `histogram[c − 1]` = EP regions whose top 5 have `c` distinct SAE argmaxes.
    pub histogram: [u64; COHERENCE_TOP],
    /// Regions counted (those with ≥ 5 positive codes).
    pub n_features: u64,
    /// Share with one distinct SAE feature (NaN when none was counted).
    pub frac_all_same: f64,
    /// Mean number of distinct SAE features (NaN when none was counted).
    pub mean_distinct: f64,
}

/// Summary of a list of F1 values.
#[derive(Debug, Clone, PartialEq)]
pub struct F1Stats {
    pub n: usize,
    pub mean: f64,
    pub median: f64,
    pub frac_above_0_5: f64,
    pub frac_above_0_3: f64,
}

impl F1Stats {
    pub fn of(f1: &[f64]) -> Self {
        let n = f1.len();
        let frac = |t: f64| {
            if n == 0 {
                f64::NAN
            } else {
                f1.iter().filter(|&&v| v > t).count() as f64 / n as f64
            }
        };
        F1Stats {
            n,
            mean: if n == 0 {
                f64::NAN
            } else {
                f1.iter().sum::<f64>() / n as f64
            },
            median: if n == 0 { f64::NAN } else { median(f1) },
            frac_above_0_5: frac(0.5),
            frac_above_0_3: frac(0.3),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "n": self.n,
            "mean_f1": num(self.mean),
            "median_f1": num(self.median),
            "frac_f1_gt_0_5": num(self.frac_above_0_5),
            "frac_f1_gt_0_3": num(self.frac_above_0_3),
        })
    }
}

/// The comparison of one EP basis with the SAE.
#[derive(Debug, Clone)]
pub struct BasisResult {
    pub basis: Basis,
    pub n_partitions: usize,
    pub n_eligible_ep: usize,
    pub n_eligible_sae: usize,
    pub sae_to_ep: Vec<BestMatch>,
    pub ep_to_sae: Vec<BestMatch>,
    pub hungarian: Vec<HungarianPair>,
    pub coherence: Coherence,
}

impl BasisResult {
    /// The headline: the fraction of EP→SAE best matches with F1 > 0.5.
    pub fn headline(&self) -> f64 {
        self.ep_to_sae_stats().frac_above_0_5
    }
    pub fn sae_to_ep_stats(&self) -> F1Stats {
        F1Stats::of(&self.sae_to_ep.iter().map(|m| m.f1).collect::<Vec<_>>())
    }
    pub fn ep_to_sae_stats(&self) -> F1Stats {
        F1Stats::of(&self.ep_to_sae.iter().map(|m| m.f1).collect::<Vec<_>>())
    }
    pub fn hungarian_stats(&self) -> F1Stats {
        F1Stats::of(&self.hungarian.iter().map(|m| m.f1).collect::<Vec<_>>())
    }
}

/// The result of [`compare`]: the SAE side's eligibility and one result per basis.
#[derive(Debug, Clone)]
pub struct SaeComparison {
    pub config: CompareConfig,
    pub n_samples: u64,
    pub d_sae: usize,
    pub theta: f64,
    pub results: Vec<BasisResult>,
}

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

pub fn basis_name(b: Basis) -> &'static str {
    match b {
        Basis::Exemplar => "exemplar",
        Basis::Mean => "mean",
    }
}

impl SaeComparison {
    /// The report as JSON: `config`, `bases`, `results_by_basis[basis]` = `{sae_to_ep[],
    /// ep_to_sae[], hungarian[], coherence{}, summary{}, n_partitions, threshold, basis}`.
    /// `extra_config` entries (paths, device) are added to `config`.
    pub fn to_json(&self, extra_config: serde_json::Map<String, Value>) -> Value {
        let mut config = serde_json::Map::new();
        config.insert("n_tokens".into(), json!(self.n_samples));
        config.insert("n_sae_features".into(), json!(self.d_sae));
        config.insert("sae_d_sae".into(), json!(self.d_sae));
        config.insert("top_k_sae".into(), json!(self.config.top_k));
        config.insert("min_activations".into(), json!(self.config.min_activations));
        config.extend(extra_config);
        let bases: Vec<&str> = self.results.iter().map(|r| basis_name(r.basis)).collect();
        let mut by = serde_json::Map::new();
        for r in &self.results {
            let best = |m: &BestMatch, from: &str, to: &str| {
                json!({from: m.from, to: m.to, "overlap": m.overlap,
                       "precision": m.precision, "recall": m.recall, "f1": m.f1})
            };
            let c = &r.coherence;
            let hist: serde_json::Map<String, Value> = c
                .histogram
                .iter()
                .enumerate()
                .map(|(i, &v)| ((i + 1).to_string(), json!(v)))
                .collect();
            by.insert(
                basis_name(r.basis).into(),
                json!({
                    "basis": basis_name(r.basis),
                    "n_partitions": r.n_partitions,
                    "threshold": self.theta,
                    "n_eligible_ep": r.n_eligible_ep,
                    "n_eligible_sae": r.n_eligible_sae,
                    "sae_to_ep": r.sae_to_ep.iter().map(|m| best(m, "sae_feature", "ep_feature")).collect::<Vec<_>>(),
                    "ep_to_sae": r.ep_to_sae.iter().map(|m| best(m, "ep_feature", "sae_feature")).collect::<Vec<_>>(),
                    "hungarian": r.hungarian.iter().map(|h| json!({"sae_feature": h.sae_feature,
                        "ep_feature": h.ep_feature, "overlap": h.overlap, "f1": h.f1})).collect::<Vec<_>>(),
                    "coherence": {"histogram": hist, "n_features": c.n_features,
                        "frac_all_same": num(c.frac_all_same), "mean_distinct": num(c.mean_distinct)},
                    "summary": {
                        "headline_frac_ep_f1_gt_0_5": num(r.headline()),
                        "sae_to_ep": r.sae_to_ep_stats().to_json(),
                        "ep_to_sae": r.ep_to_sae_stats().to_json(),
                        "hungarian": r.hungarian_stats().to_json(),
                    },
                }),
            );
        }
        json!({"config": config, "bases": bases, "results_by_basis": by})
    }
}

/// Streaming accumulator: feed SAE and EP codes of the same samples batch by batch.
pub struct Accumulator {
    config: CompareConfig,
    d_sae: usize,
    k: usize,
    sae: FeatureTops,
    ep: Vec<FeatureTops>,
    sae_argmax: Vec<u32>,
    n: u64,
}

impl Accumulator {
    pub fn new(config: CompareConfig, d_sae: usize, k: usize) -> Result<Self> {
        if config.top_k == 0 {
            return Err(Error::param("top_k", "must be at least 1"));
        }
        if config.bases.is_empty() {
            return Err(Error::param("bases", "name at least one basis"));
        }
        if d_sae == 0 || k == 0 {
            return Err(Error::EmptyInput(
                "the SAE and the dictionary need at least one feature each".into(),
            ));
        }
        let cap = config.top_k.max(COHERENCE_TOP);
        Ok(Accumulator {
            sae: FeatureTops::new(d_sae, cap),
            ep: config
                .bases
                .iter()
                .map(|_| FeatureTops::new(k, cap))
                .collect(),
            config,
            d_sae,
            k,
            sae_argmax: Vec::new(),
            n: 0,
        })
    }

    /// Adds `b` samples: `sae_codes` is `b × d_sae`, `ep_codes[i]` is `b × K` for
    /// `config.bases[i]`.
    pub fn add(&mut self, sae_codes: &[f32], ep_codes: &[Vec<f32>]) -> Result<()> {
        if sae_codes.len() % self.d_sae != 0 {
            return Err(Error::param(
                "sae_codes",
                "length is not a multiple of d_sae",
            ));
        }
        let b = sae_codes.len() / self.d_sae;
        if ep_codes.len() != self.ep.len() || ep_codes.iter().any(|c| c.len() != b * self.k) {
            return Err(Error::param(
                "ep_codes",
                format!("expected {} matrices of {b} × {}", self.ep.len(), self.k),
            ));
        }
        if b == 0 {
            return Ok(());
        }
        self.sae.update(sae_codes, self.n);
        self.sae_argmax.extend(
            sae_codes
                .par_chunks(self.d_sae)
                .map(|r| {
                    let mut best = 0usize;
                    for (i, &v) in r.iter().enumerate() {
                        if v > r[best] {
                            best = i;
                        }
                    }
                    best as u32
                })
                .collect::<Vec<_>>(),
        );
        for (tops, codes) in self.ep.iter_mut().zip(ep_codes) {
            tops.update(codes, self.n);
        }
        self.n += b as u64;
        Ok(())
    }

    /// Samples added so far.
    pub fn samples(&self) -> u64 {
        self.n
    }

    /// The comparison of everything added.
    pub fn finish(self, theta: f64) -> Result<SaeComparison> {
        if self.n == 0 {
            return Err(Error::EmptyInput("no activations to compare on".into()));
        }
        let (top_k, min_act) = (self.config.top_k, self.config.min_activations);
        let (sae_n, sae_tops) = self.sae.finish();
        let sae_sets = top_sets(&sae_n, &sae_tops, top_k, min_act);
        let mut results = Vec::new();
        for (basis, tops) in self.config.bases.iter().zip(self.ep) {
            let (ep_n, ep_tops) = tops.finish();
            let ep_sets = top_sets(&ep_n, &ep_tops, top_k, min_act);
            let coh = coherence(&ep_n, &ep_tops, &self.sae_argmax);
            results.push(correspond(*basis, &sae_sets, &ep_sets, coh)?);
        }
        Ok(SaeComparison {
            config: self.config,
            n_samples: self.n,
            d_sae: self.d_sae,
            theta,
            results,
        })
    }
}

/// Top sets `T_f` (sorted sample indices) of the eligible features; `None` for ineligible ones.
fn top_sets(
    n_active: &[u64],
    tops: &[Vec<u64>],
    top_k: usize,
    min_act: u64,
) -> Vec<Option<Vec<u64>>> {
    n_active
        .iter()
        .zip(tops)
        .map(|(&n, t)| {
            (n >= min_act && n > 0).then(|| {
                let mut s: Vec<u64> = t.iter().take(top_k).copied().collect();
                s.sort_unstable();
                s
            })
        })
        .collect()
}

/// Best matches both ways and the Hungarian matching, from the eligible top sets.
fn correspond(
    basis: Basis,
    sae: &[Option<Vec<u64>>],
    ep: &[Option<Vec<u64>>],
    coherence: Coherence,
) -> Result<BasisResult> {
    // Inverted index sample → eligible EP features holding it in their top set.
    let mut holders: HashMap<u64, Vec<u32>> = HashMap::new();
    for (j, t) in ep.iter().enumerate() {
        for &s in t.iter().flatten() {
            holders.entry(s).or_default().push(j as u32);
        }
    }
    let k = ep.len();
    // Sparse overlap rows: for each SAE feature, (EP feature, overlap) ascending by feature.
    // Both u32 (an overlap is at most a top set's size): 8 bytes a pair, and at K = 10⁵ regions
    // there are hundreds of millions of pairs, held twice (by SAE feature and by region).
    let rows: Vec<Vec<(u32, u32)>> = sae
        .par_iter()
        .map_init(
            || (vec![0u32; k], Vec::<u32>::new()),
            |(count, touched), t| {
                let Some(t) = t else { return Vec::new() };
                for s in t {
                    for &j in holders.get(s).into_iter().flatten() {
                        if count[j as usize] == 0 {
                            touched.push(j);
                        }
                        count[j as usize] += 1;
                    }
                }
                touched.sort_unstable();
                let row = touched.iter().map(|&j| (j, count[j as usize])).collect();
                for &j in touched.iter() {
                    count[j as usize] = 0;
                }
                touched.clear();
                row
            },
        )
        .collect();
    let size = |t: &Option<Vec<u64>>| t.as_ref().map_or(0, Vec::len) as f64;
    let f1 = |ov: u32, a: f64, b: f64| 2.0 * f64::from(ov) / (a + b);
    let best = |from: usize, to: usize, ov: u32, nf: f64, nt: f64| BestMatch {
        from,
        to,
        overlap: u64::from(ov),
        precision: ov as f64 / nf,
        recall: ov as f64 / nt,
        f1: f1(ov, nf, nt),
    };
    let mut sae_to_ep = Vec::new();
    let mut cols: Vec<Vec<(u32, u32)>> = vec![Vec::new(); k];
    for (i, row) in rows.iter().enumerate() {
        // First maximum: rows are ascending by feature, so `>` keeps the lowest.
        let mut top: Option<(u32, u32)> = None;
        for &(j, ov) in row {
            if top.is_none_or(|(_, o)| ov > o) {
                top = Some((j, ov));
            }
            cols[j as usize].push((i as u32, ov));
        }
        if let Some((j, ov)) = top {
            sae_to_ep.push(best(
                i,
                j as usize,
                ov,
                size(&sae[i]),
                size(&ep[j as usize]),
            ));
        }
    }
    let mut ep_to_sae = Vec::new();
    for (j, col) in cols.iter().enumerate() {
        let mut top: Option<(u32, u32)> = None;
        for &(i, ov) in col {
            if top.is_none_or(|(_, o)| ov > o) {
                top = Some((i, ov));
            }
        }
        if let Some((i, ov)) = top {
            ep_to_sae.push(best(
                j,
                i as usize,
                ov,
                size(&ep[j]),
                size(&sae[i as usize]),
            ));
        }
    }
    // Hungarian on F1 over the eligible features with any overlap.
    let r_ids: Vec<usize> = (0..rows.len()).filter(|&i| !rows[i].is_empty()).collect();
    let c_ids: Vec<usize> = (0..k).filter(|&j| !cols[j].is_empty()).collect();
    let mut c_pos = vec![usize::MAX; k];
    for (p, &j) in c_ids.iter().enumerate() {
        c_pos[j] = p;
    }
    // The smaller side as the solver's rows. The F1 matrix is never formed: at K = 181k regions
    // and 12.5k SAE features its f64 entries would take 18 GB; the overlaps (at most the top
    // set's size) take 2 bytes each, and each F1 is computed from its overlap as the solver
    // reads it — the same f64 values, so the same pairs.
    let (nr, nc) = (r_ids.len(), c_ids.len());
    let sae_rows = nr <= nc;
    let (n_solver_rows, n_solver_cols) = if sae_rows { (nr, nc) } else { (nc, nr) };
    let mut overlap = vec![0u16; nr * nc];
    for (p, &i) in r_ids.iter().enumerate() {
        for &(j, ov) in &rows[i] {
            let q = c_pos[j as usize];
            let at = if sae_rows { p * nc + q } else { q * nr + p };
            overlap[at] = u16::try_from(ov).map_err(|_| {
                Error::param(
                    "top-k",
                    format!("an overlap of {ov} samples exceeds {}", u16::MAX),
                )
            })?;
        }
    }
    let sae_size: Vec<f64> = r_ids.iter().map(|&i| size(&sae[i])).collect();
    let ep_size: Vec<f64> = c_ids.iter().map(|&j| size(&ep[j])).collect();
    // Negated: the solver minimises.
    let cost = |a: usize, b: usize| -> f64 {
        let ov = overlap[a * n_solver_cols + b];
        let (p, q) = if sae_rows { (a, b) } else { (b, a) };
        -(if ov == 0 {
            0.0
        } else {
            f1(u32::from(ov), sae_size[p], ep_size[q])
        })
    };
    let (ra, ca) = if sae_rows {
        linear_sum_assignment_by(n_solver_rows, n_solver_cols, cost)?
    } else {
        let (a, b) = linear_sum_assignment_by(n_solver_rows, n_solver_cols, cost)?;
        (b, a)
    };
    let mut hungarian = Vec::new();
    for (p, q) in ra.into_iter().zip(ca) {
        let (i, j) = (r_ids[p], c_ids[q]);
        if let Ok(x) = rows[i].binary_search_by_key(&(j as u32), |e| e.0) {
            let ov = rows[i][x].1;
            hungarian.push(HungarianPair {
                sae_feature: i,
                ep_feature: j,
                overlap: u64::from(ov),
                f1: f1(ov, size(&sae[i]), size(&ep[j])),
            });
        }
    }
    hungarian.sort_by_key(|h| h.sae_feature);
    Ok(BasisResult {
        basis,
        n_partitions: k,
        n_eligible_ep: ep.iter().filter(|t| t.is_some()).count(),
        n_eligible_sae: sae.iter().filter(|t| t.is_some()).count(),
        sae_to_ep,
        ep_to_sae,
        hungarian,
        coherence,
    })
}

/// Top-1 coherence of the EP regions with at least 5 positive codes.
fn coherence(n_active: &[u64], tops: &[Vec<u64>], sae_argmax: &[u32]) -> Coherence {
    let mut histogram = [0u64; COHERENCE_TOP];
    for (&n, t) in n_active.iter().zip(tops) {
        if n < COHERENCE_TOP as u64 {
            continue;
        }
        let mut feats: Vec<u32> = t[..COHERENCE_TOP]
            .iter()
            .map(|&s| sae_argmax[s as usize])
            .collect();
        feats.sort_unstable();
        feats.dedup();
        histogram[feats.len() - 1] += 1;
    }
    let total: u64 = histogram.iter().sum();
    let (frac, mean) = if total == 0 {
        (f64::NAN, f64::NAN)
    } else {
        let s: u64 = histogram
            .iter()
            .enumerate()
            .map(|(i, &c)| (i as u64 + 1) * c)
            .sum();
        (histogram[0] as f64 / total as f64, s as f64 / total as f64)
    };
    Coherence {
        histogram,
        n_features: total,
        frac_all_same: frac,
        mean_distinct: mean,
    }
}

/// Compares `sae` with `dict` on the first `max_rows` rows of `stream` (all when `None`), in
/// batches of `batch_size`, encoding the SAE side on `device`.
pub fn compare(
    sae: &Sae,
    dict: &Dictionary,
    stream: &mut ActivationStream,
    config: &CompareConfig,
    max_rows: Option<u64>,
    batch_size: usize,
    device: EncodeDevice,
) -> Result<SaeComparison> {
    if dict.dim() != sae.d_in {
        return Err(Error::DimensionMismatch {
            what: format!("the dictionary (the SAE's d_in is {})", sae.d_in),
            expected: sae.d_in,
            found: dict.dim(),
        });
    }
    if stream.dim() != sae.d_in {
        return Err(Error::DimensionMismatch {
            what: format!(
                "activations {} (the SAE's input width d_in)",
                stream.paths()[0].display()
            ),
            expected: sae.d_in,
            found: stream.dim(),
        });
    }
    if batch_size == 0 {
        return Err(Error::param("batch_size", "must be at least 1"));
    }
    let mut acc = Accumulator::new(config.clone(), sae.d_sae, dict.len())?;
    let limit = max_rows.unwrap_or(u64::MAX);
    let total = stream.total_rows().min(limit);
    let pb = crate::progress::progress_bar(total, "compare");
    while acc.samples() < limit {
        let want = (limit - acc.samples()).min(batch_size as u64) as usize;
        let Some(batch) = stream.next_batch(want)? else {
            break;
        };
        let rows = &batch.data;
        let sae_codes = sae.encode_on(rows, device)?;
        let ep: Vec<Vec<f32>> = config
            .bases
            .iter()
            .map(|&b| dict.encode(rows, b, Readout::Signed))
            .collect::<Result<_>>()?;
        acc.add(&sae_codes, &ep)?;
        pb.inc(batch.rows() as u64);
    }
    pb.finish_and_clear();
    acc.finish(dict.theta())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More SAE features than EP regions: the solver runs on the transposed matrix and the
    /// pairs come back by SAE feature.
    #[test]
    fn hungarian_with_more_sae_features_than_regions() {
        let set = |v: &[u64]| Some(v.to_vec());
        // T: SAE f0 {0,1}, f1 {2,3}, f2 {0,1,2,3}; EP e0 {0,1}, e1 {2,3,4,5}.
        let sae = vec![set(&[0, 1]), set(&[2, 3]), set(&[0, 1, 2, 3])];
        let ep = vec![set(&[0, 1]), set(&[2, 3, 4, 5])];
        // F1: f0·e0 = 1, f1·e1 = 2·2/6 = 2/3, f2·e0 = 2·2/6 = 2/3, f2·e1 = 2·2/8 = 1/2.
        // Best total: f0–e0 + f1–e1 = 5/3 (f2–e0 + f1–e1 = 4/3, f0–e0 + f2–e1 = 3/2).
        let none = coherence(&[0, 0], &[vec![], vec![]], &[]);
        assert_eq!(none.n_features, 0);
        assert!(none.frac_all_same.is_nan());
        let r = correspond(Basis::Mean, &sae, &ep, none).unwrap();
        assert_eq!((r.basis, r.n_partitions), (Basis::Mean, 2));
        let h: Vec<(usize, usize, u64)> = r
            .hungarian
            .iter()
            .map(|p| (p.sae_feature, p.ep_feature, p.overlap))
            .collect();
        assert_eq!(h, vec![(0, 0, 2), (1, 1, 2)]);
        assert!((r.hungarian[1].f1 - 2.0 / 3.0).abs() < 1e-12);
        // EP → SAE: e0's largest overlap (2) ties f0 and f2 → f0; e1's is f1 and f2 (2) → f1.
        let e2s: Vec<(usize, usize)> = r.ep_to_sae.iter().map(|m| (m.from, m.to)).collect();
        assert_eq!(e2s, vec![(0, 0), (1, 1)]);
    }

    #[test]
    fn heaps_keep_the_largest_codes_ties_to_the_lowest_sample() {
        let mut t = FeatureTops::new(1, 2);
        t.update(&[1.0, 3.0, 0.0, 3.0, -2.0, 2.0], 0);
        t.update(&[3.0], 6);
        let (n, tops) = t.finish();
        assert_eq!(n, vec![5]);
        assert_eq!(tops, vec![vec![1, 3]]);
    }
}
