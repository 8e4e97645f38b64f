//! Sparse autoencoders as the SAE tools store them, so EP dictionaries and SAEs can be compared on
//! the same activations: the SAELens layout (`cfg.json` + `sae_weights.safetensors`, read and
//! written), Gemma Scope's `params.npz` (read), the encoders (ReLU, JumpReLU, TopK) on the CPU
//! (and with tch on any device, feature `torch`), and the "SAE view" of an EP dictionary
//! (architecture.md §8): `W_dec = exemplars`, `W_enc = W_decᵀ`, `b_dec = center`, `b_enc = 0`,
//! TopK with k = 1, whose argmax is EP's nearest exemplar.
//!
//! Layouts follow SAELens: `W_enc` is `(d_in, d_sae)`, `W_dec` is `(d_sae, d_in)`.

use crate::dictionary::encode::Basis;
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::linalg::matmul_abt;
use crate::output::{check_writable, write_atomic};
use crate::tensorfile::{self, TensorFile, TensorOut};
use rayon::prelude::*;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `metadata.sae_lens_version` written by [`Sae::save_saelens`] when the metadata has none: the
/// SAELens cfg layout (v6) the file follows. SAELens reads a cfg without a version ≥ 6 as a
/// pre-6.0 config, and then keeps only the top-level metadata keys it knows (so an EP export's
/// `metadata` would be dropped).
pub const SAELENS_LAYOUT_VERSION: &str = "6.0.0";

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

    /// Pre-activations `(x − b_dec·[apply]) W_enc + b_enc` of `rows` (`n × d_in`) → `n × d_sae`.
    pub fn pre_activations(&self, rows: &[f32]) -> Result<Vec<f32>> {
        let d = self.d_in;
        if rows.len() % d != 0 {
            return Err(Error::DimensionMismatch {
                what: "activations given to the SAE".into(),
                expected: d,
                found: rows.len(),
            });
        }
        let n = rows.len() / d;
        let x: Vec<f32> = if self.apply_b_dec_to_input {
            rows.par_chunks(d)
                .flat_map_iter(|r| r.iter().zip(&self.b_dec).map(|(a, b)| a - b))
                .collect()
        } else {
            rows.to_vec()
        };
        let w_enc_t = transpose(&self.w_enc, d, self.d_sae);
        let mut pre = vec![0.0f32; n * self.d_sae];
        matmul_abt(&x, &w_enc_t, d, &mut pre);
        pre.par_chunks_mut(self.d_sae).for_each(|p| {
            for (v, b) in p.iter_mut().zip(&self.b_enc) {
                *v += b;
            }
        });
        Ok(pre)
    }

    /// Codes of `rows` (`n × d_in`) → `n × d_sae`.
    pub fn encode(&self, rows: &[f32]) -> Result<Vec<f32>> {
        let mut pre = self.pre_activations(rows)?;
        let f = self.d_sae;
        pre.par_chunks_mut(f).for_each(|p| self.activate(p));
        Ok(pre)
    }

    /// Applies the nonlinearity to one row of pre-activations in place.
    pub fn activate(&self, p: &mut [f32]) {
        match &self.activation {
            SaeActivation::Relu => p.iter_mut().for_each(|v| *v = v.max(0.0)),
            SaeActivation::JumpRelu { threshold } => {
                for (v, t) in p.iter_mut().zip(threshold) {
                    *v = if *v > *t { v.max(0.0) } else { 0.0 };
                }
            }
            SaeActivation::TopK { k } => {
                let top = top_k_indices(p, *k);
                let vals: Vec<f32> = top.iter().map(|&i| p[i].max(0.0)).collect();
                p.iter_mut().for_each(|v| *v = 0.0);
                for (i, v) in top.into_iter().zip(vals) {
                    p[i] = v;
                }
            }
        }
    }

    /// Reconstructions `codes W_dec + b_dec` of `n × d_sae` codes → `n × d_in`.
    pub fn decode(&self, codes: &[f32]) -> Result<Vec<f32>> {
        let (d, f) = (self.d_in, self.d_sae);
        if codes.len() % f != 0 {
            return Err(Error::param(
                "codes",
                format!("length {} is not a multiple of d_sae = {f}", codes.len()),
            ));
        }
        let n = codes.len() / f;
        let w_dec_t = transpose(&self.w_dec, f, d);
        let mut out = vec![0.0f32; n * d];
        matmul_abt(codes, &w_dec_t, f, &mut out);
        out.par_chunks_mut(d).for_each(|r| {
            for (v, b) in r.iter_mut().zip(&self.b_dec) {
                *v += b;
            }
        });
        Ok(out)
    }

    /// The SAE view of an EP dictionary over `basis`: `W_dec` = the K unit directions,
    /// `W_enc = W_decᵀ`, `b_dec` = the center, `b_enc = 0`, TopK with `k`. With the exemplar
    /// basis and k = 1 the active feature is the nearest exemplar (‖x − c‖ is constant per
    /// row); its value is the projection `(x − c)·e`, ReLU'd (so a row whose every projection is
    /// negative gets an all-zero code).
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
                "crate_version": env!("CARGO_PKG_VERSION"),
            }),
        );
        Ok(Sae {
            d_in: d,
            d_sae: kk,
            w_enc: transpose(&w_dec, kk, d),
            w_dec,
            b_enc: vec![0.0; kk],
            b_dec: dict.center().to_vec(),
            apply_b_dec_to_input: true,
            activation: SaeActivation::TopK { k },
            metadata,
        })
    }

    /// Writes the SAELens (v6) layout into directory `dir` (created if needed): `cfg.json` and
    /// `sae_weights.safetensors` (f32, exactly the tensors of SAELens' class for the
    /// architecture). `cfg.json` holds the fields SAELens' config class for the architecture has
    /// and `metadata`, with `metadata.sae_lens_version` set to `6.0.0` unless the metadata
    /// names one: SAELens reads a cfg without it as a pre-6.0 config and drops its metadata.
    /// Each file is written atomically; neither is replaced without `force`.
    pub fn save_saelens(&self, dir: &Path, force: bool) -> Result<()> {
        self.validate(dir)?;
        let cfg_path = dir.join("cfg.json");
        let weights_path = dir.join("sae_weights.safetensors");
        check_writable(&cfg_path, force)?;
        check_writable(&weights_path, force)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut cfg = Map::new();
        cfg.insert("architecture".into(), json!(self.activation.architecture()));
        cfg.insert("d_in".into(), json!(self.d_in));
        cfg.insert("d_sae".into(), json!(self.d_sae));
        cfg.insert("dtype".into(), json!("float32"));
        cfg.insert("device".into(), json!("cpu"));
        cfg.insert(
            "apply_b_dec_to_input".into(),
            json!(self.apply_b_dec_to_input),
        );
        cfg.insert("normalize_activations".into(), json!("none"));
        cfg.insert("reshape_activations".into(), json!("none"));
        if let SaeActivation::TopK { k } = self.activation {
            cfg.insert("k".into(), json!(k));
            cfg.insert("rescale_acts_by_decoder_norm".into(), json!(false));
        }
        let mut metadata = self.metadata.clone();
        metadata
            .entry("sae_lens_version")
            .or_insert_with(|| json!(SAELENS_LAYOUT_VERSION));
        cfg.insert("metadata".into(), Value::Object(metadata));
        let (d, f) = (self.d_in, self.d_sae);
        let mut tensors = vec![
            TensorOut::f32("W_enc", vec![d, f], &self.w_enc),
            TensorOut::f32("W_dec", vec![f, d], &self.w_dec),
            TensorOut::f32("b_enc", vec![f], &self.b_enc),
            TensorOut::f32("b_dec", vec![d], &self.b_dec),
        ];
        if let SaeActivation::JumpRelu { threshold } = &self.activation {
            tensors.push(TensorOut::f32("threshold", vec![f], threshold));
        }
        // Weights first: a reader that finds cfg.json finds the weights it describes.
        tensorfile::write(&weights_path, tensors, &BTreeMap::new(), force)?;
        let text = pretty_json_flat_arrays(&Value::Object(cfg));
        write_atomic(&cfg_path, text.as_bytes(), force)
    }

    /// Reads an SAE in the SAELens layout: a directory holding `cfg.json` and
    /// `sae_weights.safetensors` (v6 configs, and the pre-6.0 flat ones: `activation_fn_str`,
    /// `activation_fn_kwargs.k`, `hook_point`). Architectures: standard, jumprelu, topk. Weights
    /// may be f32, f16, bf16 or f64.
    pub fn load_saelens(dir: &Path) -> Result<Sae> {
        let cfg_path = dir.join("cfg.json");
        let weights_path = dir.join("sae_weights.safetensors");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&cfg_path, format!("not valid JSON: {e}")))?;
        let cfg = cfg
            .as_object()
            .ok_or_else(|| Error::format(&cfg_path, "expected a JSON object"))?;
        let uint = |key: &str| -> Result<usize> {
            cfg.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| Error::format(&cfg_path, format!("missing or non-integer `{key}`")))
        };
        let (d, f) = (uint("d_in")?, uint("d_sae")?);
        match cfg.get("normalize_activations") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::String(norm)) if norm == "none" => {}
            Some(other) => {
                return Err(Error::format(
                    &cfg_path,
                    format!("normalize_activations = {other} is not supported (only \"none\")"),
                ))
            }
        }
        // `hook_z`: SAELens flattens `[.., n_heads, d_head]` to `[.., d_in]` before encoding,
        // which is the row layout the activations given here already have.
        match cfg.get("reshape_activations").and_then(Value::as_str) {
            None | Some("none") | Some("hook_z") => {}
            Some(other) => {
                return Err(Error::format(
                    &cfg_path,
                    format!("reshape_activations = `{other}` is not supported (none, hook_z)"),
                ))
            }
        }
        let arch = cfg
            .get("architecture")
            .and_then(Value::as_str)
            .or_else(|| cfg.get("activation_fn_str").and_then(Value::as_str))
            .or_else(|| cfg.get("activation_fn").and_then(Value::as_str))
            .unwrap_or("standard")
            .to_ascii_lowercase();
        let weights = TensorFile::open(&weights_path)?;
        let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let (v, s) = weights.f32_any(name)?;
            if s != shape {
                return Err(Error::format(
                    &weights_path,
                    format!("tensor `{name}` has shape {s:?}, expected {shape:?} (from cfg.json)"),
                ));
            }
            Ok(v)
        };
        let activation = match arch.as_str() {
            "standard" | "relu" => SaeActivation::Relu,
            "jumprelu" => SaeActivation::JumpRelu {
                threshold: tensor("threshold", &[f])?,
            },
            "topk" => {
                let k = cfg
                    .get("k")
                    .and_then(Value::as_u64)
                    .or_else(|| {
                        cfg.get("activation_fn_kwargs")
                            .and_then(|v| v.get("k"))
                            .and_then(Value::as_u64)
                    })
                    .ok_or_else(|| Error::format(&cfg_path, "topk architecture without `k`"))?;
                SaeActivation::TopK { k: k as usize }
            }
            other => {
                return Err(Error::format(
                    &cfg_path,
                    format!("architecture `{other}` is not supported (standard, jumprelu, topk)"),
                ))
            }
        };
        let mut metadata = cfg
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (old, new) in [
            ("hook_point", "hook_name"),
            ("hook_name", "hook_name"),
            ("model_name", "model_name"),
        ] {
            if let Some(v) = cfg.get(old) {
                metadata.entry(new.to_string()).or_insert(v.clone());
            }
        }
        let mut sae = Sae {
            d_in: d,
            d_sae: f,
            w_enc: tensor("W_enc", &[d, f])?,
            w_dec: tensor("W_dec", &[f, d])?,
            b_enc: tensor("b_enc", &[f])?,
            b_dec: tensor("b_dec", &[d])?,
            apply_b_dec_to_input: cfg
                .get("apply_b_dec_to_input")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            activation,
            metadata,
        };
        sae.validate(&weights_path)?;
        let rescale = cfg
            .get("rescale_acts_by_decoder_norm")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if rescale && matches!(sae.activation, SaeActivation::TopK { .. }) {
            sae.fold_decoder_norms();
        }
        Ok(sae)
    }

    /// Folds the decoder rows' norms into the encoder, as SAELens' `fold_W_dec_norm` does:
    /// `W_enc[:, i] ·= n_i`, `b_enc[i] ·= n_i`, `W_dec[i] /= n_i` with `n_i = ‖W_dec[i]‖`. A TopK
    /// SAE with `rescale_acts_by_decoder_norm` (SAELens scales the pre-activations by `n_i`
    /// before the top-k, and the codes by `1/n_i` before decoding) becomes a plain TopK SAE
    /// with the same codes and reconstructions. A zero decoder row leaves its feature's
    /// pre-activation at 0 either way.
    fn fold_decoder_norms(&mut self) {
        let (d, f) = (self.d_in, self.d_sae);
        for i in 0..f {
            let row = &mut self.w_dec[i * d..(i + 1) * d];
            let n = row
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt() as f32;
            if n > 0.0 {
                row.iter_mut().for_each(|v| *v /= n);
            }
            for j in 0..d {
                self.w_enc[j * f + i] *= n;
            }
            self.b_enc[i] *= n;
        }
    }

    /// Reads Gemma Scope's `params.npz` (`W_enc (d_in, d_sae)`, `W_dec (d_sae, d_in)`, `b_enc`,
    /// `b_dec`, `threshold`; JumpReLU, `apply_b_dec_to_input = false`).
    pub fn load_gemma_scope_npz(path: &Path) -> Result<Sae> {
        use crate::data::npy::NpyData;
        let arrays = crate::data::npy::read_npz(path)?;
        let get = |name: &str| -> Result<(Vec<f32>, Vec<usize>)> {
            let (_, a) = arrays
                .iter()
                .find(|(n, _)| n == name || n.eq_ignore_ascii_case(name))
                .ok_or_else(|| Error::format(path, format!("missing array `{name}`")))?;
            match a.data() {
                NpyData::F32(v) => Ok((v.clone(), a.shape().to_vec())),
                _ => Err(Error::format(
                    path,
                    format!("array `{name}` must be float32 (<f4)"),
                )),
            }
        };
        let (w_enc, se) = get("W_enc")?;
        if se.len() != 2 {
            return Err(Error::format(
                path,
                format!("`W_enc` has shape {se:?}, expected (d_in, d_sae)"),
            ));
        }
        let (d, f) = (se[0], se[1]);
        let expect = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let (v, s) = get(name)?;
            if s != shape {
                return Err(Error::format(
                    path,
                    format!("`{name}` has shape {s:?}, expected {shape:?}"),
                ));
            }
            Ok(v)
        };
        let sae = Sae {
            d_in: d,
            d_sae: f,
            w_enc,
            w_dec: expect("W_dec", &[f, d])?,
            b_enc: expect("b_enc", &[f])?,
            b_dec: expect("b_dec", &[d])?,
            apply_b_dec_to_input: false,
            activation: SaeActivation::JumpRelu {
                threshold: expect("threshold", &[f])?,
            },
            metadata: Map::new(),
        };
        sae.validate(path)?;
        Ok(sae)
    }

    /// Reads an SAE from `path`: a SAELens directory (or its `cfg.json` /
    /// `sae_weights.safetensors`), or a Gemma Scope `.npz`.
    pub fn load(path: &Path) -> Result<Sae> {
        if path.extension().is_some_and(|e| e == "npz") {
            return Sae::load_gemma_scope_npz(path);
        }
        let dir: PathBuf = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        if !dir.join("cfg.json").exists() {
            return Err(Error::format(
                path,
                "not an SAE: expected a SAELens directory (cfg.json + sae_weights.safetensors) or a Gemma Scope params.npz",
            ));
        }
        Sae::load_saelens(&dir)
    }

    /// Encodes on any tch device (the GPU path): `x` is `(n, d_in)` of any float dtype;
    /// returns `(n, d_sae)` f32 codes on `x`'s device. Same rule as [`Sae::encode`], computed in
    /// f32 (TopK ties follow torch's `topk`).
    #[cfg(feature = "torch")]
    pub fn encode_tch(&self, x: &tch::Tensor) -> Result<tch::Tensor> {
        use tch::{Kind, Tensor};
        let size = x.size();
        if size.len() != 2 || size[1] as usize != self.d_in {
            return Err(Error::param(
                "activations",
                format!("tensor of shape {size:?}, expected (n, {})", self.d_in),
            ));
        }
        let dev = x.device();
        let (d, f) = (self.d_in as i64, self.d_sae as i64);
        let w_enc = Tensor::from_slice(&self.w_enc).view([d, f]).to_device(dev);
        let b_enc = Tensor::from_slice(&self.b_enc).to_device(dev);
        let b_dec = Tensor::from_slice(&self.b_dec).to_device(dev);
        let mut x = x.to_kind(Kind::Float);
        if self.apply_b_dec_to_input {
            // Not `-=`: `to_kind` returns the caller's tensor itself when it is already f32,
            // and an in-place subtraction would change the caller's activations.
            #[allow(clippy::assign_op_pattern)]
            {
                x = x - &b_dec;
            }
        }
        let pre = x.matmul(&w_enc) + b_enc;
        Ok(match &self.activation {
            SaeActivation::Relu => pre.relu(),
            SaeActivation::JumpRelu { threshold } => {
                let t = Tensor::from_slice(threshold).to_device(dev);
                let mask = pre.gt_tensor(&t).to_kind(Kind::Float);
                pre.relu() * mask
            }
            SaeActivation::TopK { k } => {
                let (vals, idx) = pre.topk(*k as i64, -1, true, true);
                pre.zeros_like().scatter(-1, &idx, &vals.relu())
            }
        })
    }
}

