//! Hook points with TransformerLens names, and interventions applied at them.

use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// What a hook reads, within block `L`, in the order the forward computes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookKind {
    /// `blocks.L.hook_resid_pre`: the residual stream entering block L (HF `hidden_states[L]`).
    ResidPre,
    /// `blocks.L.attn.hook_q`: per-head queries after `q_proj`, before the q-norm and RoPE,
    /// `[B, T, heads, head_dim]`.
    Q,
    /// `blocks.L.attn.hook_k`: per-KV-head keys after `k_proj`, before the k-norm and RoPE,
    /// `[B, T, kv_heads, head_dim]`.
    K,
    /// `blocks.L.attn.hook_v`: per-KV-head values, `[B, T, kv_heads, head_dim]`.
    V,
    /// `blocks.L.attn.hook_rot_q`: queries after the q-norm (Gemma 3) and RoPE.
    RotQ,
    /// `blocks.L.attn.hook_rot_k`: keys after the k-norm (Gemma 3) and RoPE.
    RotK,
    /// `blocks.L.attn.hook_attn_scores`: scaled (and soft-capped) scores with the mask applied
    /// (hidden entries hold f32::MIN), `[B, heads, T_query, T_key]`.
    AttnScores,
    /// `blocks.L.attn.hook_pattern`: attention probabilities, `[B, heads, T_query, T_key]`.
    Pattern,
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

impl HookKind {
    /// Every kind, in forward order.
    pub const ALL: [HookKind; 13] = [
        HookKind::ResidPre,
        HookKind::Q,
        HookKind::K,
        HookKind::V,
        HookKind::RotQ,
        HookKind::RotK,
        HookKind::AttnScores,
        HookKind::Pattern,
        HookKind::Z,
        HookKind::AttnOut,
        HookKind::ResidMid,
        HookKind::MlpOut,
        HookKind::ResidPost,
    ];

    /// The name after `blocks.L.`.
    pub fn suffix(self) -> &'static str {
        match self {
            HookKind::ResidPre => "hook_resid_pre",
            HookKind::Q => "attn.hook_q",
            HookKind::K => "attn.hook_k",
            HookKind::V => "attn.hook_v",
            HookKind::RotQ => "attn.hook_rot_q",
            HookKind::RotK => "attn.hook_rot_k",
            HookKind::AttnScores => "attn.hook_attn_scores",
            HookKind::Pattern => "attn.hook_pattern",
            HookKind::Z => "attn.hook_z",
            HookKind::AttnOut => "hook_attn_out",
            HookKind::ResidMid => "hook_resid_mid",
            HookKind::MlpOut => "hook_mlp_out",
            HookKind::ResidPost => "hook_resid_post",
        }
    }

    /// `[B, T, heads, head_dim]` activations (queries, keys, values, z).
    pub fn is_per_head(self) -> bool {
        matches!(
            self,
            HookKind::Q | HookKind::K | HookKind::V | HookKind::RotQ | HookKind::RotK | HookKind::Z
        )
    }

    /// `[B, heads, T, T]` attention maps (scores, pattern).
    pub fn is_attention_map(self) -> bool {
        matches!(self, HookKind::AttnScores | HookKind::Pattern)
    }

    /// `[B, T, d_model]` activations: the residual stream and the blocks' writes to it.
    pub fn is_residual_width(self) -> bool {
        !self.is_per_head() && !self.is_attention_map()
    }

    /// Computed by the block's attention half (everything up to `resid_mid`).
    pub(crate) fn in_attention(self) -> bool {
        self <= HookKind::ResidMid
    }
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
            let names: Vec<&str> = HookKind::ALL.iter().map(|k| k.suffix()).collect();
            Error::param(
                "hook",
                format!(
                    "`{name}` is not a hook name; expected blocks.L.<point> with <point> one of {}",
                    names.join(", ")
                ),
            )
        };
        let rest = name.strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, point) = rest.split_once('.').ok_or_else(bad)?;
        let layer: usize = layer.parse().map_err(|_| bad())?;
        let kind = HookKind::ALL
            .into_iter()
            .find(|k| k.suffix() == point)
            .ok_or_else(bad)?;
        Ok(HookPoint { layer, kind })
    }

    /// The TransformerLens name.
    pub fn name(&self) -> String {
        format!("blocks.{}.{}", self.layer, self.kind.suffix())
    }
}

impl std::fmt::Display for HookPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// An edit of the activation at a hook, on its last dimension (`d_model`, or `head_dim` at a
/// per-head hook).
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
    /// Raises the centered projection on the unit direction `e` to at least `value`:
    /// `x ↦ x + max(0, value − (x − c)·e)·e` (positions already above it are untouched).
    RaiseProjection {
        direction: Tensor,
        center: Tensor,
        value: f64,
    },
    /// `x ↦ value`, broadcast to the hook's shape (activation patching: `value` is another
    /// run's activation at the same hook; zero or mean ablation: a constant).
    Replace { value: Tensor },
}

