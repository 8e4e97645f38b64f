//! Dictionary ↔ dictionary matching (spec §8.3, §8.8): which regions of dictionary A reappear in
//! dictionary B — across layers' checkpoints (base vs instruction-tuned), seeds, or θs. The
//! directions are compared as they are (`S = E_a E_bᵀ`; the two centers and θs may differ, no
//! re-centering), a Hungarian matching maximises the total cosine, and pairs at or above the
//! cutoff are *persisted*; A's other cells are *dropped*, B's other cells *introduced*.
//! Matching on the mean basis is the seed-stability view (spec §8.8): for every matched pair both
//! `cos(m_a, m_b)` and `cos(e_a, e_b)` are reported, whatever the matching basis.

use super::assignment::linear_sum_assignment;
use super::compare::basis_name;
use crate::dictionary::{Basis, Dictionary};
use crate::error::{Error, Result};
use crate::linalg::matmul_abt;
use crate::output::{check_writable, write_atomic};
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

/// Characters kept of a top prompt.
pub const PROMPT_CHARS: usize = 160;

/// One Hungarian pair.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchedPair {
    pub i_a: usize,
    pub i_b: usize,
    /// Cosine in the matching basis.
    pub cos: f64,
    /// `cos(e_a, e_b)` of the exemplars.
    pub cos_exemplar: f64,
    /// `cos(m_a, m_b)` of the mean directions.
    pub cos_mean: f64,
    pub persisted: bool,
}

impl MatchedPair {
    /// `1 − cos`.
    pub fn dist(&self) -> f64 {
        1.0 - self.cos
    }
}

/// The matching of two dictionaries.
#[derive(Debug, Clone)]
pub struct DictionaryMatch {
    pub basis: Basis,
    pub cutoff: f64,
    pub k_a: usize,
    pub k_b: usize,
    pub theta_a: f64,
    pub theta_b: f64,
    /// The dictionaries were standardised differently, so the cosines are those of their
    /// directions mapped to the activations' space (`σ ⊙ e`, renormalised).
    pub activation_space: bool,
    /// All `min(K_a, K_b)` pairs, by cosine descending (then `i_a`).
    pub pairs: Vec<MatchedPair>,
    /// A's cells not persisted, ascending.
    pub dropped: Vec<usize>,
    /// B's cells not persisted, ascending.
    pub introduced: Vec<usize>,
}

/// Cosines between the rows of two `K × D` bases (`K_a × K_b`, f64).
fn cosines(a: &[f32], b: &[f32], d: usize) -> Vec<f64> {
    let mut s = vec![0.0f32; (a.len() / d) * (b.len() / d)];
    matmul_abt(a, b, d, &mut s);
    s.into_iter().map(|v| v as f64).collect()
}

