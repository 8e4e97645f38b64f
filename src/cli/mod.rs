//! Command-line interface: argument definitions and dispatch.

#[cfg(feature = "torch")]
mod ablate;
mod args;
#[cfg(feature = "torch")]
mod bench;
#[cfg(feature = "torch")]
mod circuits;
mod commands;
mod compute;
mod evaluate;
#[cfg(feature = "torch")]
mod explain;
#[cfg(feature = "torch")]
mod iia;
#[cfg(feature = "torch")]
mod label;
mod mib;
#[cfg(feature = "torch")]
mod on_model;
mod ood;
mod quality;
mod report;
mod sae;
#[cfg(feature = "torch")]
mod steer;
mod structure;

use args::OutFile;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;

/// Exemplar Partitioning: interpretable dictionaries of language-model activations.
#[derive(Parser, Debug)]
#[command(name = "exemplar", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Compute the center and threshold θ from the first rows of the activations.
    Calibrate(CalibrateArgs),
    /// Build a dictionary from activation files (streaming leader clustering).
    Build(Box<BuildArgs>),
    /// Assign activations to their nearest exemplar (ids, distances, within-θ flags) → .npz.
    Assign(AssignArgs),
    /// Encode activations as dictionary codes (one-hot, top-k, signed, cosine) → .npy.
    Encode(EncodeArgs),
    /// Summarise a dictionary: K, θ, counts, and the largest regions with example text.
    Inspect(InspectArgs),
    /// Region quality without a person: chance-corrected agreement (κ) of rows with their
    /// region's exemplar on token, next token and document, on rows with provenance.
    Quality(quality::QualityArgs),
    /// Intrinsic metrics of a dictionary (coverage, Gini, separation, silhouette, ...).
    Eval(EvalArgs),
    /// Build a dictionary on the embedded sample (MiniLM activations of Python's docs) and show it.
    Demo(DemoArgs),
    /// Run text through a Gemma-2 checkpoint and write the activations at a hook (+ provenance).
    #[cfg(feature = "torch")]
    Activations(ActivationsArgs),
    /// Generate activations with known structure (ground-truth features, a shared offset, noise).
    Synth(compute::SynthArgs),
    /// Train a TopK sparse autoencoder (tch) on activation files → SAELens layout.
    #[cfg(feature = "torch")]
    TrainSae(compute::TrainSaeArgs),
    /// EP vs a TopK SAE at several activation budgets: quality on held-out rows against build
    /// compute (FLOPs, seconds) → report.json + quality_vs_compute.png.
    #[cfg(feature = "torch")]
    BudgetSweep(compute::BudgetSweepArgs),
    /// Redraw the PNG of a budget sweep from its report.json.
    #[cfg(feature = "torch")]
    PlotSweep(compute::PlotSweepArgs),
    /// Linear probes on document features: raw activations vs EP codes (vs SAE codes).
    Probe(evaluate::ProbeArgs),
    /// Concept detection (AxBench latent track): region per concept, AUROC, hard negatives.
    Detect(evaluate::DetectArgs),
    /// OOD signal: nearest-exemplar distances in and out of distribution, within-θ rates, AUROC.
    Ood(evaluate::OodArgs),
    /// Export a dictionary as an SAELens-layout SAE (cfg.json + sae_weights.safetensors).
    ExportSae(sae::ExportSaeArgs),
    /// Export dictionaries as MIB causal-variable featurizers (featurizer.py, per-unit
    /// featurizer / inverse featurizer / indices files).
    MibExport(mib::MibExportArgs),
    /// Interchange-intervention accuracy per layer on a counterfactual task: EP featurizers vs
    /// the full vector vs neurons (MIB's causal-variable track, computed here).
    #[cfg(feature = "torch")]
    Iia(Box<iia::IiaArgs>),
    /// Encode activations with an SAE (SAELens directory or Gemma Scope params.npz) → .npy.
    SaeEncode(sae::SaeEncodeArgs),
    /// EP ↔ SAE correspondence: top-k overlap F1 both ways, Hungarian, top-1 coherence.
    CompareSae(sae::CompareSaeArgs),
    /// Match two dictionaries (Hungarian on cosine): persisted, dropped and introduced regions.
    Match(sae::MatchArgs),
    /// Benchmark a build from text (model FLOPs, clustering FLOPs, tokens/s, MFU) → JSON.
    #[cfg(feature = "torch")]
    Bench(bench::BenchArgs),
    /// Generate continuations with an edit along regions (add, raise, clamp, ablate; gated) → JSONL.
    #[cfg(feature = "torch")]
    Steer(Box<steer::SteerArgs>),
    /// Ablate regions: loss change inside vs outside them, target log-probs before and after.
    #[cfg(feature = "torch")]
    Ablate(Box<ablate::AblateArgs>),
    /// Label regions: logit-lens tokens of exemplar and mean direction, top member contexts.
    #[cfg(feature = "torch")]
    Label(label::LabelArgs),
    /// Explain regions by words (Wu et al.'s mutual information), against the logit-lens and
    /// top-members baselines: Diversity, Lexical, Dominate; files for an external labeller.
    #[cfg(feature = "torch")]
    Explain(Box<explain::ExplainArgs>),
    /// An external labeller's labels of regions → region sets for steer --region-set FILE:LABEL.
    #[cfg(feature = "torch")]
    ExplainLabels(explain::ExplainLabelsArgs),
    /// Explanation-guided steering: raise each region (norm kept), next-token mass on its
    /// explanation words against a random other region's steering.
    #[cfg(feature = "torch")]
    ExplainSteer(Box<explain::ExplainSteerArgs>),
    /// Circuits from EP codes of attention heads (O'Neill & Bui), checked by exact per-head
    /// patching; MIB faithfulness (CPR, CMD) and importance-score export.
    #[cfg(feature = "torch")]
    Circuits(Box<circuits::CircuitsArgs>),
    /// Resolution hierarchy of dictionaries at several percentiles: parents, tree, paths.
    Hierarchy(structure::HierarchyArgs),
    /// Stability across seeds: persisting regions and the predictor D = log10(N·c²), AUROC.
    Stability(structure::StabilityArgs),
    /// Saturation curves (K against tokens) recorded by builds → JSON and PNG.
    Saturation(structure::SaturationArgs),
    /// OOD: EP's nearest-exemplar distance against a k-NN baseline on a random sample, AUROCs.
    OodBaseline(Box<ood::OodBaselineArgs>),
}

