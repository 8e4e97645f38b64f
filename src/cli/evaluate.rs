//! `exemplar probe`, `exemplar detect` and `exemplar ood`: downstream evaluations of a
//! dictionary (linear probes, AxBench-style concept detection, the OOD signal). Each reads
//! activation files with provenance sidecars, or (feature `torch`) runs texts through a Gemma-2
//! checkpoint; prints a table, or JSON with `--json`, and writes the JSON report with `--out`.

use super::args::ReportOut;
#[cfg(feature = "torch")]
use super::args::TextModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use exemplar::data::StreamOptions;
use exemplar::dictionary::Basis;
use exemplar::eval::detect::{self, TextField};
use exemplar::eval::documents::{self, DocumentActivations};
use exemplar::eval::ood;
use exemplar::eval::probe::{self, FeatureKind, Pooling, ProbeOptions};
use exemplar::sae::Sae;
use exemplar::Dictionary;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Where token activations come from: files, or (feature torch) a model run on the texts.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// Activation files with provenance sidecars (`<file>.provenance.jsonl`), which tie rows to
    /// documents.
    #[arg(long = "activations", short = 'a', num_args = 1.., value_name = "FILE")]
    pub activations: Vec<PathBuf>,
    /// Tensor to read from .safetensors files (default: `activations`, or the only 2-D tensor).
    #[arg(long, value_name = "NAME")]
    pub tensor: Option<String>,
    #[command(flatten)]
    #[cfg(feature = "torch")]
    pub text: TextModelArgs,
}

impl SourceArgs {
    fn stream_options(&self) -> StreamOptions {
        StreamOptions {
            tensor: self.tensor.clone(),
            skip_nonfinite: false,
        }
    }

    /// True in text mode.
    fn text_mode(&self) -> bool {
        #[cfg(feature = "torch")]
        if self.text.text_mode() {
            return true;
        }
        false
    }

    fn check(&self) -> Result<()> {
        if self.activations.is_empty() && !self.text_mode() {
            #[cfg(feature = "torch")]
            bail!("give --activations FILES, or --model DIR --hook H (text mode)");
            #[cfg(not(feature = "torch"))]
            bail!("give --activations FILES");
        }
        Ok(())
    }

    /// Token activations by document: from the files, or document `i` = `texts[i]`.
    fn documents(&self, texts: &dyn Fn() -> Result<Vec<String>>) -> Result<DocumentActivations> {
        #[cfg(feature = "torch")]
        if self.text.text_mode() {
            return self.text.documents(&texts()?);
        }
        let _ = texts;
        Ok(documents::read_documents(
            &self.activations,
            self.stream_options(),
        )?)
    }
}

// ---------------------------------------------------------------------------------------------
// probe

