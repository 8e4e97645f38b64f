//! The CPU twin of `kernels/nearest.cu`: the f32 screen (tiled GEMM with a fused row scan for
//! the top-2, never holding the `n × k` matrix) and the exact f64 resolution of its winner
//! (ambiguous rows over their contenders, [`exact_nearest`] over all candidates). Ids and
//! similarities are what every backend returns.

use crate::linalg::{dot_f64, matmul_abt, tile_rows};
use rayon::prelude::*;

/// An upper bound on the error of an f32 GEMM similarity between two unit vectors of width
/// `d`, doubled for safety: similarities closer than this may be ordered wrongly by the f32
/// screen and are re-checked with [`dot_f64`].
pub fn screen_margin(d: usize) -> f32 {
    // Worst-case error of a length-d f32 dot product of unit vectors is about d·2⁻²⁴.
    (d.max(16) as f32) * 2.0f32.powi(-22)
}

/// The best and runner-up similarity of one row among a set of candidates, from the f32 screen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Top2 {
    /// Index of the best candidate (the lowest index among equal values), `u32::MAX` if none.
    pub index: u32,
    /// Its f32 similarity (`-inf` if none).
    pub best: f32,
    /// The second-best f32 similarity (`-inf` if fewer than two candidates).
    pub second: f32,
}

impl Top2 {
    /// No candidate seen.
    pub const EMPTY: Top2 = Top2 {
        index: u32::MAX,
        best: f32::NEG_INFINITY,
        second: f32::NEG_INFINITY,
    };

    /// Offers candidate `index` with similarity `s`; candidates must be offered in ascending
    /// index order for ties to go to the lowest index.
    #[inline]
    pub fn offer(&mut self, index: u32, s: f32) {
        if s > self.best {
            self.second = self.best;
            self.best = s;
            self.index = index;
        } else if s > self.second {
            self.second = s;
        }
    }

    /// Whether the f32 screen cannot tell the best from the runner-up.
    #[inline]
    pub fn is_ambiguous(&self, margin: f32) -> bool {
        self.index != u32::MAX && self.second > self.best - margin
    }

    /// Top-2 of a row of similarities (indices offset by `base`).
    pub fn of_slice(sims: &[f32], base: u32) -> Top2 {
        let mut t = Top2::EMPTY;
        for (j, &s) in sims.iter().enumerate() {
            t.offer(base + j as u32, s);
        }
        t
    }
}

/// The exact nearest candidate: the index maximising [`dot_f64`] over `cands` rows (lowest index
/// on ties) and that similarity. Returns `None` when there are no candidates.
///
/// # Panics
/// If `d` is 0. `row` and the candidates should have length `d` (checked in debug builds).
pub fn exact_nearest(row: &[f32], cands: &[f32], d: usize) -> Option<(u32, f64)> {
    let mut best: Option<(u32, f64)> = None;
    for (j, c) in cands.chunks_exact(d).enumerate() {
        let s = dot_f64(row, c);
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((j as u32, s));
        }
    }
    best
}

/// The f32 screen of one row against a candidate set.
#[derive(Debug, Clone, PartialEq)]
pub struct Screen {
    /// Best and runner-up f32 similarity.
    pub top: Top2,
    /// When the screen cannot separate the best from the runner-up: every candidate whose f32
    /// similarity is within the margin of the best, in ascending index order. Only these can
    /// hold the exact maximum (any other is below the best by more than twice the f32 error).
    /// Empty when the best is certain.
    pub contenders: Vec<u32>,
}

impl Screen {
    /// The exact nearest candidate and its f64 similarity: the winner's similarity recomputed
    /// in f64, or, for an ambiguous row, the f64 maximum over the contenders (lowest index on
    /// ties).
    ///
    /// # Panics
    /// If `cands` (`k × d`) does not hold the screen's winner or contenders, i.e. is not the
    /// candidate set this screen was computed against.
    pub fn resolve(&self, row: &[f32], cands: &[f32], d: usize) -> (u32, f64) {
        if self.contenders.is_empty() {
            let k = self.top.index as usize;
            return (self.top.index, dot_f64(row, &cands[k * d..(k + 1) * d]));
        }
        let mut best = (u32::MAX, f64::NEG_INFINITY);
        for &j in &self.contenders {
            let s = dot_f64(row, &cands[j as usize * d..(j as usize + 1) * d]);
            if s > best.1 {
                best = (j, s);
            }
        }
        best
    }
}