/// Where documents come from, and how they become token sequences (builds from text and
/// `activations`).
#[derive(Args, Debug, Clone)]
pub struct CorpusArgs {
    /// Corpus files (.txt, .jsonl/.ndjson/.json, optionally .gz/.zst, .parquet), read in order.
    #[arg(long, alias = "text", num_args = 1.., value_name = "FILE")]
    pub corpus: Vec<PathBuf>,
    /// JSON Lines field / Parquet column holding the text.
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_field: String,
    /// How .txt files split into documents.
    #[arg(long, default_value = "lines", value_parser = ["lines", "paragraphs", "whole"])]
    pub text_mode: String,
    /// Skip documents with fewer characters.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub min_chars: usize,
    /// Skip documents with fewer tokens after the BOS (after truncation to --ctx).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub min_tokens: usize,
    /// Shuffle the document order with this seed (a streaming shuffle; recorded).
    #[arg(long, value_name = "SEED")]
    pub shuffle_seed: Option<u64>,
    /// Documents held by the shuffle buffer.
    #[arg(
        long,
        default_value_t = 10_000,
        value_name = "N",
        requires = "shuffle_seed"
    )]
    pub shuffle_buffer: usize,
    /// Skip (and count) malformed records instead of stopping.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Tokens kept per document after the BOS.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub ctx: usize,
    /// Keep only the last token of each document (final-position extraction).
    #[arg(long)]
    pub final_position: bool,
    /// Pack documents into windows of BOS + --ctx tokens, joined by their BOS tokens as SAELens
    /// packs its contexts, instead of one truncated document per sequence; long documents
    /// continue into the next window and every position but a BOS is a row.
    #[arg(long, conflicts_with = "final_position")]
    pub pack: bool,
}