/// Where an edit applies, decided by the activation itself at each position: the positions
/// whose centered direction `u = (x − c)/‖x − c‖` has its nearest exemplar (largest `u·e_k`,
/// ties to the lowest index) among `regions` and within the cosine-distance threshold θ
/// (`1 − u·e ≤ θ`): EP's own assignment, so "steer where the concept is present".
#[derive(Debug)]
pub struct RegionGate {
    /// The dictionary's center `[D]`.
    pub center: Tensor,
    /// The dictionary's unit exemplars `[K, D]`.
    pub exemplars: Tensor,
    /// The regions that open the gate.
    pub regions: Vec<i64>,
    /// The dictionary's θ.
    pub theta: f64,
}

impl RegionGate {
    /// `[B, T]` booleans: the positions of `x` (`[B, T, D]`) the gate opens.
    fn mask(&self, x: &Tensor) -> Tensor {
        let dev = x.device();
        let xc = x.to_kind(Kind::Double) - self.center.to_kind(Kind::Double).to_device(dev);
        let norm = xc.norm_scalaropt_dim(2, [-1].as_slice(), true) + 1e-12;
        let u = xc / norm;
        let sims = u.matmul(&self.exemplars.to_kind(Kind::Double).to_device(dev).tr());
        let (best, id) = sims.max_dim(-1, false);
        let regions = Tensor::from_slice(&self.regions).to_device(dev);
        let member = id
            .unsqueeze(-1)
            .eq_tensor(&regions.view([1, 1, -1]))
            .any_dim(-1, false);
        member.logical_and(&(best.neg() + 1.0).le(self.theta))
    }
}

/// An edit at a hook, at every position or at chosen positions, and at a per-head hook on
/// every head or on chosen heads.
#[derive(Debug)]
pub struct Intervention {
    pub hook: HookPoint,
    pub edit: Edit,
    /// Token positions to edit (`None`: all).
    pub positions: Option<Vec<i64>>,
    /// Heads to edit at a per-head hook (`None`: all); must be `None` elsewhere.
    pub heads: Option<Vec<i64>>,
    /// Edit only the positions whose activation falls in these regions (d_model-wide hooks).
    pub gate: Option<RegionGate>,
    /// Rescale each edited position back to its norm before the edit (`‖x'‖ = ‖x‖`).
    pub keep_norm: bool,
}

impl Intervention {
    /// `edit` at `hook`, every position, every head.
    pub fn new(hook: HookPoint, edit: Edit) -> Self {
        Intervention {
            hook,
            edit,
            positions: None,
            heads: None,
            gate: None,
            keep_norm: false,
        }
    }

