//! `ablate`: regions projected out; loss change inside vs outside them, target log-probs.

use super::args::{basis, check_output, fixed_or_dash, ReportOut};
use super::on_model::{load_model, ModelTarget};
use anyhow::{bail, Context, Result};
use clap::Args;
use exemplar::analysis::ablate::{self as abl, RegionScore};
use exemplar::analysis::{read_texts, target};
use exemplar::dictionary::Basis;
use exemplar::output::write_atomic;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct AblateArgs {
    #[command(flatten)]
    pub on: ModelTarget,
    /// Regions to ablate, comma-separated (or choose them with --score-labels).
    #[arg(
        long,
        short = 'r',
        value_delimiter = ',',
        value_name = "R",
        conflicts_with = "score_labels"
    )]
    pub region: Vec<usize>,
    /// Choose the regions by a per-member label: JSON Lines with the text (--text-field) and
    /// --label-field (true/false, 1/0, or a string compared with --positive).
    #[arg(long, value_name = "FILE")]
    pub score_labels: Option<PathBuf>,
    /// The label's field.
    #[arg(long, default_value = "label", value_name = "NAME")]
    pub label_field: String,
    /// The positive value of a string label.
    #[arg(long, value_name = "VALUE")]
    pub positive: Option<String>,
    /// Which positions of a labelled text are members: its last token (the reference's) or all.
    #[arg(long, default_value = "last", value_parser = ["last", "all"])]
    pub label_position: String,
    /// With --score-labels, ablate the top N candidates; the behaviour is measured after
    /// ablating the first 1, 2, …, N regions of the set (and the whole set when it is larger).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub top: usize,
    /// Candidates have at least this many labelled members.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub min_members: usize,
    /// Candidates have at least this positive share.
    #[arg(long, default_value_t = 0.3, value_name = "F")]
    pub min_rate: f64,
    /// Directions ablated: exemplars or mean member directions.
    #[arg(long, default_value = "exemplar", value_parser = ["exemplar", "mean"])]
    pub basis: String,
    /// Held-out texts: the loss change inside vs outside the regions (selectivity).
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Prompts whose target log-probs are tracked.
    #[arg(long, value_name = "FILE", requires = "target_strings")]
    pub prompts: Option<PathBuf>,
    /// A target string (repeatable), e.g. " I cannot".
    #[arg(long = "target", value_name = "STRING", group = "target_strings")]
    pub target: Vec<String>,
    /// Target strings, one per non-empty line.
    #[arg(long, value_name = "FILE", group = "target_strings")]
    pub targets: Option<PathBuf>,
    /// The JSON Lines field holding a text (--text, --prompts, --score-labels).
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_field: String,
    /// Tokens kept per text after the BOS (--text, --score-labels).
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub ctx: usize,
    /// Also ablate as many seeded random directions (a control).
    #[arg(long)]
    pub random_control: bool,
    /// Seed of the control's directions.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub control_seed: u64,
    /// Write every scored position of --text (JSON Lines: losses, in-region flags) here.
    #[arg(long, value_name = "FILE", requires = "text")]
    pub per_position: Option<PathBuf>,
    #[command(flatten)]
    pub report: ReportOut,
}

/// `(text, label)` pairs of a labelled JSON Lines file.
fn read_labels(a: &AblateArgs, path: &Path) -> Result<Vec<(String, bool)>> {
    let rows = exemplar::eval::documents::read_jsonl_objects(path)?;
    rows.into_iter()
        .map(|(line, m)| {
            let text = match m.get(&a.text_field) {
                Some(Value::String(s)) => s.clone(),
                _ => bail!("{}:{line}: no string \"{}\"", path.display(), a.text_field),
            };
            let label = match (m.get(&a.label_field), &a.positive) {
                (Some(Value::Bool(b)), _) => *b,
                (Some(Value::Number(n)), _) if n.as_i64().is_some() => n.as_i64() != Some(0),
                (Some(Value::String(s)), Some(p)) => s == p,
                (Some(Value::String(_)), None) => {
                    bail!(
                        "{}:{line}: a string label needs --positive VALUE",
                        path.display()
                    )
                }
                _ => bail!(
                    "{}:{line}: \"{}\" must be true/false, an integer, or a string",
                    path.display(),
                    a.label_field
                ),
            };
            Ok((text, label))
        })
        .collect()
}

