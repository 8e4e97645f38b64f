//! A model's forward over token sequences → activation rows at hooks: every non-BOS,
//! non-padding position (or only the last token, with `final_position`), copied to the host or
//! left in the hooked tensor for the clustering to read in place. `exemplar activations` and a
//! build from text (`pipeline::text::TextSource`) share these steps, so their rows are
//! identical.

use super::{Gemma, HookKind, HookPoint};
use crate::data::TensorRows;
use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// The rows of one forward over `docs` (each `[BOS] + ids`, right-padded): `(rows, positions
/// per document, forward FLOPs)`. Rows are f32, document by document, positions `1..L` (or
/// `L − 1` alone with `final_position`).
pub fn forward_rows(
    model: &Gemma,
    hook: HookPoint,
    docs: &[&[i64]],
    final_position: bool,
) -> Result<(Vec<f32>, Vec<Vec<i64>>, f64)> {
    let mut f = forward_rows_at(model, &[hook], docs, final_position)?;
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
    final_position: bool,
) -> Result<HookRows> {
    let f = forward_hooks(model, hooks, docs, final_position, false)?;
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
    final_position: bool,
    in_tensors: bool,
) -> Result<HookBatch> {
    if hooks.iter().any(|h| h.kind == HookKind::Z) {
        return Err(Error::param(
            "hook",
            "attn.hook_z is per head; use a residual-stream hook",
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
    let mut positions = Vec::with_capacity(docs.len());
    for ids in docs {
        let l = ids.len() as i64;
        let (first, n) = if final_position {
            (l - 1, 1)
        } else {
            (1, l - 1)
        };
        positions.push((first..first + n).collect::<Vec<i64>>());
    }
    let on_gpu = dev != Device::Cpu;
    let mut d2h_bytes = 0u64;
    let mut values = Vec::with_capacity(hooks.len());
    for hook in hooks {
        let acts = &fwd.hooks[hook];
        if in_tensors {
            let x = match acts.kind() {
                Kind::Float | Kind::BFloat16 => acts.contiguous(),
                _ => acts.to_kind(Kind::Float).contiguous(),
            }
            .view([b * ti, d as i64]);
            let index = positions
                .iter()
                .enumerate()
                .flat_map(|(bi, pos)| pos.iter().map(move |&p| bi as i64 * ti + p))
                .collect();
            values.push(HookValues::Tensor(TensorRows::new(x, index, d)?));
            continue;
        }
        // The whole [B, T, D] tensor comes to the host, in the model's dtype.
        let acts = acts.to_device(Device::Cpu).to_kind(Kind::Float);
        if on_gpu {
            let elem = if model.kind() == Kind::Float { 4 } else { 2 };
            d2h_bytes += (docs.len() * t * d * elem) as u64;
        }
        let mut rows = Vec::new();
        for (bi, pos) in positions.iter().enumerate() {
            let (first, n) = (pos[0], pos.len() as i64);
            let x = acts.get(bi as i64).narrow(0, first, n).contiguous();
            let start = rows.len();
            let len = n as usize * d;
            rows.resize(start + len, 0.0f32);
            x.copy_data(&mut rows[start..], len);
        }
        values.push(HookValues::Host(rows));
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
