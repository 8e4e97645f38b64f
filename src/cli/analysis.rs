//! The analyses as subcommands (`steer`, `ablate`, `label`, `hierarchy`, `stability`,
//! `saturation`, `ood-baseline`): argument definitions and run functions over
//! `exemplar::analysis`. Everything that can be checked without the model (the dictionary
//! against the model's `config.json` and the hook, region ids, α, the input files) is checked
//! before any weight is read.

use super::args::{check_output, ReportOut};
use anyhow::{bail, Context, Result};
use clap::Args;
use exemplar::analysis::{hierarchy, ood_baseline, saturation, stability};
use exemplar::dictionary::Basis;
use exemplar::output::write_atomic;
use exemplar::Dictionary;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn basis(s: &str) -> Basis {
    match s {
        "mean" => Basis::Mean,
        _ => Basis::Exemplar,
    }
}

fn name_of(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn load_all(paths: &[PathBuf]) -> Result<Vec<(String, Dictionary)>> {
    paths
        .iter()
        .map(|p| Ok((name_of(p), Dictionary::load(p)?)))
        .collect()
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

// ---------------------------------------------------------------------------------------------
// hierarchy

#[derive(Args, Debug)]
pub struct HierarchyArgs {
    /// Dictionaries of one build at several percentiles (any order; sorted coarsest first).
    #[arg(required = true, num_args = 2.., value_name = "DICT")]
    pub dictionaries: Vec<PathBuf>,
    /// A path between two regions of --path-level: `A,B` (repeatable).
    #[arg(long, value_name = "A,B")]
    pub path: Vec<String>,
    /// The level of the --path regions (0 = the coarsest).
    #[arg(long, default_value_t = 0, value_name = "L")]
    pub path_level: usize,
    /// k of the k-nearest-neighbour graphs the paths are traced in.
    #[arg(long, default_value_t = 3, value_name = "K")]
    pub knn: usize,
    #[command(flatten)]
    pub report: ReportOut,
}

fn parse_pair(s: &str) -> Result<(usize, usize)> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    match parts.as_slice() {
        [a, b] => Ok((
            a.parse()
                .with_context(|| format!("--path {s}: `{a}` is not a region id"))?,
            b.parse()
                .with_context(|| format!("--path {s}: `{b}` is not a region id"))?,
        )),
        _ => bail!("--path {s}: expected two region ids, A,B"),
    }
}

pub fn hierarchy(a: HierarchyArgs) -> Result<()> {
    if let Some(o) = &a.report.out {
        check_output(o, a.report.force)?;
    }
    let pairs: Vec<(usize, usize)> = a
        .path
        .iter()
        .map(|p| parse_pair(p))
        .collect::<Result<_>>()?;
    let owned = load_all(&a.dictionaries)?;
    let dicts: Vec<(String, &Dictionary)> = owned.iter().map(|(n, d)| (n.clone(), d)).collect();
    let h = hierarchy::build_hierarchy(&dicts)?;
    let mut value = h.to_json(&dicts);
    let mut table = String::new();
    writeln!(
        table,
        "{:<6} {:<44} {:>10} {:>8} {:>8}",
        "level", "dictionary", "θ", "p", "K"
    )?;
    for (i, l) in h.levels.iter().enumerate() {
        writeln!(
            table,
            "{:<6} {:<44} {:>10.6} {:>8} {:>8}",
            i,
            l.name,
            l.theta,
            l.percentile.map_or("-".into(), |p| p.to_string()),
            l.regions
        )?;
    }
    writeln!(
        table,
        "\nfine → coarse   parent within θ   mean purity   coarse regions used"
    )?;
    for s in value["summary"].as_array().into_iter().flatten() {
        writeln!(
            table,
            "{:>4} → {:<8} {:>15.3}   {:>11}   {:>19}",
            s["fine"],
            s["coarse"],
            s["parent_within_theta"].as_f64().unwrap_or(f64::NAN),
            f(s["mean_purity"].as_f64(), 3),
            s["coarse_regions_used"]
        )?;
    }
    let mut paths = vec![];
    for (x, y) in pairs {
        h.check_node(a.path_level, x)?;
        h.check_node(a.path_level, y)?;
        let tree = h.tree_path((a.path_level, x), (a.path_level, y));
        let knn = hierarchy::knn_paths(&h, &dicts, a.path_level, x, y, a.knn)?;
        let show = |v: &[(usize, usize)]| {
            v.iter()
                .map(|(l, r)| format!("L{l}:r{r}"))
                .collect::<Vec<_>>()
                .join(" → ")
        };
        writeln!(
            table,
            "\npath L{}:r{x} ↔ L{}:r{y}",
            a.path_level, a.path_level
        )?;
        writeln!(
            table,
            "  tree: {}",
            tree.as_deref().map_or("no common ancestor".into(), show)
        )?;
        for p in &knn {
            writeln!(
                table,
                "  {}-NN graph of level {}: {}",
                a.knn,
                p.level,
                p.path.as_ref().map_or("not connected".into(), |v| {
                    v.iter()
                        .map(|r| format!("r{r}"))
                        .collect::<Vec<_>>()
                        .join(" → ")
                })
            )?;
        }
        paths.push(json!({
            "level": a.path_level, "from": x, "to": y,
            "tree_path": tree.map(|v| v.iter().map(|(l, r)| json!({"level": l, "region": r})).collect::<Vec<_>>()),
            "knn": a.knn,
            "knn_paths": knn,
        }));
    }
    value["paths"] = json!(paths);
    a.report.emit(&value, &table)
}

// ---------------------------------------------------------------------------------------------
// stability

#[derive(Args, Debug)]
pub struct StabilityArgs {
    /// Dictionaries built on the same corpus with different seeds (`build --shuffle-seed S`).
    #[arg(required = true, num_args = 2.., value_name = "DICT")]
    pub dictionaries: Vec<PathBuf>,
    /// Directions matched: mean member directions (default, the reference's seed-stability
    /// view) or exemplars.
    #[arg(long, default_value = "mean", value_parser = ["mean", "exemplar"])]
    pub basis: String,
    /// A region persists in another dictionary when its Hungarian partner's cosine is at least this.
    #[arg(
        long,
        default_value_t = 0.7,
        value_name = "COS",
        allow_negative_numbers = true
    )]
    pub cutoff: f64,
    /// Also write one CSV line per region (dictionary, region, N, c, D, mean matched cos, persisted).
    #[arg(long, value_name = "FILE")]
    pub regions_csv: Option<PathBuf>,
    #[command(flatten)]
    pub report: ReportOut,
}

