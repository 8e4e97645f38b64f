//! `ood-baseline`: EP's nearest-exemplar distance as an out-of-distribution score against a
//! k-NN baseline on a random sample, from activation files or (feature torch) from texts.

use super::args::{check_output, name_of, ReportOut};
#[cfg(feature = "torch")]
use super::on_model::{load_model, model_target, texts_to_rows};
use anyhow::{bail, Result};
use clap::Args;
use exemplar::analysis::ood_baseline;
use exemplar::Dictionary;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct OodBaselineArgs {
    /// The dictionary.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dictionary: PathBuf,
    /// Reference activations the baseline samples from (those the dictionary was built from,
    /// or like them), activation files.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub reference: Vec<PathBuf>,
    /// Held-out in-distribution activation files.
    #[arg(long = "activations", short = 'a', num_args = 1.., value_name = "FILE")]
    pub activations: Vec<PathBuf>,
    /// An out-of-distribution activation file (repeat for several sets).
    #[arg(long, value_name = "FILE")]
    pub ood: Vec<PathBuf>,
    /// Tensor of .safetensors inputs.
    #[arg(long, value_name = "NAME")]
    pub tensor: Option<String>,
    /// Text mode: a Gemma checkpoint; the texts below are run through it to the hook (CPU, f32).
    #[cfg(feature = "torch")]
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Text mode: the hook (default: the dictionary's).
    #[cfg(feature = "torch")]
    #[arg(long, value_name = "HOOK", requires = "model")]
    pub hook: Option<String>,
    /// Text mode: apply the dictionary at --hook although it was built at another (recorded).
    #[cfg(feature = "torch")]
    #[arg(long, requires = "hook")]
    pub other_hook: bool,
    /// Text mode: reference texts (.txt one per line, or .jsonl with --text-field).
    #[cfg(feature = "torch")]
    #[arg(long, value_name = "FILE", requires = "model")]
    pub reference_text: Option<PathBuf>,
    /// Text mode: held-out in-distribution texts.
    #[cfg(feature = "torch")]
    #[arg(long, value_name = "FILE", requires = "model")]
    pub text: Option<PathBuf>,
    /// Text mode: an out-of-distribution text file (repeat for several sets).
    #[cfg(feature = "torch")]
    #[arg(long, value_name = "FILE", requires = "model")]
    pub ood_text: Vec<PathBuf>,
    /// Text mode: the JSON Lines field holding the text.
    #[cfg(feature = "torch")]
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_field: String,
    /// Text mode: tokens kept per text after the BOS.
    #[cfg(feature = "torch")]
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub ctx: usize,
    /// Reference rows sampled for the baseline (default: the dictionary's K).
    #[arg(long, value_name = "N")]
    pub sample_size: Option<usize>,
    /// k of the baseline's k-th-nearest-sample distance (comma-separated for several).
    #[arg(
        long,
        short = 'k',
        default_value = "1",
        value_delimiter = ',',
        value_name = "K"
    )]
    pub k: Vec<usize>,
    /// Seed of the sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub report: ReportOut,
}

fn read_rows(paths: &[PathBuf], tensor: &Option<String>, d: usize) -> Result<Vec<f32>> {
    let mut s = exemplar::data::ActivationStream::open(
        paths,
        exemplar::data::StreamOptions {
            tensor: tensor.clone(),
            skip_nonfinite: false,
        },
    )?;
    if s.dim() != d {
        bail!(
            "{}: D = {}, but the dictionary has D = {d}",
            paths[0].display(),
            s.dim()
        );
    }
    let mut out = vec![];
    while let Some(b) = s.next_batch(16_384)? {
        out.extend_from_slice(&b.data);
    }
    Ok(out)
}

type RowSets = (Vec<f32>, (String, Vec<f32>), Vec<(String, Vec<f32>)>, Value);