fn encode_all(
    tok: &exemplar::model::Tokenizer,
    texts: &[String],
    ctx: Option<usize>,
) -> Result<Vec<Vec<i64>>> {
    texts
        .iter()
        .map(|t| {
            let mut v = tok.encode(t)?;
            if let Some(c) = ctx {
                v.truncate(c + 1);
            }
            Ok(v)
        })
        .collect()
}

pub fn ablate(a: AblateArgs) -> Result<()> {
    for o in a.report.out.iter().chain(&a.per_position) {
        check_output(o, a.report.force)?;
    }
    if a.text.is_none() && a.prompts.is_none() {
        bail!("nothing to measure: give --text (selectivity) and/or --prompts with --target/--targets (behaviour)");
    }
    if a.region.is_empty() && a.score_labels.is_none() {
        bail!("give the regions (--region) or a labelled file to choose them (--score-labels)");
    }
    if a.top == 0 {
        bail!("--top must be at least 1");
    }
    let (dict, t) = a.on.resolve()?;
    target::check_regions(&dict, &a.region, "region")?;
    let labelled = a
        .score_labels
        .as_ref()
        .map(|p| read_labels(&a, p))
        .transpose()?;
    let texts = a
        .text
        .as_ref()
        .map(|p| read_texts(p, &a.text_field))
        .transpose()?;
    let prompts = a
        .prompts
        .as_ref()
        .map(|p| read_texts(p, &a.text_field))
        .transpose()?;
    let targets: Vec<String> = match &a.targets {
        Some(p) => {
            let v: Vec<String> = std::fs::read_to_string(p)
                .with_context(|| p.display().to_string())?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect();
            if v.is_empty() {
                bail!("{}: no target string", p.display());
            }
            v
        }
        None => a.target.clone(),
    };
    if prompts.is_some() && targets.is_empty() {
        bail!("--prompts needs --target or --targets");
    }
    let (model, tok) = load_model(&a.on.model)?;
    let _guard = tch::no_grad_guard();
    let b = basis(&a.basis);
    let direction = |r: usize| -> Vec<f32> {
        match b {
            Basis::Exemplar => dict.exemplar(r).to_vec(),
            Basis::Mean => dict.mean_direction(r),
        }
    };
    let mut report = json!({"target": t, "basis": a.basis});
    let mut table = String::new();
    // The regions: given, or scored by the labels.
    let regions: Vec<usize> = match &labelled {
        None => a.region.clone(),
        Some(l) => {
            let texts: Vec<String> = l.iter().map(|x| x.0.clone()).collect();
            let ids = encode_all(&tok, &texts, Some(a.ctx))?;
            let (mut rows, mut labels) = (vec![], vec![]);
            for (chunk, lab) in ids.chunks(16).zip(l.chunks(16)) {
                let refs: Vec<&[i64]> = chunk.iter().map(|v| v.as_slice()).collect();
                let sel = if a.label_position == "last" {
                    exemplar::model::rows::RowSelection::Last
                } else {
                    exemplar::model::rows::RowSelection::AfterBos
                };
                let (r, pos, _) = exemplar::model::rows::forward_rows(&model, t.hook, &refs, &sel)?;
                rows.extend(r);
                for (p, (_, y)) in pos.iter().zip(lab) {
                    labels.extend(std::iter::repeat_n(*y, p.len()));
                }
            }
            let scores: Vec<RegionScore> = abl::score_regions(&dict, &rows, &labels)?;
            let picked = abl::pick_regions(&scores, a.min_members, a.min_rate, a.top);
            writeln!(
                table,
                "scored {} regions from {} labelled rows; chosen (rate × members): {:?}",
                scores.len(),
                labels.len(),
                picked
            )?;
            let mut sorted = scores.clone();
            sorted.sort_by(|x, y| {
                (y.rate * y.members as f64).total_cmp(&(x.rate * x.members as f64))
            });
            report["region_scores"] = json!(sorted);
            if picked.is_empty() {
                bail!(
                    "no region has ≥ {} labelled members with a positive share ≥ {}",
                    a.min_members,
                    a.min_rate
                );
            }
            picked
        }
    };
    report["regions"] = json!(regions);
    let mut dirs = vec![];
    for &r in &regions {
        dirs.extend(direction(r));
    }
    let control: Vec<f32> = (0..regions.len())
        .flat_map(|i| {
            exemplar::analysis::random_unit(dict.dim(), a.control_seed, regions[i] as u64)
        })
        .collect();
    if let Some(texts) = &texts {
        let ids = encode_all(&tok, texts, Some(a.ctx))?;
        let iv = abl::ablation(&dict, t.hook, &dirs);
        let (sel, per) = abl::selectivity(&model, &dict, t.hook, &ids, &regions, &iv)?;
        let g = |x: &abl::LossGroup| {
            format!(
                "{} positions, loss {} → {} (Δ {})",
                x.positions,
                fixed_or_dash(x.clean_loss, 4),
                fixed_or_dash(x.ablated_loss, 4),
                fixed_or_dash(x.delta, 4)
            )
        };
        writeln!(
            table,
            "ablating {:?} at {} on {} texts:",
            regions,
            t.hook,
            texts.len()
        )?;
        writeln!(table, "  inside the regions:  {}", g(&sel.inside))?;
        writeln!(table, "  outside:             {}", g(&sel.outside))?;
        writeln!(
            table,
            "  selectivity (Δ inside − Δ outside): {}",
            fixed_or_dash(sel.selectivity, 4)
        )?;
        report["selectivity"] = serde_json::to_value(&sel)?;
        if a.random_control {
            let iv = abl::ablation(&dict, t.hook, &control);
            let (sel_c, _) = abl::selectivity(&model, &dict, t.hook, &ids, &regions, &iv)?;
            writeln!(
                table,
                "  random control: Δ inside {}, Δ outside {}",
                fixed_or_dash(sel_c.inside.delta, 4),
                fixed_or_dash(sel_c.outside.delta, 4)
            )?;
            report["selectivity_random_control"] = serde_json::to_value(&sel_c)?;
        }
        if let Some(p) = &a.per_position {
            let mut s = String::new();
            for (x, ids) in per.iter().zip(&ids) {
                let mut v = serde_json::to_value(x)?;
                v["ids"] = json!(ids);
                writeln!(s, "{v}")?;
            }
            write_atomic(p, s.as_bytes(), a.report.force)?;
        }
    }
    if let Some(prompts) = &prompts {
        let p_ids = encode_all(&tok, prompts, None)?;
        let t_ids: Vec<Vec<i64>> = targets
            .iter()
            .map(|s| Ok(tok.encode(s)?[1..].to_vec()))
            .collect::<Result<_>>()?;
        if let Some(j) = t_ids.iter().position(|v| v.is_empty()) {
            bail!("target {:?} has no token", targets[j]);
        }
        let score = |ivs: &[exemplar::model::Intervention]| -> Result<Value> {
            let lp = abl::target_logprobs(&model, &p_ids, &t_ids, ivs)?;
            let any: Vec<f64> = lp.iter().map(|v| abl::logsumexp(v)).collect();
            let mean_any = any.iter().sum::<f64>() / any.len() as f64;
            let per_target: Vec<f64> = (0..t_ids.len())
                .map(|j| lp.iter().map(|v| v[j]).sum::<f64>() / lp.len() as f64)
                .collect();
            Ok(
                json!({"mean_logprob_any_target": mean_any, "mean_logprob_per_target": per_target,
                      "logprobs": lp}),
            )
        };
        let before = score(&[])?;
        writeln!(
            table,
            "behaviour on {} prompts, targets {:?}: mean log P(any target) {:.4} before",
            prompts.len(),
            targets,
            before["mean_logprob_any_target"]
                .as_f64()
                .unwrap_or(f64::NAN)
        )?;
        let mut sweep = vec![];
        let mut sizes: Vec<usize> = (1..=regions.len().min(a.top)).collect();
        if regions.len() > a.top {
            sizes.push(regions.len());
        }
        for k in sizes {
            let iv = abl::ablation(&dict, t.hook, &dirs[..k * dict.dim()]);
            let after = score(std::slice::from_ref(&iv))?;
            writeln!(
                table,
                "  ablating the first {k} ({:?}): {:.4}",
                &regions[..k],
                after["mean_logprob_any_target"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            )?;
            sweep.push(json!({"k": k, "regions": &regions[..k], "after": after}));
        }
        let mut behaviour = json!({"targets": targets, "prompts": prompts.len(),
                                    "before": before, "k_sweep": sweep});
        if a.random_control {
            let iv = abl::ablation(&dict, t.hook, &control);
            let after = score(std::slice::from_ref(&iv))?;
            writeln!(
                table,
                "  random control ({} directions): {:.4}",
                regions.len(),
                after["mean_logprob_any_target"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            )?;
            behaviour["random_control"] = after;
        }
        report["behaviour"] = behaviour;
    }
    a.report.emit(&report, &table)
}