/// Matches `a` against `b` over `basis`; pairs with cosine ≥ `cutoff` persist.
pub fn match_dictionaries(
    a: &Dictionary,
    b: &Dictionary,
    basis: Basis,
    cutoff: f64,
) -> Result<DictionaryMatch> {
    if a.dim() != b.dim() {
        return Err(Error::DimensionMismatch {
            what: "dictionary B (it must have the width of dictionary A)".into(),
            expected: a.dim(),
            found: b.dim(),
        });
    }
    if a.is_empty() || b.is_empty() {
        return Err(Error::EmptyInput(
            "both dictionaries need at least one partition to match".into(),
        ));
    }
    if !cutoff.is_finite() || !(-1.0..=1.0).contains(&cutoff) {
        return Err(Error::param(
            "cutoff",
            format!("{cutoff} is not a cosine in [−1, 1]"),
        ));
    }
    let d = a.dim();
    let (ka, kb) = (a.len(), b.len());
    // Dictionaries standardised differently live in different spaces: their directions are
    // compared in the activations' space (σ ⊙ e, renormalised) instead.
    let shared = a.scaling() == b.scaling();
    let space = |dict: &Dictionary, basis: Basis| -> Vec<f32> {
        let v = dict.basis(basis);
        if shared {
            return v;
        }
        v.chunks(d)
            .flat_map(|r| dict.activation_direction(r))
            .collect()
    };
    let (ea, eb) = (space(a, Basis::Exemplar), space(b, Basis::Exemplar));
    let (ma, mb) = (space(a, Basis::Mean), space(b, Basis::Mean));
    let s = match basis {
        Basis::Exemplar => cosines(&ea, &eb, d),
        Basis::Mean => cosines(&ma, &mb, d),
    };
    let (rows, cols) = linear_sum_assignment(&s, ka, kb, true)?;
    // Unit vectors stored in f32: clamp, so identical directions give cos 1 and dist 0.
    let dot = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(&p, &q)| p as f64 * q as f64)
            .sum::<f64>()
            .clamp(-1.0, 1.0)
    };
    let mut pairs: Vec<MatchedPair> = rows
        .iter()
        .zip(&cols)
        .map(|(&i, &j)| {
            let (ra, rb) = (i * d..(i + 1) * d, j * d..(j + 1) * d);
            let cos_exemplar = dot(&ea[ra.clone()], &eb[rb.clone()]);
            let cos_mean = dot(&ma[ra], &mb[rb]);
            let cos = match basis {
                Basis::Exemplar => cos_exemplar,
                Basis::Mean => cos_mean,
            };
            MatchedPair {
                i_a: i,
                i_b: j,
                cos,
                cos_exemplar,
                cos_mean,
                persisted: cos >= cutoff,
            }
        })
        .collect();
    pairs.sort_by(|p, q| q.cos.total_cmp(&p.cos).then(p.i_a.cmp(&q.i_a)));
    let mut kept_a = vec![false; ka];
    let mut kept_b = vec![false; kb];
    for p in pairs.iter().filter(|p| p.persisted) {
        kept_a[p.i_a] = true;
        kept_b[p.i_b] = true;
    }
    Ok(DictionaryMatch {
        basis,
        cutoff,
        k_a: ka,
        k_b: kb,
        theta_a: a.theta(),
        theta_b: b.theta(),
        activation_space: !shared,
        pairs,
        dropped: (0..ka).filter(|&i| !kept_a[i]).collect(),
        introduced: (0..kb).filter(|&j| !kept_b[j]).collect(),
    })
}

/// The closest example's context of partition `k` (±16 tokens), newlines flattened, cut to
/// [`PROMPT_CHARS`] characters; empty without provenance.
pub fn top_prompt(dict: &Dictionary, k: usize) -> String {
    let text = dict
        .closest_examples(k)
        .first()
        .and_then(|ex| dict.example_context(ex, 16))
        .unwrap_or_default();
    text.replace(['\n', '\r'], " ")
        .chars()
        .take(PROMPT_CHARS)
        .collect()
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// numpy's default (linear) percentile of sorted values; NaN for none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn stats(values: impl Iterator<Item = f64>, full: bool) -> Value {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let mean = if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    };
    let mut o = json!({
        "mean": num(mean),
        "median": num(percentile(&v, 50.0)),
        "p10": num(percentile(&v, 10.0)),
        "p90": num(percentile(&v, 90.0)),
    });
    if full {
        o["min"] = num(v.first().copied().unwrap_or(f64::NAN));
        o["max"] = num(v.last().copied().unwrap_or(f64::NAN));
    }
    o
}

/// The files [`DictionaryMatch::write`] writes.
pub const OUTPUT_FILES: [&str; 4] = [
    "matches.csv",
    "a_dropped.csv",
    "b_introduced.csv",
    "summary.json",
];

impl DictionaryMatch {
    /// Persisted pairs.
    pub fn persisted(&self) -> impl Iterator<Item = &MatchedPair> {
        self.pairs.iter().filter(|p| p.persisted)
    }

