//! `synth` (activations with known features), `train-sae` (a TopK SAE in tch) and
//! `budget-sweep` (EP vs SAE quality against build compute, JSON + PNG).

#[cfg(feature = "torch")]
use super::args::OutDir;
use super::args::OutFile;
#[cfg(feature = "torch")]
use super::InputArgs;
use anyhow::Result;
#[cfg(feature = "torch")]
use anyhow::{bail, Context};
use clap::Args;
#[cfg(feature = "torch")]
use exemplar::data::StreamOptions;
use exemplar::eval::synthetic::SyntheticSpec;
use exemplar::tensorfile::{self, TensorOut};
use std::collections::BTreeMap;
#[cfg(feature = "torch")]
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(mut_arg("out", |a| {
    a.help("Output .safetensors: `activations` (rows × D, f32), `features` (F × D), `offset` (D), `dominant` (rows, i64)")
}))]
pub struct SynthArgs {
    /// Width D.
    #[arg(long, default_value_t = 256)]
    pub dim: usize,
    /// Rows.
    #[arg(long, default_value_t = 20_000)]
    pub rows: usize,
    /// Ground-truth features F.
    #[arg(long, default_value_t = 512)]
    pub features: usize,
    /// Weaker secondary features added to each row.
    #[arg(long, default_value_t = 3)]
    pub secondary: usize,
    /// Zipf exponent of the dominant feature's frequency (0: uniform).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Expected norm of the noise vector (a feature has norm 1; each coordinate gets
    /// N(0, (noise/√D)²), so the signal-to-noise ratio does not depend on D).
    #[arg(long, default_value_t = 0.1)]
    pub noise: f64,
    /// Norm of the offset shared by every row.
    #[arg(long, default_value_t = 2.0)]
    pub offset_norm: f64,
    /// Seed of the features and the offset.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the rows: keep --seed and change this for a held-out set of the same features.
    #[arg(long, default_value_t = 0)]
    pub row_seed: u64,
    #[command(flatten)]
    pub output: OutFile,
}

pub fn synth(a: SynthArgs) -> Result<()> {
    a.output.check()?;
    let spec = SyntheticSpec {
        dim: a.dim,
        rows: a.rows,
        features: a.features,
        secondary: a.secondary,
        zipf: a.zipf,
        noise: a.noise,
        offset_norm: a.offset_norm,
        seed: a.seed,
        row_seed: a.row_seed,
    };
    let s = spec.generate()?;
    let mut meta = BTreeMap::new();
    meta.insert(
        "producer".into(),
        format!("exemplar {} synth", env!("CARGO_PKG_VERSION")),
    );
    meta.insert("spec".into(), format!("{spec:?}"));
    tensorfile::write(
        &a.output.out,
        vec![
            TensorOut::f32("activations", vec![a.rows, a.dim], &s.activations),
            TensorOut::f32("features", vec![a.features, a.dim], &s.features),
            TensorOut::f32("offset", vec![a.dim], &s.offset),
            TensorOut::i64("dominant", vec![a.rows], &s.dominant),
        ],
        &meta,
        a.output.force,
    )?;
    println!(
        "wrote {}: {} rows × D = {}, {} ground-truth features",
        a.output.out.display(),
        a.rows,
        a.dim,
        a.features
    );
    Ok(())
}

/// SAE training flags shared by `train-sae` and `budget-sweep`.
#[cfg(feature = "torch")]
#[derive(Args, Debug, Clone)]
pub struct SaeTrainArgs {
    /// SAE features F.
    #[arg(long, default_value_t = 4096)]
    pub width: usize,
    /// Active features per row (TopK).
    #[arg(long, short = 'k', default_value_t = 32)]
    pub k: usize,
    /// Rows per training step.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub sae_batch_size: usize,
    /// Adam learning rate (default: 2e-4 / sqrt(width / 16384)).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Weight of the AuxK loss that revives dead features (0 disables it).
    #[arg(long, default_value_t = 1.0 / 32.0)]
    pub aux_k_coef: f64,
    /// Rows without firing after which a feature counts as dead.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub dead_after: u64,
    /// Seed of the SAE's initialisation.
    #[arg(long, default_value_t = 0)]
    pub sae_seed: i64,
    /// Device of the training: cpu or cuda (the first GPU).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub sae_device: String,
}

