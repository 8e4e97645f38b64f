//! Gemma-2 and Gemma 3 (text) in tch: weights from (sharded) safetensors, a forward pass over a
//! padded batch that stops after the last requested hook, hooks and interventions, greedy
//! generation.
//!
//! Follows HF transformers' `Gemma` and `Gemma3` (eager attention): embedding × √hidden in the
//! model dtype; RMSNorm in f32 with weight `(1 + w)`; four norms per block; GQA; q/k norms over
//! `head_dim` before RoPE (Gemma 3); RoPE with one base per attention type; attention scale
//! `query_pre_attn_scalar^-0.5`; logit soft-capping `cap·tanh(x/cap)` where the config sets it;
//! sliding window on the layers `layer_types` marks (a query at i sees keys j with
//! `0 ≤ i − j < window`); GeGLU with tanh GELU; tied LM head with final soft-capping, only when
//! logits are asked for.

use super::config::{AttentionKind, GemmaConfig, Rope};
use super::hooks::{HookKind, HookPoint, Intervention};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Weights of one decoder block. Norms are kept as their f32 scales `1 + w` (what HF multiplies
/// by), and the projections that read the same input are stacked so that each is one GEMM:
/// `qkv` = `[q_proj; k_proj; v_proj]`, `gate_up` = `[gate_proj; up_proj]`.
struct Block {
    input_norm: Tensor,
    post_attn_norm: Tensor,
    pre_ff_norm: Tensor,
    post_ff_norm: Tensor,
    qkv: Tensor,
    o: Tensor,
    /// Gemma 3's RMSNorm of each head's query / key (`None` for Gemma-2).
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    gate_up: Tensor,
    down: Tensor,
}

/// The f32 scale `1 + w` of a Gemma RMSNorm weight.
fn norm_scale(w: Tensor) -> Tensor {
    w.to_kind(Kind::Float) + 1.0
}

impl Block {
    /// A block from its HF tensors (norm weights as stored).
    #[allow(clippy::too_many_arguments)]
    fn new(
        norms: [Tensor; 4],
        [q, k, v, o]: [Tensor; 4],
        qk_norms: Option<(Tensor, Tensor)>,
        [gate, up, down]: [Tensor; 3],
    ) -> Self {
        let [input_norm, post_attn_norm, pre_ff_norm, post_ff_norm] = norms.map(norm_scale);
        Block {
            input_norm,
            post_attn_norm,
            pre_ff_norm,
            post_ff_norm,
            qkv: Tensor::cat(&[q, k, v], 0),
            o,
            q_norm: qk_norms
                .as_ref()
                .map(|(q, _)| norm_scale(q.shallow_clone())),
            k_norm: qk_norms.map(|(_, k)| norm_scale(k)),
            gate_up: Tensor::cat(&[gate, up], 0),
            down,
        }
    }
}

/// A Gemma-2 or Gemma 3 (text) model with its weights on a device.
pub struct Gemma {
    pub config: GemmaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    lm_head: Option<Tensor>,
    kind: Kind,
    device: Device,
}

/// Which logits a forward computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None: the forward stops after the deepest hook.
    None,
    /// `[B, T, V]` at every position.
    All,
    /// `[B, V]` at each sequence's last token (the last position its mask keeps).
    Last,
}

/// What one forward pass returns.
#[derive(Debug, Default)]
pub struct ForwardOutput {
    /// Activations at the requested hooks (after any intervention at that hook).
    pub hooks: BTreeMap<HookPoint, Tensor>,
    /// Logits, when asked for (`[B, T, V]`, or `[B, V]` with [`Logits::Last`]).
    pub logits: Option<Tensor>,
}

/// Keys and values of earlier positions for incremental decoding ([`Gemma::forward_cached`]):
/// per block, `[B, kv_heads, T, head_dim]` after the k-norm and RoPE, and the key mask.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    mask: Option<Tensor>,
    len: i64,
}

impl KvCache {
    /// Positions cached.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// No position cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy sharing the cached tensors: a later forward extends the copy only (extending
    /// makes new tensors, never writes into the shared ones), so several continuations of one
    /// prefix each start from it.
    pub fn fork(&self) -> KvCache {
        KvCache {
            keys: self.keys.iter().map(Tensor::shallow_clone).collect(),
            values: self.values.iter().map(Tensor::shallow_clone).collect(),
            mask: self.mask.as_ref().map(Tensor::shallow_clone),
            len: self.len,
        }
    }