#[derive(Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Labelled documents, JSON Lines: {"text", "label"} (label a string or an integer); with
    /// --activations, line i is document i unless it has a "doc_id".
    #[arg(long, value_name = "FILE")]
    pub labels: PathBuf,
    /// The dictionary (for the EP features).
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dictionary: PathBuf,
    /// An SAE (SAELens directory, .safetensors, or Gemma Scope .npz) for the `sae` features.
    #[arg(long, value_name = "PATH")]
    pub sae: Option<PathBuf>,
    /// Feature sets, comma-separated (default: raw,ep-onehot,ep-topk, plus sae with --sae).
    #[arg(long, value_delimiter = ',', value_parser = ["raw", "ep-onehot", "ep-topk", "sae"])]
    pub features: Vec<String>,
    /// Pooling of the code features (ep-onehot, ep-topk, sae) over a document's tokens.
    #[arg(long, default_value = "count", value_parser = ["count", "mean", "max", "last"])]
    pub pool: String,
    /// Pooling of the raw activations.
    #[arg(long, default_value = "mean", value_parser = ["count", "mean", "max", "last"])]
    pub raw_pool: String,
    /// Count pooling: each token adds 1 for each of its N largest positive features
    /// (default: k for ep-topk, 1 for ep-onehot, 20 for sae and raw).
    #[arg(long, value_name = "N")]
    pub top_n: Option<usize>,
    /// Clip pooled values to at most 1 (counts become presence).
    #[arg(long)]
    pub binarize: bool,
    /// k of the ep-topk readout.
    #[arg(long, short = 'k', default_value_t = 8)]
    pub k: usize,
    /// Basis of the ep-topk readout.
    #[arg(long, default_value = "exemplar", value_parser = ["exemplar", "mean"])]
    pub basis: String,
    /// Fraction of each class held out for the test split.
    #[arg(long, default_value_t = 0.2, value_name = "F")]
    pub test_fraction: f64,
    /// Folds of the stratified cross-validation that chooses C.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub folds: usize,
    /// Values of C tried, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.01,0.1,1,10,100",
        value_name = "C,..."
    )]
    pub c_grid: Vec<f64>,
    /// Seed of the split and the folds.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Classifiers: logistic regression (C by CV), a decision tree (CART, Gini; --tree-depth,
    /// min split 2, min leaf 1, on the unstandardised features), or both.
    #[arg(long, default_value = "logistic", value_parser = ["logistic", "tree", "both"])]
    pub classifier: String,
    /// Maximum depth of the decision tree.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub tree_depth: usize,
    #[command(flatten)]
    pub report: ReportOut,
}

fn parse_pool(name: &str, top_n: usize) -> Pooling {
    match name {
        "mean" => Pooling::Mean,
        "max" => Pooling::Max,
        "last" => Pooling::Last,
        _ => Pooling::Count(top_n),
    }
}

fn parse_basis(name: &str) -> Basis {
    if name == "mean" {
        Basis::Mean
    } else {
        Basis::Exemplar
    }
}

