//! Intrinsic evaluation of a dictionary (the reference's `evaluate_dictionary`, spec §6).

use crate::dictionary::Dictionary;
use crate::linalg::matmul_abt;
use rayon::prelude::*;

/// The reference's intrinsic metrics. "Nontrivial" partitions have at least `min_members`
/// members. Fields that need more nontrivial partitions than exist are `None`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IntrinsicMetrics {
    pub n_partitions: usize,
    pub n_partitions_nontrivial: usize,
    pub total_members: u64,
    pub threshold: f64,
    pub min_members: u64,
    pub coverage: Option<f64>,
    pub mean_members: Option<f64>,
    pub median_members: Option<f64>,
    pub max_members: Option<f64>,
    pub std_members: Option<f64>,
    pub gini: Option<f64>,
    pub effective_partitions: Option<f64>,
    pub partition_utilisation: Option<f64>,
    pub mean_intra_dist: Option<f64>,
    pub median_intra_dist: Option<f64>,
    pub mean_nearest_inter_dist: Option<f64>,
    pub median_nearest_inter_dist: Option<f64>,
    pub separation_ratio: Option<f64>,
    pub silhouette: Option<f64>,
    pub max_exemplar_similarity: Option<f64>,
    pub mean_exemplar_similarity: Option<f64>,
    pub singletons: usize,
}

/// numpy's median (mean of the two middle values for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Gini coefficient of non-negative values (0 for none or an all-zero sum).
pub fn gini(values: &[f64]) -> f64 {
    let mut a = values.to_vec();
    a.sort_by(f64::total_cmp);
    let n = a.len() as f64;
    let total: f64 = a.iter().sum();
    if a.is_empty() || total == 0.0 {
        return 0.0;
    }
    let weighted: f64 = a.iter().enumerate().map(|(i, v)| (i + 1) as f64 * v).sum();
    2.0 * weighted / (n * total) - (n + 1.0) / n
}

/// Computes the metrics of `dict` with `min_members` (the reference uses 2).
pub fn intrinsic_metrics(dict: &Dictionary, min_members: u64) -> IntrinsicMetrics {
    let k = dict.len();
    let counts = dict.member_counts();
    let nontrivial: Vec<usize> = (0..k).filter(|&p| counts[p] >= min_members).collect();
    let mut m = IntrinsicMetrics {
        n_partitions: k,
        n_partitions_nontrivial: nontrivial.len(),
        total_members: counts.iter().sum(),
        threshold: dict.theta(),
        min_members,
        coverage: None,
        mean_members: None,
        median_members: None,
        max_members: None,
        std_members: None,
        gini: None,
        effective_partitions: None,
        partition_utilisation: None,
        mean_intra_dist: None,
        median_intra_dist: None,
        mean_nearest_inter_dist: None,
        median_nearest_inter_dist: None,
        separation_ratio: None,
        silhouette: None,
        max_exemplar_similarity: None,
        mean_exemplar_similarity: None,
        singletons: counts.iter().filter(|&&c| c == 1).count(),
    };
    if nontrivial.is_empty() {
        return m;
    }
    let n: Vec<f64> = nontrivial.iter().map(|&p| counts[p] as f64).collect();
    let total_nt: f64 = n.iter().sum();
    let len = n.len() as f64;
    let mean = total_nt / len;
    m.coverage = Some(total_nt / m.total_members as f64);
    m.mean_members = Some(mean);
    m.median_members = Some(median(&n));
    m.max_members = Some(n.iter().cloned().fold(f64::MIN, f64::max));
    m.std_members = Some((n.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / len).sqrt());
    m.gini = Some(gini(&n));
    let h: f64 = -n
        .iter()
        .map(|v| {
            let p = v / total_nt;
            p * (p + 1e-12).ln()
        })
        .sum::<f64>();
    let eff = h.exp();
    m.effective_partitions = Some(eff);
    m.partition_utilisation = Some(eff / len);
    let intra: Vec<f64> = nontrivial.iter().map(|&p| dict.mean_distance(p)).collect();
    m.mean_intra_dist = Some(intra.iter().sum::<f64>() / len);
    m.median_intra_dist = Some(median(&intra));
    if nontrivial.len() < 2 {
        return m;
    }
    // Exemplar similarities among nontrivial partitions, tile by tile.
    let d = dict.dim();
    let e: Vec<f32> = nontrivial
        .iter()
        .flat_map(|&p| dict.exemplar(p).iter().copied())
        .collect();
    let kk = nontrivial.len();
    let tile = crate::linalg::tile_rows(kk);
    let mut nearest = vec![f64::NEG_INFINITY; kk];
    let (mut max_s, mut sum_s) = (f64::NEG_INFINITY, 0.0f64);
    let mut buf = vec![0.0f32; tile.min(kk) * kk];
    for r0 in (0..kk).step_by(tile) {
        let r1 = (r0 + tile).min(kk);
        let s = &mut buf[..(r1 - r0) * kk];
        matmul_abt(&e[r0 * d..r1 * d], &e, d, s);
        let rows: Vec<(f64, f64, f64)> = s
            .par_chunks(kk)
            .enumerate()
            .map(|(a, row)| {
                let i = r0 + a;
                let (mut best, mut mx, mut sum) = (f64::NEG_INFINITY, f64::NEG_INFINITY, 0.0f64);
                for (j, &v) in row.iter().enumerate() {
                    if j == i {
                        continue;
                    }
                    let v = (v as f64).clamp(-1.0, 1.0);
                    best = best.max(v);
                    if j > i {
                        mx = mx.max(v);
                        sum += v;
                    }
                }
                (best, mx, sum)
            })
            .collect();
        for (a, (best, mx, sum)) in rows.into_iter().enumerate() {
            nearest[r0 + a] = best;
            max_s = max_s.max(mx);
            sum_s += sum;
        }
    }
    let nn: Vec<f64> = nearest.iter().map(|s| 1.0 - s).collect();
    let mean_nn = nn.iter().sum::<f64>() / len;
    m.mean_nearest_inter_dist = Some(mean_nn);
    m.median_nearest_inter_dist = Some(median(&nn));
    m.separation_ratio = (dict.theta() > 0.0).then(|| mean_nn / dict.theta());
    m.silhouette = Some(
        nn.iter()
            .zip(&intra)
            .map(|(&b, &a)| {
                let den = b.max(a);
                if den > 0.0 {
                    (b - a) / den
                } else {
                    0.0
                }
            })
            .sum::<f64>()
            / len,
    );
    m.max_exemplar_similarity = Some(max_s);
    m.mean_exemplar_similarity = Some(sum_s / (kk * (kk - 1) / 2) as f64);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gini_and_median_match_hand_values() {
        // a = [1, 1, 2]: 2·(1·1 + 2·1 + 3·2)/(3·4) − 4/3 = 18/12 − 16/12 = 1/6.
        assert!((gini(&[2.0, 1.0, 1.0]) - 1.0 / 6.0).abs() < 1e-15);
        assert_eq!(gini(&[5.0, 5.0]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
