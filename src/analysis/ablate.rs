//! Ablating regions and measuring what changes: the machinery of the reference's refusal
//! result (spec §8.5).
//!
//! * **Selectivity** on held-out text: the next-token loss `−log p(x_{t+1} | x_≤t)` at every
//!   position `t ≥ 1` (the BOS excluded, the last token has no next one), on the unedited model
//!   and with the regions' directions projected out at the hook (every position, centered
//!   space: `x ↦ (x − c) − ((x − c)Q)Qᵀ + c`). Positions are *inside* when EP assigns the
//!   unedited activation at `t` to one of the regions within θ. Reported: the mean loss change
//!   inside and outside, and their difference (an ablation that only hurts where its regions
//!   are present is selective).
//! * **Behaviour** on prompts: the log-probability of each target string as the continuation
//!   of each prompt (teacher-forced, summed over its tokens), and per prompt the log of the
//!   total probability of the targets (`logsumexp`), before and after ablating the first 1, 2,
//!   … regions of the set (the reference's K sweep), and for a control of as many random
//!   directions.
//! * **Scoring regions by a label**: every labelled text's activations at the hook (its last
//!   token, or all its tokens) assigned to their nearest exemplar (no θ, as the reference);
//!   per region the members and the positive share; candidates have at least `min_members`
//!   members and a positive share of at least `min_rate`, ranked by share × members (the
//!   reference's `refusal_rate × n_members`, ties to the lower id).

use super::target::check_regions;
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::model::{Edit, Gemma, HookPoint, Intervention, Logits};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// Texts per padded forward.
const BATCH: usize = 8;

/// The projection-out intervention of `directions` (`k × D`, unit rows) at `hook`.
pub fn ablation(dict: &Dictionary, hook: HookPoint, directions: &[f32]) -> Intervention {
    let d = dict.dim() as i64;
    Intervention::new(
        hook,
        Edit::ProjectOut {
            directions: Tensor::from_slice(directions).view([-1, d]),
            center: Tensor::from_slice(dict.center()),
        },
    )
}

/// Right-pads `seqs` into `[B, T]` ids and mask.
fn pad(seqs: &[&[i64]]) -> (Tensor, Tensor) {
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let (mut ids, mut mask) = (vec![], vec![]);
    for s in seqs {
        ids.extend(s.iter().copied().chain(std::iter::repeat_n(0, t - s.len())));
        mask.extend(std::iter::repeat_n(1i64, s.len()).chain(std::iter::repeat_n(0, t - s.len())));
    }
    let b = seqs.len() as i64;
    (
        Tensor::from_slice(&ids).view([b, t as i64]),
        Tensor::from_slice(&mask).view([b, t as i64]),
    )
}

/// Per sequence: next-token log-probabilities, and the hook's activations (f32 rows).
type LogprobsAndRows = (Vec<Vec<f64>>, Vec<Vec<f32>>);

/// Per sequence, the log-probability of each next token: `out[i][t]` = `log p(s[t+1] | s_≤t)`
/// for `t` in `0..len−1`, under `interventions`; and, with `hook`, each sequence's activations
/// at `hook` in that forward (after any edit there; `len × D` f32 rows).
fn next_token_logprobs(
    model: &Gemma,
    seqs: &[&[i64]],
    interventions: &[Intervention],
    hook: Option<HookPoint>,
) -> Result<LogprobsAndRows> {
    let mut lps = vec![];
    let mut acts = vec![];
    for chunk in seqs.chunks(BATCH) {
        let (ids, mask) = pad(chunk);
        let hooks: Vec<HookPoint> = hook.into_iter().collect();
        let out = model.forward_with(&ids, &mask, &hooks, interventions, Logits::All)?;
        let logits = out.logits.expect("logits were asked for");
        for (b, s) in chunk.iter().enumerate() {
            let n = s.len() as i64;
            let lp = logits
                .get(b as i64)
                .narrow(0, 0, n - 1)
                .to_kind(Kind::Double)
                .to_device(Device::Cpu)
                .log_softmax(-1, Kind::Double);
            let next = Tensor::from_slice(&s[1..]).view([-1, 1]);
            let picked = lp.gather(1, &next, false).view([-1]);
            lps.push(
                Vec::<f64>::try_from(picked).map_err(|e| Error::param("logits", e.to_string()))?,
            );
            if let Some(h) = hook {
                let a = out.hooks[&h]
                    .get(b as i64)
                    .narrow(0, 0, n)
                    .to_kind(Kind::Float)
                    .to_device(Device::Cpu)
                    .contiguous();
                acts.push(
                    Vec::<f32>::try_from(a.view([-1]))
                        .map_err(|e| Error::param("hook", e.to_string()))?,
                );
            }
        }
    }
    Ok((lps, acts))
}

