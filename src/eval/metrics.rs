//! Classification and detection metrics shared by the probes, concept detection and the OOD
//! signal: ROC-AUC (ties by average rank, the value of scikit-learn's `roc_auc_score`),
//! accuracy, per-class precision / recall / F1 and macro-F1 (scikit-learn's definitions with
//! `zero_division=0`), the Youden-J threshold and AxBench's hard-negative accuracy.

use crate::error::{Error, Result};
use serde::Serialize;

/// Area under the ROC curve of `scores` for binary `labels` (true = positive): the probability
/// that a random positive scores above a random negative, ties counting one half (average
/// ranks, Mann–Whitney U). Equals scikit-learn's `roc_auc_score`.
///
/// Errors: lengths that differ, a non-finite score, or only one class present.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Result<f64> {
    if scores.len() != labels.len() {
        return Err(Error::param(
            "scores",
            format!("{} scores for {} labels", scores.len(), labels.len()),
        ));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(Error::param(
            "scores",
            format!("score {i} is not finite ({})", scores[i]),
        ));
    }
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(Error::param(
            "labels",
            format!("ROC-AUC needs both classes ({n_pos} positive, {n_neg} negative)"),
        ));
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg * idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let (p, n) = (n_pos as f64, n_neg as f64);
    Ok((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// Fraction of `pred` equal to `truth`. Errors on different lengths or empty input.
pub fn accuracy(truth: &[usize], pred: &[usize]) -> Result<f64> {
    check_pairs(truth, pred)?;
    let hits = truth.iter().zip(pred).filter(|(a, b)| a == b).count();
    Ok(hits as f64 / truth.len() as f64)
}

fn check_pairs(truth: &[usize], pred: &[usize]) -> Result<()> {
    if truth.len() != pred.len() {
        return Err(Error::param(
            "predictions",
            format!("{} predictions for {} labels", pred.len(), truth.len()),
        ));
    }
    if truth.is_empty() {
        return Err(Error::EmptyInput("no labels to score".into()));
    }
    Ok(())
}

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub class: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Items of this class in `truth`.
    pub support: usize,
}

/// Accuracy, per-class metrics and their unweighted mean F1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationReport {
    pub accuracy: f64,
    pub macro_f1: f64,
    /// One entry per class present in `truth` or `pred`, in increasing class order.
    pub per_class: Vec<ClassMetrics>,
}

