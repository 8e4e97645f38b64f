//! Steering with a dictionary's regions: continuations of prompts generated with an edit at a
//! hook (add `α·w_r`, raise or clamp the centered projection on `w_r`, or project out one or
//! several regions' directions; `w` the exemplar or the mean direction), at every position or
//! only where EP assigns the activation to chosen regions ("gated"), optionally keeping each
//! edited position's norm, and optionally with a seeded random unit direction in place of each
//! region's (a control of the same norm).
//!
//! With [`MeasureOptions`], every continuation is also measured against its target regions:
//! * **in-region rate**: the generated tokens are run through the *unedited* model to the hook,
//!   and the share of their activations that EP assigns to the target regions within θ (and,
//!   as `nearest_rate`, with no θ): does the steered text land where the region lives;
//! * **lens log-prob**: the target regions' logit-lens tokens (the top tokens of final norm +
//!   unembedding of their directions); per generation step, `log Σ_{t ∈ lens} p(t)` under the
//!   model that generated the step (edited or not), averaged over the steps.
//!
//! [`summarize`] compares, per setting and region, the steered continuations with the random
//! controls and the unedited baseline.

use super::lens;
use super::target::check_regions;
use crate::dictionary::{Basis, Dictionary};
use crate::error::{Error, Result};
use crate::model::{Edit, Gemma, HookPoint, Intervention, Logits, RegionGate, Sampling, Tokenizer};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// The edit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EditKind {
    /// `x + α·w`.
    Add { alpha: f64 },
    /// Raise the centered projection `(x − c)·w` to at least `value`.
    Raise { value: f64 },
    /// Set the centered projection to `value`.
    Clamp { value: f64 },
    /// Project the regions' directions out, in centered space.
    Ablate,
}

/// One edit of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EditSpec {
    #[serde(flatten)]
    pub kind: EditKind,
    /// The regions whose directions are used (one for add/raise/clamp; one or more to ablate).
    pub regions: Vec<usize>,
    /// `exemplar` or `mean`.
    pub basis: String,
    /// A control: each region's direction replaced by a seeded random unit direction (stream =
    /// the region's id), so the edit has the same norm.
    pub random_seed: Option<u64>,
    /// Gated: edit only the positions EP assigns to these regions within θ.
    pub gate: Option<Vec<usize>>,
    /// Rescale each edited position to its norm before the edit.
    pub keep_norm: bool,
}

impl EditSpec {
    /// The basis.
    pub fn basis(&self) -> Result<Basis> {
        match self.basis.as_str() {
            "exemplar" => Ok(Basis::Exemplar),
            "mean" => Ok(Basis::Mean),
            b => Err(Error::param(
                "basis",
                format!("`{b}` is not a basis (exemplar or mean)"),
            )),
        }
    }

    /// Checks the edit against `dict` (regions in range, finite numbers).
    pub fn check(&self, dict: &Dictionary) -> Result<()> {
        self.basis()?;
        if self.regions.is_empty() {
            return Err(Error::param("region", "an edit needs at least one region"));
        }
        check_regions(dict, &self.regions, "region")?;
        match self.kind {
            EditKind::Add { alpha } if !alpha.is_finite() => {
                return Err(Error::param("alpha", format!("α = {alpha} is not finite")))
            }
            EditKind::Raise { value } | EditKind::Clamp { value } if !value.is_finite() => {
                return Err(Error::param(
                    "value",
                    format!("the projection value {value} is not finite"),
                ))
            }
            _ => {}
        }
        if !matches!(self.kind, EditKind::Ablate) && self.regions.len() != 1 {
            return Err(Error::param(
                "region",
                "add, raise and clamp take one region per edit (ablate takes several)",
            ));
        }
        if let Some(g) = &self.gate {
            if g.is_empty() {
                return Err(Error::param("gate", "a gate needs at least one region"));
            }
            check_regions(dict, g, "gate region")?;
        }
        Ok(())
    }

    /// The unit direction used for `region` (the basis vector, or the random control's).
    pub fn direction(&self, dict: &Dictionary, region: usize) -> Result<Vec<f32>> {
        Ok(match self.random_seed {
            Some(seed) => super::random_unit(dict.dim(), seed, region as u64),
            None => match self.basis()? {
                Basis::Exemplar => dict.exemplar(region).to_vec(),
                Basis::Mean => dict.mean_direction(region),
            },
        })
    }