#[cfg(not(feature = "torch"))]
const NO_TORCH: &str = "`cuda` SAE encoding runs through libtorch: build exemplar with the `torch` feature (cargo build --features torch)";

/// Where [`Sae::encode_on`] runs the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeDevice {
    /// [`Sae::encode`] on the CPU.
    Cpu,
    /// [`Sae::encode_tch`] on the first CUDA device (needs the `torch` feature).
    Cuda,
}

impl EncodeDevice {
    /// `cpu` or `cuda`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(EncodeDevice::Cpu),
            "cuda" => Ok(EncodeDevice::Cuda),
            other => Err(Error::param(
                "device",
                format!("`{other}` is not a device (cpu, cuda)"),
            )),
        }
    }

    /// Checks that the device can be used, before any work.
    pub fn check(self) -> Result<()> {
        match self {
            EncodeDevice::Cpu => Ok(()),
            #[cfg(feature = "torch")]
            EncodeDevice::Cuda => {
                if tch::Cuda::is_available() {
                    Ok(())
                } else {
                    Err(Error::param(
                        "device",
                        "`cuda`: libtorch sees no CUDA device on this machine",
                    ))
                }
            }
            #[cfg(not(feature = "torch"))]
            EncodeDevice::Cuda => Err(Error::param("device", NO_TORCH)),
        }
    }
}