pub fn probe(a: ProbeArgs) -> Result<()> {
    a.source.check()?;
    a.report.check()?;
    let dict = Dictionary::load(&a.dictionary)?;
    let sae = a.sae.as_deref().map(Sae::load).transpose()?;
    let labels = documents::read_labeled_jsonl(&a.labels, a.source.text_mode())?;
    let mut names: Vec<String> = labels.iter().map(|l| l.label.clone()).collect();
    names.sort();
    names.dedup();
    let y: Vec<usize> = labels
        .iter()
        .map(|l| names.binary_search(&l.label).expect("label listed"))
        .collect();
    let mut features = a.features.clone();
    if features.is_empty() {
        features = vec!["raw".into(), "ep-onehot".into(), "ep-topk".into()];
        if sae.is_some() {
            features.push("sae".into());
        }
    }
    let texts = || -> Result<Vec<String>> {
        Ok(labels
            .iter()
            .map(|l| l.text.clone().unwrap_or_default())
            .collect())
    };
    let docs = a.source.documents(&texts)?;
    if docs.dim != dict.dim() {
        bail!(
            "the activations have D = {}, the dictionary D = {}",
            docs.dim,
            dict.dim()
        );
    }
    // In text mode document i is labels[i]; with files, the doc_id of the line.
    let doc_ids: Vec<i64> = if a.source.text_mode() {
        (0..labels.len() as i64).collect()
    } else {
        labels.iter().map(|l| l.doc_id).collect()
    };
    if let Some(l) = labels
        .iter()
        .zip(&doc_ids)
        .find(|(_, id)| !docs.docs.contains_key(id))
    {
        bail!(
            "{}:{}: document {} has no activation rows in the input",
            a.labels.display(),
            l.0.line,
            l.1
        );
    }
    let options = ProbeOptions {
        test_fraction: a.test_fraction,
        folds: a.folds,
        c_grid: a.c_grid.clone(),
        seed: a.seed,
    };
    let mut results = Vec::new();
    let mut table = String::new();
    writeln!(
        table,
        "probe: {} documents, {} classes ({}), test fraction {}, {}-fold CV over C ∈ {:?}",
        labels.len(),
        names.len(),
        names.join(", "),
        a.test_fraction,
        a.folds,
        a.c_grid
    )?;
    writeln!(
        table,
        "{:<28} {:>8} {:<16} {:>8} {:>9} {:>9} {:>9}",
        "features", "width", "pooling", "C", "cv acc", "accuracy", "macro-F1"
    )?;
    let mut acc_of = std::collections::HashMap::new();
    for f in &features {
        let (kind, default_n) = match f.as_str() {
            "raw" => (FeatureKind::Raw, 20),
            "ep-onehot" => (FeatureKind::EpOneHot, 1),
            "ep-topk" => (FeatureKind::EpTopK(a.k, parse_basis(&a.basis)), a.k),
            _ => (FeatureKind::Sae, 20),
        };
        if kind == FeatureKind::Sae && sae.is_none() {
            bail!("--features sae needs --sae PATH");
        }
        let pool_name = if kind == FeatureKind::Raw {
            &a.raw_pool
        } else {
            &a.pool
        };
        let pooling = parse_pool(pool_name, a.top_n.unwrap_or(default_n));
        let (x, width) = probe::document_features(
            &docs,
            &doc_ids,
            kind,
            pooling,
            a.binarize,
            Some(&dict),
            sae.as_ref(),
        )
        .with_context(|| format!("features {}", kind.name()))?;
        if a.classifier != "logistic" {
            let cfg = exemplar::eval::tree::TreeConfig {
                max_depth: a.tree_depth,
                ..Default::default()
            };
            let r = probe::run_tree_probe(&x, width, &y, names.len(), &options, &cfg)
                .with_context(|| format!("tree probe on {}", kind.name()))?;
            writeln!(
                table,
                "{:<28} {:>8} {:<16} {:>8} {:>9} {:>9.4} {:>9.4}",
                format!("{} (tree d{})", kind.name(), a.tree_depth),
                width,
                pooling.name() + if a.binarize { ", bin" } else { "" },
                "-",
                "-",
                r.test.accuracy,
                r.test.macro_f1
            )?;
            results.push(serde_json::json!({
                "features": kind.name(), "classifier": "tree", "width": width,
                "pooling": pooling.name(), "binarize": a.binarize, "n_train": r.n_train,
                "n_test": r.n_test, "tree_config": r.config, "depth": r.depth,
                "leaves": r.leaves, "accuracy": r.test.accuracy, "macro_f1": r.test.macro_f1,
                "tree": r.tree,
            }));
            if a.classifier == "tree" {
                acc_of.insert(f.clone(), r.test.accuracy);
                continue;
            }
        }
        let r = probe::run_probe(&x, width, &y, names.len(), &options)
            .with_context(|| format!("probe on {}", kind.name()))?;
        let cv_best =
            r.cv.iter()
                .find(|s| s.c == r.chosen_c)
                .map_or(f64::NAN, |s| s.mean_accuracy);
        writeln!(
            table,
            "{:<28} {:>8} {:<16} {:>8} {:>9.4} {:>9.4} {:>9.4}",
            kind.name(),
            width,
            pooling.name() + if a.binarize { ", bin" } else { "" },
            r.chosen_c,
            cv_best,
            r.test.accuracy,
            r.test.macro_f1
        )?;
        acc_of.insert(f.clone(), r.test.accuracy);
        let per_class: Vec<serde_json::Value> = r
            .test
            .per_class
            .iter()
            .map(|m| {
                serde_json::json!({"label": names[m.class], "precision": m.precision,
                    "recall": m.recall, "f1": m.f1, "support": m.support})
            })
            .collect();
        results.push(serde_json::json!({
            "features": kind.name(), "classifier": "logistic", "width": width, "pooling": pooling.name(),
            "binarize": a.binarize, "n_train": r.n_train, "n_test": r.n_test,
            "chosen_c": r.chosen_c, "cv": r.cv, "accuracy": r.test.accuracy,
            "macro_f1": r.test.macro_f1, "per_class": per_class, "converged": r.converged,
            "sparse_fit": r.sparse,
        }));
    }
    let ratio = match (acc_of.get("ep-onehot"), acc_of.get("raw")) {
        (Some(e), Some(r)) if *r > 0.0 => Some(e / r),
        _ => None,
    };
    if let Some(q) = ratio {
        writeln!(table, "EP one-hot accuracy / raw accuracy: {q:.4}")?;
    }
    // The test documents (the same seeded split as every probe above), so another classifier
    // can be scored on the same split.
    let (_, test) = probe::stratified_split(&y, names.len(), a.test_fraction, a.seed)?;
    let test_doc_ids: Vec<i64> = test.iter().map(|&i| doc_ids[i]).collect();
    let value = serde_json::json!({
        "documents": labels.len(), "classes": names, "test_fraction": a.test_fraction,
        "test_doc_ids": test_doc_ids,
        "folds": a.folds, "c_grid": a.c_grid, "seed": a.seed,
        "standardized": "features standardised with mean/std fitted on the training rows",
        "results": results, "ep_onehot_over_raw_accuracy": ratio,
    });
    a.report.emit(&value, &table)
}

