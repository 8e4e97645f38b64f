//! Explanation-guided steering (Wu et al.): raise a region toward a target activation (the
//! centered projection on its exemplar raised to `value`, each position's norm restored, as
//! their `enforce_actv`; optionally gated by detector regions, as their `condit_actv`) at every
//! position of a prompt, and measure the next-token probability mass on the region's
//! explanation words (the first tokens of its MI words). The control steers a seeded random
//! other region the same way and measures the mass on the *first* region's words: a region's
//! own steering should shift mass toward its words more than an unrelated region's does.

use super::steer::{EditKind, EditSpec};
use super::target::check_regions;
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::model::{Gemma, HookPoint, Intervention, Tokenizer};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// What to steer and measure.
pub struct ShiftRun<'a> {
    pub dict: &'a Dictionary,
    pub hook: HookPoint,
    pub prompts: &'a [String],
    /// The regions, and per region the token ids its words start with.
    pub regions: &'a [usize],
    pub targets: &'a [Vec<i64>],
    /// The projection the region is raised to.
    pub value: f64,
    pub keep_norm: bool,
    /// `Some(empty)`: gate on the steered region itself; `Some(r)`: on regions `r`.
    pub gate: Option<Vec<usize>>,
    pub control_seed: u64,
}

/// One region on one prompt.
#[derive(Debug, Clone, Serialize)]
pub struct ShiftRecord {
    pub region: usize,
    pub control_region: usize,
    pub prompt_index: usize,
    pub prompt: String,
    /// The prompt's tokens (BOS first).
    pub prompt_ids: Vec<i64>,
    pub hook: String,
    pub tokens: Vec<i64>,
    pub edit: EditSpec,
    pub control_edit: EditSpec,
    /// log Σ p(t) over `tokens` at the next position: unedited, steered, control.
    pub base: f64,
    pub steered: f64,
    pub control: f64,
}

/// The control region of `region`: uniform among the other regions (seeded).
pub fn control_region(k: usize, region: usize, seed: u64) -> usize {
    let c = crate::rng::uniform_below(seed, region as u64, (k - 1) as u64) as usize;
    if c >= region {
        c + 1
    } else {
        c
    }
}

