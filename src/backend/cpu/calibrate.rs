//! The CPU twin of `kernels/calibrate.cu`: the exact pairwise-distance percentile.
//!
//! The percentile is the order statistic of the f64 distances between the f32 unit directions,
//! selected without ever holding the `n(n−1)/2` distances. A first GEMM pass histograms f32
//! distances; a second pass keeps only the pairs whose f32 distance lies within the GEMM error
//! margin of the target bins, recomputes those in f64 and selects. So the value does not depend
//! on threads, tiling or hardware, and the CUDA launchers, which share `needed_ranks`,
//! `window_bounds` and `combine`, get the same value.

use super::nearest::screen_margin;
use crate::error::{Error, Result};
use crate::linalg::{dot_f64, matmul_abt, tile_rows};
use rayon::prelude::*;

/// How the percentile is read off the sorted distances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PercentileMethod {
    /// Linear interpolation between order statistics (numpy's default; the reference's CPU path
    /// and its GPU path up to 16M pairs).
    #[default]
    Linear,
    /// The sorted value at index `round_half_even(q·(P−1))`, no interpolation (the reference's
    /// `torch.kthvalue` branch above 16M pairs).
    NearestRank,
}

impl PercentileMethod {
    /// The name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PercentileMethod::Linear => "linear",
            PercentileMethod::NearestRank => "nearest-rank",
        }
    }

    /// Parses [`PercentileMethod::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "linear" => Some(PercentileMethod::Linear),
            "nearest-rank" => Some(PercentileMethod::NearestRank),
            _ => None,
        }
    }
}

/// Checks that a percentile lies in the open interval (0, 100).
pub fn check_percentile(p: f64) -> Result<()> {
    if !(p.is_finite() && p > 0.0 && p < 100.0) {
        return Err(Error::param(
            "percentile",
            format!("must lie strictly between 0 and 100, got {p}"),
        ));
    }
    Ok(())
}

/// Pair counts up to which all distances are computed exactly in f64 and selected directly.
const DIRECT_PAIRS: usize = 1 << 18;
/// Histogram bins over distances in [0, 2].
const BINS: usize = 1 << 16;

/// The `percentile`-th percentile of the pairwise cosine distances `1 − u_i·u_j` (i < j, not
/// clamped) of the unit rows `u` (`n × d`, n ≥ 2), exact (see the module docs). Values that are
/// not whole rows of width `d` are an error.
pub fn pairwise_distance_percentile(
    u: &[f32],
    d: usize,
    percentile: f64,
    method: PercentileMethod,
) -> Result<f64> {
    check_percentile(percentile)?;
    if d == 0 || u.len() % d != 0 {
        return Err(Error::param(
            "rows",
            format!("{} values are not rows of width {d}", u.len()),
        ));
    }
    let n = u.len() / d;
    if n < 2 {
        return Err(Error::EmptyInput(
            "a percentile of pairs needs at least 2 rows".into(),
        ));
    }
    let pairs = n * (n - 1) / 2;
    let ranks = needed_ranks(pairs, percentile / 100.0, method);
    let values = if pairs <= DIRECT_PAIRS {
        select_direct(u, d, &ranks)
    } else {
        select_screened(u, d, &ranks)
    };
    Ok(combine(&values, pairs, percentile / 100.0, method))
}

/// The 0-based ranks whose values the method needs.
pub(crate) fn needed_ranks(pairs: usize, q: f64, method: PercentileMethod) -> Vec<usize> {
    let last = (pairs - 1) as f64;
    match method {
        PercentileMethod::Linear => {
            let lo = (q * last).floor() as usize;
            vec![lo, (lo + 1).min(pairs - 1)]
        }
        PercentileMethod::NearestRank => {
            let r = (q * last).round_ties_even() as usize;
            vec![r.min(pairs - 1)]
        }
    }
}

/// numpy's linear interpolation (`_lerp`, which computes from the upper end when γ ≥ 0.5).
pub(crate) fn combine(values: &[f64], pairs: usize, q: f64, method: PercentileMethod) -> f64 {
    match method {
        PercentileMethod::NearestRank => values[0],
        PercentileMethod::Linear => {
            let vi = q * (pairs - 1) as f64;
            let gamma = vi - vi.floor();
            let (a, b) = (values[0], values[1]);
            let diff = b - a;
            if gamma >= 0.5 {
                b - diff * (1.0 - gamma)
            } else {
                a + diff * gamma
            }
        }
    }
}

/// All pair distances in f64, then selection (small n).
fn select_direct(u: &[f32], d: usize, ranks: &[usize]) -> Vec<f64> {
    let n = u.len() / d;
    let mut all: Vec<f64> = (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            let ui = &u[i * d..(i + 1) * d];
            (i + 1..n).map(move |j| 1.0 - dot_f64(ui, &u[j * d..(j + 1) * d]))
        })
        .collect();
    all.par_sort_unstable_by(f64::total_cmp);
    ranks.iter().map(|&r| all[r]).collect()
}

/// Visits the f32 distances of all pairs i < j, tile by tile, calling `visit(i, j, dist)` from
/// parallel workers that each own a `T` (merged by `reduce`).
fn for_each_pair<T: Send>(
    u: &[f32],
    d: usize,
    init: impl Fn() -> T + Sync + Send,
    visit: impl Fn(&mut T, usize, usize, f32) + Sync + Send,
    reduce: impl Fn(T, T) -> T + Sync + Send,
) -> T {
    let n = u.len() / d;
    let tile = tile_rows(n).min(1024);
    let mut total = init();
    let mut buf = vec![0.0f32; tile * n];
    let mut r0 = 0;
    while r0 < n - 1 {
        let r1 = (r0 + tile).min(n - 1);
        let m = r1 - r0;
        let w = n - r0; // columns r0..n (upper triangle incl. the diagonal block)
        let sims = &mut buf[..m * w];
        matmul_abt(&u[r0 * d..r1 * d], &u[r0 * d..], d, sims);
        let part = sims
            .par_chunks(w)
            .enumerate()
            .fold(&init, |mut acc, (a, row)| {
                let i = r0 + a;
                for (off, &s) in row.iter().enumerate().skip(a + 1) {
                    visit(&mut acc, i, r0 + off, 1.0 - s);
                }
                acc
            })
            .reduce(&init, &reduce);
        total = reduce(total, part);
        r0 = r1;
    }
    total
}