#[cfg(feature = "torch")]
impl SaeTrainArgs {
    fn config(&self) -> Result<exemplar::sae::train::TrainConfig> {
        let device = match self.sae_device.as_str() {
            "cuda" => {
                if !tch::Cuda::is_available() {
                    bail!("--sae-device cuda: torch sees no CUDA device");
                }
                tch::Device::Cuda(0)
            }
            _ => tch::Device::Cpu,
        };
        let mut c = exemplar::sae::train::TrainConfig::new(self.width, self.k);
        c.batch_size = self.sae_batch_size;
        c.lr = self.lr;
        c.aux_k_coef = self.aux_k_coef;
        c.dead_after = self.dead_after;
        c.seed = self.sae_seed;
        c.device = device;
        Ok(c)
    }
}

#[cfg(feature = "torch")]
#[derive(Args, Debug)]
#[command(
    mut_arg("out", |a| a.help("Output directory (SAELens layout: cfg.json + sae_weights.safetensors)")),
    mut_arg("force", |a| a.help("Overwrite outputs that exist"))
)]
pub struct TrainSaeArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub sae: SaeTrainArgs,
    /// Train on at most this many rows (default: one pass over the input); with --epochs, the
    /// budget each epoch passes over (an error when the input has fewer rows).
    #[arg(long, value_name = "N")]
    pub max_activations: Option<u64>,
    /// Passes over the budget at most (several: the rows are held in memory and shuffled per
    /// epoch, seeded by --sae-seed).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub epochs: u64,
    /// Held-out activation files: their FVU is checked during training and decides
    /// convergence (never trained on).
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub eval_activations: Vec<PathBuf>,
    /// Held-out rows used (the first N).
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub eval_rows: usize,
    /// Training rows between two held-out checks (default: one epoch).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub eval_every: u64,
    /// Stop when the best held-out FVU has not improved by this relative amount for
    /// --patience checks in a row.
    #[arg(long, default_value_t = 0.01)]
    pub tolerance: f64,
    /// Held-out checks without progress before stopping.
    #[arg(long, default_value_t = 2)]
    pub patience: u32,
    /// Stop the training loop after this many wall-clock seconds.
    #[arg(long, value_name = "S")]
    pub max_seconds: Option<f64>,
    #[command(flatten)]
    pub output: OutDir,
    /// Print the training record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(feature = "torch")]
fn stream_options(input: &InputArgs) -> StreamOptions {
    StreamOptions {
        tensor: input.tensor.clone(),
        skip_nonfinite: input.skip_nonfinite,
    }
}