// ---------------------------------------------------------------------------------------------
// detect

#[derive(Args, Debug)]
pub struct DetectArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Concept500-style examples (.jsonl or .parquet): concept_id, concept (or output_concept),
    /// output [, input], category, optional split, optional doc_id.
    #[arg(long, value_name = "FILE")]
    pub concepts: PathBuf,
    /// The dictionary.
    #[arg(
        long,
        short = 'd',
        value_name = "FILE",
        required_unless_present = "sae",
        conflicts_with = "sae"
    )]
    pub dictionary: Option<PathBuf>,
    /// An SAE (SAELens directory, .safetensors, or Gemma Scope .npz) instead of a dictionary:
    /// per concept the feature with the largest positive-minus-negative mean code, scored by its
    /// max over tokens.
    #[arg(long, value_name = "PATH")]
    pub sae: Option<PathBuf>,
    /// Basis of the region choice and scoring direction (AxBench's EPMean / EPExemplar).
    #[arg(long, default_value = "mean", value_parser = ["mean", "exemplar"])]
    pub basis: String,
    /// Text of a row: `output`, or `input+output` (joined by a newline).
    #[arg(long, default_value = "output", value_parser = ["output", "input+output"])]
    pub text_field: String,
    /// Eval fraction of the seeded split per concept and category (when the file has no split).
    #[arg(long, default_value_t = 0.5, value_name = "F")]
    pub eval_fraction: f64,
    /// Seed of the split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub report: ReportOut,
}

