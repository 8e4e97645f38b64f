//! Gemma-2 configuration from a Hugging Face `config.json` (transformers 4.x and 5.x layouts).

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The attention type of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// Attends to the `sliding_window` most recent positions (itself included).
    Sliding,
    /// Attends to every earlier position.
    Full,
}

/// What the forward pass needs from `config.json`; never hard-coded.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub query_pre_attn_scalar: f64,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub sliding_window: usize,
    pub layer_types: Vec<AttentionKind>,
    pub bos_token_id: i64,
    pub pad_token_id: i64,
    pub tie_word_embeddings: bool,
}

impl Gemma2Config {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        Self::from_json(&v).map_err(|m| Error::format(path, m))
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
                Some(x) => x
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| format!("field `{k}` is not a number")),
            }
        };
        if let Some(mt) = v.get("model_type").and_then(Value::as_str) {
            if mt != "gemma2" {
                return Err(format!(
                    "model_type is `{mt}`; this implementation is Gemma-2 (`gemma2`)"
                ));
            }
        }
        if let Some(act) = v
            .get("hidden_activation")
            .or_else(|| v.get("hidden_act"))
            .and_then(Value::as_str)
        {
            if act != "gelu_pytorch_tanh" && act != "gelu_tanh" {
                return Err(format!(
                    "hidden_activation `{act}` is not supported (Gemma-2 uses gelu_pytorch_tanh)"
                ));
            }
        }
        let num_hidden_layers = usize_of("num_hidden_layers")?;
        let num_attention_heads = usize_of("num_attention_heads")?;
        let num_key_value_heads = usize_of("num_key_value_heads")?;
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})"
            ));
        }
        let rope_theta = f64_of("rope_theta")
            .or_else(|| {
                v.get("rope_parameters")
                    .and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        let head_dim = usize_of("head_dim")?;
        let layer_types = match v.get("layer_types") {
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    Some("sliding_attention") => Ok(AttentionKind::Sliding),
                    Some("full_attention") => Ok(AttentionKind::Full),
                    other => Err(format!(
                        "layer_types[{i}] = {other:?} is not sliding_attention/full_attention"
                    )),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?,
            // Gemma-2: even-indexed layers are local (sliding), odd ones global.
            _ => (0..num_hidden_layers)
                .map(|i| {
                    if i % 2 == 0 {
                        AttentionKind::Sliding
                    } else {
                        AttentionKind::Full
                    }
                })
                .collect(),
        };
        if layer_types.len() != num_hidden_layers {
            return Err(format!(
                "layer_types has {} entries for {num_hidden_layers} layers",
                layer_types.len()
            ));
        }
        Ok(Gemma2Config {
            vocab_size: usize_of("vocab_size")?,
            hidden_size: usize_of("hidden_size")?,
            intermediate_size: usize_of("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f64_of("rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            query_pre_attn_scalar: f64_of("query_pre_attn_scalar").unwrap_or(head_dim as f64),
            attn_logit_softcapping: opt_cap("attn_logit_softcapping")?,
            final_logit_softcapping: opt_cap("final_logit_softcapping")?,
            sliding_window: usize_of("sliding_window").unwrap_or(4096),
            layer_types,
            bos_token_id: v.get("bos_token_id").and_then(Value::as_i64).unwrap_or(2),
            pad_token_id: v.get("pad_token_id").and_then(Value::as_i64).unwrap_or(0),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        })
    }
}