#[cfg(feature = "torch")]
#[derive(Args, Debug)]
#[command(
    mut_arg("out", |a| {
        a.help("Output .safetensors (tensor `activations`, f32); the sidecar `<out>.provenance.jsonl` is written beside it")
    }),
    mut_arg("force", |a| a.help("Overwrite outputs that exist"))
)]
pub struct ActivationsArgs {
    /// Hugging Face checkpoint directory (config.json, model.safetensors or sharded + index, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Hook, TransformerLens name: blocks.L.hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out.
    #[arg(long)]
    pub hook: String,
    #[command(flatten)]
    pub corpus: CorpusArgs,
    /// Documents per forward pass.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub batch_prompts: usize,
    /// Device of the forward pass.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub device: String,
    /// Weight dtype (default: f32 on cpu, bf16 on cuda).
    #[arg(long, value_parser = ["f32", "bf16"])]
    pub dtype: Option<String>,
    #[command(flatten)]
    pub output: OutFile,
}

/// Where activations come from.
#[derive(Args, Debug, Clone)]
pub struct InputArgs {
    /// Activation files (.npy f32/f16 or .safetensors f32/f16/bf16, shape (N, D)), streamed in
    /// the order given. A `<file>.provenance.jsonl` sidecar next to a file is used for example text.
    #[arg(long = "activations", short = 'a', required = true, num_args = 1.., value_name = "FILE")]
    pub activations: Vec<PathBuf>,
    /// Tensor to read from .safetensors files (default: `activations`, or the only 2-D tensor).
    #[arg(long, value_name = "NAME")]
    pub tensor: Option<String>,
    /// Drop rows holding NaN/Inf (counted and reported) instead of stopping with an error.
    #[arg(long)]
    pub skip_nonfinite: bool,
}

/// Calibration settings shared by `calibrate` and inline calibration in `build`.
#[derive(Args, Debug, Clone)]
pub struct CalibrationArgs {
    /// Rows used for calibration (whole batches, so up to one batch more).
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    pub calibration_activations: u64,
    /// How the percentile is read off the sorted distances: `linear` (numpy's default) or
    /// `nearest-rank` (the reference's torch.kthvalue branch).
    #[arg(long, default_value = "linear", value_parser = ["linear", "nearest-rank"])]
    pub percentile_method: String,
    /// Standardise every dimension first, `z = (x − μ)/σ` with μ and σ estimated on the
    /// calibration rows and stored in the output; every reader applies it (docs/semantics.md).
    /// On models with massive activations (Gemma 3's residual stream) regions then follow
    /// every dimension instead of the few largest.
    #[arg(long)]
    pub standardize: bool,
}

#[derive(Args, Debug)]
#[command(mut_arg("out", |a| a.help("Output calibration file (.safetensors)")))]
pub struct CalibrateArgs {
    /// Backend: cpu, cuda, or auto (CUDA when a device is usable, else the CPU, saying why).
    /// Every backend gives the same result.
    #[arg(long, default_value = "auto", value_parser = ["cpu", "cuda", "auto"])]
    pub device: String,
    #[command(flatten)]
    pub input: InputArgs,
    /// Percentile p in (0, 100) of within-batch pairwise cosine distances that sets θ.
    #[arg(long, short = 'p', allow_negative_numbers = true)]
    pub percentile: f64,
    /// Rows per calibration batch (θ depends on it: use the build's batch size).
    #[arg(long, default_value_t = 16_384, value_name = "N")]
    pub batch_size: usize,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    #[command(flatten)]
    pub output: OutFile,
}