/// scikit-learn's `precision_recall_fscore_support` / `f1_score(average="macro")` with
/// `zero_division=0`: the classes are those present in `truth` or `pred`; a ratio with a zero
/// denominator is 0.
pub fn classification_report(truth: &[usize], pred: &[usize]) -> Result<ClassificationReport> {
    let acc = accuracy(truth, pred)?;
    let n_classes = truth.iter().chain(pred).max().map_or(0, |&m| m + 1);
    let mut tp = vec![0usize; n_classes];
    let mut n_pred = vec![0usize; n_classes];
    let mut n_true = vec![0usize; n_classes];
    for (&t, &p) in truth.iter().zip(pred) {
        n_true[t] += 1;
        n_pred[p] += 1;
        if t == p {
            tp[t] += 1;
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class: Vec<ClassMetrics> = (0..n_classes)
        .filter(|&c| n_true[c] + n_pred[c] > 0)
        .map(|c| {
            let precision = ratio(tp[c], n_pred[c]);
            let recall = ratio(tp[c], n_true[c]);
            // F1 = 2TP / (2TP + FP + FN), 0 when the denominator is 0 (sklearn ≥ 1.3).
            let f1 = ratio(2 * tp[c], n_pred[c] + n_true[c]);
            ClassMetrics {
                class: c,
                precision,
                recall,
                f1,
                support: n_true[c],
            }
        })
        .collect();
    let macro_f1 = per_class.iter().map(|m| m.f1).sum::<f64>() / per_class.len() as f64;
    Ok(ClassificationReport {
        accuracy: acc,
        macro_f1,
        per_class,
    })
}

/// The threshold `t` (one of the scores) maximising Youden's J = TPR − FPR of the rule
/// "positive when score ≥ t"; on ties the highest such `t` (the first of scikit-learn's
/// `roc_curve` thresholds, as AxBench's `argmax(tpr − fpr)` picks). Returns `(t, J)`.
/// Errors as [`roc_auc`] for one-class input.
pub fn youden_threshold(scores: &[f64], labels: &[bool]) -> Result<(f64, f64)> {
    roc_auc(scores, labels)?; // validation
    let n_pos = labels.iter().filter(|&&l| l).count() as f64;
    let n_neg = labels.len() as f64 - n_pos;
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut best = (f64::INFINITY, f64::NEG_INFINITY);
    let mut i = 0;
    while i < idx.len() {
        let t = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == t {
            if labels[idx[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        let j = tp / n_pos - fp / n_neg;
        if j > best.1 {
            best = (t, j);
        }
    }
    Ok(best)
}

/// AxBench's `HardNegativeEvaluator`: the Youden-J threshold of positives vs (ordinary)
/// negatives, then the mean of the positives' accuracy (score ≥ t) and the hard negatives'
/// accuracy (score < t). Errors when a group is empty.
pub fn hard_negative_accuracy(positive: &[f64], negative: &[f64], hard: &[f64]) -> Result<f64> {
    if hard.is_empty() {
        return Err(Error::param(
            "hard negatives",
            "hard-negative accuracy needs at least one hard negative",
        ));
    }
    let scores: Vec<f64> = positive.iter().chain(negative).copied().collect();
    let labels: Vec<bool> = (0..scores.len()).map(|i| i < positive.len()).collect();
    let (t, _) = youden_threshold(&scores, &labels)?;
    let pos_acc = positive.iter().filter(|&&s| s >= t).count() as f64 / positive.len() as f64;
    let hard_acc = hard.iter().filter(|&&s| s < t).count() as f64 / hard.len() as f64;
    Ok((pos_acc + hard_acc) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_by_hand_with_ties() {
        // pos {0.8, 0.5}, neg {0.5, 0.1}: pairs (0.8>0.5, 0.8>0.1, 0.5=0.5 → ½, 0.5>0.1) = 3.5/4.
        let s = [0.8, 0.5, 0.5, 0.1];
        let l = [true, true, false, false];
        assert!((roc_auc(&s, &l).unwrap() - 0.875).abs() < 1e-15);
        assert!(roc_auc(&s, &[true; 4]).is_err());
    }

    #[test]
    fn report_by_hand() {
        // truth 0 0 1 1 2, pred 0 1 1 1 0: class 0 P=1/2 R=1/2, class 1 P=2/3 R=1, class 2 0.
        let r = classification_report(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0]).unwrap();
        assert!((r.accuracy - 0.6).abs() < 1e-15);
        let f1 = [0.5, 0.8, 0.0];
        for (m, f) in r.per_class.iter().zip(f1) {
            assert!((m.f1 - f).abs() < 1e-12, "{m:?}");
        }
        assert!((r.macro_f1 - 1.3 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn youden_and_hard_negatives_by_hand() {
        // pos {3, 2}, neg {1, 2.5}: t=3 → J=.5; t=2.5 → .5−.5=0; t=2 → 1−.5=.5; t=1 → 0.
        // Ties at J=.5 take the highest threshold, 3.
        let (t, j) = youden_threshold(&[3.0, 2.0, 1.0, 2.5], &[true, true, false, false]).unwrap();
        assert_eq!((t, j), (3.0, 0.5));
        // At t=3: positives 1/2 right; hard negatives {2.9, 3.5}: 1/2 right → 0.5.
        let h = hard_negative_accuracy(&[3.0, 2.0], &[1.0, 2.5], &[2.9, 3.5]).unwrap();
        assert!((h - 0.5).abs() < 1e-15);
    }
}