    /// The intervention at `hook`.
    pub fn intervention(&self, dict: &Dictionary, hook: HookPoint) -> Result<Intervention> {
        self.check(dict)?;
        let d = dict.dim() as i64;
        let vec = |v: &[f32]| Tensor::from_slice(v);
        let center = || vec(dict.center());
        let first = self.direction(dict, self.regions[0])?;
        let edit = match self.kind {
            EditKind::Add { alpha } => Edit::Add {
                direction: vec(&first),
                alpha,
            },
            EditKind::Raise { value } => Edit::RaiseProjection {
                direction: vec(&first),
                center: center(),
                value,
            },
            EditKind::Clamp { value } => Edit::ClampProjection {
                direction: vec(&first),
                center: center(),
                value,
            },
            EditKind::Ablate => {
                let mut all = Vec::with_capacity(self.regions.len() * d as usize);
                for &r in &self.regions {
                    all.extend(self.direction(dict, r)?);
                }
                Edit::ProjectOut {
                    directions: vec(&all).view([self.regions.len() as i64, d]),
                    center: center(),
                }
            }
        };
        let mut iv = Intervention::new(hook, edit);
        if let Some(g) = &self.gate {
            iv = iv.gated(RegionGate {
                center: center(),
                exemplars: vec(dict.exemplars()).view([dict.len() as i64, d]),
                regions: g.iter().map(|&r| r as i64).collect(),
                theta: dict.theta(),
            });
        }
        if self.keep_norm {
            iv = iv.keeping_norm();
        }
        Ok(iv)
    }

    /// A short name: `add α=8 r12 (exemplar)`, `ablate r3,r5 (mean) random`.
    pub fn label(&self) -> String {
        let k = match self.kind {
            EditKind::Add { alpha } => format!("add α={alpha}"),
            EditKind::Raise { value } => format!("raise to {value}"),
            EditKind::Clamp { value } => format!("clamp to {value}"),
            EditKind::Ablate => "ablate".into(),
        };
        let regions: Vec<String> = self.regions.iter().map(|r| format!("r{r}")).collect();
        let mut s = format!("{k} {} ({})", regions.join(","), self.basis);
        if let Some(g) = &self.gate {
            let g: Vec<String> = g.iter().map(|r| format!("r{r}")).collect();
            s.push_str(&format!(" gated on {}", g.join(",")));
        }
        if self.keep_norm {
            s.push_str(" keeping norm");
        }
        if self.random_seed.is_some() {
            s.push_str(" random");
        }
        s
    }

    /// The setting without its regions and control flag: what a summary groups by.
    fn setting(&self) -> String {
        let mut v = serde_json::to_value(self).expect("serializable");
        let o = v.as_object_mut().expect("an object");
        o.remove("regions");
        o.remove("random_seed");
        if self.gate.as_ref() == Some(&self.regions) {
            o.insert("gate".into(), json!("own region"));
        }
        v.to_string()
    }
}

/// How continuations are generated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationOptions {
    pub new_tokens: usize,
    /// Greedy, or sampling; with sampling, continuation `s` of prompt `p` uses the seed
    /// `seed + p·1,000,003 + s`, the same under every edit (paired comparisons).
    pub sampling: Sampling,
    /// Continuations per prompt and edit (1 when greedy).
    pub samples: usize,
    pub stop_at_eos: bool,
}

/// What is measured on continuations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeasureOptions {
    /// Logit-lens tokens per target.
    pub lens_tokens: usize,
}

/// One continuation's measure against one target.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Measure {
    pub regions: Vec<usize>,
    pub basis: String,
    /// Generated tokens measured.
    pub positions: usize,
    /// Share of the generated tokens' unedited activations assigned to the regions within θ.
    pub in_region_rate: f64,
    /// The same with no θ (nearest exemplar among the regions).
    pub nearest_rate: f64,
    /// The lens tokens.
    pub lens_ids: Vec<i64>,
    /// Mean over steps of `log Σ_{lens} p` under the generating model.
    pub lens_logprob: f64,
}

/// One continuation.
#[derive(Debug, Clone, Serialize)]
pub struct SteerRecord {
    pub prompt_index: usize,
    pub prompt: String,
    /// The hook the edit is applied at, the dictionary's own, and whether they differ.
    pub hook: String,
    pub dictionary_hook: Option<String>,
    pub other_hook: bool,
    /// `None`: the unedited baseline.
    pub edit: Option<EditSpec>,
    pub edit_label: String,
    pub sample: usize,
    /// The sampling seed, temperature and top-k (`None` when greedy).
    pub seed: Option<u64>,
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub prompt_tokens: usize,
    pub continuation: String,
    /// Generated ids, their token strings and log-probabilities under the (edited) model.
    pub ids: Vec<i64>,
    pub tokens: Vec<String>,
    pub logprobs: Vec<f64>,
    pub stopped_at_eos: bool,
    pub measures: Vec<Measure>,
}

