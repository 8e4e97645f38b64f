//! Sparse autoencoders: a dictionary kind of their own beside EP's [`Dictionary`], held as the
//! SAE tools store them, so EP dictionaries and SAEs can be compared on the same activations.
//!
//! * this file: the model ([`Sae`], [`SaeActivation`]), its checks, and the "SAE view" of an EP
//!   dictionary (architecture.md §8): `W_dec = exemplars`, `W_enc = W_decᵀ`, `b_dec = center`,
//!   `b_enc = 0`, TopK with k = 1, whose argmax is EP's nearest exemplar;
//! * [`encode`]: codes and reconstructions — the encoders (ReLU, JumpReLU, TopK) on
//!   the CPU, and with tch on any device (feature `torch`);
//! * `file.rs`: the SAELens layout (`cfg.json` + `sae_weights.safetensors`, read and written)
//!   and Gemma Scope's `params.npz` (read);
//! * `train` (feature `torch`): a TopK SAE trained in tch on an activation stream.
//!
//! Layouts follow SAELens: `W_enc` is `(d_in, d_sae)`, `W_dec` is `(d_sae, d_in)`. The
//! evaluation ([`crate::eval`]) uses SAEs the way it uses EP dictionaries; nothing here uses it.

pub mod encode;
mod file;
#[cfg(feature = "torch")]
pub mod train;

pub use encode::{top_k_indices, EncodeDevice};
pub use file::SAELENS_LAYOUT_VERSION;

use crate::dictionary::encode::Basis;
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::linalg::transpose;
use serde_json::{json, Map, Value};
use std::path::Path;

/// The nonlinearity that turns pre-activations into codes.
#[derive(Debug, Clone, PartialEq)]
pub enum SaeActivation {
    /// `max(pre, 0)` (SAELens `standard`).
    Relu,
    /// `relu(pre) · 1[pre > θ_f]`, one threshold per feature (Gemma Scope, SAELens `jumprelu`).
    JumpRelu { threshold: Vec<f32> },
    /// The `k` largest pre-activations, ReLU'd, zeros elsewhere (SAELens `topk`). Ties go to the
    /// lowest feature index.
    TopK { k: usize },
}

impl SaeActivation {
    /// SAELens' `architecture` name.
    pub fn architecture(&self) -> &'static str {
        match self {
            SaeActivation::Relu => "standard",
            SaeActivation::JumpRelu { .. } => "jumprelu",
            SaeActivation::TopK { .. } => "topk",
        }
    }
}

/// A sparse autoencoder `f = act((x − b_dec·[apply]) W_enc + b_enc)`, `x̂ = f W_dec + b_dec`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sae {
    /// Input width `d_in`.
    pub d_in: usize,
    /// Number of features `d_sae`.
    pub d_sae: usize,
    /// `(d_in, d_sae)`, row-major.
    pub w_enc: Vec<f32>,
    /// `(d_sae, d_in)`, row-major.
    pub w_dec: Vec<f32>,
    /// `(d_sae)`.
    pub b_enc: Vec<f32>,
    /// `(d_in)`.
    pub b_dec: Vec<f32>,
    /// Subtract `b_dec` from the input before encoding (SAELens `apply_b_dec_to_input`; Gemma
    /// Scope: false).
    pub apply_b_dec_to_input: bool,
    pub activation: SaeActivation,
    /// SAELens' `metadata` block (model_name, hook_name, context_size, ...), kept as read. The
    /// EP view keeps its own record (basis, θ, region counts) under `metadata.exemplar`.
    pub metadata: Map<String, Value>,
}