    /// Appends block `layer`'s new keys and values; returns all of them.
    fn extend(&mut self, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        if layer == self.keys.len() {
            self.keys.push(k.shallow_clone());
            self.values.push(v.shallow_clone());
        } else {
            self.keys[layer] = Tensor::cat(&[&self.keys[layer], &k], 2);
            self.values[layer] = Tensor::cat(&[&self.values[layer], &v], 2);
        }
        (
            self.keys[layer].shallow_clone(),
            self.values[layer].shallow_clone(),
        )
    }
}

/// Reads every tensor of a checkpoint directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
fn read_weights(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<std::path::PathBuf> = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&index, format!("invalid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&index, "no `weight_map` object"))?;
        let mut names: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        names.sort();
        names.dedup();
        names.into_iter().map(|f| dir.join(f)).collect()
    } else {
        vec![dir.join("model.safetensors")]
    };
    let mut out = HashMap::new();
    for f in files {
        if !f.exists() {
            return Err(Error::io(
                &f,
                std::io::Error::new(std::io::ErrorKind::NotFound, "weight file not found"),
            ));
        }
        let tensors = Tensor::read_safetensors(&f)
            .map_err(|e| Error::format(&f, format!("cannot read safetensors: {e}")))?;
        out.extend(tensors);
    }
    Ok(out)
}

/// How far the forward runs in its last block: no further than its entry (`resid_pre`), through
/// its attention half (up to `resid_mid`), or through its MLP too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Entry,
    Attention,
    Mlp,
}

impl Part {
    fn of(kind: HookKind) -> Part {
        if kind == HookKind::ResidPre {
            Part::Entry
        } else if kind.in_attention() {
            Part::Attention
        } else {
            Part::Mlp
        }
    }
}