/// For every row of `rows` (`n × d`), the f32 screen against `cands` (`k × d`, k ≥ 1): tiled
/// GEMM with a fused row scan for the top-2 and, for ambiguous rows, the contenders within
/// `screen_margin(d)` of the best. The `n × k` matrix is never held whole.
///
/// # Panics
/// If `d` is 0, `rows` or `cands` is not whole rows of width `d`, or there is no candidate
/// ([`crate::backend::Backend::nearest`] checks these and returns an error instead).
pub fn screen_rows(rows: &[f32], cands: &[f32], d: usize) -> Vec<Screen> {
    let n = rows.len() / d;
    let k = cands.len() / d;
    assert!(k > 0, "screen_rows: no candidates");
    let margin = screen_margin(d);
    let mut out = Vec::with_capacity(n);
    let tile = tile_rows(k);
    let mut buf = vec![0.0f32; tile.min(n) * k];
    for chunk in rows.chunks(tile * d) {
        let m = chunk.len() / d;
        let sims = &mut buf[..m * k];
        matmul_abt(chunk, cands, d, sims);
        let screened: Vec<Screen> = sims
            .par_chunks(k)
            .map(|srow| {
                let top = Top2::of_slice(srow, 0);
                let contenders = if top.is_ambiguous(margin) {
                    let floor = top.best - margin;
                    (0..k as u32)
                        .filter(|&j| srow[j as usize] >= floor)
                        .collect()
                } else {
                    Vec::new()
                };
                Screen { top, contenders }
            })
            .collect();
        out.extend(screened);
    }
    out
}

/// The exact nearest candidate of every row of `u` (`n × d`) among `cands` (`k × d`, k ≥ 1):
/// the f32 screen, then [`Screen::resolve`]. Ids and f64 similarities; the CPU twin of the CUDA
/// `nearest` path.
///
/// # Panics
/// As [`screen_rows`].
pub fn nearest_rows(u: &[f32], cands: &[f32], d: usize) -> (Vec<u32>, Vec<f64>) {
    screen_rows(u, cands, d)
        .par_iter()
        .enumerate()
        .map(|(i, s)| s.resolve(&u[i * d..(i + 1) * d], cands, d))
        .unzip()
}

/// For every row of `rows` (`n × d`), the f32 top-2 among `cands` (`k × d`), computed by tiled
/// GEMM with a fused row scan; the `n × k` matrix is never held whole.
///
/// # Panics
/// If `d` is 0, or `rows` or `cands` is not whole rows of width `d`.
pub fn top2_screen(rows: &[f32], cands: &[f32], d: usize) -> Vec<Top2> {
    let n = rows.len() / d;
    let k = cands.len() / d;
    let mut out = vec![Top2::EMPTY; n];
    if n == 0 || k == 0 {
        return out;
    }
    let tile = tile_rows(k);
    let mut buf = vec![0.0f32; tile.min(n) * k];
    for (t, chunk) in rows.chunks(tile * d).enumerate() {
        let m = chunk.len() / d;
        let sims = &mut buf[..m * k];
        matmul_abt(chunk, cands, d, sims);
        out[t * tile..t * tile + m]
            .par_iter_mut()
            .zip(sims.par_chunks(k))
            .for_each(|(o, srow)| *o = Top2::of_slice(srow, 0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top2_breaks_ties_to_lowest_index() {
        let t = Top2::of_slice(&[0.5, 0.9, 0.9, 0.1], 0);
        assert_eq!(t.index, 1);
        assert_eq!(t.best, 0.9);
        assert_eq!(t.second, 0.9);
        assert!(t.is_ambiguous(1e-6));
    }

    #[test]
    fn screen_resolves_ambiguous_rows_among_contenders_only() {
        // Candidates 1 and 2 are within the margin of each other; 0 is far below.
        let d = 2;
        let cands = [0.0f32, 1.0, 1.0, 0.0, 1.0, 0.0];
        let row = [1.0f32, 0.0];
        let sc = &screen_rows(&row, &cands, d)[0];
        assert_eq!(sc.contenders, vec![1, 2]);
        assert_eq!(
            sc.resolve(&row, &cands, d),
            (1, 1.0),
            "exact tie goes to the lowest index"
        );
        let clear = &screen_rows(&[0.0, 1.0], &cands, d)[0];
        assert!(clear.contenders.is_empty());
        assert_eq!(clear.resolve(&[0.0, 1.0], &cands, d), (0, 1.0));
    }

    #[test]
    fn exact_nearest_prefers_first_on_exact_ties() {
        let cands = [1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0];
        assert_eq!(exact_nearest(&[1.0, 0.0], &cands, 2), Some((0, 1.0)));
        assert_eq!(exact_nearest(&[1.0, 0.0], &[], 2), None);
    }
}