pub fn stability(a: StabilityArgs) -> Result<()> {
    for o in a.report.out.iter().chain(&a.regions_csv) {
        check_output(o, a.report.force)?;
    }
    let owned = load_all(&a.dictionaries)?;
    let dicts: Vec<(String, &Dictionary)> = owned.iter().map(|(n, d)| (n.clone(), d)).collect();
    let r = stability::stability(&dicts, basis(&a.basis), a.cutoff)?;
    if let Some(p) = &a.regions_csv {
        let mut csv = String::from(
            "dictionary,region,members,coherence,d,mean_matched_cos,persisted_in,persisted\n",
        );
        for x in &r.regions {
            writeln!(
                csv,
                "{},{},{},{},{},{},{},{}",
                x.dictionary,
                x.region,
                x.members,
                x.coherence,
                x.d.map_or(String::new(), |v| v.to_string()),
                x.mean_matched_cos,
                x.persisted_in,
                x.persisted
            )?;
        }
        write_atomic(p, csv.as_bytes(), a.report.force)?;
    }
    let mut table = String::new();
    writeln!(
        table,
        "{} dictionaries, {} basis, cutoff {}",
        r.dictionaries.len(),
        r.basis,
        r.cutoff
    )?;
    writeln!(
        table,
        "{:<40} {:>8} {:>10} {:>10} {:>10}",
        "dictionary", "K", "order seed", "persisted", "AUROC(D)"
    )?;
    for d in &r.dictionaries {
        writeln!(
            table,
            "{:<40} {:>8} {:>10} {:>10.3} {:>10}",
            d.name,
            d.regions,
            d.order_seed.map_or("-".into(), |s| s.to_string()),
            d.persisted_fraction,
            f(d.auroc_d, 3)
        )?;
    }
    writeln!(
        table,
        "all {} regions: persisted {:.3}; AUROC for persisting: D = log10(N·c²) {}, log10 N {}, c {}; Spearman(D, mean matched cos) {}",
        r.regions_total,
        r.persisted_fraction,
        f(r.auroc_d, 3),
        f(r.auroc_log_members, 3),
        f(r.auroc_coherence, 3),
        f(r.spearman_d_mean_cos, 3)
    )?;
    a.report.emit(&serde_json::to_value(&r)?, &table)
}

// ---------------------------------------------------------------------------------------------
// saturation