#[inline]
fn bin_of(dist: f32) -> usize {
    ((dist * (BINS as f32 / 2.0)).max(0.0) as usize).min(BINS - 1)
}

/// The f32 distance window `[lo, hi]` around the bins holding the needed ranks, widened by
/// twice the screen's error: pairs below `lo` are certainly below every pair of the window in
/// exact arithmetic, pairs above `hi` certainly above. Shared by the CPU and CUDA paths.
pub(crate) fn window_bounds(hist: &[u64], ranks: &[usize], d: usize) -> (f32, f32) {
    let bins = hist.len();
    let bin_of_rank = |r: usize| {
        let mut cum = 0u64;
        for (b, &c) in hist.iter().enumerate() {
            cum += c;
            if cum > r as u64 {
                return b;
            }
        }
        bins - 1
    };
    let lo_bin = bin_of_rank(*ranks.iter().min().expect("at least one rank"));
    let hi_bin = bin_of_rank(*ranks.iter().max().expect("at least one rank"));
    let eps = 2.0 * screen_margin(d);
    let width = 2.0 / bins as f32;
    let lo = if lo_bin == 0 {
        f32::NEG_INFINITY
    } else {
        lo_bin as f32 * width - eps
    };
    let hi = if hi_bin == bins - 1 {
        f32::INFINITY
    } else {
        (hi_bin + 1) as f32 * width + eps
    };
    (lo, hi)
}

/// Two GEMM passes: histogram, then exact f64 distances of the pairs near the target bins.
fn select_screened(u: &[f32], d: usize, ranks: &[usize]) -> Vec<f64> {
    let hist = for_each_pair(
        u,
        d,
        || vec![0u64; BINS],
        |h, _, _, dist| h[bin_of(dist)] += 1,
        |mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        },
    );
    let (lo, hi) = window_bounds(&hist, ranks, d);
    // Pairs with f32 distance below `lo` are certainly below every pair of the window in exact
    // arithmetic; those above `hi` certainly above.
    let (below, window) = for_each_pair(
        u,
        d,
        || (0u64, Vec::<(u32, u32)>::new()),
        |(below, win), i, j, dist| {
            if dist < lo {
                *below += 1;
            } else if dist <= hi {
                win.push((i as u32, j as u32));
            }
        },
        |(b1, mut w1), (b2, w2)| {
            w1.extend(w2);
            (b1 + b2, w1)
        },
    );
    let mut exact: Vec<f64> = window
        .par_iter()
        .map(|&(i, j)| {
            let (i, j) = (i as usize, j as usize);
            1.0 - dot_f64(&u[i * d..(i + 1) * d], &u[j * d..(j + 1) * d])
        })
        .collect();
    exact.par_sort_unstable_by(f64::total_cmp);
    ranks
        .iter()
        .map(|&r| {
            let k = (r as u64)
                .checked_sub(below)
                .map(|k| k as usize)
                .filter(|&k| k < exact.len())
                .expect("exact percentile window must contain the target rank");
            exact[k]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_unit_rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut v: Vec<f32> = (0..n * d)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        for r in v.chunks_mut(d) {
            let n = crate::geometry::norm(r) as f32;
            r.iter_mut().for_each(|x| *x /= n);
        }
        v
    }

    #[test]
    fn screened_selection_equals_direct_selection() {
        // 800 rows → 319,600 pairs: above the direct limit, so the screened path runs; compare
        // with the direct path on the same data, for ranks across the range.
        let (n, d) = (800, 24);
        let u = random_unit_rows(n, d, 7);
        let pairs = n * (n - 1) / 2;
        for &r in &[0usize, 1, 3195, 31959, pairs / 2, pairs - 2, pairs - 1] {
            let a = select_direct(&u, d, &[r]);
            let b = select_screened(&u, d, &[r]);
            assert_eq!(a, b, "rank {r}");
        }
    }

    #[test]
    fn linear_interpolation_matches_numpy_on_a_hand_case() {
        // Distances of 4 pairs: values 0.1, 0.2, 0.4, 0.8 → np.percentile(…, 50) = 0.3,
        // np.percentile(…, 10) = 0.13, nearest-rank at 50: index round(1.5) = 2 → 0.4.
        let vals = [0.1, 0.2, 0.4, 0.8];
        let pick = |p: f64, m| {
            let r = needed_ranks(4, p / 100.0, m);
            let v: Vec<f64> = r.iter().map(|&i| vals[i]).collect();
            combine(&v, 4, p / 100.0, m)
        };
        assert!((pick(50.0, PercentileMethod::Linear) - 0.3).abs() < 1e-15);
        assert!((pick(10.0, PercentileMethod::Linear) - 0.13).abs() < 1e-15);
        assert_eq!(pick(50.0, PercentileMethod::NearestRank), 0.4);
    }

    #[test]
    fn percentile_outside_open_interval_is_rejected() {
        for p in [0.0, 100.0, -1.0, f64::NAN, 150.0] {
            assert!(check_percentile(p).is_err(), "{p}");
        }
    }
}