impl Sae {
    /// Codes of `rows` (`n × d_in`) → `n × d_sae`, computed on `device`.
    pub fn encode_on(&self, rows: &[f32], device: EncodeDevice) -> Result<Vec<f32>> {
        match device {
            EncodeDevice::Cpu => self.encode(rows),
            EncodeDevice::Cuda => self.encode_cuda(rows),
        }
    }

    #[cfg(feature = "torch")]
    fn encode_cuda(&self, rows: &[f32]) -> Result<Vec<f32>> {
        EncodeDevice::Cuda.check()?;
        if rows.len() % self.d_in != 0 {
            return Err(Error::DimensionMismatch {
                what: "activations given to the SAE".into(),
                expected: self.d_in,
                found: rows.len(),
            });
        }
        let n = (rows.len() / self.d_in) as i64;
        let x = tch::Tensor::from_slice(rows)
            .view([n, self.d_in as i64])
            .to_device(tch::Device::Cuda(0));
        let codes = self
            .encode_tch(&x)?
            .to_device(tch::Device::Cpu)
            .flatten(0, -1);
        Vec::<f32>::try_from(&codes)
            .map_err(|e| Error::param("device", format!("reading codes back: {e}")))
    }

    #[cfg(not(feature = "torch"))]
    fn encode_cuda(&self, _rows: &[f32]) -> Result<Vec<f32>> {
        Err(Error::param("device", NO_TORCH))
    }
}