#[derive(Args, Debug)]
pub struct SaturationArgs {
    /// Dictionaries whose build recorded the curve (any build by this version).
    #[arg(required = true, num_args = 1.., value_name = "DICT")]
    pub dictionaries: Vec<PathBuf>,
    /// A name per dictionary for the legend, comma-separated or repeated (default: the file names).
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub name: Vec<String>,
    /// The x axis: tokens (BOS included) or activations.
    #[arg(long, default_value = "tokens", value_parser = ["tokens", "activations"])]
    pub x: String,
    /// Draw the curves into this PNG.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
    #[command(flatten)]
    pub report: ReportOut,
}

pub fn saturation(a: SaturationArgs) -> Result<()> {
    for o in a.report.out.iter().chain(&a.png) {
        check_output(o, a.report.force)?;
    }
    if !a.name.is_empty() && a.name.len() != a.dictionaries.len() {
        bail!(
            "--name: {} names for {} dictionaries",
            a.name.len(),
            a.dictionaries.len()
        );
    }
    let mut curves = vec![];
    for (i, p) in a.dictionaries.iter().enumerate() {
        let d = Dictionary::load(p)?;
        let name = a.name.get(i).cloned().unwrap_or_else(|| name_of(p));
        curves.push(saturation::curve(&name, &d).with_context(|| p.display().to_string())?);
    }
    let axis = if a.x == "activations" {
        saturation::Axis::Activations
    } else {
        saturation::Axis::Tokens
    };
    if let Some(png) = &a.png {
        saturation::plot(&curves, axis, png, a.report.force)?;
    }
    let mut table = String::new();
    writeln!(
        table,
        "{:<36} {:>8} {:>10} {:>12} {:>12} {:>10} {:>14}",
        "dictionary", "batches", "θ", "tokens", "activations", "K", "new K / 1k act"
    )?;
    for c in &curves {
        let last = c.points.last().expect("a curve has points");
        writeln!(
            table,
            "{:<36} {:>8} {:>10.6} {:>12} {:>12} {:>10} {:>14}{}",
            c.name,
            c.points.len(),
            c.theta,
            last.tokens,
            last.activations,
            last.partitions,
            f(c.final_rate_per_1k, 3),
            if c.saturated { "  saturated" } else { "" }
        )?;
    }
    if let Some(png) = &a.png {
        writeln!(table, "plot written to {}", png.display())?;
    }
    a.report.emit(&json!({ "curves": curves }), &table)
}

// ---------------------------------------------------------------------------------------------
// ood-baseline

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

// ---------------------------------------------------------------------------------------------
// Model-backed commands (feature torch)

#[cfg(feature = "torch")]
pub use torch::*;

/// Checks the dictionary against the model's `config.json` and the hook (no weights read).
#[cfg(feature = "torch")]
fn model_target(
    dict: &Dictionary,
    dict_path: &Path,
    model_dir: &Path,
    hook: Option<&str>,
    other_hook: bool,
) -> Result<(
    exemplar::model::GemmaConfig,
    exemplar::analysis::target::Target,
)> {
    let config = exemplar::model::GemmaConfig::from_file(&model_dir.join("config.json"))?;
    let t = exemplar::analysis::target::resolve_target(
        dict, dict_path, model_dir, &config, hook, other_hook,
    )
    .map_err(|e| {
        let hint = match &e {
            exemplar::Error::InvalidParameter {
                name: "hook",
                message,
            } if message.contains("another hook") => {
                "; pass --other-hook to apply it there anyway (the output records it)"
            }
            _ => "",
        };
        anyhow::anyhow!("{e}{hint}")
    })?;
    Ok((config, t))
}

#[cfg(feature = "torch")]
pub(super) fn load_model(
    dir: &Path,
) -> Result<(exemplar::model::Gemma, exemplar::model::Tokenizer)> {
    let model = exemplar::model::Gemma::load(dir, tch::Kind::Float, tch::Device::Cpu)?;
    let tok = exemplar::model::Tokenizer::from_file(
        &dir.join("tokenizer.json"),
        model.config.bos_token_id,
    )?;
    Ok((model, tok))
}