impl Sae {
    /// Checks that every tensor has the size its shape names and that the parameters are finite.
    pub fn validate(&self, source: &Path) -> Result<()> {
        let (d, f) = (self.d_in, self.d_sae);
        if d == 0 || f == 0 {
            return Err(Error::format(
                source,
                format!("d_in = {d}, d_sae = {f}: both must be positive"),
            ));
        }
        let check = |name: &str, len: usize, want: usize| -> Result<()> {
            if len != want {
                return Err(Error::format(
                    source,
                    format!("`{name}` has {len} values, expected {want} (d_in = {d}, d_sae = {f})"),
                ));
            }
            Ok(())
        };
        check("W_enc", self.w_enc.len(), d * f)?;
        check("W_dec", self.w_dec.len(), f * d)?;
        check("b_enc", self.b_enc.len(), f)?;
        check("b_dec", self.b_dec.len(), d)?;
        match &self.activation {
            SaeActivation::JumpRelu { threshold } => check("threshold", threshold.len(), f)?,
            SaeActivation::TopK { k } if *k == 0 || *k > f => {
                return Err(Error::format(
                    source,
                    format!("topk k = {k} must be in 1..=d_sae ({f})"),
                ))
            }
            _ => {}
        }
        for (name, v) in [
            ("W_enc", &self.w_enc),
            ("W_dec", &self.w_dec),
            ("b_enc", &self.b_enc),
            ("b_dec", &self.b_dec),
        ] {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::format(
                    source,
                    format!("`{name}` holds a non-finite value at flat index {i}"),
                ));
            }
        }
        Ok(())
    }

    /// The SAE view of an EP dictionary over `basis`: `W_dec` = the K unit directions,
    /// `W_enc = W_decᵀ`, `b_dec` = the center, `b_enc = 0`, TopK with `k`. With the exemplar
    /// basis and k = 1 the active feature is the nearest exemplar (‖x − c‖ is constant per
    /// row); its value is the projection `(x − c)·e`, ReLU'd (so a row whose every projection is
    /// negative gets an all-zero code).
    ///
    /// A standardised dictionary (`z = s ⊙ (x − μ)`, exemplars and center `c` in z-space)
    /// becomes an SAE on the raw activations `x`: `W_enc[:, r] = s ⊙ e_r` and
    /// `b_dec = μ + c ⊘ s`, so `(x − b_dec)·W_enc[:, r] = e_r·(z − c)`, the same value and the
    /// same ranking as on an unstandardised dictionary; `W_dec[r] = e_r ⊘ s` (σ ⊙ e_r) decodes
    /// back into activation space. `metadata.exemplar.standardized` records it.
    ///
    /// SAELens' `metadata` gets what the dictionary's build record knows: `model_name` and
    /// `hook_name` (when recorded), and for a build from text `context_size` and
    /// `prepend_bos`. EP's own data (basis, θ, K, region counts, percentile) goes under
    /// `metadata.exemplar`, which SAELens carries along without using it; the weights file
    /// holds exactly the tensors SAELens' TopK SAE has, so `SAE.load_from_disk` accepts it.
    pub fn from_dictionary(dict: &Dictionary, basis: Basis, k: usize) -> Result<Sae> {
        if dict.is_empty() {
            return Err(Error::EmptyInput(
                "the dictionary has no partitions to export".into(),
            ));
        }
        let (kk, d) = (dict.len(), dict.dim());
        if k == 0 || k > kk {
            return Err(Error::param(
                "k",
                format!("must be in 1..={kk} (the dictionary's K)"),
            ));
        }
        let w_dec = dict.basis(basis);
        let info = dict.info();
        let mut metadata = Map::new();
        if let Some(model) = &info.model {
            metadata.insert("model_name".into(), json!(model));
        }
        if let Some(hook) = &info.hook {
            metadata.insert("hook_name".into(), json!(hook));
        }
        if let Some(ctx) = info.ctx {
            // A build from text: documents of at most `ctx` tokens, each with its BOS.
            metadata.insert("context_size".into(), json!(ctx));
            metadata.insert("prepend_bos".into(), json!(true));
        }
        metadata.insert(
            "exemplar".into(),
            json!({
                "basis": match basis { Basis::Exemplar => "exemplar", Basis::Mean => "mean" },
                "threshold_cos": dict.theta(),
                "n_partitions": kk,
                "region_count": dict.member_counts(),
                "percentile": info.percentile,
                "standardized": dict.scaling().is_some(),
                "crate_version": env!("CARGO_PKG_VERSION"),
            }),
        );
        let mut w_enc = transpose(&w_dec, kk, d);
        let mut w_dec = w_dec;
        let mut b_dec = dict.center().to_vec();
        if let Some(sc) = dict.scaling() {
            // W_enc is d × K, row i scaled by s_i; W_dec is K × d, column i divided by s_i.
            for (row, &s) in w_enc.chunks_mut(kk).zip(&sc.inv_std) {
                row.iter_mut().for_each(|w| *w *= s);
            }
            for row in w_dec.chunks_mut(d) {
                row.iter_mut().zip(&sc.inv_std).for_each(|(w, &s)| *w /= s);
            }
            b_dec = sc.to_activation_space(&b_dec);
            b_dec.iter_mut().zip(&sc.mean).for_each(|(b, &m)| *b += m);
        }
        Ok(Sae {
            d_in: d,
            d_sae: kk,
            w_enc,
            w_dec,
            b_enc: vec![0.0; kk],
            b_dec,
            apply_b_dec_to_input: true,
            activation: SaeActivation::TopK { k },
            metadata,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A hand-sized SAE the submodules' tests share.
    pub(crate) fn tiny() -> Sae {
        // d_in = 2, d_sae = 3.
        Sae {
            d_in: 2,
            d_sae: 3,
            w_enc: vec![1.0, 0.0, 1.0, 0.0, 1.0, -1.0],
            w_dec: vec![1.0, 0.0, 0.0, 1.0, 0.6, -0.8],
            b_enc: vec![0.0, -0.5, 0.0],
            b_dec: vec![0.5, 0.5],
            apply_b_dec_to_input: true,
            activation: SaeActivation::Relu,
            metadata: Map::new(),
        }
    }
}