/// Everything [`steer`] needs besides the model.
pub struct SteerRun<'a> {
    pub dict: &'a Dictionary,
    pub hook: HookPoint,
    pub dictionary_hook: Option<String>,
    pub other_hook: bool,
    pub prompts: &'a [String],
    pub edits: &'a [EditSpec],
    /// Also generate without any edit.
    pub baseline: bool,
    pub generation: GenerationOptions,
    pub measure: Option<MeasureOptions>,
}

impl SteerRun<'_> {
    /// Checks everything that can be checked without the model: prompts, edits, options.
    pub fn check(&self) -> Result<()> {
        if self.prompts.is_empty() {
            return Err(Error::EmptyInput("no prompt".into()));
        }
        if self.edits.is_empty() && !self.baseline {
            return Err(Error::param(
                "edit",
                "nothing to generate: no edit and no baseline",
            ));
        }
        for e in self.edits {
            e.check(self.dict)?;
        }
        if self.generation.new_tokens == 0 {
            return Err(Error::param("new tokens", "must be at least 1"));
        }
        if self.generation.samples == 0 {
            return Err(Error::param("samples", "must be at least 1"));
        }
        if let Some(m) = self.measure {
            if m.lens_tokens == 0 {
                return Err(Error::param("lens tokens", "must be at least 1"));
            }
        }
        Ok(())
    }

    /// Total generations.
    pub fn generations(&self) -> usize {
        self.prompts.len() * (self.edits.len() + self.baseline as usize) * self.samples()
    }

    fn samples(&self) -> usize {
        match self.generation.sampling {
            Sampling::Greedy => 1,
            Sampling::Sample { .. } => self.generation.samples,
        }
    }
}

/// A target of measurement: regions, basis, lens ids.
type TargetKey = (Vec<usize>, String);

/// Generates every continuation of `run` (prompts in order; per prompt the baseline first,
/// then the edits in order; per edit the samples), calling `on_record` after each.
pub fn steer(
    model: &Gemma,
    tok: &Tokenizer,
    run: &SteerRun,
    mut on_record: impl FnMut(&SteerRecord) -> Result<()>,
) -> Result<Vec<SteerRecord>> {
    run.check()?;
    let dict = run.dict;
    let d = dict.dim();
    let _guard = tch::no_grad_guard();
    let interventions: Vec<Intervention> = run
        .edits
        .iter()
        .map(|e| e.intervention(dict, run.hook))
        .collect::<Result<_>>()?;
    // The lens of every (regions, basis) target: the top tokens of the unnormalised sum of
    // the regions' unit directions.
    let mut lenses: BTreeMap<TargetKey, Vec<i64>> = BTreeMap::new();
    if let Some(m) = run.measure {
        for e in run.edits {
            let key = (e.regions.clone(), e.basis.clone());
            if lenses.contains_key(&key) {
                continue;
            }
            let plain = EditSpec {
                random_seed: None,
                ..e.clone()
            };
            let mut dir = vec![0.0f32; d];
            for &r in &e.regions {
                for (a, b) in dir.iter_mut().zip(plain.direction(dict, r)?) {
                    *a += b;
                }
            }
            let top = lens::top_tokens(model, tok, &dir, d, m.lens_tokens)?;
            lenses.insert(key, top[0].iter().map(|t| t.id).collect());
        }
    }
    let all_targets: Vec<TargetKey> = lenses.keys().cloned().collect();
    let mut records = vec![];
    for (p, prompt) in run.prompts.iter().enumerate() {
        let ids = tok.encode(prompt)?;
        let jobs: Vec<Option<usize>> = run
            .baseline
            .then_some(None)
            .into_iter()
            .chain((0..run.edits.len()).map(Some))
            .collect();
        for job in jobs {
            let ivs: &[Intervention] = match job {
                Some(i) => std::slice::from_ref(&interventions[i]),
                None => &[],
            };
            for s in 0..run.samples() {
                let (sampling, seed) = match run.generation.sampling {
                    Sampling::Greedy => (Sampling::Greedy, None),
                    Sampling::Sample {
                        temperature,
                        top_k,
                        seed,
                    } => {
                        let seed = seed
                            .wrapping_add((p as u64).wrapping_mul(1_000_003))
                            .wrapping_add(s as u64);
                        (
                            Sampling::Sample {
                                temperature,
                                top_k,
                                seed,
                            },
                            Some(seed),
                        )
                    }
                };
                let g = model.generate(
                    &ids,
                    run.generation.new_tokens,
                    sampling,
                    run.generation.stop_at_eos,
                    ivs,
                )?;
                let new_ids = g.ids[ids.len()..].to_vec();
                let measures = match run.measure {
                    None => vec![],
                    Some(_) => {
                        let targets: Vec<(TargetKey, &Vec<i64>)> = match job {
                            Some(i) => {
                                let e = &run.edits[i];
                                let key = (e.regions.clone(), e.basis.clone());
                                let lens = &lenses[&key];
                                vec![(key, lens)]
                            }
                            None => all_targets
                                .iter()
                                .map(|k| (k.clone(), &lenses[k]))
                                .collect(),
                        };
                        measure(model, dict, run.hook, &g.ids, ids.len(), ivs, &targets)?
                    }
                };
                let rec = SteerRecord {
                    prompt_index: p,
                    prompt: prompt.clone(),
                    hook: run.hook.name(),
                    dictionary_hook: run.dictionary_hook.clone(),
                    other_hook: run.other_hook,
                    edit: job.map(|i| run.edits[i].clone()),
                    edit_label: job.map_or("none".into(), |i| run.edits[i].label()),
                    sample: s,
                    seed,
                    temperature: match sampling {
                        Sampling::Sample { temperature, .. } => Some(temperature),
                        Sampling::Greedy => None,
                    },
                    top_k: match sampling {
                        Sampling::Sample { top_k, .. } => top_k,
                        Sampling::Greedy => None,
                    },
                    prompt_tokens: ids.len(),
                    continuation: tok.decode(&new_ids)?,
                    tokens: tok.token_strings(&new_ids),
                    ids: new_ids,
                    logprobs: g.logprobs,
                    stopped_at_eos: g.stopped_at_eos,
                    measures,
                };
                on_record(&rec)?;
                records.push(rec);
            }
        }
    }
    Ok(records)
}