pub fn detect(a: DetectArgs) -> Result<()> {
    a.source.check()?;
    a.report.check()?;
    // The dictionary (or the SAE) first: a wrong path fails before any other work.
    let dict = a.dictionary.as_deref().map(Dictionary::load).transpose()?;
    let sae = match (&dict, &a.sae) {
        (None, Some(path)) => {
            Some(Sae::load(path).with_context(|| format!("loading the SAE {}", path.display()))?)
        }
        _ => None,
    };
    let field = if a.text_field == "output" {
        TextField::Output
    } else {
        TextField::InputOutput
    };
    let mut rows = detect::read_concepts(&a.concepts, field, a.source.text_mode())?;
    detect::assign_split(&mut rows, a.eval_fraction, a.seed)?;
    let texts = || -> Result<Vec<String>> {
        Ok(rows
            .iter()
            .map(|r| r.text.clone().unwrap_or_default())
            .collect())
    };
    let docs = a.source.documents(&texts)?;
    if a.source.text_mode() {
        // Document i is row i.
        rows.iter_mut()
            .enumerate()
            .for_each(|(i, r)| r.doc_id = i as i64);
    } else if let Some(r) = rows.iter().find(|r| !docs.docs.contains_key(&r.doc_id)) {
        bail!(
            "{}:{}: document {} has no activation rows in the input",
            a.concepts.display(),
            r.line,
            r.doc_id
        );
    }
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let Some(dict) = dict else {
        let path = a.sae.as_ref().expect("clap requires --dictionary or --sae");
        let sae = sae.expect("loaded above");
        let report = detect::detect_concepts_sae(&sae, &rows, &docs)
            .with_context(|| format!("the SAE {}", path.display()))?;
        let mut table = String::new();
        writeln!(
            table,
            "concept detection with the SAE {} ({} features), {} concepts",
            path.display(),
            report.d_sae,
            report.concepts.len()
        )?;
        writeln!(table, "  scoring: {}", report.scoring)?;
        writeln!(
            table,
            "{:>6} {:<28} {:>7} {:>8} {:>8} {:>9}",
            "id", "concept", "feature", "contrast", "AUROC", "HN"
        )?;
        for c in &report.concepts {
            let name: String = c.concept.chars().take(28).collect();
            writeln!(
                table,
                "{:>6} {:<28} {:>7} {:>8.4} {:>8.4} {:>9}",
                c.concept_id,
                name,
                c.feature,
                c.contrast,
                c.auroc,
                opt(c.hard_negative_accuracy)
            )?;
        }
        writeln!(
            table,
            "mean AUROC {:.4}; mean hard-negative accuracy {}",
            report.mean_auroc,
            opt(report.mean_hard_negative_accuracy)
        )?;
        return a.report.emit(&serde_json::to_value(&report)?, &table);
    };
    let report = detect::detect_concepts(&dict, &rows, &docs, parse_basis(&a.basis))?;
    let mut table = String::new();
    writeln!(
        table,
        "concept detection ({} basis), {} concepts",
        report.basis,
        report.concepts.len()
    )?;
    writeln!(table, "  reference scoring: {}", report.scoring_reference)?;
    writeln!(table, "  cosine scoring:    {}", report.scoring_cosine)?;
    writeln!(
        table,
        "{:>6} {:<28} {:>7} {:>8} {:>11} {:>11} {:>9} {:>9}",
        "id", "concept", "region", "contrast", "AUROC(ref)", "AUROC(cos)", "HN(ref)", "HN(cos)"
    )?;
    for c in &report.concepts {
        let name: String = c.concept.chars().take(28).collect();
        writeln!(
            table,
            "{:>6} {:<28} {:>7} {:>8.4} {:>11.4} {:>11.4} {:>9} {:>9}",
            c.concept_id,
            name,
            c.region,
            c.contrast,
            c.auroc_reference,
            c.auroc_cosine,
            opt(c.hard_negative_accuracy_reference),
            opt(c.hard_negative_accuracy_cosine)
        )?;
    }
    writeln!(
        table,
        "mean AUROC: reference {:.4}, cosine {:.4}; mean hard-negative accuracy: reference {}, cosine {}",
        report.mean_auroc_reference,
        report.mean_auroc_cosine,
        opt(report.mean_hard_negative_accuracy_reference),
        opt(report.mean_hard_negative_accuracy_cosine)
    )?;
    a.report.emit(&serde_json::to_value(&report)?, &table)
}

// ---------------------------------------------------------------------------------------------
// ood

#[derive(Args, Debug)]
#[cfg_attr(
    feature = "torch",
    command(mut_arg("model", |a| a.requires("text").conflicts_with("ood")))
)]
pub struct OodArgs {
    /// The dictionary.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dictionary: PathBuf,
    /// In-distribution activation files (no sidecar needed).
    #[arg(long = "activations", short = 'a', num_args = 1.., value_name = "FILE")]
    pub activations: Vec<PathBuf>,
    /// An out-of-distribution activation file; repeat for several sets (each file is a set).
    #[arg(long, value_name = "FILE")]
    pub ood: Vec<PathBuf>,
    /// Tensor to read from .safetensors files.
    #[arg(long, value_name = "NAME")]
    pub tensor: Option<String>,
    #[command(flatten)]
    #[cfg(feature = "torch")]
    pub text_model: TextModelArgs,
    /// Text mode: in-distribution texts, one per non-empty line.
    #[cfg(feature = "torch")]
    #[arg(long, value_name = "FILE", requires = "model")]
    pub text: Option<PathBuf>,
    /// Text mode: out-of-distribution texts, one per non-empty line; repeat for several sets.
    #[cfg(feature = "torch")]
    #[arg(long, value_name = "FILE", requires = "model")]
    pub ood_text: Vec<PathBuf>,
    #[command(flatten)]
    pub report: ReportOut,
}

