//! `steer`: continuations generated with an edit along regions (add, raise, clamp, ablate).

use super::args::{check_output, fixed_or_dash, ReportOut};
use super::on_model::{load_model, region_set, ModelTarget};
use anyhow::{bail, Result};
use clap::Args;
use exemplar::analysis::read_texts;
use exemplar::analysis::steer::{self as st, EditKind, EditSpec};
use exemplar::model::Sampling;
use serde_json::Value;
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SteerArgs {
    #[command(flatten)]
    pub on: ModelTarget,
    /// Prompts: .txt one per non-empty line, or .jsonl with --text-field.
    #[arg(long, value_name = "FILE")]
    pub prompts: PathBuf,
    /// The JSON Lines field holding a prompt.
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_field: String,
    /// The edit: add α·w, raise or clamp the centered projection on w, or ablate (project out).
    #[arg(long, default_value = "add", value_parser = ["add", "raise", "clamp", "ablate"])]
    pub edit: String,
    /// Regions to steer along, comma-separated: one edit per region (ablate: see --together).
    #[arg(
        long,
        short = 'r',
        required_unless_present = "region_set",
        value_delimiter = ',',
        value_name = "R"
    )]
    pub region: Vec<usize>,
    /// Also the regions of a labelled set: `FILE:LABEL`, FILE written by `explain-labels`.
    #[arg(long, value_name = "FILE:LABEL")]
    pub region_set: Option<String>,
    /// Ablate all --region directions in one edit instead of one edit per region.
    #[arg(long)]
    pub together: bool,
    /// α of `add` (comma-separated for a sweep).
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        value_name = "A"
    )]
    pub alpha: Vec<f64>,
    /// The projection value of `raise` / `clamp` (comma-separated for a sweep).
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        value_name = "V"
    )]
    pub value: Vec<f64>,
    /// Directions: exemplars or mean member directions.
    #[arg(long, default_value = "exemplar", value_parser = ["exemplar", "mean"])]
    pub basis: String,
    /// Edit only positions EP assigns to the edit's own region(s) within θ.
    #[arg(long)]
    pub gated: bool,
    /// Edit only positions EP assigns to these regions within θ (instead of the edit's own).
    #[arg(long, value_delimiter = ',', value_name = "R")]
    pub gate_region: Vec<usize>,
    /// Rescale each edited position to its norm before the edit.
    #[arg(long)]
    pub keep_norm: bool,
    /// Also, per edit, a control with a seeded random unit direction in place of each region's.
    #[arg(long)]
    pub random_control: bool,
    /// Seed of the random controls' directions.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub control_seed: u64,
    /// Also an unedited continuation per prompt.
    #[arg(long)]
    pub baseline: bool,
    /// Tokens generated per continuation.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub new_tokens: usize,
    /// Sample at this temperature (default: greedy).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
    /// Sample among the k most probable tokens.
    #[arg(long, value_name = "K", requires = "temperature")]
    pub top_k: Option<usize>,
    /// Sampling seed (continuation s of prompt p uses seed + p·1000003 + s under every edit).
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Continuations per prompt and edit when sampling.
    #[arg(long, default_value_t = 1, value_name = "N", requires = "temperature")]
    pub samples: usize,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Measure each continuation: the in-region rate of its unedited activations and the
    /// log-prob of the region's logit-lens tokens.
    #[arg(long)]
    pub measure: bool,
    /// Logit-lens tokens per region for --measure.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub lens_tokens: usize,
    /// Write the summary of --measure (JSON) here.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Print the summary JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Output JSON Lines: one line per continuation.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite outputs.
    #[arg(long)]
    pub force: bool,
}

fn check_numbers(name: &str, v: &[f64]) -> Result<()> {
    if let Some(x) = v.iter().find(|x| !x.is_finite()) {
        bail!("--{name} {x}: not a finite number");
    }
    Ok(())
}

/// The edits of `steer` from its flags.
fn edits(a: &SteerArgs) -> Result<Vec<EditSpec>> {
    check_numbers("alpha", &a.alpha)?;
    check_numbers("value", &a.value)?;
    let kinds: Vec<EditKind> = match a.edit.as_str() {
        "add" => {
            if a.alpha.is_empty() {
                bail!("--edit add needs --alpha");
            }
            a.alpha
                .iter()
                .map(|&alpha| EditKind::Add { alpha })
                .collect()
        }
        "raise" | "clamp" => {
            if a.value.is_empty() {
                bail!("--edit {} needs --value", a.edit);
            }
            a.value
                .iter()
                .map(|&value| {
                    if a.edit == "raise" {
                        EditKind::Raise { value }
                    } else {
                        EditKind::Clamp { value }
                    }
                })
                .collect()
        }
        _ => vec![EditKind::Ablate],
    };
    if a.together && a.edit != "ablate" {
        bail!(
            "--together applies to --edit ablate (add, raise and clamp take one region per edit)"
        );
    }
    let groups: Vec<Vec<usize>> = if a.together {
        vec![a.region.clone()]
    } else {
        a.region.iter().map(|&r| vec![r]).collect()
    };
    let mut out = vec![];
    for g in groups {
        for &kind in &kinds {
            let spec = EditSpec {
                kind,
                regions: g.clone(),
                basis: a.basis.clone(),
                random_seed: None,
                gate: if !a.gate_region.is_empty() {
                    Some(a.gate_region.clone())
                } else if a.gated {
                    Some(g.clone())
                } else {
                    None
                },
                keep_norm: a.keep_norm,
            };
            if a.random_control {
                let control = EditSpec {
                    random_seed: Some(a.control_seed),
                    ..spec.clone()
                };
                out.push(spec);
                out.push(control);
            } else {
                out.push(spec);
            }
        }
    }
    Ok(out)
}

