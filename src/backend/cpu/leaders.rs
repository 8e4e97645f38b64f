//! In-batch stream-order resolution: the CPU twins of the CUDA `leaders` kernels
//! (`kernels/leaders.cu`) and of the strict-order rule's prefix search.
//!
//! [`leaders_cpu`] is phase B of the two-phase rule (`docs/semantics.md`): the unmatched rows of
//! a batch, in stream order, run sequential leader clustering among themselves. A row within θ
//! of an earlier leader follows the nearest (exact f64, lowest ordinal on ties); otherwise it
//! becomes the next leader. [`nearest_prefix_cpu`] is the strict-order rule's question "which
//! in-batch leader created before this row is nearest". Both use an f32 GEMM screen and make
//! f64 decisions in the canonical order of [`crate::linalg::dot_f64`]. The CPU builder
//! (`build.rs`) calls them, and the GPU parity tests compare the CUDA kernels with them.

use super::nearest::{exact_nearest, screen_margin, top2_screen, Top2};
use crate::geometry::distance_from_similarity;
use crate::linalg::{dot_f64, matmul_abt};
use rayon::prelude::*;

/// What phase B decided for one unmatched row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LeaderDecision {
    /// The row becomes the `ordinal`-th new exemplar of the batch.
    Leader { ordinal: u32 },
    /// The row follows the `ordinal`-th new exemplar, at exact similarity `sim`.
    Follow { ordinal: u32, sim: f64 },
}

/// Rows resolved per GEMM chunk (the screen of a chunk against the earlier leaders is one GEMM).
const CHUNK: usize = 256;

/// The exact best candidate given the f32 screen of one row: re-checked over all candidates
/// in f64 when the screen cannot separate the best from the runner-up.
fn exact_best(row: &[f32], cands: &[f32], d: usize, t: &Top2, margin: f32) -> (u32, f64) {
    if t.is_ambiguous(margin) {
        exact_nearest(row, cands, d).expect("at least one candidate")
    } else {
        let k = t.index as usize;
        (t.index, dot_f64(row, &cands[k * d..(k + 1) * d]))
    }
}

/// Sequential leader clustering of the unit rows `rows` (`m × d`, stream order) with threshold
/// `theta`: one decision per row. Leaders get ordinals 0, 1, … in creation order.
///
/// # Panics
/// If `d` is 0 or `rows` is not whole rows of width `d` ([`crate::backend::Backend::leaders`]
/// checks these, and θ, and returns an error instead).
pub fn leaders_cpu(rows: &[f32], d: usize, theta: f64) -> Vec<LeaderDecision> {
    assert!(
        d > 0 && rows.len() % d == 0,
        "leaders_cpu: rows are not m × d"
    );
    let m = rows.len() / d;
    let margin = screen_margin(d);
    // Certainly unmatched when even the f32 best is below 1 − θ by more than the screen error.
    let certainly_far = (1.0 - theta) as f32 - margin;
    let mut out = Vec::with_capacity(m);
    let mut lead: Vec<f32> = Vec::new();
    for (ci, chunk) in rows.chunks(CHUNK * d).enumerate() {
        let c = chunk.len() / d;
        let prev = top2_screen(chunk, &lead, d);
        let mut intra = vec![0.0f32; c * c];
        matmul_abt(chunk, chunk, d, &mut intra);
        let prev_n = lead.len() / d;
        let mut chunk_leaders: Vec<(usize, u32)> = Vec::new(); // (row in chunk, ordinal)
        for a in 0..c {
            let mut t = prev[a];
            for &(b, ord) in &chunk_leaders {
                t.offer(ord, intra[a * c + b]);
            }
            let row = &chunk[a * d..(a + 1) * d];
            let mut follow = None;
            if t.index != u32::MAX && t.best >= certainly_far {
                let (ord, sim) = exact_best(row, &lead, d, &t, margin);
                if distance_from_similarity(sim) <= theta {
                    follow = Some((ord, sim));
                }
            }
            out.push(match follow {
                Some((ordinal, sim)) => LeaderDecision::Follow { ordinal, sim },
                None => {
                    let ordinal = (lead.len() / d) as u32;
                    chunk_leaders.push((a, ordinal));
                    lead.extend_from_slice(row);
                    LeaderDecision::Leader { ordinal }
                }
            });
        }
        debug_assert_eq!(prev_n + chunk_leaders.len(), lead.len() / d, "chunk {ci}");
    }
    out
}

