//! Encoding activations as dictionary codes: the readouts of the reference's SAE adapter
//! (spec §7.1), over the exemplar or the mean basis.

use super::Dictionary;
use crate::error::{Error, Result};
use crate::linalg::{matmul_abt, top_k_indices};
use rayon::prelude::*;

/// Which unit directions the codes are read against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The exemplars `e_k` (membership and intervention directions).
    Exemplar,
    /// The mean member directions `m_k` (the reference adapter's default).
    Mean,
}

/// How a row becomes a K-vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readout {
    /// `(x − c)·w_k`, dense and signed.
    Signed,
    /// `u(x)·w_k`, in [−1, 1], dense (the reference's `cosine` and `signed_norm`).
    Cosine,
    /// The `k` largest of `(x − c)·w`, each ReLU'd, zeros elsewhere (the reference's `topk`).
    TopK(usize),
    /// The `k` largest of `u(x)·w`, each ReLU'd, zeros elsewhere (`topk_norm`).
    TopKCosine(usize),
    /// 1.0 at the argmax of `u(x)·w` (even when every cosine is negative), zeros elsewhere
    /// (`binary`). With the exemplar basis the argmax is the nearest exemplar.
    OneHot,
}

impl Dictionary {
    /// The `K × D` basis matrix.
    pub fn basis(&self, basis: Basis) -> Vec<f32> {
        match basis {
            Basis::Exemplar => self.exemplars.clone(),
            Basis::Mean => self.mean_directions(),
        }
    }

    /// Codes of raw activations `rows` (`n × D`): an `n × K` row-major matrix.
    pub fn encode(&self, rows: &[f32], basis: Basis, readout: Readout) -> Result<Vec<f32>> {
        let d = self.dim;
        if rows.len() % d != 0 {
            return Err(Error::DimensionMismatch {
                what: "activations".into(),
                expected: d,
                found: rows.len(),
            });
        }
        if self.is_empty() {
            return Err(Error::param(
                "dictionary",
                "cannot encode with an empty dictionary",
            ));
        }
        let k = self.len();
        if let Readout::TopK(t) | Readout::TopKCosine(t) = readout {
            if t == 0 || t > k {
                return Err(Error::param(
                    "k",
                    format!("top-k needs 1 ≤ k ≤ K = {k}, got {t}"),
                ));
            }
        }
        let n = rows.len() / d;
        let input: Vec<f32> = match readout {
            Readout::Signed | Readout::TopK(_) => self
                .to_space(rows)
                .par_chunks(d)
                .flat_map_iter(|r| r.iter().zip(&self.center).map(|(x, c)| x - c))
                .collect(),
            Readout::Cosine | Readout::TopKCosine(_) | Readout::OneHot => self.directions(rows)?,
        };
        // Borrowed, not copied: a probe encodes each document apart, and a copy of K × D
        // exemplars per call (318 MB at K = 124k, D = 640) cost more than the product itself.
        let w: std::borrow::Cow<[f32]> = match basis {
            Basis::Exemplar => (&self.exemplars[..]).into(),
            Basis::Mean => self.mean_directions().into(),
        };
        let mut codes = vec![0.0f32; n * k];
        matmul_abt(&input, &w, d, &mut codes);
        match readout {
            Readout::Signed | Readout::Cosine => {}
            Readout::TopK(t) | Readout::TopKCosine(t) => {
                codes.par_chunks_mut(k).for_each(|row| keep_top(row, t))
            }
            Readout::OneHot => codes.par_chunks_mut(k).for_each(|row| {
                let mut best = 0;
                for (j, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = j;
                    }
                }
                row.iter_mut().for_each(|v| *v = 0.0);
                row[best] = 1.0;
            }),
        }
        Ok(codes)
    }
}

/// Keeps the `t` largest values of `row` (lowest index first on ties), each ReLU'd; zeros the
/// rest.
fn keep_top(row: &mut [f32], t: usize) {
    let kept: Vec<(usize, f32)> = top_k_indices(row, t)
        .into_iter()
        .map(|i| (i, row[i].max(0.0)))
        .collect();
    row.fill(0.0);
    for (i, v) in kept {
        row[i] = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_top_relus_and_zeros_the_rest() {
        let mut r = [0.5, -0.2, 0.9, 0.1];
        keep_top(&mut r, 2);
        assert_eq!(r, [0.5, 0.0, 0.9, 0.0]);
        let mut neg = [-0.5, -0.2];
        keep_top(&mut neg, 1);
        assert_eq!(
            neg,
            [0.0, 0.0],
            "top-k can emit all zeros, as in the reference"
        );
    }

    #[test]
    fn keep_top_keeps_what_a_full_sort_keeps() {
        // Rows with many ties (values in 8 steps): the selection must keep, among equal values,
        // the lowest indices, as the full sort did.
        let mut state = 99u64;
        for len in [1usize, 2, 7, 64, 300] {
            for t in [1, 2, len / 2, len.saturating_sub(1), len] {
                if t == 0 || t > len {
                    continue;
                }
                let row: Vec<f32> = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        ((state >> 61) as f32 - 3.0) / 4.0
                    })
                    .collect();
                let mut by_sort: Vec<usize> = (0..len).collect();
                by_sort.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                let mut want = vec![0.0f32; len];
                for &i in &by_sort[..t] {
                    want[i] = row[i].max(0.0);
                }
                let mut got = row.clone();
                keep_top(&mut got, t);
                assert_eq!(got, want, "len {len}, t {t}");
            }
        }
    }
}