pub fn steer(mut a: SteerArgs) -> Result<()> {
    check_output(&a.out, a.force)?;
    if let Some(spec) = &a.region_set {
        for r in region_set(spec)? {
            if !a.region.contains(&r) {
                a.region.push(r);
            }
        }
    }
    if let Some(s) = &a.summary {
        check_output(s, a.force)?;
        if !a.measure {
            bail!("--summary needs --measure");
        }
    }
    let (dict, t) = a.on.resolve()?;
    let prompts = read_texts(&a.prompts, &a.text_field)?;
    let specs = edits(&a)?;
    let sampling = match a.temperature {
        None => Sampling::Greedy,
        Some(temperature) => {
            if !(temperature.is_finite() && temperature > 0.0) {
                bail!("--temperature {temperature}: must be a positive number");
            }
            Sampling::Sample {
                temperature,
                top_k: a.top_k,
                seed: a.seed,
            }
        }
    };
    let run = st::SteerRun {
        dict: &dict,
        hook: t.hook,
        dictionary_hook: t.dictionary_hook.clone(),
        other_hook: t.other_hook,
        prompts: &prompts,
        edits: &specs,
        baseline: a.baseline,
        generation: st::GenerationOptions {
            new_tokens: a.new_tokens,
            sampling,
            samples: a.samples,
            stop_at_eos: !a.ignore_eos,
        },
        measure: a.measure.then_some(st::MeasureOptions {
            lens_tokens: a.lens_tokens,
        }),
    };
    run.check()?;
    let (model, tok) = load_model(&a.on.model)?;
    let mut file = exemplar::output::AtomicFile::create(&a.out, a.force)?;
    let pb = exemplar::progress::progress_bar(run.generations() as u64, "generate");
    let records = st::steer(&model, &tok, &run, |r| {
        let mut v =
            serde_json::to_value(r).map_err(|e| exemplar::Error::param("record", e.to_string()))?;
        v["model_check"] = serde_json::to_value(t.model_check).unwrap_or(Value::Null);
        writeln!(file, "{v}").map_err(|e| exemplar::Error::io(&a.out, e))?;
        pb.inc(1);
        Ok(())
    })?;
    pb.finish_and_clear();
    file.commit()?;
    let mut table = String::new();
    writeln!(
        table,
        "{} continuations of {} prompts at {}{} → {}",
        records.len(),
        prompts.len(),
        t.hook,
        if t.other_hook {
            format!(
                " (the dictionary was built at {})",
                t.dictionary_hook.as_deref().unwrap_or("?")
            )
        } else {
            String::new()
        },
        a.out.display()
    )?;
    if !a.measure {
        for r in records.iter().take(12) {
            writeln!(
                table,
                "[{}] p{}: {}",
                r.edit_label,
                r.prompt_index,
                r.continuation.replace('\n', "⏎")
            )?;
        }
        print!("{table}");
        return Ok(());
    }
    let summary = st::summarize(&records);
    for s in summary["settings"].as_array().into_iter().flatten() {
        writeln!(table, "\nsetting {}", s["setting"])?;
        writeln!(
            table,
            "{:<14} {:>10} {:>10} {:>10}   {:>10} {:>10} {:>10}",
            "regions", "in-reg st", "in-reg rnd", "in-reg base", "lens st", "lens rnd", "lens base"
        )?;
        for r in s["per_region"].as_array().into_iter().flatten() {
            let g = |m: &str, w: &str| fixed_or_dash(r[m][w].as_f64(), 3);
            writeln!(
                table,
                "{:<14} {:>10} {:>10} {:>10}   {:>10} {:>10} {:>10}",
                r["regions"].to_string(),
                g("in_region_rate", "steered"),
                g("in_region_rate", "random"),
                g("in_region_rate", "baseline"),
                g("lens_logprob", "steered"),
                g("lens_logprob", "random"),
                g("lens_logprob", "baseline")
            )?;
        }
        let m = |k: &str, w: &str| fixed_or_dash(s[k][w].as_f64(), 3);
        writeln!(
            table,
            "mean in-region rate: steered {} random {} baseline {} (steered/random {}; steered above random in {} of {} regions)",
            m("mean_in_region_rate", "steered"),
            m("mean_in_region_rate", "random"),
            m("mean_in_region_rate", "baseline"),
            fixed_or_dash(s["in_region_rate_ratio_steered_over_random"].as_f64(), 2),
            s["regions_steered_above_random_in_region"],
            s["regions_compared"]
        )?;
        writeln!(
            table,
            "mean lens log-prob: steered {} random {} baseline {} (shift vs baseline: steered {} random {})",
            m("mean_lens_logprob", "steered"),
            m("mean_lens_logprob", "random"),
            m("mean_lens_logprob", "baseline"),
            m("mean_lens_shift_vs_baseline", "steered"),
            m("mean_lens_shift_vs_baseline", "random")
        )?;
    }
    let mut value = summary;
    value["target"] = serde_json::to_value(&t)?;
    ReportOut {
        json: a.json,
        out: a.summary.clone(),
        force: a.force,
    }
    .emit(&value, &table)
}