    /// Only where `gate` opens (EP's own assignment of the activation at the hook).
    pub fn gated(mut self, gate: RegionGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Each edited position keeps its norm.
    pub fn keeping_norm(mut self) -> Self {
        self.keep_norm = true;
        self
    }

    /// Only at these token positions.
    pub fn at_positions(mut self, positions: Vec<i64>) -> Self {
        self.positions = Some(positions);
        self
    }

    /// Only on these heads (per-head hooks).
    pub fn on_heads(mut self, heads: Vec<i64>) -> Self {
        self.heads = Some(heads);
        self
    }

    /// Checks the edit against the hook's width `d` (its last dimension) and, at a per-head
    /// hook, its number of heads.
    pub(crate) fn check(&self, d: i64, heads: Option<i64>) -> Result<()> {
        let bad = |m: String| Error::param("intervention", format!("{}: {m}", self.hook));
        if self.hook.kind.is_attention_map() {
            return Err(bad(
                "attention scores and patterns can be read but not edited; edit hook_q/hook_k/hook_z"
                    .into(),
            ));
        }
        let vec_ok = |t: &Tensor, what: &str| -> Result<()> {
            if t.size() != [d] {
                return Err(bad(format!(
                    "{what} has shape {:?}, expected [{d}]",
                    t.size()
                )));
            }
            Ok(())
        };
        match (&self.heads, heads) {
            (Some(_), None) => {
                return Err(bad(
                    "heads are chosen only at per-head hooks (attn.hook_q/k/v/rot_q/rot_k/z)"
                        .into(),
                ))
            }
            (Some(hs), Some(n)) => {
                if let Some(h) = hs.iter().find(|&&h| h < 0 || h >= n) {
                    return Err(bad(format!(
                        "head {h} is out of range (the hook has {n} heads)"
                    )));
                }
            }
            _ => {}
        }
        if let Some(g) = &self.gate {
            if heads.is_some() {
                return Err(bad("a region gate needs a d_model-wide hook".into()));
            }
            let (es, cs) = (g.exemplars.size(), g.center.size());
            if es.len() != 2 || es[1] != d || cs != [d] {
                return Err(bad(format!(
                    "the gate's exemplars {es:?} and center {cs:?} do not match the hook's width {d}"
                )));
            }
            if let Some(r) = g.regions.iter().find(|&&r| r < 0 || r >= es[0]) {
                return Err(bad(format!(
                    "gate region {r} is out of range (the dictionary has {} regions)",
                    es[0]
                )));
            }
            if !g.theta.is_finite() {
                return Err(bad(format!("the gate's θ {} is not finite", g.theta)));
            }
        }
        match &self.edit {
            Edit::Add { direction, alpha } => {
                if !alpha.is_finite() {
                    return Err(bad(format!("α = {alpha} is not finite")));
                }
                vec_ok(direction, "direction")
            }
            Edit::ProjectOut { directions, center } => {
                vec_ok(center, "center")?;
                let s = directions.size();
                if s.len() != 2 || s[1] != d || s[0] == 0 {
                    return Err(bad(format!(
                        "directions have shape {s:?}, expected [k, {d}] with k ≥ 1"
                    )));
                }
                Ok(())
            }
            Edit::ClampProjection {
                direction,
                center,
                value,
            }
            | Edit::RaiseProjection {
                direction,
                center,
                value,
            } => {
                if !value.is_finite() {
                    return Err(bad(format!("the projection value {value} is not finite")));
                }
                vec_ok(direction, "direction")?;
                vec_ok(center, "center")
            }
            Edit::Replace { value } => {
                let s = value.size();
                if s.last() != Some(&d) {
                    return Err(bad(format!(
                        "the replacement has shape {s:?}; its last dimension must be {d}"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Applies the edit to `x` (`[B, T, D]`, or `[B, T, H, D]` at a per-head hook) whose first
    /// position is absolute position `offset` (a cached forward), computing in f32 and
    /// returning `x`'s kind.
    pub(crate) fn apply(&self, x: &Tensor, offset: i64) -> Result<Tensor> {
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
            Edit::RaiseProjection {
                direction,
                center,
                value,
            } => {
                let e = f(direction);
                let proj = (&xf - f(center)).matmul(&e).unsqueeze(-1);
                &xf + (proj.neg() + *value).clamp_min(0.0) * e
            }
            Edit::Replace { value } => {
                let v = f(value);
                let (vs, xs) = (v.size(), xf.size());
                let fits = vs.len() <= xs.len()
                    && vs
                        .iter()
                        .rev()
                        .zip(xs.iter().rev())
                        .all(|(a, b)| a == b || *a == 1);
                if !fits {
                    return Err(Error::param(
                        "intervention",
                        format!(
                            "{}: the replacement's shape {vs:?} does not broadcast to the activation's {xs:?}",
                            self.hook
                        ),
                    ));
                }
                v.expand(xs.as_slice(), false)
            }
        };
        let edited = if self.keep_norm {
            let n0 = xf.norm_scalaropt_dim(2, [-1].as_slice(), true);
            let n1 = edited.norm_scalaropt_dim(2, [-1].as_slice(), true);
            edited * (n0 / n1.clamp_min(1e-30))
        } else {
            edited
        };
        let mut mask: Option<Tensor> = None;
        let size = x.size();
        let select = |n: i64, idx: &[i64], dim: usize, offset: i64| -> Tensor {
            let keep: Vec<i64> = idx
                .iter()
                .map(|&p| p - offset)
                .filter(|&p| p >= 0 && p < n)
                .collect();
            let m = Tensor::zeros([n], (Kind::Bool, dev)).index_fill(
                0,
                &Tensor::from_slice(&keep).to_device(dev),
                1,
            );
            let mut shape = vec![1i64; size.len()];
            shape[dim] = n;
            m.view(shape.as_slice())
        };
        if let Some(pos) = &self.positions {
            mask = Some(select(size[1], pos, 1, offset));
        }
        if let Some(g) = &self.gate {
            let m = g.mask(x).unsqueeze(-1);
            mask = Some(match mask {
                Some(old) => old.logical_and(&m),
                None => m,
            });
        }
        if let Some(heads) = &self.heads {
            let h = select(size[2], heads, 2, 0);
            mask = Some(match mask {
                Some(m) => m.logical_and(&h),
                None => h,
            });
        }
        let out = match mask {
            None => edited,
            Some(m) => edited.where_self(&m, &xf),
        };
        Ok(out.to_kind(kind))
    }
}