/// JSON indented like `serde_json::to_string_pretty`, except that arrays stay on one line (the
/// export's `region_count` holds K numbers).
fn pretty_json_flat_arrays(v: &Value) -> String {
    use serde::Serialize;
    use serde_json::ser::{Formatter, PrettyFormatter};
    use std::io::{Result as IoResult, Write};
    struct FlatArrays<'a> {
        pretty: PrettyFormatter<'a>,
    }
    impl Formatter for FlatArrays<'_> {
        fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> IoResult<()> {
            w.write_all(b"[")
        }
        fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> IoResult<()> {
            w.write_all(b"]")
        }
        fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> IoResult<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn end_array_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> IoResult<()> {
            Ok(())
        }
        fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> IoResult<()> {
            self.pretty.begin_object(w)
        }
        fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> IoResult<()> {
            self.pretty.end_object(w)
        }
        fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> IoResult<()> {
            self.pretty.begin_object_key(w, first)
        }
        fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> IoResult<()> {
            self.pretty.begin_object_value(w)
        }
        fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> IoResult<()> {
            self.pretty.end_object_value(w)
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        FlatArrays {
            pretty: PrettyFormatter::new(),
        },
    );
    v.serialize(&mut ser).expect("serialising JSON to memory");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// `m × n` row-major → `n × m` row-major.
