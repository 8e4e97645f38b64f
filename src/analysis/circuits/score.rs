//! Node and edge scores from discrete codes (O'Neill & Bui, arXiv 2405.12522), and ROC-AUC.
//!
//! Codes are `n_prompts × n_heads` integers, one table for the positive prompts and one for
//! the negative (corrupted) prompts, prompt-major.
//!
//! * **Node score** of head `h`: the number of codes seen at `h` on a positive prompt and on no
//!   negative prompt, `|P_h \ N_h|`; normalised, divided by the number of distinct codes at
//!   `h`, `|P_h ∪ N_h|`.
//! * **Edge score** of heads `a < b`: the code pairs `(c_a, c_b)` seen together on a positive
//!   prompt and on no negative prompt; normalised, divided by the number of distinct pairs.
//!   Counted per head pair from the prompts' pairs (hash sets of at most `n_prompts` entries
//!   each): no dense `heads² × K²` table exists at any point.

use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashSet;

/// A head's node score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeScore {
    /// Flat head index (layer-major).
    pub head: usize,
    /// Codes seen on positives and never on negatives.
    pub positive_only: usize,
    /// Distinct codes on positives or negatives.
    pub distinct: usize,
    /// `positive_only`, or `positive_only / distinct` when normalised.
    pub score: f64,
}

/// A head pair's edge score (`a < b`, flat indices).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeScore {
    pub a: usize,
    pub b: usize,
    /// Code pairs seen on positives and never on negatives.
    pub positive_only: usize,
    /// Distinct code pairs on positives or negatives.
    pub distinct: usize,
    pub score: f64,
}

fn check_tables(positive: &[u32], negative: &[u32], n_heads: usize) -> Result<()> {
    if n_heads == 0 || positive.len() % n_heads != 0 || negative.len() % n_heads != 0 {
        return Err(Error::param(
            "codes",
            format!(
                "code tables of {} and {} entries do not hold rows of {n_heads} heads",
                positive.len(),
                negative.len()
            ),
        ));
    }
    Ok(())
}

fn ratio(num: usize, den: usize, normalize: bool) -> f64 {
    match (normalize, den) {
        (false, _) => num as f64,
        (true, 0) => 0.0,
        (true, d) => num as f64 / d as f64,
    }
}

/// Node scores of every head (in head order).
pub fn node_scores(
    positive: &[u32],
    negative: &[u32],
    n_heads: usize,
    normalize: bool,
) -> Result<Vec<NodeScore>> {
    check_tables(positive, negative, n_heads)?;
    Ok((0..n_heads)
        .map(|h| {
            let p: HashSet<u32> = positive.iter().skip(h).step_by(n_heads).copied().collect();
            let n: HashSet<u32> = negative.iter().skip(h).step_by(n_heads).copied().collect();
            let only = p.difference(&n).count();
            let distinct = p.union(&n).count();
            NodeScore {
                head: h,
                positive_only: only,
                distinct,
                score: ratio(only, distinct, normalize),
            }
        })
        .collect())
}

/// Edge scores of every head pair `a < b` whose score is positive, best first (ties: the lower
/// `(a, b)`), the first `top` (all with `None`).
pub fn edge_scores(
    positive: &[u32],
    negative: &[u32],
    n_heads: usize,
    normalize: bool,
    top: Option<usize>,
) -> Result<Vec<EdgeScore>> {
    check_tables(positive, negative, n_heads)?;
    let pairs = |t: &[u32], a: usize, b: usize| -> HashSet<(u32, u32)> {
        t.chunks_exact(n_heads).map(|r| (r[a], r[b])).collect()
    };
    let mut out: Vec<EdgeScore> = (0..n_heads)
        .into_par_iter()
        .flat_map_iter(|a| {
            (a + 1..n_heads).filter_map(move |b| {
                let p = pairs(positive, a, b);
                let n = pairs(negative, a, b);
                let only = p.difference(&n).count();
                (only > 0).then(|| EdgeScore {
                    a,
                    b,
                    positive_only: only,
                    distinct: p.union(&n).count(),
                    score: ratio(only, p.union(&n).count(), normalize),
                })
            })
        })
        .collect();
    out.sort_by(|x, y| {
        y.score
            .total_cmp(&x.score)
            .then((x.a, x.b).cmp(&(y.a, y.b)))
    });
    if let Some(t) = top {
        out.truncate(t);
    }
    Ok(out)
}

/// Indices by descending score (ties: the lower index first).
pub fn ranking(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// ROC-AUC of `scores` for `labels` (the Mann–Whitney statistic: the probability that a
/// positive outscores a negative, ties counting one half; sklearn's `roc_auc_score`). `None`
/// without both classes.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let pos: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|p| *p.1)
        .map(|p| *p.0)
        .collect();
    let neg: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|p| !*p.1)
        .map(|p| *p.0)
        .collect();
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for &p in &pos {
        for &n in &neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (pos.len() * neg.len()) as f64)
}

/// Seeded uniform scores in `[0, 1)` (a random ranking; `trial` separates rankings).
pub fn random_scores(n: usize, seed: u64, trial: u64) -> Vec<f64> {
    const SCALE: u64 = 1 << 53;
    (0..n)
        .map(|i| {
            crate::build::uniform_below(
                seed ^ trial.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                i as u64,
                SCALE,
            ) as f64
                / SCALE as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_half() {
        assert_eq!(roc_auc(&[3.0, 2.0, 1.0], &[true, false, false]), Some(1.0));
        assert_eq!(roc_auc(&[1.0, 1.0], &[true, false]), Some(0.5));
        assert_eq!(roc_auc(&[1.0], &[true]), None);
        assert_eq!(ranking(&[1.0, 3.0, 3.0, 0.0]), vec![1, 2, 0, 3]);
        let r = random_scores(5, 1, 0);
        assert_eq!(r, random_scores(5, 1, 0));
        assert_ne!(r, random_scores(5, 1, 1));
    }
}
