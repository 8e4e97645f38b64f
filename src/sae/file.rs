//! An [`Sae`] on disk: the SAELens layout (`cfg.json` + `sae_weights.safetensors`, v6 configs
//! and the pre-6.0 flat ones; read and written) and Gemma Scope's `params.npz` (read).

use super::{Sae, SaeActivation};
use crate::error::{Error, Result};
use crate::output::{check_writable, write_atomic};
use crate::tensorfile::{self, TensorFile, TensorOut};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `metadata.sae_lens_version` written by [`Sae::save_saelens`] when the metadata has none: the
/// SAELens cfg layout (v6) the file follows. SAELens reads a cfg without a version ≥ 6 as a
/// pre-6.0 config, and then keeps only the top-level metadata keys it knows (so an EP export's
/// `metadata` would be dropped).
pub const SAELENS_LAYOUT_VERSION: &str = "6.0.0";

impl Sae {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::tests::tiny;

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
