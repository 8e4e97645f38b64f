//! A model's forward over token sequences → activation rows at hooks: the positions a
//! [`RowSelection`] picks (every non-BOS, non-padding position; only the last token; or, in
//! packed windows, every position but the BOS and separators), copied to the host or left in
//! the hooked tensor for the clustering to read in place. `exemplar activations` and a
//! build from text (`pipeline::text::TextSource`) share these steps, so their rows are
//! identical.

use super::{Gemma, HookPoint};
use crate::data::TensorRows;
use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// Which positions of a sequence `[BOS] + ids` become rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowSelection {
    /// Every position after the BOS (`1..L`): one document per sequence.
    AfterBos,
    /// The last position alone (final-position extraction).
    Last,
    /// Every position after the first whose token is not one of these ids (packed windows:
    /// the separators between documents are BOS tokens, and carry no row).
    AfterBosExcept(Vec<i64>),
}

impl RowSelection {
    /// The row positions of `ids`.
    pub fn positions(&self, ids: &[i64]) -> Vec<i64> {
        let l = ids.len() as i64;
        match self {
            RowSelection::AfterBos => (1..l).collect(),
            RowSelection::Last => vec![l - 1],
            RowSelection::AfterBosExcept(special) => (1..l)
                .filter(|&p| !special.contains(&ids[p as usize]))
                .collect(),
        }
    }
}

/// The rows of one forward over `docs` (each `[BOS] + ids`, right-padded): `(rows, positions
/// per document, forward FLOPs)`. Rows are f32, document by document, at the positions
/// `select` picks.
pub fn forward_rows(
    model: &Gemma,
    hook: HookPoint,
    docs: &[&[i64]],
    select: &RowSelection,
) -> Result<(Vec<f32>, Vec<Vec<i64>>, f64)> {
    let mut f = forward_rows_at(model, &[hook], docs, select)?;
    Ok((f.rows.pop().expect("one hook"), f.positions, f.flops))
}

/// What [`forward_rows_at`] returns.
#[derive(Debug)]
pub struct HookRows {
    /// Per hook, in the order asked, the rows (f32, document by document).
    pub rows: Vec<Vec<f32>>,
    /// Per document, the positions of its rows (the same at every hook).
    pub positions: Vec<Vec<i64>>,
    /// FLOPs of the one forward.
    pub flops: f64,
}

/// [`forward_rows`] at several hooks from one forward (stopping after the deepest hooked
/// block).
pub fn forward_rows_at(
    model: &Gemma,
    hooks: &[HookPoint],
    docs: &[&[i64]],
    select: &RowSelection,
) -> Result<HookRows> {
    let f = forward_hooks(model, hooks, docs, select, false)?;
    Ok(HookRows {
        rows: f
            .values
            .into_iter()
            .map(|v| match v {
                HookValues::Host(rows) => rows,
                HookValues::Tensor(t) => t.to_host(),
            })
            .collect(),
        positions: f.positions,
        flops: f.flops,
    })
}

/// One hook's rows of a forward: copied to the host, or left in the hooked tensor.
#[derive(Debug)]
pub enum HookValues {
    /// f32 rows, document by document.
    Host(Vec<f32>),
    /// The hooked `[B·T, D]` tensor on the model's device, in the model's dtype, with the
    /// index of each row (document by document).
    Tensor(TensorRows),
}

/// What [`forward_hooks`] returns.
#[derive(Debug)]
pub struct HookBatch {
    /// Per hook, in the order asked.
    pub values: Vec<HookValues>,
    /// Per document, the positions of its rows (the same at every hook).
    pub positions: Vec<Vec<i64>>,
    /// FLOPs of the one forward.
    pub flops: f64,
    /// Bytes copied from a GPU to the host (0 on the CPU, or with the rows left in tensors).
    pub d2h_bytes: u64,
}

/// One forward over `docs` (each `[BOS] + ids`, right-padded), stopping after the deepest
/// hooked block, with every hook's rows either copied to the host (`in_tensors` false) or left
/// in the hooked tensor for the clustering to read in place. Either way the rows are the
/// same values in the same order.
pub fn forward_hooks(
    model: &Gemma,
    hooks: &[HookPoint],
    docs: &[&[i64]],
    select: &RowSelection,
    in_tensors: bool,
) -> Result<HookBatch> {
    if let Some(h) = hooks.iter().find(|h| !h.kind.is_residual_width()) {
        return Err(Error::param(
            "hook",
            format!("{h} is per head or an attention map; rows come from d_model-wide hooks (hook_resid_*, hook_attn_out, hook_mlp_out)"),
        ));
    }
    let Some(deepest) = hooks.iter().map(|h| h.layer).max() else {
        return Err(Error::param("hook", "at least one hook is needed"));
    };
    let pad = model.config.pad_token_id;
    let d = model.config.hidden_size;
    let t = docs.iter().map(|ids| ids.len()).max().unwrap_or(0);
    let mut flat = Vec::with_capacity(docs.len() * t);
    let mut mask = Vec::with_capacity(docs.len() * t);
    for ids in docs {
        flat.extend(
            ids.iter()
                .copied()
                .chain(std::iter::repeat_n(pad, t - ids.len())),
        );
        mask.extend(
            std::iter::repeat_n(1i64, ids.len()).chain(std::iter::repeat_n(0, t - ids.len())),
        );
    }
    let (b, ti) = (docs.len() as i64, t as i64);
    let dev = model.device();
    let input = Tensor::from_slice(&flat).view([b, ti]).to_device(dev);
    let mask = Tensor::from_slice(&mask).view([b, ti]).to_device(dev);
    let fwd = tch::no_grad(|| model.forward(&input, &mask, hooks, &[], false))?;
    let flops = model.forward_flops((docs.len() * t) as u64, t as u64, deepest);
    let positions: Vec<Vec<i64>> = docs.iter().map(|ids| select.positions(ids)).collect();
    let on_gpu = dev != Device::Cpu;
    let mut d2h_bytes = 0u64;
    let mut values = Vec::with_capacity(hooks.len());
    // Row i of the batch is row index[i] of the hooked [B·T, D] tensor.
    let index: Vec<i64> = positions
        .iter()
        .enumerate()
        .flat_map(|(bi, pos)| pos.iter().map(move |&p| bi as i64 * ti + p))
        .collect();
    for hook in hooks {
        let acts = &fwd.hooks[hook];
        let x = match acts.kind() {
            Kind::Float | Kind::BFloat16 => acts.contiguous(),
            _ => acts.to_kind(Kind::Float).contiguous(),
        }
        .view([b * ti, d as i64]);
        let rows = TensorRows::new(x, index.clone(), d)?;
        if in_tensors {
            values.push(HookValues::Tensor(rows));
            continue;
        }
        // The rows come to the host (on a GPU, only the kept rows, in the model's dtype).
        if on_gpu {
            let elem = if model.kind() == Kind::Float { 4 } else { 2 };
            d2h_bytes += (index.len() * d * elem) as u64;
        }
        values.push(HookValues::Host(rows.to_host()));
    }
    if on_gpu && in_tensors {
        // The forward is queued; wait for it so that its time is the forward's (the
        // clustering's first launch would wait for it anyway).
        if let Device::Cuda(i) = dev {
            tch::Cuda::synchronize(i as i64);
        }
    }
    Ok(HookBatch {
        values,
        positions,
        flops,
        d2h_bytes,
    })
}