/// For every unit row of `rows` (`n × d`), the exact nearest among the first `limits[r]` rows
/// of `leaders` (`l × d`): `Some((index, f64 similarity))` (lowest index on ties), `None` when
/// the limit is 0. The strict-order rule asks this with "leaders created before the row".
///
/// # Panics
/// If `d` is 0, `rows` does not hold one row of width `d` per limit, or `leaders` is not whole
/// rows ([`crate::backend::Backend::nearest_prefix`] returns an error instead).
pub fn nearest_prefix_cpu(
    rows: &[f32],
    limits: &[u32],
    leaders: &[f32],
    d: usize,
) -> Vec<Option<(u32, f64)>> {
    assert!(d > 0 && rows.len() == limits.len() * d && leaders.len() % d == 0);
    let l = leaders.len() / d;
    let margin = screen_margin(d);
    if l == 0 {
        return vec![None; limits.len()];
    }
    let tile = crate::linalg::tile_rows(l).min(CHUNK);
    let mut out = Vec::with_capacity(limits.len());
    let mut sims = vec![0.0f32; tile * l];
    for (chunk, lims) in rows.chunks(tile * d).zip(limits.chunks(tile)) {
        let s = &mut sims[..lims.len() * l];
        matmul_abt(chunk, leaders, d, s);
        let part: Vec<Option<(u32, f64)>> = lims
            .par_iter()
            .enumerate()
            .map(|(a, &lim)| {
                let before = (lim as usize).min(l);
                if before == 0 {
                    return None;
                }
                let t = Top2::of_slice(&s[a * l..a * l + before], 0);
                let row = &chunk[a * d..(a + 1) * d];
                Some(exact_best(row, &leaders[..before * d], d, &t, margin))
            })
            .collect();
        out.extend(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::directions;

    /// Sequential leader clustering with exact f64 similarities against every earlier leader:
    /// the definition, with no screen.
    fn naive(rows: &[f32], d: usize, theta: f64) -> Vec<LeaderDecision> {
        let mut lead: Vec<f32> = Vec::new();
        rows.chunks(d)
            .map(|row| match exact_nearest(row, &lead, d) {
                Some((ordinal, sim)) if distance_from_similarity(sim) <= theta => {
                    LeaderDecision::Follow { ordinal, sim }
                }
                _ => {
                    let ordinal = (lead.len() / d) as u32;
                    lead.extend_from_slice(row);
                    LeaderDecision::Leader { ordinal }
                }
            })
            .collect()
    }

    fn data(n: usize, d: usize, clusters: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut f = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let centers: Vec<f32> = (0..clusters.max(1) * d).map(|_| f() * 4.0).collect();
        let mut x = Vec::with_capacity(n * d);
        for i in 0..n {
            for j in 0..d {
                let c = if clusters == 0 {
                    0.0
                } else {
                    centers[(i * 7919 % clusters) * d + j]
                };
                x.push(c + f());
            }
        }
        directions(&x, &vec![0.0; d]).unwrap()
    }

    #[test]
    fn leaders_cpu_is_sequential_leader_clustering() {
        // Clustered rows across several chunks (many followers, ties broken by the screen's
        // re-check), and unstructured rows (almost all leaders at a small θ).
        for (n, d, clusters, theta) in [(700, 48, 9, 0.3), (600, 4, 0, 0.1), (300, 8, 4, 0.6)] {
            let rows = data(n, d, clusters, n as u64);
            let got = leaders_cpu(&rows, d, theta);
            assert_eq!(got, naive(&rows, d, theta), "n={n} d={d}");
            let leaders = got
                .iter()
                .filter(|x| matches!(x, LeaderDecision::Leader { .. }))
                .count();
            assert!(leaders > 1 && leaders < n, "{leaders} leaders of {n}");
        }
    }

    /// The CUDA kernels' decomposition, on the CPU: per chunk, each row's exact nearest among
    /// earlier chunks' leaders (`nearest::nearest_rows`), then one in-order scan over exact pair
    /// similarities inside the chunk (ties to the lower ordinal; earlier chunks win ties).
    fn chunked_like_the_gpu(
        rows: &[f32],
        d: usize,
        theta: f64,
        chunk: usize,
    ) -> Vec<LeaderDecision> {
        let mut lead: Vec<f32> = Vec::new();
        let mut out = Vec::new();
        for w in rows.chunks(chunk * d) {
            let c = w.len() / d;
            let made = lead.len() / d;
            let prev = if made > 0 {
                let (i, s) = super::super::nearest::nearest_rows(w, &lead, d);
                i.into_iter().map(|i| i as i64).zip(s).collect()
            } else {
                vec![(-1i64, f64::NEG_INFINITY); c]
            };
            let mut chunk_leaders: Vec<usize> = Vec::new();
            for a in 0..c {
                let (mut o, mut s) = prev[a];
                let mut best: Option<(usize, f64)> = None;
                for (l, &b) in chunk_leaders.iter().enumerate() {
                    let v = dot_f64(&w[a * d..(a + 1) * d], &w[b * d..(b + 1) * d]);
                    if best.is_none_or(|(_, bv)| v > bv) {
                        best = Some((l, v));
                    }
                }
                if let Some((l, v)) = best {
                    if o < 0 || v > s {
                        o = (made + l) as i64;
                        s = v;
                    }
                }
                if o >= 0 && distance_from_similarity(s) <= theta {
                    out.push(LeaderDecision::Follow {
                        ordinal: o as u32,
                        sim: s,
                    });
                } else {
                    out.push(LeaderDecision::Leader {
                        ordinal: (made + chunk_leaders.len()) as u32,
                    });
                    chunk_leaders.push(a);
                }
            }
            for &a in &chunk_leaders {
                lead.extend_from_slice(&w[a * d..(a + 1) * d]);
            }
        }
        out
    }

    #[test]
    fn the_gpu_chunked_resolution_equals_sequential_leader_clustering() {
        for (n, d, clusters, theta) in [(700, 48, 9, 0.3), (600, 4, 0, 0.1)] {
            let rows = data(n, d, clusters, 3 + n as u64);
            let want = leaders_cpu(&rows, d, theta);
            for chunk in [1, 7, 64, 512] {
                assert_eq!(
                    chunked_like_the_gpu(&rows, d, theta, chunk),
                    want,
                    "n={n} d={d} chunk={chunk}"
                );
            }
        }
    }

    #[test]
    fn exact_ties_follow_the_lowest_ordinal() {
        // Rows 0 and 1 are orthogonal leaders at θ = 0.5; row 2 is equally near both.
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let rows = [1.0f32, 0.0, 0.0, 1.0, h, h];
        let got = leaders_cpu(&rows, 2, 0.5);
        assert_eq!(got[0], LeaderDecision::Leader { ordinal: 0 });
        assert_eq!(got[1], LeaderDecision::Leader { ordinal: 1 });
        assert!(
            matches!(got[2], LeaderDecision::Follow { ordinal: 0, .. }),
            "{:?}",
            got[2]
        );
    }

    #[test]
    fn nearest_prefix_only_sees_the_first_limit_leaders() {
        let d = 24;
        let rows = data(300, d, 5, 11);
        let leaders = data(40, d, 5, 12);
        let limits: Vec<u32> = (0..300u32).map(|i| i % 43).collect();
        let got = nearest_prefix_cpu(&rows, &limits, &leaders, d);
        for (i, g) in got.iter().enumerate() {
            let lim = (limits[i] as usize).min(40);
            let want = exact_nearest(&rows[i * d..(i + 1) * d], &leaders[..lim * d], d);
            assert_eq!(*g, want, "row {i}, limit {lim}");
        }
    }
}