impl Gemma {
    /// Loads `config.json` and the weights of a Hugging Face checkpoint directory, converting
    /// them to `kind` on `device`. A missing, mis-shaped or unexpected tensor is an error naming
    /// the tensor.
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(Error::io(
                &config_path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not found: is this a Hugging Face snapshot directory?",
                ),
            ));
        }
        let config = GemmaConfig::from_file(&config_path)?;
        let mut w = read_weights(dir)?;
        let c = &config;
        let (h, i) = (c.hidden_size as i64, c.intermediate_size as i64);
        let (nh, nkv, hd) = (
            c.num_attention_heads as i64,
            c.num_key_value_heads as i64,
            c.head_dim as i64,
        );
        let model_type = c.family.model_type();
        let mut take = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let t = w.remove(name).ok_or_else(|| {
                Error::format(
                    dir,
                    format!("missing weight `{name}` (expected shape {shape:?} for {model_type})"),
                )
            })?;
            if t.size() != shape {
                return Err(Error::format(
                    dir,
                    format!(
                        "weight `{name}` has shape {:?}, expected {shape:?}",
                        t.size()
                    ),
                ));
            }
            if !matches!(
                t.kind(),
                Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
            ) {
                return Err(Error::format(
                    dir,
                    format!(
                        "weight `{name}` has dtype {:?}; float weights are needed",
                        t.kind()
                    ),
                ));
            }
            Ok(t.to_kind(kind).to_device(device))
        };
        let embed = take("model.embed_tokens.weight", &[c.vocab_size as i64, h])?;
        let mut blocks = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            let qk_norms = if c.qk_norm {
                Some((
                    take(&p("self_attn.q_norm.weight"), &[hd])?,
                    take(&p("self_attn.k_norm.weight"), &[hd])?,
                ))
            } else {
                None
            };
            blocks.push(Block::new(
                [
                    take(&p("input_layernorm.weight"), &[h])?,
                    take(&p("post_attention_layernorm.weight"), &[h])?,
                    take(&p("pre_feedforward_layernorm.weight"), &[h])?,
                    take(&p("post_feedforward_layernorm.weight"), &[h])?,
                ],
                [
                    take(&p("self_attn.q_proj.weight"), &[nh * hd, h])?,
                    take(&p("self_attn.k_proj.weight"), &[nkv * hd, h])?,
                    take(&p("self_attn.v_proj.weight"), &[nkv * hd, h])?,
                    take(&p("self_attn.o_proj.weight"), &[h, nh * hd])?,
                ],
                qk_norms,
                [
                    take(&p("mlp.gate_proj.weight"), &[i, h])?,
                    take(&p("mlp.up_proj.weight"), &[i, h])?,
                    take(&p("mlp.down_proj.weight"), &[h, i])?,
                ],
            ));
        }
        let final_norm = norm_scale(take("model.norm.weight", &[h])?);
        let lm_head = if c.tie_word_embeddings {
            // A tied head may still be stored; it is the embedding.
            w.remove("lm_head.weight");
            None
        } else {
            Some(take("lm_head.weight", &[c.vocab_size as i64, h])?)
        };
        if !w.is_empty() {
            let mut extra: Vec<&String> = w.keys().collect();
            extra.sort();
            return Err(Error::format(
                dir,
                format!(
                    "unexpected weight `{}` ({} in all) for model_type {model_type}: is config.json the checkpoint's own?",
                    extra[0],
                    extra.len()
                ),
            ));
        }
        Ok(Gemma {
            config,
            embed,
            blocks,
            final_norm,
            lm_head,
            kind,
            device,
        })
    }

    /// A model with random weights (for throughput measurements): N(0, 0.02²) matrices and
    /// embeddings, zero norm weights (so every norm is the identity scale 1 + 0).
    pub fn random(config: GemmaConfig, kind: Kind, device: Device, seed: i64) -> Self {
        tch::manual_seed(seed);
        let c = &config;
        let (h, i) = (c.hidden_size as i64, c.intermediate_size as i64);
        let (nh, nkv, hd) = (
            c.num_attention_heads as i64,
            c.num_key_value_heads as i64,
            c.head_dim as i64,
        );
        let r = |shape: &[i64]| (Tensor::randn(shape, (Kind::Float, device)) * 0.02).to_kind(kind);
        let z = |n: i64| Tensor::zeros([n], (kind, device));
        let blocks = (0..c.num_hidden_layers)
            .map(|_| {
                Block::new(
                    [z(h), z(h), z(h), z(h)],
                    [
                        r(&[nh * hd, h]),
                        r(&[nkv * hd, h]),
                        r(&[nkv * hd, h]),
                        r(&[h, nh * hd]),
                    ],
                    c.qk_norm.then(|| (z(hd), z(hd))),
                    [r(&[i, h]), r(&[i, h]), r(&[h, i])],
                )
            })
            .collect();
        Gemma {
            embed: r(&[c.vocab_size as i64, h]),
            blocks,
            final_norm: norm_scale(z(h)),
            lm_head: None,
            kind,
            device,
            config,
        }
    }

    /// Nominal FLOPs of a forward over `tokens` tokens in sequences of `seq` tokens through
    /// blocks `0..=last_layer` (2 per multiply-add of the projections and MLP, plus the
    /// attention score and value products), without logits.
    pub fn forward_flops(&self, tokens: u64, seq: u64, last_layer: usize) -> f64 {
        let c = &self.config;
        let (h, i) = (c.hidden_size as f64, c.intermediate_size as f64);
        let (nh, nkv, hd) = (
            c.num_attention_heads as f64,
            c.num_key_value_heads as f64,
            c.head_dim as f64,
        );
        let proj = h * nh * hd * 2.0 + h * nkv * hd * 2.0; // q, o and k, v
        let mlp = 3.0 * h * i;
        let attn = 2.0 * seq as f64 * nh * hd; // QKᵀ and PV per token (full square, as computed)
        2.0 * (proj + mlp + attn) * tokens as f64 * (last_layer + 1) as f64
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The weights' dtype.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The width of a hook's last dimension, and its number of heads at a per-head hook.
    pub fn hook_shape(&self, hook: HookPoint) -> (usize, Option<usize>) {
        let c = &self.config;
        match hook.kind {
            HookKind::Q | HookKind::RotQ | HookKind::Z => (c.head_dim, Some(c.num_attention_heads)),
            HookKind::K | HookKind::V | HookKind::RotK => (c.head_dim, Some(c.num_key_value_heads)),
            HookKind::AttnScores | HookKind::Pattern => (0, Some(c.num_attention_heads)),
            _ => (c.hidden_size, None),
        }
    }

    /// The final norm's f32 scale `1 + w` (`w` = `model.norm.weight`).
    pub fn final_norm_scale(&self) -> &Tensor {
        &self.final_norm
    }

    /// The unembedding matrix `[V, D]` (the embedding when tied).
    pub fn unembedding(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// RMSNorm in f32 with the f32 scale `1 + w`, back to the input's kind (HF's
    /// `(x.float() * rsqrt(mean(x²) + eps) * (1 + w.float())).type_as(x)`, as one libtorch op).
    fn rms_norm(&self, x: &Tensor, scale: &Tensor) -> Tensor {
        let last = *x.size().last().expect("a tensor with a last dimension");
        x.to_kind(Kind::Float)
            .rms_norm([last].as_slice(), Some(scale), self.config.rms_norm_eps)
            .to_kind(x.kind())
    }

    /// The model's final norm of `x` `[..., D]` (what [`Gemma::logits_of`] unembeds).
    pub fn final_norm(&self, x: &Tensor) -> Tensor {
        self.rms_norm(x, &self.final_norm)
    }

    /// The final norm then the unembedding (and final soft-capping) of `x` `[..., D]`.
    pub fn logits_of(&self, x: &Tensor) -> Tensor {
        let h = self.rms_norm(x, &self.final_norm);
        let mut lg = h.matmul(&self.unembedding().tr());
        if let Some(cap) = self.config.final_logit_softcapping {
            lg = (lg / cap).tanh() * cap;
        }
        lg
    }

    /// `cos`, `sin` of RoPE for positions `0..t`, `[t, head_dim]`, in the model's kind, as HF
    /// computes them: `inv_freq = 1 / θ^(2i/d) / factor` in f32, angles `pos · inv_freq`.
    fn rope(&self, rope: Rope, t: i64) -> (Tensor, Tensor) {
        let hd = self.config.head_dim as i64;
        let exponents = Tensor::arange_start_step(0, hd, 2, (Kind::Int64, self.device))
            .to_kind(Kind::Float)
            / hd as f64;
        let mut inv_freq = Tensor::pow_scalar(rope.theta, &exponents).reciprocal();
        if rope.linear_factor != 1.0 {
            inv_freq /= rope.linear_factor;
        }
        let pos = Tensor::arange(t, (Kind::Float, self.device));
        let freqs = pos.unsqueeze(1) * inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos().to_kind(self.kind), emb.sin().to_kind(self.kind))
    }

    /// Checks hooks and interventions against the model before any work.
    fn check_request(&self, hooks: &[HookPoint], interventions: &[Intervention]) -> Result<()> {
        let c = &self.config;
        for hp in hooks.iter().chain(interventions.iter().map(|i| &i.hook)) {
            if hp.layer >= c.num_hidden_layers {
                return Err(Error::param(
                    "hook",
                    format!(
                        "{hp}: the model has {} blocks (0..{})",
                        c.num_hidden_layers,
                        c.num_hidden_layers - 1
                    ),
                ));
            }
        }
        for iv in interventions {
            let (d, heads) = self.hook_shape(iv.hook);
            iv.check(d as i64, heads.map(|h| h as i64))?;
        }
        Ok(())
    }

    /// Forward over `input_ids` `[B, T]` (i64) with `attention_mask` `[B, T]` (1 = token,
    /// 0 = padding; right padding). Runs blocks up to the last requested hook (all blocks when
    /// logits are asked for), applies `interventions` at their hooks, and returns the requested
    /// activations and, with `logits`, `[B, T, V]` logits.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        hooks: &[HookPoint],
        interventions: &[Intervention],
        logits: bool,
    ) -> Result<ForwardOutput> {
        let mode = if logits { Logits::All } else { Logits::None };
        self.forward_with(input_ids, attention_mask, hooks, interventions, mode)
    }

    /// [`Gemma::forward`] with a choice of logits ([`Logits::Last`]: only each sequence's last
    /// token goes through the final norm and the unembedding).
    pub fn forward_with(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        hooks: &[HookPoint],
        interventions: &[Intervention],
        logits: Logits,
    ) -> Result<ForwardOutput> {
        self.forward_core(
            input_ids,
            attention_mask,
            hooks,
            interventions,
            logits,
            None,
        )
    }

    /// An empty key/value cache for [`Gemma::forward_cached`].
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            keys: Vec::new(),
            values: Vec::new(),
            mask: None,
            len: 0,
        }
    }

    /// [`Gemma::forward_with`] over the next `T` positions of sequences whose earlier positions
    /// are in `cache` (which this call extends), through every block: incremental decoding.
    /// Hooks see the new positions only; intervention positions are absolute.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
        hooks: &[HookPoint],
        interventions: &[Intervention],
        logits: Logits,
    ) -> Result<ForwardOutput> {
        if logits == Logits::None {
            return Err(Error::param(
                "forward",
                "a cached forward runs every block: ask for logits",
            ));
        }
        self.forward_core(
            input_ids,
            attention_mask,
            hooks,
            interventions,
            logits,
            Some(cache),
        )
    }

    fn forward_core(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        hooks: &[HookPoint],
        interventions: &[Intervention],
        logits: Logits,
        mut cache: Option<&mut KvCache>,
    ) -> Result<ForwardOutput> {
        let c = &self.config;
        let size = input_ids.size();
        if size.len() != 2 || attention_mask.size() != size {
            return Err(Error::param(
                "input",
                format!(
                    "input_ids {:?} and attention_mask {:?} must both be [B, T]",
                    size,
                    attention_mask.size()
                ),
            ));
        }
        self.check_request(hooks, interventions)?;
        let (b, t) = (size[0], size[1]);
        // With a cache: `past` earlier positions, whose keys and values it holds.
        let past = cache.as_ref().map_or(0, |k| k.len);
        if let Some(k) = cache.as_ref() {
            if let Some(m) = &k.mask {
                if m.size()[0] != b {
                    return Err(Error::param(
                        "input",
                        format!("the cache holds {} sequences, the input {b}", m.size()[0]),
                    ));
                }
            }
        }
        let total = past + t;
        // Where the work ends: the last block, or the deepest hook's part of its block.
        let (last, last_part) = if logits != Logits::None {
            (c.num_hidden_layers - 1, Part::Mlp)
        } else {
            match hooks.iter().max() {
                Some(deepest) => (deepest.layer, Part::of(deepest.kind)),
                None => return Ok(ForwardOutput::default()),
            }
        };
        let _guard = tch::no_grad_guard();
        let ids = input_ids.to_device(self.device);
        let mask = attention_mask.to_device(self.device).to_kind(Kind::Bool);
        let mut out = ForwardOutput::default();
        let want = |hp: HookPoint| hooks.contains(&hp);
        let edit = |hp: HookPoint, x: Tensor| -> Result<Tensor> {
            interventions
                .iter()
                .filter(|iv| iv.hook == hp)
                .try_fold(x, |x, iv| iv.apply(&x, past))
        };
        let record = |hp: HookPoint, x: &Tensor, out: &mut ForwardOutput| {
            if want(hp) {
                out.hooks.insert(hp, x.shallow_clone());
            }
        };
        // Embedding × √hidden, the scale rounded to the model's kind as HF does.
        let normalizer = Tensor::from((c.hidden_size as f64).sqrt() as f32)
            .to_kind(self.kind)
            .to_device(self.device);
        let mut x = self.embed.index_select(0, &ids.view([-1])).view([b, t, -1]) * &normalizer;
        // RoPE tables per attention type used.
        let mut ropes: HashMap<AttentionKind, (Tensor, Tensor)> = HashMap::new();
        for &kind in c.layer_types.iter().take(last + 1) {
            ropes.entry(kind).or_insert_with(|| {
                let (cos, sin) = self.rope(c.rope(kind), total);
                let (cos, sin) = (cos.narrow(0, past, t), sin.narrow(0, past, t));
                (cos.view([1, 1, t, -1]), sin.view([1, 1, t, -1]))
            });
        }
        // Masks: causal, sliding window, key padding. [B, 1, T, T_keys] booleans (true =
        // attend); queries are positions past.., keys 0..past + T.
        let key_mask = match cache.as_ref().and_then(|k| k.mask.as_ref()) {
            Some(m) => Tensor::cat(&[m, &mask], 1),
            None => mask.shallow_clone(),
        };
        let i_idx = Tensor::arange_start(past, total, (Kind::Int64, self.device)).view([t, 1]);
        let j_idx = Tensor::arange(total, (Kind::Int64, self.device)).view([1, total]);
        let causal = j_idx.le_tensor(&i_idx);
        let keys = key_mask.view([b, 1, 1, total]);
        let full_mask = causal.view([1, 1, t, total]).logical_and(&keys);
        let window = (&i_idx - &j_idx).lt(c.sliding_window as i64);
        let sliding_mask = full_mask.logical_and(&window.view([1, 1, t, total]));
        // The same masks as additive biases (0 or f32::MIN) in the model's dtype, for the
        // fused attention kernel.
        let bias_of = |m: &Tensor| {
            Tensor::zeros(m.size(), (self.kind, self.device))
                .masked_fill(&m.logical_not(), f64::from(f32::MIN))
        };
        let (full_bias, sliding_bias) = (bias_of(&full_mask), bias_of(&sliding_mask));
        let (nh, nkv, hd) = (
            c.num_attention_heads as i64,
            c.num_key_value_heads as i64,
            c.head_dim as i64,
        );
        let scale = c.query_pre_attn_scalar.powf(-0.5);
        let ci = c.intermediate_size as i64;
        for (l, blk) in self.blocks.iter().enumerate().take(last + 1) {
            let hp = |kind| HookPoint { layer: l, kind };
            x = edit(hp(HookKind::ResidPre), x)?;
            record(hp(HookKind::ResidPre), &x, &mut out);
            if l == last && last_part == Part::Entry {
                break;
            }
            // Attention. Per-head hooks see [B, T, heads, head_dim].
            let h = self.rms_norm(&x, &blk.input_norm);
            let qkv = h.matmul(&blk.qkv.tr());
            let parts = qkv.split_with_sizes([nh * hd, nkv * hd, nkv * hd].as_slice(), -1);
            let q = edit(hp(HookKind::Q), parts[0].view([b, t, nh, hd]))?;
            record(hp(HookKind::Q), &q, &mut out);
            let k = edit(hp(HookKind::K), parts[1].view([b, t, nkv, hd]))?;
            record(hp(HookKind::K), &k, &mut out);
            let v = edit(hp(HookKind::V), parts[2].view([b, t, nkv, hd]))?;
            record(hp(HookKind::V), &v, &mut out);
            let (q, k) = match (&blk.q_norm, &blk.k_norm) {
                (Some(qn), Some(kn)) => (self.rms_norm(&q, qn), self.rms_norm(&k, kn)),
                _ => (q, k),
            };
            let (cos, sin) = &ropes[&c.layer_types[l]];
            let rot = |z: &Tensor| {
                let half = hd / 2;
                let z1 = z.narrow(-1, 0, half);
                let z2 = z.narrow(-1, half, hd - half);
                Tensor::cat(&[z2.neg(), z1], -1)
            };
            // [B, heads, T, head_dim] for the products.
            let (q, k, v) = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2));
            let q = &q * cos + rot(&q) * sin;
            let k = &k * cos + rot(&k) * sin;
            let q = edit(hp(HookKind::RotQ), q.transpose(1, 2))?;
            record(hp(HookKind::RotQ), &q, &mut out);
            let k = edit(hp(HookKind::RotK), k.transpose(1, 2))?;
            record(hp(HookKind::RotK), &k, &mut out);
            let (q, k) = (q.transpose(1, 2), k.transpose(1, 2));
            // Earlier positions' keys and values from the cache, this call's appended to it.
            let (k, v) = match cache.as_deref_mut() {
                Some(cache) => cache.extend(l, k, v),
                None => (k, v),
            };
            let sliding = c.layer_types[l] == AttentionKind::Sliding;
            let maps_wanted = want(hp(HookKind::AttnScores)) || want(hp(HookKind::Pattern));
            let z = if maps_wanted || c.attn_logit_softcapping.is_some() {
                // Spelled out, as HF's eager attention: the scores and pattern exist as tensors.
                let rep = nh / nkv;
                let (k, v) = if rep > 1 {
                    (
                        k.repeat_interleave_self_int(rep, Some(1), None),
                        v.repeat_interleave_self_int(rep, Some(1), None),
                    )
                } else {
                    (k, v)
                };
                let mut scores = q.matmul(&k.transpose(2, 3)) * scale;
                if let Some(cap) = c.attn_logit_softcapping {
                    scores = (scores / cap).tanh() * cap;
                }
                let allowed = if sliding { &sliding_mask } else { &full_mask };
                // A finite fill, like HF's finfo.min: a query with no visible key (padding) gets
                // a uniform row instead of NaN; such rows are never read.
                let scores = scores.masked_fill(&allowed.logical_not(), f64::from(f32::MIN));
                record(hp(HookKind::AttnScores), &scores, &mut out);
                let probs = scores.softmax(-1, Kind::Float).to_kind(self.kind);
                record(hp(HookKind::Pattern), &probs, &mut out);
                probs.matmul(&v)
            } else {
                // One fused libtorch kernel (grouped-query aware). The mask is additive with the
                // same finite fill, so a query with no visible key gets a uniform row, not NaN.
                let bias = if sliding { &sliding_bias } else { &full_bias };
                Tensor::scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    Some(bias),
                    0.0,
                    false,
                    scale,
                    true,
                )
            };
            let z = edit(hp(HookKind::Z), z.transpose(1, 2).contiguous())?; // [B, T, nh, hd]
            record(hp(HookKind::Z), &z, &mut out);
            let attn = z.reshape([b, t, nh * hd]).matmul(&blk.o.tr());
            let attn_out = edit(
                hp(HookKind::AttnOut),
                self.rms_norm(&attn, &blk.post_attn_norm),
            )?;
            record(hp(HookKind::AttnOut), &attn_out, &mut out);
            x = edit(hp(HookKind::ResidMid), &x + &attn_out)?;
            record(hp(HookKind::ResidMid), &x, &mut out);
            if l == last && last_part == Part::Attention {
                break;
            }
            // MLP (GeGLU, tanh GELU).
            let h = self.rms_norm(&x, &blk.pre_ff_norm);
            let gate_up = h.matmul(&blk.gate_up.tr());
            let (g, u) = (gate_up.narrow(-1, 0, ci), gate_up.narrow(-1, ci, ci));
            let mlp = (g.gelu("tanh") * u).matmul(&blk.down.tr());
            let mlp_out = edit(hp(HookKind::MlpOut), self.rms_norm(&mlp, &blk.post_ff_norm))?;
            record(hp(HookKind::MlpOut), &mlp_out, &mut out);
            x = edit(hp(HookKind::ResidPost), &x + &mlp_out)?;
            record(hp(HookKind::ResidPost), &x, &mut out);
        }
        if let Some(cache) = cache {
            cache.mask = Some(key_mask);
            cache.len = total;
        }
        match logits {
            Logits::None => {}
            Logits::All => out.logits = Some(self.logits_of(&x)),
            Logits::Last => {
                let last = mask
                    .to_kind(Kind::Int64)
                    .sum_dim_intlist(1, false, Kind::Int64)
                    - 1;
                let last = last
                    .clamp_min(0)
                    .view([b, 1, 1])
                    .expand([b, 1, x.size()[2]], false);
                let xl = x.gather(1, &last, false).squeeze_dim(1);
                out.logits = Some(self.logits_of(&xl));
            }
        }
        Ok(out)
    }

    /// Greedy decoding of `new_tokens` tokens after `prompt` (ids, BOS included), with
    /// `interventions` applied at every step. Recomputes the whole prefix each step (no KV
    /// cache), which is fine for short continuations.
    pub fn generate_greedy(
        &self,
        prompt: &[i64],
        new_tokens: usize,
        interventions: &[Intervention],
    ) -> Result<Vec<i64>> {
        let mut ids = prompt.to_vec();
        for _ in 0..new_tokens {
            let t = ids.len() as i64;
            let input = Tensor::from_slice(&ids).view([1, t]);
            let mask = Tensor::ones([1, t], (Kind::Int64, Device::Cpu));
            let out = self.forward_with(&input, &mask, &[], interventions, Logits::Last)?;
            let lg = out.logits.expect("logits were asked for");
            let next = lg.get(0).argmax(0, false).int64_value(&[]);
            ids.push(next);
        }
        Ok(ids)
    }
}