/// One text's per-position losses.
#[derive(Debug, Clone, Serialize)]
pub struct TextLosses {
    pub text: usize,
    /// The positions `t` scored (`1..len−1`).
    pub positions: Vec<usize>,
    pub clean_loss: Vec<f64>,
    pub ablated_loss: Vec<f64>,
    /// The unedited activation at `t` lies in one of the regions (within θ).
    pub in_region: Vec<bool>,
}

/// Mean losses over a group of positions.
#[derive(Debug, Clone, Serialize)]
pub struct LossGroup {
    pub positions: usize,
    pub clean_loss: Option<f64>,
    pub ablated_loss: Option<f64>,
    pub delta: Option<f64>,
}

/// The selectivity report.
#[derive(Debug, Clone, Serialize)]
pub struct Selectivity {
    pub regions: Vec<usize>,
    pub texts: usize,
    pub inside: LossGroup,
    pub outside: LossGroup,
    /// `inside.delta − outside.delta`.
    pub selectivity: Option<f64>,
}

fn group(items: impl Iterator<Item = (f64, f64)>) -> LossGroup {
    let v: Vec<(f64, f64)> = items.collect();
    let n = v.len();
    let m =
        |f: &dyn Fn(&(f64, f64)) -> f64| (n > 0).then(|| v.iter().map(f).sum::<f64>() / n as f64);
    LossGroup {
        positions: n,
        clean_loss: m(&|p| p.0),
        ablated_loss: m(&|p| p.1),
        delta: m(&|p| p.1 - p.0),
    }
}

/// Loss changes inside and outside `regions` when `ablation` (built by [`ablation`] over the
/// regions' directions, or any other edit) is applied, over `texts` (token ids with the BOS).
pub fn selectivity(
    model: &Gemma,
    dict: &Dictionary,
    hook: HookPoint,
    texts: &[Vec<i64>],
    regions: &[usize],
    ablation: &Intervention,
) -> Result<(Selectivity, Vec<TextLosses>)> {
    check_regions(dict, regions, "region")?;
    let _guard = tch::no_grad_guard();
    let seqs: Vec<&[i64]> = texts.iter().map(|t| t.as_slice()).collect();
    if let Some(i) = seqs.iter().position(|s| s.len() < 3) {
        return Err(Error::param(
            "text",
            format!("text {i} has fewer than two tokens after the BOS: nothing to score"),
        ));
    }
    let (clean, acts) = next_token_logprobs(model, &seqs, &[], Some(hook))?;
    let (ablated, _) = next_token_logprobs(model, &seqs, std::slice::from_ref(ablation), None)?;
    let mut per_text = vec![];
    for (i, s) in seqs.iter().enumerate() {
        let n = s.len();
        let d = dict.dim();
        // Positions 1..n−1: their activation and the loss of predicting the next token.
        let rows = &acts[i][d..(n - 1) * d];
        let (ids, dist) = dict.assign(rows)?;
        per_text.push(TextLosses {
            text: i,
            positions: (1..n - 1).collect(),
            clean_loss: (1..n - 1).map(|t| -clean[i][t]).collect(),
            ablated_loss: (1..n - 1).map(|t| -ablated[i][t]).collect(),
            in_region: ids
                .iter()
                .zip(&dist)
                .map(|(&k, &dd)| regions.contains(&(k as usize)) && (dd as f64) <= dict.theta())
                .collect(),
        });
    }
    let all = || {
        per_text.iter().flat_map(|t| {
            (0..t.positions.len())
                .map(move |j| (t.in_region[j], t.clean_loss[j], t.ablated_loss[j]))
        })
    };
    let inside = group(all().filter(|p| p.0).map(|p| (p.1, p.2)));
    let outside = group(all().filter(|p| !p.0).map(|p| (p.1, p.2)));
    let selectivity = match (inside.delta, outside.delta) {
        (Some(a), Some(b)) => Some(a - b),
        _ => None,
    };
    Ok((
        Selectivity {
            regions: regions.to_vec(),
            texts: texts.len(),
            inside,
            outside,
            selectivity,
        },
        per_text,
    ))
}