/// The first token of each word (`" " + word`), distinct, in order.
pub fn first_tokens(tok: &Tokenizer, words: &[String]) -> Result<Vec<i64>> {
    let mut out = vec![];
    for w in words {
        let ids = tok.encode_plain(&format!(" {w}"))?;
        if let Some(&t) = ids.first() {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

impl ShiftRun<'_> {
    fn spec(&self, region: usize) -> EditSpec {
        EditSpec {
            kind: EditKind::Raise { value: self.value },
            regions: vec![region],
            basis: "exemplar".into(),
            random_seed: None,
            gate: self.gate.as_ref().map(|g| {
                if g.is_empty() {
                    vec![region]
                } else {
                    g.clone()
                }
            }),
            keep_norm: self.keep_norm,
        }
    }

    /// Checks everything before any forward.
    pub fn check(&self) -> Result<()> {
        check_regions(self.dict, self.regions, "region")?;
        if self.dict.len() < 2 {
            return Err(Error::param(
                "region",
                "a control needs at least two regions",
            ));
        }
        if self.regions.len() != self.targets.len() {
            return Err(Error::param("targets", "one token set per region"));
        }
        if let Some(i) = self.targets.iter().position(|t| t.is_empty()) {
            return Err(Error::param(
                "targets",
                format!("region {} has no explanation word", self.regions[i]),
            ));
        }
        if !self.value.is_finite() {
            return Err(Error::param(
                "value",
                format!("{} is not finite", self.value),
            ));
        }
        for &r in self.regions {
            self.spec(r).check(self.dict)?;
        }
        Ok(())
    }
}

/// log Σ p(t) over `tokens` of the next token after `ids` under `edit` (none: unedited).
fn log_mass(model: &Gemma, ids: &[i64], iv: Option<Intervention>, tokens: &Tensor) -> Result<f64> {
    let dev = model.device();
    let x = Tensor::from_slice(ids).view([1, -1]).to_device(dev);
    let mask = x.ones_like();
    let ivs: Vec<Intervention> = iv.into_iter().collect();
    let out = model.forward_with(&x, &mask, &[], &ivs, crate::model::Logits::Last)?;
    let lp = out
        .logits
        .expect("logits asked for")
        .to_kind(Kind::Double)
        .to_device(Device::Cpu)
        .log_softmax(-1, Kind::Double)
        .get(0);
    Ok(lp
        .index_select(0, tokens)
        .logsumexp([0].as_slice(), false)
        .double_value(&[]))
}

/// Runs every region on every prompt; `each` sees each record as it is made.
pub fn run(
    model: &Gemma,
    tok: &Tokenizer,
    run: &ShiftRun,
    mut each: impl FnMut(&ShiftRecord) -> Result<()>,
) -> Result<Vec<ShiftRecord>> {
    run.check()?;
    let _guard = tch::no_grad_guard();
    let mut out = vec![];
    for (pi, p) in run.prompts.iter().enumerate() {
        let ids = tok.encode(p)?;
        for (&r, t) in run.regions.iter().zip(run.targets) {
            let tokens = Tensor::from_slice(t);
            let c = control_region(run.dict.len(), r, run.control_seed);
            let (edit, control_edit) = (run.spec(r), run.spec(c));
            let base = log_mass(model, &ids, None, &tokens)?;
            let steered = log_mass(
                model,
                &ids,
                Some(edit.intervention(run.dict, run.hook)?),
                &tokens,
            )?;
            let control = log_mass(
                model,
                &ids,
                Some(control_edit.intervention(run.dict, run.hook)?),
                &tokens,
            )?;
            let rec = ShiftRecord {
                region: r,
                control_region: c,
                prompt_index: pi,
                prompt: p.clone(),
                prompt_ids: ids.clone(),
                hook: run.hook.name(),
                tokens: t.clone(),
                edit,
                control_edit,
                base,
                steered,
                control,
            };
            each(&rec)?;
            out.push(rec);
        }
    }
    Ok(out)
}

/// Per region: the mean over prompts of steered − base and control − base (nats); over
/// regions: their means and the regions whose own shift exceeds the control's.
#[derive(Debug, Clone, Serialize)]
pub struct ShiftSummary {
    pub regions: Vec<RegionShift>,
    pub mean_shift: f64,
    pub mean_control_shift: f64,
    pub regions_above_control: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionShift {
    pub region: usize,
    pub control_region: usize,
    pub shift: f64,
    pub control_shift: f64,
}

pub fn summarize(records: &[ShiftRecord]) -> ShiftSummary {
    let mut by: std::collections::BTreeMap<usize, (usize, f64, f64, usize)> = Default::default();
    for r in records {
        let e = by
            .entry(r.region)
            .or_insert((r.control_region, 0.0, 0.0, 0));
        e.1 += r.steered - r.base;
        e.2 += r.control - r.base;
        e.3 += 1;
    }
    let regions: Vec<RegionShift> = by
        .into_iter()
        .map(|(region, (control_region, s, c, n))| RegionShift {
            region,
            control_region,
            shift: s / n as f64,
            control_shift: c / n as f64,
        })
        .collect();
    let n = regions.len().max(1) as f64;
    ShiftSummary {
        mean_shift: regions.iter().map(|r| r.shift).sum::<f64>() / n,
        mean_control_shift: regions.iter().map(|r| r.control_shift).sum::<f64>() / n,
        regions_above_control: regions.iter().filter(|r| r.shift > r.control_shift).count(),
        regions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_regions_are_other_regions_and_seeded() {
        for r in 0..20 {
            let c = control_region(20, r, 7);
            assert!(c != r && c < 20);
            assert_eq!(c, control_region(20, r, 7));
        }
        assert_eq!(control_region(2, 0, 3), 1);
        assert_eq!(control_region(2, 1, 3), 0);
    }
}