#[cfg(feature = "torch")]
fn ood_text_rows(a: &OodBaselineArgs, dict: &Dictionary) -> Result<Option<RowSets>> {
    use exemplar::analysis::read_texts;
    let Some(model_dir) = &a.model else {
        return Ok(None);
    };
    let (Some(reference), Some(text)) = (&a.reference_text, &a.text) else {
        bail!("text mode needs --reference-text, --text and at least one --ood-text");
    };
    if a.ood_text.is_empty() {
        bail!("text mode needs at least one --ood-text");
    }
    let (_, t) = model_target(
        dict,
        &a.dictionary,
        model_dir,
        a.hook.as_deref(),
        a.other_hook,
    )?;
    let reference_texts = read_texts(reference, &a.text_field)?;
    let in_texts = read_texts(text, &a.text_field)?;
    let ood_texts: Vec<(String, Vec<String>)> = a
        .ood_text
        .iter()
        .map(|p| Ok((name_of(p), read_texts(p, &a.text_field)?)))
        .collect::<Result<_>>()?;
    let (model, tok) = load_model(model_dir)?;
    let rows = |texts: &[String]| texts_to_rows(&model, &tok, t.hook, texts, a.ctx);
    Ok(Some((
        rows(&reference_texts)?,
        (name_of(text), rows(&in_texts)?),
        ood_texts
            .iter()
            .map(|(n, t)| Ok((n.clone(), rows(t)?)))
            .collect::<Result<_>>()?,
        serde_json::to_value(&t)?,
    )))
}

pub fn ood_baseline(a: OodBaselineArgs) -> Result<()> {
    if let Some(o) = &a.report.out {
        check_output(o, a.report.force)?;
    }
    let dict = Dictionary::load(&a.dictionary)?;
    #[cfg(feature = "torch")]
    let text = ood_text_rows(&a, &dict)?;
    #[cfg(not(feature = "torch"))]
    let text: Option<RowSets> = None;
    let (reference, in_set, ood, target) = match text {
        Some(v) => v,
        None => {
            if a.reference.is_empty() || a.activations.is_empty() || a.ood.is_empty() {
                bail!("give --reference FILES, --activations FILES and at least one --ood FILE (or, with the torch feature, text mode: --model, --reference-text, --text, --ood-text)");
            }
            let d = dict.dim();
            (
                read_rows(&a.reference, &a.tensor, d)?,
                (
                    name_of(&a.activations[0]),
                    read_rows(&a.activations, &a.tensor, d)?,
                ),
                a.ood
                    .iter()
                    .map(|p| {
                        Ok((
                            name_of(p),
                            read_rows(std::slice::from_ref(p), &a.tensor, d)?,
                        ))
                    })
                    .collect::<Result<_>>()?,
                Value::Null,
            )
        }
    };
    let (report, sample) = ood_baseline::ood_baseline(
        &dict,
        &reference,
        (&in_set.0, &in_set.1),
        &ood,
        &ood_baseline::OodBaselineOptions {
            sample_size: a.sample_size,
            ks: a.k.clone(),
            seed: a.seed,
        },
    )?;
    let mut value = serde_json::to_value(&report)?;
    value["sampled_reference_rows"] = json!(sample);
    value["target"] = target;
    let mut table = String::new();
    writeln!(
        table,
        "θ = {:.6}, K = {}; baseline: {} reference rows sampled (seed {}) of {}",
        report.theta, report.regions, report.sample_size, report.seed, report.reference_rows
    )?;
    let mut head = format!(
        "{:<28} {:>8} {:>9} {:>9} {:>9}",
        "set", "rows", "EP in θ", "EP mean", "EP AUROC"
    );
    for k in &report.ks {
        write!(
            head,
            " {:>10} {:>10}",
            format!("{k}-NN in θ"),
            format!("{k}-NN AUROC")
        )?;
    }
    writeln!(table, "{head}")?;
    for s in std::iter::once(&report.in_distribution).chain(&report.out_of_distribution) {
        let mut line = format!(
            "{:<28} {:>8} {:>9.4} {:>9.4} {:>9}",
            s.name.chars().take(28).collect::<String>(),
            s.rows,
            s.ep.within_theta_rate,
            s.ep.mean,
            s.ep.auroc.map_or("(in)".into(), |v| format!("{v:.4}"))
        );
        for k in &s.knn {
            write!(
                line,
                " {:>10.4} {:>10}",
                k.within_theta_rate,
                k.auroc.map_or("(in)".into(), |v| format!("{v:.4}"))
            )?;
        }
        writeln!(table, "{line}")?;
    }
    for (s, m) in report
        .out_of_distribution
        .iter()
        .zip(&report.ep_minus_best_knn_auroc)
    {
        writeln!(
            table,
            "{}: EP AUROC − best k-NN AUROC = {m:+.4} ({})",
            s.name,
            if *m > 0.0 {
                "EP beats the baseline"
            } else {
                "EP does not beat the baseline"
            }
        )?;
    }
    a.report.emit(&value, &table)
}
