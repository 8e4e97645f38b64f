//! Featurizers of activations for interchange interventions, MIB's semantics: `forward(x)`
//! gives `(features, error)`, `inverse(features, error)` gives `x` back, and an interchange of
//! the features in `indices` sets `f_b[idx] = f_s[idx]` and returns `inverse(f_b, error_b)`.
//!
//! [`Featurizer::Ep`] is the Rust twin of `EPFeaturizerModule` / `EPInverseFeaturizerModule` in
//! `src/dictionary/mib_featurizer.py` (what `mib-export` writes), op for op in libtorch, so the
//! numbers are the same: with `x~ = x − μ` and `s = x~ Eᵀ`, hard (`top_n` = 1) keeps `s_k` at
//! the nearest exemplar `k = argmax s`, soft (`top_n` = n) the least-squares coefficients
//! (float64, LAPACK's gelsy as torch on the CPU) of `x~` on the n exemplars of largest projection; `error = x − (μ + f E)`.
//! [`Featurizer::Identity`] is the neuron basis: `f = x`, `error = 0`.

use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// A featurizer of `[B, d]` float32 rows.
#[derive(Debug)]
pub enum Featurizer {
    /// Features are the `d` coordinates.
    Identity { dim: usize },
    /// EP: center `[d]`, unit exemplars `[K, d]`, features per row.
    Ep {
        center: Tensor,
        exemplars: Tensor,
        top_n: usize,
    },
}

impl Featurizer {
    /// The EP featurizer of `dict` (refused for a standardised dictionary, whose exemplars are
    /// not directions of the activations, and for `top_n` outside 1..=K).
    pub fn ep(dict: &Dictionary, top_n: usize) -> Result<Self> {
        if dict.scaling().is_some() {
            return Err(Error::param(
                "dictionary",
                "built on standardised rows (metadata `scaling`): its exemplars are not directions of the activations",
            ));
        }
        let (k, d) = (dict.len(), dict.dim());
        if top_n == 0 || top_n > k {
            return Err(Error::param(
                "top_n",
                format!("{top_n} features per row: the dictionary has {k} regions"),
            ));
        }
        Ok(Featurizer::Ep {
            center: Tensor::from_slice(dict.center()),
            exemplars: Tensor::from_slice(dict.exemplars()).view([k as i64, d as i64]),
            top_n,
        })
    }

    /// The width of the rows it reads.
    pub fn dim(&self) -> usize {
        match self {
            Featurizer::Identity { dim } => *dim,
            Featurizer::Ep { center, .. } => center.size()[0] as usize,
        }
    }

    /// The number of features.
    pub fn n_features(&self) -> usize {
        match self {
            Featurizer::Identity { dim } => *dim,
            Featurizer::Ep { exemplars, .. } => exemplars.size()[0] as usize,
        }
    }

    /// `(features [B, n_features], error [B, d])` of rows `x` `[B, d]` (float32).
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let x = x.to_kind(Kind::Float);
        match self {
            Featurizer::Identity { .. } => (x.copy(), x.zeros_like()),
            Featurizer::Ep {
                center,
                exemplars: e,
                top_n,
            } => {
                let xc = &x - center;
                let s = xc.matmul(&e.tr());
                let f = s.zeros_like();
                let f = if *top_n == 1 {
                    let k = s.argmax(-1, true);
                    f.scatter(-1, &k, &s.gather(-1, &k, false))
                } else {
                    let (_, k) = s.topk(*top_n as i64, -1, true, true);
                    let (b, n) = (k.size()[0], k.size()[1]);
                    let es = e.index_select(0, &k.flatten(0, -1)).view([b, n, -1]);
                    // torch.linalg.lstsq's driver on the CPU when none is named: gelsy.
                    let (c, _, _, _) = es.transpose(1, 2).to_kind(Kind::Double).linalg_lstsq(
                        &xc.unsqueeze(-1).to_kind(Kind::Double),
                        None::<f64>,
                        "gelsy",
                    );
                    f.scatter(-1, &k, &c.squeeze_dim(-1).to_kind(Kind::Float))
                };
                let error = &x - (center + f.matmul(e));
                (f, error)
            }
        }
    }

    /// `x` back from `(features, error)`.
    pub fn inverse(&self, f: &Tensor, error: &Tensor) -> Tensor {
        match self {
            Featurizer::Identity { .. } => f + error,
            Featurizer::Ep {
                center, exemplars, ..
            } => center + f.matmul(exemplars) + error,
        }
    }

    /// The interchange of features `indices` (`None`: all) from `source` into `base` (both
    /// `[B, d]`): `inverse(f_b with f_b[:, idx] = f_s[:, idx], error_b)`.
    pub fn interchange(&self, base: &Tensor, source: &Tensor, indices: Option<&[i64]>) -> Tensor {
        let (fb, eb) = self.forward(base);
        let (fs, _) = self.forward(source);
        let g = match indices {
            None => fs,
            Some(idx) => {
                let idx = Tensor::from_slice(idx);
                fb.index_copy(1, &idx, &fs.index_select(1, &idx))
            }
        };
        self.inverse(&g, &eb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: [f32; 12] = [
        1.0, 0.0, 0.0, 0.0, //
        0.0, 0.6, 0.8, 0.0, //
        0.0, 0.0, 0.6, 0.8,
    ];

    fn ep(top_n: usize) -> Featurizer {
        Featurizer::Ep {
            center: Tensor::from_slice(&[0.5f32, -1.0, 0.0, 2.0]),
            exemplars: Tensor::from_slice(&E).view([3, 4]),
            top_n,
        }
    }

    #[test]
    fn inverse_of_forward_is_identity_and_interchange_is_linear() {
        let x = Tensor::from_slice(&[3.0f32, 1.0, -2.0, 0.5, -1.0, 2.0, 1.0, 4.0]).view([2, 4]);
        for top_n in [1, 2] {
            let fz = ep(top_n);
            let (f, err) = fz.forward(&x);
            let back = fz.inverse(&f, &err);
            assert!(f64::try_from((&back - &x).abs().max()).unwrap() < 1e-5);
            let nz = f.ne(0.0).sum_dim_intlist(1, false, Kind::Int64);
            assert_eq!(Vec::<i64>::try_from(nz).unwrap(), vec![top_n as i64; 2]);
            // Swapping region r adds (f_s[r] − f_b[r]) e_r to the base.
            let (b, s) = (x.get(0).unsqueeze(0), x.get(1).unsqueeze(0));
            for r in 0..3i64 {
                let out = fz.interchange(&b, &s, Some(&[r]));
                let (fb, _) = fz.forward(&b);
                let (fs, _) = fz.forward(&s);
                let delta = fs.get(0).get(r) - fb.get(0).get(r);
                let want = &b
                    + delta
                        * Tensor::from_slice(&E[4 * r as usize..4 * r as usize + 4]).unsqueeze(0);
                assert!(f64::try_from((&out - &want).abs().max()).unwrap() < 1e-5);
            }
        }
        let id = Featurizer::Identity { dim: 4 };
        let (b, s) = (x.get(0).unsqueeze(0), x.get(1).unsqueeze(0));
        let out = id.interchange(&b, &s, Some(&[1, 3]));
        assert_eq!(
            Vec::<f32>::try_from(out.flatten(0, -1)).unwrap(),
            vec![3.0, 2.0, -2.0, 4.0]
        );
        assert!(id.interchange(&b, &s, None).equal(&s));
    }
}