/// Every non-BOS position's activation at `hook` of each text (BOS + at most `ctx` tokens).
#[cfg(feature = "torch")]
fn texts_to_rows(
    model: &exemplar::model::Gemma,
    tok: &exemplar::model::Tokenizer,
    hook: exemplar::model::HookPoint,
    texts: &[String],
    ctx: usize,
) -> Result<Vec<f32>> {
    use exemplar::model::rows::{forward_rows, RowSelection};
    let _guard = tch::no_grad_guard();
    let mut ids = vec![];
    for t in texts {
        let mut v = tok.encode(t)?;
        v.truncate(ctx + 1);
        if v.len() >= 2 {
            ids.push(v);
        }
    }
    if ids.is_empty() {
        bail!("no text has a token after the BOS");
    }
    let pb = exemplar::progress::progress_bar(ids.len() as u64, "forward");
    let mut out = vec![];
    for chunk in ids.chunks(16) {
        let refs: Vec<&[i64]> = chunk.iter().map(|v| v.as_slice()).collect();
        let (rows, _, _) = forward_rows(model, hook, &refs, &RowSelection::AfterBos)?;
        out.extend(rows);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(out)
}

#[cfg(feature = "torch")]
mod torch {
    use super::*;
    use exemplar::analysis::ablate::{self as abl, RegionScore};
    use exemplar::analysis::label as lab;
    use exemplar::analysis::steer::{self as st, EditKind, EditSpec};
    use exemplar::analysis::{read_texts, target};
    use exemplar::model::Sampling;
    use std::io::Write;

    /// `--dictionary`, `--model`, `--hook` and `--other-hook`: a dictionary applied to a model
    /// at a hook (steer, ablate), checked against the model's `config.json` before any weight
    /// is read.
    #[derive(Args, Debug)]
    pub struct ModelTarget {
        /// The dictionary.
        #[arg(long, short = 'd', value_name = "FILE")]
        pub dictionary: PathBuf,
        /// Hugging Face checkpoint directory (runs on the CPU in f32).
        #[arg(long, value_name = "DIR")]
        pub model: PathBuf,
        /// Hook to apply the dictionary at (default: the dictionary's).
        #[arg(long)]
        pub hook: Option<String>,
        /// Apply the dictionary at --hook although it was built at another (recorded in the output).
        #[arg(long, requires = "hook")]
        pub other_hook: bool,
    }

    impl ModelTarget {
        /// The dictionary, and where it applies in the model.
        pub(crate) fn resolve(&self) -> Result<(Dictionary, target::Target)> {
            let dict = Dictionary::load(&self.dictionary)?;
            let (_, t) = model_target(
                &dict,
                &self.dictionary,
                &self.model,
                self.hook.as_deref(),
                self.other_hook,
            )?;
            Ok((dict, t))
        }
    }

    // -----------------------------------------------------------------------------------------
    // steer

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
            bail!("--together applies to --edit ablate (add, raise and clamp take one region per edit)");
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

    /// The regions of `FILE:LABEL` (a file of `explain-labels`).
    pub(crate) fn region_set(spec: &str) -> Result<Vec<usize>> {
        let (file, label) = spec
            .rsplit_once(':')
            .with_context(|| format!("--region-set {spec}: give FILE:LABEL"))?;
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("--region-set: cannot read {file}"))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("--region-set: {file} is not JSON"))?;
        let Some(sets) = v.get("sets").and_then(Value::as_object) else {
            bail!("--region-set: {file} has no `sets` object (write it with `explain-labels`)");
        };
        let Some(regions) = sets.get(label).and_then(Value::as_array) else {
            let names: Vec<&str> = sets.keys().map(String::as_str).collect();
            bail!(
                "--region-set: {file} has no set `{label}` (it has: {})",
                names.join(", ")
            );
        };
        regions
            .iter()
            .map(|r| {
                r.as_u64().map(|r| r as usize).with_context(|| {
                    format!("--region-set: {file}: set `{label}` holds {r}, not a region id")
                })
            })
            .collect()
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
            let mut v = serde_json::to_value(r)
                .map_err(|e| exemplar::Error::param("record", e.to_string()))?;
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
                "regions",
                "in-reg st",
                "in-reg rnd",
                "in-reg base",
                "lens st",
                "lens rnd",
                "lens base"
            )?;
            for r in s["per_region"].as_array().into_iter().flatten() {
                let g = |m: &str, w: &str| f(r[m][w].as_f64(), 3);
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
            let m = |k: &str, w: &str| f(s[k][w].as_f64(), 3);
            writeln!(
                table,
                "mean in-region rate: steered {} random {} baseline {} (steered/random {}; steered above random in {} of {} regions)",
                m("mean_in_region_rate", "steered"),
                m("mean_in_region_rate", "random"),
                m("mean_in_region_rate", "baseline"),
                f(s["in_region_rate_ratio_steered_over_random"].as_f64(), 2),
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

    // -----------------------------------------------------------------------------------------
    // ablate

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
                    let (r, pos, _) =
                        exemplar::model::rows::forward_rows(&model, t.hook, &refs, &sel)?;
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
                    f(x.clean_loss, 4),
                    f(x.ablated_loss, 4),
                    f(x.delta, 4)
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
                f(sel.selectivity, 4)
            )?;
            report["selectivity"] = serde_json::to_value(&sel)?;
            if a.random_control {
                let iv = abl::ablation(&dict, t.hook, &control);
                let (sel_c, _) = abl::selectivity(&model, &dict, t.hook, &ids, &regions, &iv)?;
                writeln!(
                    table,
                    "  random control: Δ inside {}, Δ outside {}",
                    f(sel_c.inside.delta, 4),
                    f(sel_c.outside.delta, 4)
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

    // -----------------------------------------------------------------------------------------
    // label

    #[derive(Args, Debug)]
    pub struct LabelArgs {
        /// The dictionary.
        #[arg(long, short = 'd', value_name = "FILE")]
        pub dictionary: PathBuf,
        /// Hugging Face checkpoint directory of the model the dictionary was built on.
        #[arg(long, value_name = "DIR")]
        pub model: PathBuf,
        /// Regions to label, comma-separated (default: the --top largest).
        #[arg(long, short = 'r', value_delimiter = ',', value_name = "R")]
        pub region: Vec<usize>,
        /// Label the N largest regions.
        #[arg(long, default_value_t = 50, value_name = "N")]
        pub top: usize,
        /// Only regions with at least this many members (with --top).
        #[arg(long, default_value_t = 1, value_name = "N")]
        pub min_members: u64,
        /// Logit-lens tokens per direction.
        #[arg(long, default_value_t = 10, value_name = "N")]
        pub lens_tokens: usize,
        /// Closest member contexts per region.
        #[arg(long, default_value_t = 5, value_name = "N")]
        pub examples: usize,
        /// Tokens either side of an example's token.
        #[arg(long, default_value_t = 12, value_name = "N")]
        pub window: usize,
        /// Also write a markdown report here.
        #[arg(long, value_name = "FILE")]
        pub markdown: Option<PathBuf>,
        /// Output JSON Lines: one line per region.
        #[arg(long, short = 'o', value_name = "FILE")]
        pub out: PathBuf,
        /// Overwrite outputs.
        #[arg(long)]
        pub force: bool,
    }

    pub fn label(a: LabelArgs) -> Result<()> {
        check_output(&a.out, a.force)?;
        if let Some(m) = &a.markdown {
            check_output(m, a.force)?;
        }
        if a.lens_tokens == 0 {
            bail!("--lens-tokens must be at least 1");
        }
        let dict = Dictionary::load(&a.dictionary)?;
        let config = exemplar::model::GemmaConfig::from_file(&a.model.join("config.json"))?;
        let check = target::check_model(&dict, &a.dictionary, &a.model, &config)?;
        let explicit = (!a.region.is_empty()).then_some(a.region.as_slice());
        let regions = lab::choose_regions(&dict, explicit, a.top, a.min_members)?;
        if regions.is_empty() {
            bail!("no region to label (none has ≥ {} members)", a.min_members);
        }
        let (model, tok) = load_model(&a.model)?;
        let labels = lab::label_regions(
            &model,
            &tok,
            &dict,
            &regions,
            a.lens_tokens,
            a.examples,
            a.window,
        )?;
        let mut s = String::new();
        for l in &labels {
            let mut v = serde_json::to_value(l)?;
            v["model_check"] = serde_json::to_value(check)?;
            writeln!(s, "{v}")?;
        }
        write_atomic(&a.out, s.as_bytes(), a.force)?;
        let md = lab::markdown(&name_of(&a.dictionary), &dict, &labels);
        if let Some(m) = &a.markdown {
            write_atomic(m, md.as_bytes(), a.force)?;
        }
        for l in labels.iter().take(10) {
            let toks: Vec<&str> = l
                .exemplar_lens
                .iter()
                .take(8)
                .map(|t| t.token.as_str())
                .collect();
            println!(
                "r{:<6} {:>7} members  lens: {}",
                l.region,
                l.members,
                toks.join(" ").replace('\n', "⏎")
            );
        }
        println!("{} regions labelled → {}", labels.len(), a.out.display());
        Ok(())
    }
}
