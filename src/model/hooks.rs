//! Hook points with TransformerLens names, and interventions applied at them.

use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// What a hook reads, within block `L`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookKind {
    /// `blocks.L.hook_resid_pre`: the residual stream entering block L (HF `hidden_states[L]`).
    ResidPre,
    /// `blocks.L.attn.hook_z`: per-head attention output before `o_proj`, `[B, T, heads, head_dim]`.
    Z,
    /// `blocks.L.hook_attn_out`: the attention output after the post-attention norm.
    AttnOut,
    /// `blocks.L.hook_resid_mid`: `resid_pre + attn_out`.
    ResidMid,
    /// `blocks.L.hook_mlp_out`: the MLP output after the post-feedforward norm.
    MlpOut,
    /// `blocks.L.hook_resid_post`: the residual stream leaving block L (HF `hidden_states[L+1]`
    /// for L below the last layer; HF's last entry has the final norm applied).
    ResidPost,
}

/// A hook point: a block and what is read there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookPoint {
    pub layer: usize,
    pub kind: HookKind,
}

impl HookPoint {
    /// Parses a TransformerLens name such as `blocks.12.hook_resid_post` or `blocks.3.attn.hook_z`.
    pub fn parse(name: &str) -> Result<Self> {
        let bad = || {
            Error::param(
                "hook",
                format!(
                    "`{name}` is not a hook name; expected blocks.L.hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out or blocks.L.attn.hook_z"
                ),
            )
        };
        let rest = name.strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, point) = rest.split_once('.').ok_or_else(bad)?;
        let layer: usize = layer.parse().map_err(|_| bad())?;
        let kind = match point {
            "hook_resid_pre" => HookKind::ResidPre,
            "hook_resid_mid" => HookKind::ResidMid,
            "hook_resid_post" => HookKind::ResidPost,
            "hook_attn_out" => HookKind::AttnOut,
            "hook_mlp_out" => HookKind::MlpOut,
            "attn.hook_z" => HookKind::Z,
            _ => return Err(bad()),
        };
        Ok(HookPoint { layer, kind })
    }

    /// The TransformerLens name.
    pub fn name(&self) -> String {
        let p = match self.kind {
            HookKind::ResidPre => "hook_resid_pre",
            HookKind::ResidMid => "hook_resid_mid",
            HookKind::ResidPost => "hook_resid_post",
            HookKind::AttnOut => "hook_attn_out",
            HookKind::MlpOut => "hook_mlp_out",
            HookKind::Z => "attn.hook_z",
        };
        format!("blocks.{}.{p}", self.layer)
    }
}

impl std::fmt::Display for HookPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// An edit of the activation at a hook (on its last dimension, D).
#[derive(Debug)]
pub enum Edit {
    /// `x ↦ x + α·e` (steering).
    Add { direction: Tensor, alpha: f64 },
    /// `x ↦ (x − c) − ((x − c)Q)Qᵀ + c`: removes the span of `directions` (rows, any number,
    /// orthonormalised here) in centered space (ablation).
    ProjectOut { directions: Tensor, center: Tensor },
    /// Sets the centered projection on the unit direction `e` to `value`:
    /// `x ↦ x + (value − (x − c)·e)·e`.
    ClampProjection {
        direction: Tensor,
        center: Tensor,
        value: f64,
    },
}

/// An edit at a hook, at every position or at chosen positions.
#[derive(Debug)]
pub struct Intervention {
    pub hook: HookPoint,
    pub edit: Edit,
    /// Token positions to edit (`None`: all).
    pub positions: Option<Vec<i64>>,
}

impl Intervention {
    /// Checks shapes against the model's width `d` (the hook's last dimension).
    pub(crate) fn check(&self, d: i64) -> Result<()> {
        let vec_ok = |t: &Tensor, what: &str| -> Result<()> {
            if t.size() != [d] {
                return Err(Error::param(
                    "intervention",
                    format!("{what} has shape {:?}, expected [{d}]", t.size()),
                ));
            }
            Ok(())
        };
        match &self.edit {
            Edit::Add { direction, .. } => vec_ok(direction, "direction"),
            Edit::ProjectOut { directions, center } => {
                vec_ok(center, "center")?;
                let s = directions.size();
                if s.len() != 2 || s[1] != d || s[0] == 0 {
                    return Err(Error::param(
                        "intervention",
                        format!("directions have shape {s:?}, expected [k, {d}] with k ≥ 1"),
                    ));
                }
                Ok(())
            }
            Edit::ClampProjection {
                direction, center, ..
            } => {
                vec_ok(direction, "direction")?;
                vec_ok(center, "center")
            }
        }
    }

    /// Applies the edit to `x` (`[B, T, D]`), computing in f32 and returning `x`'s kind.
    pub(crate) fn apply(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let dev = x.device();
        let xf = x.to_kind(Kind::Float);
        let f = |t: &Tensor| t.to_kind(Kind::Float).to_device(dev);
        let edited = match &self.edit {
            Edit::Add { direction, alpha } => &xf + f(direction) * *alpha,
            Edit::ProjectOut { directions, center } => {
                // Orthonormal basis of the rows: Q from the reduced QR of directionsᵀ.
                let (q, _) = Tensor::linalg_qr(&f(directions).transpose(0, 1), "reduced");
                let c = f(center);
                let xc = &xf - &c;
                &xc - xc.matmul(&q).matmul(&q.transpose(0, 1)) + c
            }
            Edit::ClampProjection {
                direction,
                center,
                value,
            } => {
                let e = f(direction);
                let proj = (&xf - f(center)).matmul(&e).unsqueeze(-1);
                &xf + (proj.neg() + *value) * e
            }
        };
        let out = match &self.positions {
            None => edited,
            Some(pos) => {
                let t = x.size()[1];
                let mask = Tensor::zeros([t], (Kind::Bool, dev));
                let idx = Tensor::from_slice(
                    &pos.iter()
                        .copied()
                        .filter(|&p| p >= 0 && p < t)
                        .collect::<Vec<_>>(),
                )
                .to_device(dev);
                let mask = mask.index_fill(0, &idx, 1).view([1, t, 1]);
                edited.where_self(&mask, &xf)
            }
        };
        out.to_kind(kind)
    }
}