#[cfg(feature = "torch")]
pub fn train_sae(a: TrainSaeArgs) -> Result<()> {
    a.output.check(&super::sae::SAELENS_FILES)?;
    let mut stream =
        exemplar::data::ActivationStream::open(&a.input.activations, stream_options(&a.input))?;
    let mut cfg = a.sae.config()?;
    cfg.max_rows = a.max_activations;
    cfg.epochs = a.epochs;
    cfg.eval_every = a.eval_every;
    cfg.tolerance = a.tolerance;
    cfg.patience = a.patience;
    cfg.max_seconds = a.max_seconds;
    if !a.eval_activations.is_empty() {
        let eval = exemplar::eval::budget::EvalSet::load(
            &a.eval_activations,
            stream_options(&a.input),
            a.eval_rows,
            None,
        )?;
        if eval.dim != stream.dim() {
            return Err(exemplar::Error::DimensionMismatch {
                what: format!(
                    "held-out activations {} (the training input {} has D = {})",
                    a.eval_activations[0].display(),
                    a.input.activations[0].display(),
                    stream.dim()
                ),
                expected: stream.dim(),
                found: eval.dim,
            }
            .into());
        }
        cfg.eval_rows = eval.rows;
    }
    let (sae, rec) = exemplar::sae::train::train_topk_sae(&mut stream, &cfg)?;
    sae.save_saelens(&a.output.out, a.output.force)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
    } else {
        println!(
            "trained a TopK SAE (F = {}, k = {}) on {} rows in {} steps: {:.3} s on {}, {:.3e} FLOPs",
            rec.width, rec.k, rec.rows, rec.steps, rec.seconds, rec.device, rec.flops
        );
        println!(
            "final fraction of variance unexplained {:.4}; dead features {:.1}%; {} epoch(s), stopped: {}",
            rec.final_fvu,
            100.0 * rec.dead_fraction,
            rec.epochs,
            rec.stopped
        );
        if let (Some(e), Some(dead)) = (rec.eval_fvu, rec.eval_dead_fraction) {
            println!(
                "held-out ({} rows): FVU {e:.4}, features never firing {:.1}%",
                rec.eval_rows,
                100.0 * dead
            );
            for c in &rec.curve {
                println!(
                    "  epoch {:>4}  step {:>7}  rows {:>10}  train FVU {:.4}  held-out FVU {:.4}  {:.1} s",
                    c.epoch, c.steps, c.rows, c.train_fvu, c.eval_fvu, c.seconds
                );
            }
        }
        println!("wrote {}", a.output.out.display());
    }
    Ok(())
}

#[cfg(feature = "torch")]
#[derive(Args, Debug)]
#[command(mut_arg("out", |a| a.help("Output PNG")))]
pub struct PlotSweepArgs {
    /// A `report.json` written by `exemplar budget-sweep`.
    pub report: PathBuf,
    #[command(flatten)]
    pub output: OutFile,
}

/// Redraws the PNG of a sweep from its report (e.g. after a change of the plot's layout).
#[cfg(feature = "torch")]
pub fn plot_sweep(a: PlotSweepArgs) -> Result<()> {
    a.output.check()?;
    let text = std::fs::read_to_string(&a.report)
        .with_context(|| format!("reading {}", a.report.display()))?;
    let report: exemplar::eval::budget::SweepReport = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a budget-sweep report", a.report.display()))?;
    exemplar::eval::budget::plot(&report, &a.output.out, a.output.force)?;
    println!("wrote {}", a.output.out.display());
    Ok(())
}

#[cfg(feature = "torch")]
#[derive(Args, Debug)]
#[command(
    mut_arg("out", |a| {
        a.help("Output directory: report.json, quality_vs_compute.png, ep-<budget>.safetensors and sae-<budget>/ for each budget")
    }),
    mut_arg("force", |a| a.help("Overwrite outputs that exist"))
)]
pub struct BudgetSweepArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Held-out activation files the quality is measured on (never trained or built on).
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    pub eval_activations: Vec<PathBuf>,
    /// Held-out rows used.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub eval_rows: usize,
    /// A file with the ground-truth `features` tensor (F × D), e.g. from `exemplar synth`:
    /// adds feature recovery to the quality metrics.
    #[arg(long, value_name = "FILE")]
    pub ground_truth: Option<PathBuf>,
    /// Activation budgets, comma-separated (e.g. 10000,100000,1000000).
    #[arg(long, required = true, value_delimiter = ',', value_name = "N,N,...")]
    pub budgets: Vec<u64>,
    /// EP: percentile that sets θ.
    #[arg(long, short = 'p')]
    pub percentile: f64,
    /// EP: rows per batch (calibration and build).
    #[arg(long, default_value_t = 16_384, value_name = "N")]
    pub batch_size: usize,
    /// EP: calibration rows (capped at each budget).
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    pub calibration_activations: u64,
    /// EP: stop after this many consecutive batches without a new partition (default: never,
    /// so each build streams its whole budget).
    #[arg(long, value_name = "W")]
    pub saturation_window: Option<u64>,
    /// EP: member directions kept per partition (the sweep's dictionaries need none; with
    /// large K and D the reference's 30 make files of many GB).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub reservoir: usize,
    /// EP backend: cpu, cuda or auto.
    #[arg(long, default_value = "auto", value_parser = ["cpu", "cuda", "auto"])]
    pub device: String,
    #[command(flatten)]
    pub sae: SaeTrainArgs,
    #[command(flatten)]
    pub output: OutDir,
}