/// Measures the continuation `ids[prompt_len..]` against each target.
fn measure(
    model: &Gemma,
    dict: &Dictionary,
    hook: HookPoint,
    ids: &[i64],
    prompt_len: usize,
    interventions: &[Intervention],
    targets: &[(TargetKey, &Vec<i64>)],
) -> Result<Vec<Measure>> {
    let t = ids.len() as i64;
    let n_gen = ids.len() - prompt_len;
    let x = Tensor::from_slice(ids).view([1, t]);
    let mask = Tensor::ones([1, t], (Kind::Int64, Device::Cpu));
    // The unedited activations at the hook (and, without an edit, the logits too).
    let clean = model.forward_with(
        &x,
        &mask,
        &[hook],
        &[],
        if interventions.is_empty() {
            Logits::All
        } else {
            Logits::None
        },
    )?;
    let logits = match clean.logits {
        Some(l) => l,
        None => model
            .forward_with(&x, &mask, &[], interventions, Logits::All)?
            .logits
            .expect("logits were asked for"),
    };
    let act = clean.hooks[&hook]
        .get(0)
        .narrow(0, prompt_len as i64, n_gen as i64)
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        .contiguous();
    let rows =
        Vec::<f32>::try_from(act.view([-1])).map_err(|e| Error::param("hook", e.to_string()))?;
    let (nearest, dist) = dict.assign(&rows)?;
    // The distributions that produced the generated tokens: positions prompt_len − 1 ..= T − 2.
    let logp = logits
        .get(0)
        .narrow(0, prompt_len as i64 - 1, n_gen as i64)
        .to_kind(Kind::Double)
        .to_device(Device::Cpu)
        .log_softmax(-1, Kind::Double);
    let mut out = vec![];
    for ((regions, basis), lens_ids) in targets {
        let inside = |i: usize| regions.contains(&(nearest[i] as usize));
        let in_region = (0..n_gen)
            .filter(|&i| inside(i) && (dist[i] as f64) <= dict.theta())
            .count();
        let near = (0..n_gen).filter(|&i| inside(i)).count();
        let idx = Tensor::from_slice(lens_ids.as_slice());
        let mass = logp.index_select(1, &idx).logsumexp([1].as_slice(), false);
        let mass = Vec::<f64>::try_from(mass).map_err(|e| Error::param("lens", e.to_string()))?;
        out.push(Measure {
            regions: regions.clone(),
            basis: basis.clone(),
            positions: n_gen,
            in_region_rate: in_region as f64 / n_gen as f64,
            nearest_rate: near as f64 / n_gen as f64,
            lens_ids: (*lens_ids).clone(),
            lens_logprob: mass.iter().sum::<f64>() / n_gen as f64,
        });
    }
    Ok(out)
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Per setting (an edit kind with its parameters, basis, gate and norm flag) and region: the
/// mean in-region rate and lens log-prob of the steered continuations, of their random
/// controls and of the unedited baseline (measured against the same region); then per setting
/// the means over regions, how many regions the steered edit beat its control on, and the
/// ratio of the steered to the control in-region rate. Needs measured records.
pub fn summarize(records: &[SteerRecord]) -> Value {
    // (setting, target) → [steered values, random values]
    type Acc = [Vec<(f64, f64)>; 2];
    let mut by: BTreeMap<(String, TargetKey), Acc> = BTreeMap::new();
    let mut baseline: BTreeMap<TargetKey, Vec<(f64, f64)>> = BTreeMap::new();
    for r in records {
        for m in &r.measures {
            let key = (m.regions.clone(), m.basis.clone());
            let v = (m.in_region_rate, m.lens_logprob);
            match &r.edit {
                None => baseline.entry(key).or_default().push(v),
                Some(e) => by.entry((e.setting(), key)).or_default()
                    [e.random_seed.is_some() as usize]
                    .push(v),
            }
        }
    }
    let mut settings: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for ((setting, (regions, basis)), [steered, random]) in &by {
        let col = |v: &[(f64, f64)], second: bool| {
            mean(
                &v.iter()
                    .map(|p| if second { p.1 } else { p.0 })
                    .collect::<Vec<_>>(),
            )
        };
        let base = baseline.get(&(regions.clone(), basis.clone()));
        settings.entry(setting.clone()).or_default().push(json!({
            "regions": regions,
            "basis": basis,
            "continuations": steered.len(),
            "in_region_rate": {"steered": col(steered, false), "random": col(random, false),
                               "baseline": base.and_then(|b| col(b, false))},
            "lens_logprob": {"steered": col(steered, true), "random": col(random, true),
                             "baseline": base.and_then(|b| col(b, true))},
        }));
    }
    let mut out = vec![];
    for (setting, rows) in settings {
        let pick = |metric: &str, which: &str| -> Vec<f64> {
            rows.iter()
                .filter_map(|r| r[metric][which].as_f64())
                .collect()
        };
        let paired = |metric: &str, a: &str, b: &str| -> Vec<(f64, f64)> {
            rows.iter()
                .filter_map(|r| Some((r[metric][a].as_f64()?, r[metric][b].as_f64()?)))
                .collect()
        };
        let st_rnd = paired("in_region_rate", "steered", "random");
        let lens_st_rnd = paired("lens_logprob", "steered", "random");
        let lens_st_base = paired("lens_logprob", "steered", "baseline");
        let lens_rnd_base = paired("lens_logprob", "random", "baseline");
        let (ms, mr) = (
            mean(&pick("in_region_rate", "steered")),
            mean(&pick("in_region_rate", "random")),
        );
        out.push(json!({
            "setting": serde_json::from_str::<Value>(&setting).unwrap_or(Value::Null),
            "regions": rows.len(),
            "mean_in_region_rate": {"steered": ms, "random": mr,
                                    "baseline": mean(&pick("in_region_rate", "baseline"))},
            "in_region_rate_ratio_steered_over_random": match (ms, mr) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            },
            "regions_steered_above_random_in_region": st_rnd.iter().filter(|(a, b)| a > b).count(),
            "regions_compared": st_rnd.len(),
            "mean_lens_logprob": {"steered": mean(&pick("lens_logprob", "steered")),
                                  "random": mean(&pick("lens_logprob", "random")),
                                  "baseline": mean(&pick("lens_logprob", "baseline"))},
            "mean_lens_shift_vs_baseline": {
                "steered": mean(&lens_st_base.iter().map(|(a, b)| a - b).collect::<Vec<_>>()),
                "random": mean(&lens_rnd_base.iter().map(|(a, b)| a - b).collect::<Vec<_>>())},
            "regions_steered_above_random_lens": lens_st_rnd.iter().filter(|(a, b)| a > b).count(),
            "per_region": rows,
        }));
    }
    json!({"settings": out})
}