#[cfg(feature = "torch")]
fn read_lines(path: &std::path::Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    if v.is_empty() {
        bail!("{}: no non-empty line (one text per line)", path.display());
    }
    Ok(v)
}

fn set_name(p: &std::path::Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Named distance sets: the in-distribution name and distances, and each OOD set.
type DistanceSets = (String, Vec<f32>, Vec<(String, Vec<f32>)>);

/// In text mode, the distances of the texts of `--text` and of each `--ood-text`; else `None`.
#[cfg(feature = "torch")]
fn text_mode_distances(a: &OodArgs, dict: &Dictionary) -> Result<Option<DistanceSets>> {
    let Some(text) = &a.text else {
        return Ok(None);
    };
    if a.ood_text.is_empty() {
        bail!("text mode needs at least one --ood-text FILE");
    }
    let dist = |p: &PathBuf| -> Result<Vec<f32>> {
        let docs = a
            .text_model
            .documents(&read_lines(p)?)
            .with_context(|| format!("running {} through the model", p.display()))?;
        let rows: Vec<f32> = docs.docs.into_values().flatten().collect();
        Ok(dict.assign(&rows)?.1)
    };
    let sets = a
        .ood_text
        .iter()
        .map(|p| Ok((set_name(p), dist(p)?)))
        .collect::<Result<_>>()?;
    Ok(Some((set_name(text), dist(text)?, sets)))
}

#[cfg(not(feature = "torch"))]
fn text_mode_distances(_: &OodArgs, _: &Dictionary) -> Result<Option<DistanceSets>> {
    Ok(None)
}

pub fn ood(a: OodArgs) -> Result<()> {
    a.report.check()?;
    let dict = Dictionary::load(&a.dictionary)?;
    let options = StreamOptions {
        tensor: a.tensor.clone(),
        skip_nonfinite: false,
    };
    let (in_name, in_dist, sets) = match text_mode_distances(&a, &dict)? {
        Some(v) => v,
        None => {
            if a.activations.is_empty() || a.ood.is_empty() {
                let text_mode = if cfg!(feature = "torch") {
                    " (or text mode: --model, --hook, --text, --ood-text)"
                } else {
                    ""
                };
                bail!("give --activations FILES and at least one --ood FILE{text_mode}");
            }
            let in_dist = ood::stream_distances(&dict, &a.activations, options.clone())?;
            let sets = a
                .ood
                .iter()
                .map(|p| {
                    Ok((
                        set_name(p),
                        ood::stream_distances(&dict, std::slice::from_ref(p), options.clone())?,
                    ))
                })
                .collect::<Result<_>>()?;
            (set_name(&a.activations[0]), in_dist, sets)
        }
    };
    let report = ood::ood_report(&dict, (&in_name, &in_dist), &sets)?;
    let mut table = String::new();
    writeln!(
        table,
        "nearest-exemplar cosine distance, θ = {:.6}",
        report.theta
    )?;
    writeln!(
        table,
        "{:<30} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "set", "rows", "within θ", "mean", "median", "p90", "p99", "min", "max", "AUROC"
    )?;
    for s in std::iter::once(&report.in_distribution).chain(&report.out_of_distribution) {
        let name: String = s.name.chars().take(30).collect();
        writeln!(
            table,
            "{:<30} {:>8} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8}",
            name,
            s.rows,
            s.within_threshold_rate,
            s.mean,
            s.median,
            s.p90,
            s.p99,
            s.min,
            s.max,
            s.auroc_vs_in_distribution
                .map_or("(in)".into(), |v| format!("{v:.4}"))
        )?;
    }
    a.report.emit(&serde_json::to_value(&report)?, &table)
}