    /// `summary.json`: sizes, θs, counts, statistics of the matched cosines (all pairs) and of
    /// dist/θ, and the seed-stability view (both bases' cosines of the matched pairs).
    pub fn summary(&self) -> Value {
        let med = |f: fn(&MatchedPair) -> f64| {
            let mut v: Vec<f64> = self.pairs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            (percentile(&v, 50.0), percentile(&v, 10.0))
        };
        let (med_m, p10_m) = med(|p| p.cos_mean);
        let (med_e, p10_e) = med(|p| p.cos_exemplar);
        json!({
            "basis": basis_name(self.basis),
            "cutoff": self.cutoff,
            "k_a": self.k_a,
            "k_b": self.k_b,
            "theta_a": self.theta_a,
            "theta_b": self.theta_b,
            "space": if self.activation_space { "activation" } else { "shared" },
            "n_pairs": self.pairs.len(),
            "n_persisted": self.persisted().count(),
            "n_dropped": self.dropped.len(),
            "n_introduced": self.introduced.len(),
            "cos": stats(self.pairs.iter().map(|p| p.cos), true),
            "dist_over_theta_a": stats(self.pairs.iter().map(|p| p.dist() / self.theta_a), false),
            "dist_over_theta_b": stats(self.pairs.iter().map(|p| p.dist() / self.theta_b), false),
            "seed_stability": {
                "median_cos_mean": num(med_m),
                "p10_cos_mean": num(p10_m),
                "median_cos_exemplar": num(med_e),
                "p10_cos_exemplar": num(p10_e),
                "gap_median_mean_minus_exemplar": num(med_m - med_e),
            },
        })
    }

    /// Writes [`OUTPUT_FILES`] into `dir` (created if needed). Every file is checked before any
    /// is written, each is written atomically, and none is replaced without `force`.
    pub fn write(&self, a: &Dictionary, b: &Dictionary, dir: &Path, force: bool) -> Result<()> {
        for f in OUTPUT_FILES {
            check_writable(&dir.join(f), force)?;
        }
        let mut matches = String::from(
            "i_a,i_b,cos,dist,dist_over_theta_a,dist_over_theta_b,members_a,members_b,top_prompt_a,top_prompt_b,cos_exemplar,cos_mean,persisted\n",
        );
        for p in &self.pairs {
            writeln!(
                matches,
                "{},{},{},{},{},{},{},{},{},{},{},{},{}",
                p.i_a,
                p.i_b,
                p.cos,
                p.dist(),
                p.dist() / self.theta_a,
                p.dist() / self.theta_b,
                a.member_count(p.i_a),
                b.member_count(p.i_b),
                csv_field(&top_prompt(a, p.i_a)),
                csv_field(&top_prompt(b, p.i_b)),
                p.cos_exemplar,
                p.cos_mean,
                p.persisted
            )
            .unwrap();
        }
        let side = |dict: &Dictionary, ids: &[usize]| {
            let mut ids = ids.to_vec();
            ids.sort_by(|&x, &y| {
                dict.member_count(y)
                    .cmp(&dict.member_count(x))
                    .then(x.cmp(&y))
            });
            let mut s = String::from("i,members,top_prompt\n");
            for i in ids {
                writeln!(
                    s,
                    "{},{},{}",
                    i,
                    dict.member_count(i),
                    csv_field(&top_prompt(dict, i))
                )
                .unwrap();
            }
            s
        };
        let summary = serde_json::to_string_pretty(&self.summary()).expect("json") + "\n";
        let contents = [
            matches,
            side(a, &self.dropped),
            side(b, &self.introduced),
            summary,
        ];
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (f, text) in OUTPUT_FILES.iter().zip(contents) {
            write_atomic(&dir.join(f), text.as_bytes(), force)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_numpy_linear() {
        let v = [1.0, 2.0, 4.0, 8.0];
        // np.percentile([1,2,4,8], 10) = 1 + 0.3·1 = 1.3; 50 → 3.0; 90 → 4 + 0.7·4 = 6.8.
        assert!((percentile(&v, 10.0) - 1.3).abs() < 1e-12);
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert!((percentile(&v, 90.0) - 6.8).abs() < 1e-12);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a, \"b\""), "\"a, \"\"b\"\"\"");
    }
}