#[derive(Args, Debug)]
#[command(
    mut_arg("out", |a| {
        a.help("Output dictionary (.safetensors). With several hooks or percentiles, a directory (made if missing) receiving `<hook>.p<percentile>.safetensors` per pair")
    }),
    mut_arg("force", |a| a.help("Overwrite outputs that exist"))
)]
pub struct BuildArgs {
    /// Backend: cpu, cuda, or auto (CUDA when a device is usable, else the CPU, saying why).
    /// Every backend gives the same result. With --model, the model runs there too.
    #[arg(long, default_value = "auto", value_parser = ["cpu", "cuda", "auto"])]
    pub device: String,
    /// Activation files (.npy f32/f16 or .safetensors f32/f16/bf16, shape (N, D)), streamed in
    /// the order given. A `<file>.provenance.jsonl` sidecar next to a file is used for example text.
    #[arg(
        long = "activations",
        short = 'a',
        num_args = 1..,
        value_name = "FILE",
        required_unless_present = "model",
        conflicts_with = "model"
    )]
    pub activations: Vec<PathBuf>,
    /// Tensor to read from .safetensors files (default: `activations`, or the only 2-D tensor).
    #[arg(long, value_name = "NAME")]
    pub tensor: Option<String>,
    /// Drop rows holding NaN/Inf (counted and reported) instead of stopping with an error.
    #[arg(long)]
    pub skip_nonfinite: bool,
    /// Build from text: a Gemma-2 checkpoint directory, read with --corpus and --hook (feature torch).
    #[arg(long, value_name = "DIR", requires_all = ["corpus", "hook"])]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub corpus: CorpusArgs,
    /// Documents per batch: with --model the forward and clustering batch (default 128, the
    /// reference's); with --activations, batches of whole documents (needs sidecars) instead
    /// of --batch-size rows.
    #[arg(long, value_name = "N")]
    pub batch_documents: Option<usize>,
    /// Weight dtype with --model (default: f32 on cpu, bf16 on cuda).
    #[arg(long, value_parser = ["f32", "bf16"])]
    pub dtype: Option<String>,
    /// Write a checkpoint here every --checkpoint-every batches and at the end (atomically); with
    /// several hooks or percentiles, a directory holding the set.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Batches between checkpoints.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub checkpoint_every: u64,
    /// Continue from --checkpoint (refused when the flags or inputs differ from the checkpoint's).
    #[arg(long, requires = "checkpoint")]
    pub resume: bool,
    /// Testing aid: sleep this many milliseconds after each batch.
    #[arg(long, hide = true, value_name = "MS")]
    pub throttle_ms: Option<u64>,
    /// A calibration file from `exemplar calibrate`.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        conflicts_with = "percentile",
        required_unless_present = "percentile"
    )]
    pub calibration: Option<PathBuf>,
    /// Calibrate inline on the first rows of the stream with this percentile; the build then
    /// streams from the start (calibration rows included). With --model, several (repeated or
    /// comma-separated) build one dictionary each from the same forward passes.
    #[arg(
        long,
        short = 'p',
        allow_negative_numbers = true,
        value_delimiter = ','
    )]
    pub percentile: Vec<f64>,
    #[command(flatten)]
    pub calibration_args: CalibrationArgs,
    /// Rows per batch.
    #[arg(long, default_value_t = 16_384, value_name = "N")]
    pub batch_size: usize,
    /// Stop after this many consecutive batches without a new partition.
    #[arg(
        long,
        default_value_t = 1,
        value_name = "W",
        conflicts_with = "no_saturation"
    )]
    pub saturation_window: u64,
    /// Never stop on saturation (stream everything, or up to the budgets).
    #[arg(long)]
    pub no_saturation: bool,
    /// Stop after exactly this many activations.
    #[arg(long, value_name = "N")]
    pub max_activations: Option<u64>,
    /// Stop after the batch in which this many tokens (BOS included; rows without a sidecar)
    /// have been streamed.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u64>,
    /// Assign every row to the nearest of old and earlier in-batch exemplars (the clustering
    /// then does not depend on batch size; inline calibration's θ still does). Default: the
    /// reference's two-phase rule.
    #[arg(long)]
    pub strict_order: bool,
    /// Seed of the reservoirs (and of merge sampling).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Closest and farthest examples kept per partition.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub examples: usize,
    /// Member directions kept per partition (reservoir sampling; 0 disables).
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub reservoir: usize,
    /// Drop partitions with fewer members at the end (the reference keeps singletons: 1).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub min_members: u64,
    /// After each batch, merge partitions whose exemplars lie within --merge-threshold (default θ).
    #[arg(long)]
    pub merge_close: bool,
    /// Cosine distance under which --merge-close merges exemplars.
    #[arg(long, value_name = "T", requires = "merge_close")]
    pub merge_threshold: Option<f64>,
    /// Write one int64 partition id per input row (stream order; −1 for rows not clustered) to this .npy.
    #[arg(long, value_name = "FILE")]
    pub assignments: Option<PathBuf>,
    /// Model name recorded in the dictionary's metadata (default with --model: the directory).
    #[arg(long, value_name = "NAME")]
    pub model_name: Option<String>,
    /// Hook name recorded in the dictionary's metadata (e.g. blocks.12.hook_resid_post); with
    /// --model, the hook read. With --model, several (repeated or comma-separated) are read
    /// from one forward per batch, one dictionary per hook and percentile.
    #[arg(long, value_delimiter = ',')]
    pub hook: Vec<String>,
    #[command(flatten)]
    pub output: OutFile,
}