#[cfg(feature = "torch")]
pub fn budget_sweep(a: BudgetSweepArgs) -> Result<()> {
    use exemplar::eval::budget::{run_sweep, EvalSet, SweepConfig};
    if a.budgets.is_empty() || a.budgets.contains(&0) {
        bail!("--budgets: every budget must be a positive number of activations");
    }
    let mut budgets = a.budgets.clone();
    budgets.sort_unstable();
    budgets.dedup();
    let (out, force) = (&a.output.out, a.output.force);
    let mut files = vec!["report.json".to_string(), "quality_vs_compute.png".into()];
    for b in &budgets {
        files.push(format!("ep-{b}.safetensors"));
        files.push(format!("sae-{b}/cfg.json"));
        files.push(format!("sae-{b}/sae_weights.safetensors"));
    }
    a.output.check(&files)?;
    let (report_path, png_path) = (out.join(&files[0]), out.join(&files[1]));
    let eval = EvalSet::load(
        &a.eval_activations,
        StreamOptions {
            tensor: a.input.tensor.clone(),
            skip_nonfinite: a.input.skip_nonfinite,
        },
        a.eval_rows,
        a.ground_truth.as_deref(),
    )?;
    let (backend, note) =
        exemplar::backend::Backend::select(exemplar::backend::DeviceChoice::parse(&a.device)?)?;
    if let Some(n) = note {
        eprintln!("{n}");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let cfg = SweepConfig {
        budgets,
        percentile: a.percentile,
        batch_size: a.batch_size,
        calibration_activations: a.calibration_activations,
        build: exemplar::build::BuildConfig {
            saturation_window: a.saturation_window,
            reservoir_size: a.reservoir,
            ..Default::default()
        },
        sae: a.sae.config()?,
    };
    let mut report = run_sweep(
        &backend,
        &a.input.activations,
        stream_options(&a.input),
        &eval,
        &cfg,
        out,
        force,
    )?;
    report.eval_inputs = a
        .eval_activations
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    report.ground_truth = a.ground_truth.as_ref().map(|p| p.display().to_string());

    // Table.
    println!(
        "{:>10}  {:>6} {:>9} {:>10} {:>9} {:>7} {:>7}   {:>10} {:>10} {:>9} {:>7} {:>7}",
        "budget",
        "EP K",
        "EP s",
        "EP FLOPs",
        "EP EV",
        "EP rec",
        "",
        "SAE s",
        "SAE FLOPs",
        "SAE EV",
        "SAE L0",
        "SAE rec"
    );
    let rec = |q: &exemplar::eval::budget::Quality| {
        q.feature_recovery_frac
            .map_or("-".to_string(), |v| format!("{v:.3}"))
    };
    for (e, s) in report.ep.iter().zip(&report.sae) {
        println!(
            "{:>10}  {:>6} {:>9.3} {:>10.3e} {:>9.4} {:>7} {:>7}   {:>10.3} {:>10.3e} {:>9.4} {:>7.1} {:>7}",
            e.budget,
            e.partitions,
            e.seconds,
            e.flops,
            e.quality.explained_variance,
            rec(&e.quality),
            "",
            s.training.seconds,
            s.training.flops,
            s.quality.explained_variance,
            s.quality.l0,
            rec(&s.quality),
        );
    }

    exemplar::eval::budget::plot(&report, &png_path, force)?;
    let json = serde_json::to_string_pretty(&report)?;
    exemplar::output::write_atomic(&report_path, json.as_bytes(), force)?;
    println!("wrote {} and {}", report_path.display(), png_path.display());
    Ok(())
}