pub fn transpose(a: &[f32], m: usize, n: usize) -> Vec<f32> {
    assert_eq!(a.len(), m * n, "transpose: length is not m × n");
    let mut out = vec![0.0f32; m * n];
    out.par_chunks_mut(m).enumerate().for_each(|(j, col)| {
        for (i, v) in col.iter_mut().enumerate() {
            *v = a[i * n + j];
        }
    });
    out
}

/// [`transpose`] for f64.
pub fn transpose_f64(a: &[f64], m: usize, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), m * n, "transpose: length is not m × n");
    let mut out = vec![0.0f64; m * n];
    out.par_chunks_mut(m.max(1))
        .enumerate()
        .for_each(|(j, col)| {
            for (i, v) in col.iter_mut().enumerate() {
                *v = a[i * n + j];
            }
        });
    out
}

/// Indices of the `k` largest values (ties to the lowest index), largest first.
pub fn top_k_indices(v: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(v.len());
    let mut idx: Vec<usize> = (0..v.len()).collect();
    let cmp = |a: &usize, b: &usize| v[*b].total_cmp(&v[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Sae {
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

    #[test]
    fn hand_computed_encoders() {
        let mut s = tiny();
        // x − b_dec = (1.5, 0.5): pre = (1.5, 0.5 − 0.5, 1.0) = (1.5, 0, 1).
        let x = [2.0, 1.0];
        assert_eq!(s.pre_activations(&x).unwrap(), vec![1.5, 0.0, 1.0]);
        assert_eq!(s.encode(&x).unwrap(), vec![1.5, 0.0, 1.0]);
        s.activation = SaeActivation::TopK { k: 1 };
        assert_eq!(s.encode(&x).unwrap(), vec![1.5, 0.0, 0.0]);
        s.activation = SaeActivation::JumpRelu {
            threshold: vec![2.0, -1.0, 0.5],
        };
        // 1.5 ≤ 2 → 0; 0 > −1 but relu(0) = 0; 1 > 0.5 → 1.
        assert_eq!(s.encode(&x).unwrap(), vec![0.0, 0.0, 1.0]);
        // decode: 1·(0.6, −0.8) + (0.5, 0.5).
        let r = s.decode(&[0.0, 0.0, 1.0]).unwrap();
        assert!((r[0] - 1.1).abs() < 1e-6 && (r[1] + 0.3).abs() < 1e-6);
    }

    /// `encode_tch` on libtorch's CPU gives `encode`'s codes for every activation.
    #[cfg(feature = "torch")]
    #[test]
    fn encode_tch_on_cpu_equals_encode() {
        let (d, f, n) = (6usize, 9usize, 40usize);
        let mut state = 7u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let x: Vec<f32> = (0..n * d).map(|_| rnd()).collect();
        let base = Sae {
            d_in: d,
            d_sae: f,
            w_enc: (0..d * f).map(|_| rnd()).collect(),
            w_dec: (0..f * d).map(|_| rnd()).collect(),
            b_enc: (0..f).map(|_| 0.2 * rnd()).collect(),
            b_dec: (0..d).map(|_| 0.5 * rnd()).collect(),
            apply_b_dec_to_input: true,
            activation: SaeActivation::Relu,
            metadata: Map::new(),
        };
        let xt = tch::Tensor::from_slice(&x).view([n as i64, d as i64]);
        for act in [
            SaeActivation::Relu,
            SaeActivation::JumpRelu {
                threshold: (0..f).map(|i| 0.1 * i as f32).collect(),
            },
            SaeActivation::TopK { k: 3 },
        ] {
            for apply in [true, false] {
                let mut s = base.clone();
                s.activation = act.clone();
                s.apply_b_dec_to_input = apply;
                let cpu = s.encode(&x).unwrap();
                let t = s.encode_tch(&xt).unwrap().flatten(0, -1);
                let t = Vec::<f32>::try_from(&t).unwrap();
                assert_eq!(t.len(), cpu.len());
                let nonzero = cpu.iter().filter(|&&v| v > 0.0).count();
                assert!(
                    nonzero > 0 && nonzero < cpu.len(),
                    "{act:?}: codes are mixed"
                );
                for (i, (a, b)) in cpu.iter().zip(&t).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                        "{act:?} apply={apply} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
        let after = Vec::<f32>::try_from(&xt.flatten(0, -1)).unwrap();
        assert_eq!(after, x, "encode_tch leaves its input tensor alone");
        assert!(s_err_without_width(
            &base,
            &tch::Tensor::zeros([2, 5], (tch::Kind::Float, tch::Device::Cpu))
        ));
    }

    #[cfg(feature = "torch")]
    fn s_err_without_width(s: &Sae, x: &tch::Tensor) -> bool {
        s.encode_tch(x).is_err()
    }

    /// A TopK cfg with `rescale_acts_by_decoder_norm` reads with the norms folded in: codes are
    /// SAELens' (`topk(relu(pre · n))`) and reconstructions `Σ (code / n_i) W_dec[i] + b_dec`.
    #[test]
    fn rescaled_topk_is_folded_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = tiny();
        s.activation = SaeActivation::TopK { k: 1 };
        // Decoder row norms 1, 1, 1 → make them 1, 0.5, 3.
        let norms = [1.0f32, 0.5, 3.0];
        for (i, n) in norms.iter().enumerate() {
            s.w_dec[i * 2..(i + 1) * 2].iter_mut().for_each(|v| *v *= n);
        }
        let out = dir.path().join("sae");
        s.save_saelens(&out, false).unwrap();
        let cfg = out.join("cfg.json");
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "\"rescale_acts_by_decoder_norm\": false",
            "\"rescale_acts_by_decoder_norm\": true",
        );
        std::fs::write(&cfg, text).unwrap();
        let r = Sae::load(&out).unwrap();
        // x − b_dec = (1.5, 0.5): pre = (1.5, 0, 1), scaled (1.5, 0, 3): feature 2, where plain
        // TopK picks feature 0. x − b_dec = (0.5, −1.5): pre = (0.5, −2, 2), scaled (0.5, −1, 6).
        let x = [2.0, 1.0, 1.0, -1.0];
        assert_eq!(s.encode(&x[..2]).unwrap(), vec![1.5, 0.0, 0.0]);
        let codes = r.encode(&x).unwrap();
        let want = [0.0, 0.0, 3.0, 0.0, 0.0, 6.0];
        for (a, b) in codes.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{codes:?}");
        }
        // SAELens decodes (code / n_i) · W_dec[i] + b_dec: 3/3 · (1.8, −2.4) + (0.5, 0.5), and
        // 6/3 · (1.8, −2.4) + (0.5, 0.5).
        let recon = r.decode(&codes).unwrap();
        let want = [2.3, -1.9, 4.1, -4.3];
        for (a, b) in recon.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{recon:?}");
        }
    }

    #[test]
    fn top_k_ties_go_to_the_lowest_index() {
        assert_eq!(top_k_indices(&[1.0, 3.0, 3.0, 2.0], 2), vec![1, 2]);
        assert_eq!(top_k_indices(&[5.0, 5.0, 5.0], 1), vec![0]);
    }

    #[test]
    fn saelens_round_trip_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = tiny();
        s.activation = SaeActivation::JumpRelu {
            threshold: vec![0.1, 0.2, 0.3],
        };
        s.metadata
            .insert("hook_name".into(), json!("blocks.1.hook_resid_post"));
        let out = dir.path().join("sae");
        s.save_saelens(&out, false).unwrap();
        // The v6 layout's version marker is added on write (SAELens needs it to keep metadata).
        let mut want = s.clone();
        want.metadata
            .insert("sae_lens_version".into(), json!(SAELENS_LAYOUT_VERSION));
        assert_eq!(Sae::load(&out).unwrap(), want);
        // Never overwritten without force.
        assert!(matches!(
            s.save_saelens(&out, false),
            Err(Error::OutputExists(_))
        ));
        s.save_saelens(&out, true).unwrap();
        // A cfg that disagrees with the weights names the tensor.
        let cfg = out.join("cfg.json");
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("\"d_sae\": 3", "\"d_sae\": 4");
        std::fs::write(&cfg, text).unwrap();
        let e = Sae::load(&out).unwrap_err().to_string();
        assert!(
            e.contains("sae_weights.safetensors") && e.contains("expected [4]"),
            "{e}"
        );
    }
}