#[derive(Args, Debug)]
#[command(mut_arg("out", |a| {
    a.help("Output .npz with `ids` (int64), `distances` (f32) and `within_threshold` (bool)")
}))]
pub struct AssignArgs {
    /// Backend: cpu, cuda, or auto (CUDA when a device is usable, else the CPU, saying why).
    /// Every backend gives the same result.
    #[arg(long, default_value = "auto", value_parser = ["cpu", "cuda", "auto"])]
    pub device: String,
    /// The dictionary.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dictionary: PathBuf,
    #[command(flatten)]
    pub input: InputArgs,
    /// Rows per batch.
    #[arg(long, default_value_t = 16_384, value_name = "N")]
    pub batch_size: usize,
    #[command(flatten)]
    pub output: OutFile,
}

#[derive(Args, Debug)]
#[command(mut_arg("out", |a| {
    a.help("Output .npy of shape (N, K), f32 (skipped non-finite rows are all zeros)")
}))]
pub struct EncodeArgs {
    /// The dictionary.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dictionary: PathBuf,
    #[command(flatten)]
    pub input: InputArgs,
    /// Readout: one-hot (argmax cosine), topk (top-k of (x−c)·w), topk-cosine, signed ((x−c)·w), cosine.
    #[arg(long, default_value = "one-hot", value_parser = ["one-hot", "topk", "topk-cosine", "signed", "cosine"])]
    pub readout: String,
    /// k of the top-k readouts.
    #[arg(long, short = 'k', default_value_t = 1)]
    pub k: usize,
    /// Basis: exemplar directions or mean member directions.
    #[arg(long, default_value = "exemplar", value_parser = ["exemplar", "mean"])]
    pub basis: String,
    #[command(flatten)]
    pub output: OutFile,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The dictionary.
    pub dictionary: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Show the N largest regions.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    /// Closest examples shown per region.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub examples: usize,
    /// Show these regions (ids, comma-separated) after the largest ones.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub regions: Vec<usize>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The dictionary.
    pub dictionary: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Partitions with at least this many members count as nontrivial.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub min_members: u64,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Percentile that sets θ.
    #[arg(
        long,
        short = 'p',
        default_value_t = 5.0,
        allow_negative_numbers = true
    )]
    pub percentile: f64,
    /// Regions shown.
    #[arg(long, default_value_t = 12, value_name = "N")]
    pub top: usize,
    /// Also save the dictionary here.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Parses arguments, runs the command, prints errors with their causes and, where a flag of