/// `out[p][j]`: the log-probability of target `j` (ids without a BOS) as the continuation of
/// prompt `p` (ids with the BOS), teacher-forced, under `interventions`.
pub fn target_logprobs(
    model: &Gemma,
    prompts: &[Vec<i64>],
    targets: &[Vec<i64>],
    interventions: &[Intervention],
) -> Result<Vec<Vec<f64>>> {
    if let Some(j) = targets.iter().position(|t| t.is_empty()) {
        return Err(Error::param("target", format!("target {j} has no token")));
    }
    let _guard = tch::no_grad_guard();
    let mut out = vec![];
    for p in prompts {
        let seqs: Vec<Vec<i64>> = targets
            .iter()
            .map(|t| p.iter().chain(t).copied().collect())
            .collect();
        let refs: Vec<&[i64]> = seqs.iter().map(|s| s.as_slice()).collect();
        let (lps, _) = next_token_logprobs(model, &refs, interventions, None)?;
        out.push(
            lps.iter()
                .zip(targets)
                .map(|(lp, t)| lp[p.len() - 1..p.len() - 1 + t.len()].iter().sum())
                .collect(),
        );
    }
    Ok(out)
}

/// `log Σ_j exp(v_j)`.
pub fn logsumexp(v: &[f64]) -> f64 {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// One region's label score.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RegionScore {
    pub region: usize,
    pub members: usize,
    pub positive: usize,
    pub rate: f64,
}

/// Scores every region that received a row: `rows` (`n × D`) with one label each.
pub fn score_regions(dict: &Dictionary, rows: &[f32], labels: &[bool]) -> Result<Vec<RegionScore>> {
    let (ids, _) = dict.assign(rows)?;
    if ids.len() != labels.len() {
        return Err(Error::param(
            "labels",
            format!("{} rows but {} labels", ids.len(), labels.len()),
        ));
    }
    let mut members = vec![0usize; dict.len()];
    let mut positive = vec![0usize; dict.len()];
    for (&k, &l) in ids.iter().zip(labels) {
        members[k as usize] += 1;
        positive[k as usize] += l as usize;
    }
    Ok((0..dict.len())
        .filter(|&k| members[k] > 0)
        .map(|k| RegionScore {
            region: k,
            members: members[k],
            positive: positive[k],
            rate: positive[k] as f64 / members[k] as f64,
        })
        .collect())
}

/// The candidates (members ≥ `min_members`, rate ≥ `min_rate`) ranked by rate × members,
/// descending (ties: the lower id), the first `top`.
pub fn pick_regions(
    scores: &[RegionScore],
    min_members: usize,
    min_rate: f64,
    top: usize,
) -> Vec<usize> {
    let mut c: Vec<&RegionScore> = scores
        .iter()
        .filter(|s| s.members >= min_members && s.rate >= min_rate)
        .collect();
    c.sort_by(|a, b| {
        let (x, y) = (a.rate * a.members as f64, b.rate * b.members as f64);
        y.total_cmp(&x).then(a.region.cmp(&b.region))
    });
    c.iter().take(top).map(|s| s.region).collect()
}
