//! Forwards of a circuit task on a live model (feature `torch`): the clean and corrupted runs
//! (logit differences, per-head `attn.hook_z` outputs pooled for the codes), and exact
//! activation patching of attention heads.
//!
//! Patching a head replaces its `blocks.L.attn.hook_z` output (`[B, T, head_dim]`, the input of
//! `o_proj` for that head) at every position of the clean run by the corrupted run's, which is
//! computed once (MIB's counterfactual ablation at node level: a patched head's value does not
//! depend on what else is patched). The metric is the logit difference
//! `logit(answer) − logit(wrong_answer)` at each prompt's last token.

use super::codes::HeadRows;
use super::task::EncodedItem;
use crate::error::{Error, Result};
use crate::model::{Edit, Gemma, HookKind, HookPoint, Intervention, Logits};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// How a head's `[T, head_dim]` output becomes one vector per prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// The mean over the positions after the BOS.
    Mean,
    /// The last position.
    Last,
}

impl Pool {
    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Mean => "mean",
            Pool::Last => "last",
        }
    }
}

/// One padded batch of prompt pairs, with the corrupted run's `hook_z` at every layer.
struct Chunk {
    ids: Tensor,
    mask: Tensor,
    answer: Tensor,
    wrong: Tensor,
    /// Per layer, `[B, T, heads, head_dim]` of the corrupted run.
    z_corrupted: Vec<Tensor>,
}

/// A task ready to patch: its batches, the clean and corrupted logit differences, and the
/// pooled head outputs of both runs.
pub struct TaskRuns {
    chunks: Vec<Chunk>,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Per prompt, the clean run's logit difference.
    pub clean_ld: Vec<f64>,
    /// Per prompt, the corrupted run's logit difference.
    pub corrupted_ld: Vec<f64>,
    /// Pooled `hook_z` of every head (flat, layer-major), both runs.
    pub rows: HeadRows,
}

fn pad(seqs: &[&[i64]], pad_id: i64) -> (Tensor, Tensor) {
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let (mut ids, mut mask) = (vec![], vec![]);
    for s in seqs {
        ids.extend(
            s.iter()
                .copied()
                .chain(std::iter::repeat_n(pad_id, t - s.len())),
        );
        mask.extend(std::iter::repeat_n(1i64, s.len()).chain(std::iter::repeat_n(0, t - s.len())));
    }
    let b = seqs.len() as i64;
    (
        Tensor::from_slice(&ids).view([b, t as i64]),
        Tensor::from_slice(&mask).view([b, t as i64]),
    )
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Vec::<f64>::try_from(
        t.to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .contiguous()
            .view([-1]),
    )
    .map_err(|e| Error::param("logits", e.to_string()))
}

fn logit_diff(logits: &Tensor, answer: &Tensor, wrong: &Tensor) -> Result<Vec<f64>> {
    let dev = logits.device();
    let a = logits.gather(1, &answer.to_device(dev).view([-1, 1]), false);
    let w = logits.gather(1, &wrong.to_device(dev).view([-1, 1]), false);
    to_f64(&(a.to_kind(Kind::Double) - w.to_kind(Kind::Double)))
}

fn z_hook(layer: usize) -> HookPoint {
    HookPoint {
        layer,
        kind: HookKind::Z,
    }
}