/// the command would help, a hint naming it (the library's messages name no flags).
pub fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let subcommand = matches.subcommand_name().unwrap_or_default().to_string();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Calibrate(a) => commands::calibrate(a),
        Command::Build(a) => commands::build(*a),
        Command::Assign(a) => commands::assign(a),
        Command::Encode(a) => commands::encode(a),
        Command::Inspect(a) => commands::inspect(a),
        Command::Quality(a) => quality::quality(a),
        Command::Eval(a) => commands::eval(a),
        Command::Demo(a) => commands::demo(a),
        #[cfg(feature = "torch")]
        Command::Activations(a) => commands::activations(a),
        Command::Synth(a) => compute::synth(a),
        #[cfg(feature = "torch")]
        Command::TrainSae(a) => compute::train_sae(a),
        #[cfg(feature = "torch")]
        Command::BudgetSweep(a) => compute::budget_sweep(a),
        #[cfg(feature = "torch")]
        Command::PlotSweep(a) => compute::plot_sweep(a),
        Command::Probe(a) => evaluate::probe(a),
        Command::Detect(a) => evaluate::detect(a),
        Command::Ood(a) => evaluate::ood(a),
        Command::ExportSae(a) => sae::export_sae(a),
        Command::MibExport(a) => mib::mib_export(a),
        #[cfg(feature = "torch")]
        Command::Iia(a) => iia::iia(*a),
        Command::SaeEncode(a) => sae::sae_encode(a),
        Command::CompareSae(a) => sae::compare_sae(a),
        Command::Match(a) => sae::match_dictionaries(a),
        #[cfg(feature = "torch")]
        Command::Bench(a) => bench::bench(a),
        #[cfg(feature = "torch")]
        Command::Steer(a) => steer::steer(*a),
        #[cfg(feature = "torch")]
        Command::Ablate(a) => ablate::ablate(*a),
        #[cfg(feature = "torch")]
        Command::Label(a) => label::label(a),
        #[cfg(feature = "torch")]
        Command::Explain(a) => explain::explain(*a),
        #[cfg(feature = "torch")]
        Command::ExplainLabels(a) => explain::explain_labels(a),
        #[cfg(feature = "torch")]
        Command::ExplainSteer(a) => explain::explain_steer(*a),
        #[cfg(feature = "torch")]
        Command::Circuits(a) => circuits::circuits(*a),
        Command::Hierarchy(a) => structure::hierarchy(a),
        Command::Stability(a) => structure::stability(a),
        Command::Saturation(a) => structure::saturation(a),
        Command::OodBaseline(a) => ood::ood_baseline(*a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if let Some(hint) = flag_hint(&subcommand, &e) {
                eprintln!("hint: {hint}");
            }
            std::process::ExitCode::from(2)
        }
    }
}

/// The flag of `subcommand` that would avoid the library error in `e`'s chain, if the command
/// has it: `--force` for an existing output, `--skip-nonfinite` for a NaN/Inf row, `--tensor`
/// for a safetensors file with several candidate tensors.
fn flag_hint(subcommand: &str, e: &anyhow::Error) -> Option<&'static str> {
    let cli = Cli::command();
    let cmd = cli.find_subcommand(subcommand)?;
    let has = |long: &str| cmd.get_arguments().any(|a| a.get_long() == Some(long));
    e.chain()
        .filter_map(|c| c.downcast_ref::<exemplar::Error>())
        .find_map(|err| match err {
            exemplar::Error::OutputExists(_) if has("force") => {
                Some("pass --force to overwrite it")
            }
            exemplar::Error::NonFinite { .. } if has("skip-nonfinite") => {
                Some("pass --skip-nonfinite to drop such rows")
            }
            exemplar::Error::Format { message, .. }
                if message.starts_with("several 2-D tensors") && has("tensor") =>
            {
                Some("choose the tensor with --tensor NAME")
            }
            _ => None,
        })
}