/// Runs every prompt pair clean and corrupted (`batch` pairs per forward), keeping what
/// patching needs and the pooled head outputs.
pub fn run_task(
    model: &Gemma,
    items: &[EncodedItem],
    batch: usize,
    pool: Pool,
) -> Result<TaskRuns> {
    if batch == 0 {
        return Err(Error::param("batch", "must be at least 1"));
    }
    if items.is_empty() {
        return Err(Error::EmptyInput("no prompt pair".into()));
    }
    let c = &model.config;
    let (nl, nh, hd) = (c.num_hidden_layers, c.num_attention_heads, c.head_dim);
    let hooks: Vec<HookPoint> = (0..nl).map(z_hook).collect();
    let _guard = tch::no_grad_guard();
    let mut chunks = vec![];
    let (mut clean_ld, mut corrupted_ld) = (vec![], vec![]);
    let (mut clean_rows, mut corr_rows) = (vec![], vec![]);
    for group in items.chunks(batch) {
        let clean: Vec<&[i64]> = group.iter().map(|i| i.clean.as_slice()).collect();
        let corr: Vec<&[i64]> = group.iter().map(|i| i.corrupted.as_slice()).collect();
        let pad_id = c.pad_token_id;
        let (ids, mask) = pad(&clean, pad_id);
        let (cids, cmask) = pad(&corr, pad_id);
        let answer = Tensor::from_slice(&group.iter().map(|i| i.answer).collect::<Vec<_>>());
        let wrong = Tensor::from_slice(&group.iter().map(|i| i.wrong).collect::<Vec<_>>());
        let outc = model.forward_with(&ids, &mask, &hooks, &[], Logits::Last)?;
        let outx = model.forward_with(&cids, &cmask, &hooks, &[], Logits::Last)?;
        clean_ld.extend(logit_diff(
            outc.logits.as_ref().expect("logits"),
            &answer,
            &wrong,
        )?);
        corrupted_ld.extend(logit_diff(
            outx.logits.as_ref().expect("logits"),
            &answer,
            &wrong,
        )?);
        for (out, rows) in [(&outc, &mut clean_rows), (&outx, &mut corr_rows)] {
            // [B, L, H, hd] pooled, then prompt-major rows.
            let per_layer: Vec<Tensor> = (0..nl)
                .map(|l| {
                    let z = out.hooks[&z_hook(l)].to_kind(Kind::Float);
                    let pooled: Vec<Tensor> = group
                        .iter()
                        .enumerate()
                        .map(|(b, it)| {
                            let n = it.clean.len() as i64;
                            let zb = z.get(b as i64);
                            match pool {
                                Pool::Mean => zb.narrow(0, 1, n - 1).mean_dim(
                                    [0i64].as_slice(),
                                    false,
                                    Kind::Float,
                                ),
                                Pool::Last => zb.get(n - 1),
                            }
                        })
                        .collect();
                    Tensor::stack(&pooled, 0)
                })
                .collect();
            let all = Tensor::stack(&per_layer, 1)
                .to_device(Device::Cpu)
                .contiguous();
            rows.extend(
                Vec::<f32>::try_from(all.view([-1]))
                    .map_err(|e| Error::param("hook", e.to_string()))?,
            );
        }
        let z_corrupted = (0..nl)
            .map(|l| outx.hooks[&z_hook(l)].shallow_clone())
            .collect();
        chunks.push(Chunk {
            ids,
            mask,
            answer,
            wrong,
            z_corrupted,
        });
    }
    Ok(TaskRuns {
        chunks,
        n_layers: nl,
        n_heads: nh,
        clean_ld,
        corrupted_ld,
        rows: HeadRows {
            n_prompts: items.len(),
            n_heads: nl * nh,
            d: hd,
            clean: clean_rows,
            corrupted: corr_rows,
        },
    })
}

impl TaskRuns {
    /// Total heads (`layers × heads`).
    pub fn total_heads(&self) -> usize {
        self.n_layers * self.n_heads
    }

    /// Per prompt, the logit difference of the clean run with the heads flagged in `patched`
    /// (flat, layer-major) taking the corrupted run's `hook_z`.
    pub fn patched_ld(&self, model: &Gemma, patched: &[bool]) -> Result<Vec<f64>> {
        if patched.len() != self.total_heads() {
            return Err(Error::param(
                "heads",
                format!(
                    "{} flags for a model of {} heads",
                    patched.len(),
                    self.total_heads()
                ),
            ));
        }
        let _guard = tch::no_grad_guard();
        let mut out = vec![];
        for ch in &self.chunks {
            let ivs: Vec<Intervention> = (0..self.n_layers)
                .filter_map(|l| {
                    let heads: Vec<i64> = (0..self.n_heads)
                        .filter(|&h| patched[l * self.n_heads + h])
                        .map(|h| h as i64)
                        .collect();
                    (!heads.is_empty()).then(|| {
                        Intervention::new(
                            z_hook(l),
                            Edit::Replace {
                                value: ch.z_corrupted[l].shallow_clone(),
                            },
                        )
                        .on_heads(heads)
                    })
                })
                .collect();
            let o = model.forward_with(&ch.ids, &ch.mask, &[], &ivs, Logits::Last)?;
            out.extend(logit_diff(
                o.logits.as_ref().expect("logits"),
                &ch.answer,
                &ch.wrong,
            )?);
        }
        Ok(out)
    }

    /// Each head's patching effect: mean clean logit difference − mean logit difference with
    /// that head alone patched (positive: the head carries the clean behaviour). `step` is
    /// called after each head.
    pub fn head_effects(&self, model: &Gemma, step: &mut dyn FnMut()) -> Result<Vec<f64>> {
        let n = self.total_heads();
        let base = mean(&self.clean_ld);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let mut flags = vec![false; n];
            flags[i] = true;
            out.push(base - mean(&self.patched_ld(model, &flags)?));
            step();
        }
        Ok(out)
    }

    /// Mean logit difference of the circuit that keeps the heads flagged in `keep` and patches
    /// every other head from the corrupted run.
    pub fn circuit_metric(&self, model: &Gemma, keep: &[bool]) -> Result<f64> {
        let patched: Vec<bool> = keep.iter().map(|k| !k).collect();
        Ok(mean(&self.patched_ld(model, &patched)?))
    }
}

/// The arithmetic mean (0 for none).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}
