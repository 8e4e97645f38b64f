//! The subcommands.

use super::args::{check_output, check_output_dir};
use super::report;
use super::*;
use anyhow::{bail, Context, Result};
use exemplar::backend::{Backend, DeviceChoice};
use exemplar::build::{BuildConfig, Semantics};
use exemplar::calibrate::{Calibration, PercentileMethod};
use exemplar::data::npy::{self, NpyArray};
use exemplar::data::{ActivationStream, StreamOptions};
use exemplar::dictionary::{Basis, Dictionary, Readout};
use exemplar::pipeline::{self, BuildPlan};
use std::path::{Path, PathBuf};

/// `path` with its directory resolved (`.`, `..`, symlinks), to tell whether two output paths
/// name the same file.
fn resolved(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (dir.canonicalize(), path.file_name()) {
        (Ok(d), Some(f)) => d.join(f),
        _ => path.to_path_buf(),
    }
}

fn open_stream(input: &InputArgs) -> Result<ActivationStream> {
    let stream = ActivationStream::open(
        &input.activations,
        StreamOptions {
            tensor: input.tensor.clone(),
            skip_nonfinite: input.skip_nonfinite,
        },
    )?;
    Ok(stream)
}

/// The backend for `--device`; a fallback to the CPU is said on stderr.
fn backend(device: &str) -> Result<Backend> {
    let (b, note) = Backend::select(DeviceChoice::parse(device)?)?;
    if let Some(n) = note {
        eprintln!("{n}");
    }
    Ok(b)
}

fn method(name: &str) -> PercentileMethod {
    PercentileMethod::parse(name).expect("clap restricts the values")
}

fn paths(stream: &ActivationStream) -> Vec<String> {
    stream
        .paths()
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

fn note_skipped(stream: &ActivationStream) {
    let n = stream.skipped_nonfinite();
    if n > 0 {
        eprintln!("skipped {n} row(s) holding NaN/Inf (--skip-nonfinite)");
    }
}

pub fn calibrate(a: CalibrateArgs) -> Result<()> {
    a.output.check()?;
    let mut stream = open_stream(&a.input)?;
    let dev = backend(&a.device)?;
    let cal = pipeline::calibrate_stream(
        &dev,
        &mut stream,
        a.percentile,
        method(&a.calibration.percentile_method),
        a.batch_size,
        a.calibration.calibration_activations,
        a.calibration.standardize,
    )?;
    cal.save(
        &a.output.out,
        &paths(&stream),
        Some(&stream.fingerprint()),
        a.output.force,
    )
    .with_context(|| format!("writing {}", a.output.out.display()))?;
    note_skipped(&stream);
    println!(
        "θ = {:.6} (p{} {}, mean of {} batch percentiles over {} rows), ‖c‖ = {:.4}, D = {}",
        cal.theta,
        cal.percentile,
        cal.method.as_str(),
        cal.batch_percentiles.len(),
        cal.n_activations,
        exemplar::geometry::norm(&cal.center),
        cal.dim()
    );
    println!("wrote {}", a.output.out.display());
    Ok(())
}

/// The corpus reader's options from the flags.
#[cfg(feature = "torch")]
fn corpus_options(c: &CorpusArgs) -> exemplar::data::corpus::CorpusOptions {
    use exemplar::data::corpus::{CorpusOptions, Shuffle, TextMode};
    CorpusOptions {
        text_field: c.text_field.clone(),
        min_chars: c.min_chars,
        text_mode: match c.text_mode.as_str() {
            "paragraphs" => TextMode::Paragraphs,
            "whole" => TextMode::Whole,
            _ => TextMode::Lines,
        },
        shuffle: c.shuffle_seed.map(|seed| Shuffle {
            seed,
            buffer: c.shuffle_buffer,
        }),
        skip_invalid: c.skip_invalid,
    }
}

/// Files as the checkpoint identity records them: path and size.
fn file_identity(paths: &[PathBuf]) -> serde_json::Value {
    paths
        .iter()
        .map(|p| {
            let size = std::fs::metadata(p).map(|m| m.len()).ok();
            serde_json::json!({ "path": resolved(p).display().to_string(), "bytes": size })
        })
        .collect()
}

/// Everything of a build's command line that shapes its dictionary (not the device, outputs or
/// checkpoint settings): a resume must present the same.
fn build_identity(a: &BuildArgs) -> serde_json::Value {
    let c = &a.corpus;
    serde_json::json!({
        "activations": file_identity(&a.activations),
        "tensor": a.tensor,
        "skip_nonfinite": a.skip_nonfinite,
        "model": a.model.as_ref().map(|m| resolved(m).display().to_string()),
        "model_config": a.model.as_ref().map(|m| file_identity(&[m.join("config.json")])),
        "corpus": file_identity(&c.corpus),
        "text_field": c.text_field,
        "text_mode": c.text_mode,
        "min_chars": c.min_chars,
        "min_tokens": c.min_tokens,
        "shuffle_seed": c.shuffle_seed,
        "shuffle_buffer": c.shuffle_buffer,
        "skip_invalid": c.skip_invalid,
        "ctx": c.ctx,
        "final_position": c.final_position,
        "pack": c.pack,
        "batch_documents": a.batch_documents,
        "dtype": a.dtype,
        "calibration": a.calibration.as_ref().map(|p| file_identity(std::slice::from_ref(p))),
        "percentile": single(&a.percentile),
        "calibration_activations": a.calibration_args.calibration_activations,
        "percentile_method": a.calibration_args.percentile_method,
        "batch_size": a.batch_size,
        "saturation_window": a.saturation_window,
        "no_saturation": a.no_saturation,
        "max_activations": a.max_activations,
        "max_tokens": a.max_tokens,
        "strict_order": a.strict_order,
        "seed": a.seed,
        "examples": a.examples,
        "reservoir": a.reservoir,
        "min_members": a.min_members,
        "merge_close": a.merge_close,
        "merge_threshold": a.merge_threshold,
        "assignments": a.assignments.is_some(),
        "model_name": a.model_name,
        "hook": single(&a.hook),
    })
}

/// A flag given at most once as its value or null (as checkpoints record it), else the list.
fn single<T: serde::Serialize>(v: &[T]) -> serde_json::Value {
    match v {
        [] => serde_json::Value::Null,
        [x] => serde_json::json!(x),
        many => serde_json::json!(many),
    }
}

/// The dictionaries of a build: one (hook, percentile) pair writes `-o` itself; several write
/// `<hook>.p<percentile>.safetensors` each into the directory `-o`. Checked before any work:
/// `-o` must be a directory or not exist (its parent must), and no file may exist unless
/// `force`.
fn build_outputs(a: &BuildArgs) -> Result<Vec<PathBuf>> {
    let pairs = a.hook.len().max(1) * a.percentile.len().max(1);
    if pairs == 1 {
        a.output.check()?;
        return Ok(vec![a.output.out.clone()]);
    }
    if a.model.is_none() {
        bail!(
            "several --hook or --percentile values need --model (one forward per batch feeds              every hook and percentile); with --activations, build each dictionary on its own"
        );
    }
    if a.calibration.is_some() {
        bail!("several --hook values need --percentile (each hook is calibrated on its own activations), not --calibration");
    }
    for (i, h) in a.hook.iter().enumerate() {
        if a.hook[..i].contains(h) {
            bail!("--hook {h} is given twice");
        }
        if h.is_empty() || h.contains(['/', '\\']) || h.starts_with('.') {
            bail!("--hook {h:?} cannot name an output file");
        }
    }
    for (i, p) in a.percentile.iter().enumerate() {
        if a.percentile[..i].contains(p) {
            bail!("--percentile {p} is given twice");
        }
    }
    if a.output.out.exists() && !a.output.out.is_dir() {
        bail!(
            "with several hooks or percentiles, --out names a directory; {} is a file",
            a.output.out.display()
        );
    }
    check_output_dir(&a.output.out)?;
    let mut outs = Vec::with_capacity(pairs);
    for h in &a.hook {
        for p in &a.percentile {
            let path = a.output.out.join(format!("{h}.p{p}.safetensors"));
            exemplar::output::check_writable(&path, a.output.force)?;
            outs.push(path);
        }
    }
    Ok(outs)
}

pub fn build(a: BuildArgs) -> Result<()> {
    let outs = build_outputs(&a)?;
    if let Some(p) = &a.assignments {
        if p == &a.output.out || resolved(p) == resolved(&a.output.out) {
            bail!(
                "--assignments {} and --out {} name the same file",
                p.display(),
                a.output.out.display()
            );
        }
        if a.model.is_some() {
            bail!("--assignments needs --activations (a build from text has no input rows to align with)");
        }
        check_output(p, a.output.force)?;
    }
    if a.model.is_none() && !a.corpus.corpus.is_empty() {
        bail!("--corpus needs --model (a build from text)");
    }
    if let Some(cp) = &a.checkpoint {
        if resolved(cp) == resolved(&a.output.out) {
            bail!("--checkpoint and --out name the same file");
        }
        if outs.len() > 1 && cp.is_file() {
            bail!(
                "a build of several (hook, percentile) pairs checkpoints into a directory; {} is a file",
                cp.display()
            );
        }
        if outs.len() > 1 && a.resume && !cp.join("manifest.json").exists() {
            bail!(
                "--resume: {} holds no checkpoint set (no manifest.json)",
                cp.display()
            );
        }
        if a.resume && !cp.exists() {
            bail!("--resume: the checkpoint {} does not exist", cp.display());
        }
        if !a.resume && cp.exists() && !a.output.force {
            bail!(
                "the checkpoint {} exists: continue it with --resume, or replace it with --force",
                cp.display()
            );
        }
        check_output(cp, true)?;
    }
    let dev = backend(&a.device)?;
    let inline = |p: f64| pipeline::CalibrationSpec::Inline {
        percentile: p,
        method: method(&a.calibration_args.percentile_method),
        activations: a.calibration_args.calibration_activations,
        standardize: a.calibration_args.standardize,
    };
    let cal = match (&a.calibration, a.percentile.first()) {
        (Some(path), _) => pipeline::CalibrationSpec::Fixed(Calibration::load(path)?),
        (None, Some(&p)) => inline(p),
        (None, None) => unreachable!("clap requires --calibration or --percentile"),
    };
    let documents = a.model.is_some() || a.batch_documents.is_some();
    let mut plan = BuildPlan {
        config: BuildConfig {
            semantics: if a.strict_order {
                Semantics::StrictOrder
            } else {
                Semantics::TwoPhase
            },
            saturation_window: (!a.no_saturation).then_some(a.saturation_window),
            seed: a.seed,
            examples_per_partition: a.examples,
            reservoir_size: a.reservoir,
            merge_threshold: match (&cal, a.merge_close) {
                (_, false) => None,
                (_, true) if a.merge_threshold.is_some() => a.merge_threshold,
                (pipeline::CalibrationSpec::Fixed(c), true) => Some(c.theta),
                // θ is known only after calibration: resolved below by the builder's θ.
                (pipeline::CalibrationSpec::Inline { .. }, true) => Some(f64::NAN),
            },
            record_assignments: a.assignments.as_ref().map(|_| 0),
        },
        // Batches of whole documents have no fixed row count (recorded as 0).
        batch_size: if documents { 0 } else { a.batch_size },
        max_activations: a.max_activations,
        max_tokens: a.max_tokens,
        min_members: a.min_members,
        model: a
            .model_name
            .clone()
            .or_else(|| a.model.as_ref().map(|m| m.display().to_string())),
        hook: a.hook.first().cloned(),
        total_rows: None,
    };
    let ckpt = a.checkpoint.as_ref().map(|p| pipeline::CheckpointPlan {
        path: p.clone(),
        every: a.checkpoint_every,
        identity: build_identity(&a),
        resume: a.resume,
        throttle: a.throttle_ms.map(std::time::Duration::from_millis),
    });
    let outputs = match &a.model {
        Some(dir) => {
            // Hook-major: for each hook, each percentile (the order of `outs`).
            let mut pairs = vec![];
            for (stream, hook) in a.hook.iter().enumerate() {
                for &p in &a.percentile {
                    pairs.push(pipeline::BuildPair {
                        stream,
                        calibration: inline(p),
                        hook: Some(hook.clone()),
                    });
                }
            }
            if let pipeline::CalibrationSpec::Fixed(_) = cal {
                pairs = vec![pipeline::BuildPair {
                    stream: 0,
                    calibration: cal,
                    hook: plan.hook.clone(),
                }];
            }
            text_build(&a, dir, &dev, pairs, &plan, ckpt.as_ref())?
        }
        None => {
            let mut stream = open_stream(&InputArgs {
                activations: a.activations.clone(),
                tensor: a.tensor.clone(),
                skip_nonfinite: a.skip_nonfinite,
            })?;
            plan.total_rows = Some(stream.total_rows());
            if let (pipeline::CalibrationSpec::Fixed(c), Some(path)) = (&cal, &a.calibration) {
                if c.dim() != stream.dim() {
                    return Err(exemplar::Error::DimensionMismatch {
                        what: format!(
                            "activations {} (calibration {})",
                            a.activations[0].display(),
                            path.display()
                        ),
                        expected: c.dim(),
                        found: stream.dim(),
                    }
                    .into());
                }
            }
            let out = match a.batch_documents {
                Some(n) => pipeline::run_build(
                    &dev,
                    &mut pipeline::DocumentBatches::new(&mut stream, n)?,
                    cal,
                    &plan,
                    ckpt.as_ref(),
                )?,
                None => pipeline::run_build(
                    &dev,
                    &mut pipeline::RowBatches::new(&mut stream, a.batch_size),
                    cal,
                    &plan,
                    ckpt.as_ref(),
                )?,
            };
            note_skipped(&stream);
            vec![out]
        }
    };
    if outs.len() > 1 {
        std::fs::create_dir_all(&a.output.out)
            .with_context(|| format!("creating the directory {}", a.output.out.display()))?;
    }
    for (out, path) in outputs.into_iter().zip(&outs) {
        let dict = out.dictionary;
        // The dictionary first: it is the result; the assignments line up with it.
        dict.save(path, a.output.force)
            .with_context(|| format!("writing {}", path.display()))?;
        if let (Some(path), Some(ids)) = (&a.assignments, out.assignments) {
            npy::write_npy_file(path, &NpyArray::vector(ids), a.output.force)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        report_build(&dict, path, outs.len() > 1);
    }
    if let Some(p) = &a.checkpoint {
        println!("checkpoint {}", p.display());
    }
    if let Some(p) = &a.assignments {
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// The summary lines of a written dictionary (after a line naming its hook and percentile,
/// with `pair`).
fn report_build(dict: &Dictionary, path: &Path, pair: bool) {
    let info = dict.info();
    if pair {
        println!(
            "{}, percentile {}:",
            info.hook.as_deref().unwrap_or("?"),
            info.percentile.unwrap_or(f64::NAN)
        );
    }
    println!(
        "K = {} partitions from {} activations ({} tokens) in {} batches ({}), θ = {:.6}, {:.1}s",
        dict.len(),
        info.activations_streamed,
        info.tokens_streamed,
        info.batches,
        if info.saturated {
            "saturated"
        } else {
            "not saturated"
        },
        dict.theta(),
        info.build_seconds
    );
    if let Some(f) = info.model_flops {
        println!(
            "model {:.3} TFLOP, clustering {:.3} TFLOP",
            f / 1e12,
            info.clustering_flops / 1e12
        );
    }
    println!("wrote {}", path.display());
}

pub fn assign(a: AssignArgs) -> Result<()> {
    a.output.check()?;
    let dict = Dictionary::load(&a.dictionary)?;
    let mut stream = open_stream(&a.input)?;
    let dev = backend(&a.device)?;
    let (ids, dists) = pipeline::assign_stream(&dev, &mut stream, &dict, a.batch_size)?;
    let within = dict.within_threshold(&dists);
    let n_valid = ids.iter().filter(|&&i| i >= 0).count();
    let n_within = within.iter().filter(|&&w| w).count();
    npy::write_npz(
        &a.output.out,
        &[
            ("ids", NpyArray::vector(ids)),
            ("distances", NpyArray::vector(dists.clone())),
            ("within_threshold", NpyArray::vector(within)),
        ],
        a.output.force,
    )
    .with_context(|| format!("writing {}", a.output.out.display()))?;
    note_skipped(&stream);
    let mut valid: Vec<f32> = dists.iter().copied().filter(|d| d.is_finite()).collect();
    valid.sort_by(f32::total_cmp);
    let q = |p: f64| {
        valid
            .get(((valid.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(f32::NAN)
    };
    println!(
        "{} rows assigned to {} partitions; within θ = {:.4}: {} ({:.2}%); distance median {:.4}, p90 {:.4}, max {:.4}",
        n_valid,
        dict.len(),
        dict.theta(),
        n_within,
        100.0 * n_within as f64 / n_valid.max(1) as f64,
        q(0.5),
        q(0.9),
        q(1.0)
    );
    println!("wrote {}", a.output.out.display());
    Ok(())
}

pub fn encode(a: EncodeArgs) -> Result<()> {
    a.output.check()?;
    let dict = Dictionary::load(&a.dictionary)?;
    let readout = match a.readout.as_str() {
        "one-hot" => Readout::OneHot,
        "topk" => Readout::TopK(a.k),
        "topk-cosine" => Readout::TopKCosine(a.k),
        "signed" => Readout::Signed,
        "cosine" => Readout::Cosine,
        _ => unreachable!("clap restricts the values"),
    };
    let basis = if a.basis == "mean" {
        Basis::Mean
    } else {
        Basis::Exemplar
    };
    let mut stream = open_stream(&a.input)?;
    if stream.dim() != dict.dim() {
        return Err(exemplar::Error::DimensionMismatch {
            what: format!("activations ({})", a.input.activations[0].display()),
            expected: dict.dim(),
            found: stream.dim(),
        }
        .into());
    }
    let (n, k) = (stream.total_rows() as usize, dict.len());
    let mut codes = vec![0.0f32; n * k];
    while let Some(b) = stream.next_batch(4096)? {
        let c = dict.encode(&b.data, basis, readout).map_err(|e| match e {
            exemplar::Error::InvalidParameter {
                name: "activations",
                ..
            } => {
                // A row equal to the center: name its file and row, not its index in the batch.
                match exemplar::geometry::directions(&dict.to_space(&b.data), dict.center()) {
                    Err(z) => {
                        let (path, row) = stream.locate(b.stream_rows[z.index]);
                        exemplar::Error::ZeroNorm {
                            path: path.to_path_buf(),
                            row,
                        }
                        .into()
                    }
                    Ok(_) => anyhow::anyhow!(e),
                }
            }
            e => e.into(),
        })?;
        for (j, &r) in b.stream_rows.iter().enumerate() {
            codes[r as usize * k..(r as usize + 1) * k].copy_from_slice(&c[j * k..(j + 1) * k]);
        }
    }
    npy::write_npy_file(
        &a.output.out,
        &NpyArray::matrix(codes, n, k)?,
        a.output.force,
    )
    .with_context(|| format!("writing {}", a.output.out.display()))?;
    note_skipped(&stream);
    println!(
        "wrote {} ({n} × {k}, readout {}, basis {})",
        a.output.out.display(),
        a.readout,
        a.basis
    );
    Ok(())
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let dict = Dictionary::load(&a.dictionary)?;
    if let Some(&bad) = a.regions.iter().find(|&&k| k >= dict.len()) {
        anyhow::bail!(
            "region {bad} is out of range: {} has {} regions (0..{})",
            a.dictionary.display(),
            dict.len(),
            dict.len().saturating_sub(1)
        );
    }
    if a.json {
        let mut j = report::summary_json(&dict, a.top, a.examples);
        if !a.regions.is_empty() {
            j["chosen_regions"] = report::regions_json(&dict, &a.regions, a.examples);
        }
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        print!(
            "{}",
            report::summary_text(&dict, &a.dictionary, a.top, a.examples)
        );
        if !a.regions.is_empty() {
            println!("\nChosen regions:");
            print!("{}", report::regions_table(&dict, &a.regions, a.examples));
        }
    }
    Ok(())
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let dict = Dictionary::load(&a.dictionary)?;
    let m = exemplar::eval::intrinsic_metrics(&dict, a.min_members);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        print!("{}", report::metrics_text(&m));
    }
    Ok(())
}

/// The embedded sample: MiniLM-L6 layer-3 activations of Python's documentation (see
/// `data/demo/README.md`).
const DEMO_ACTIVATIONS: &[u8] = include_bytes!("../../data/demo/minilm-l6-layer3.safetensors");
const DEMO_PROVENANCE: &[u8] =
    include_bytes!("../../data/demo/minilm-l6-layer3.safetensors.provenance.jsonl");

pub fn demo(a: DemoArgs) -> Result<()> {
    if let Some(out) = &a.out {
        check_output(out, a.force)?;
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let acts = dir.path().join("minilm-l6-layer3.safetensors");
    std::fs::write(&acts, DEMO_ACTIVATIONS)?;
    std::fs::write(
        dir.path()
            .join("minilm-l6-layer3.safetensors.provenance.jsonl"),
        DEMO_PROVENANCE,
    )?;
    let mut stream = ActivationStream::open(&[acts], StreamOptions::default())?;
    // A small sample: batches of 512 rows, every row used for calibration and for the build.
    let batch_size = 512;
    let all_rows = stream.total_rows();
    let cal = pipeline::calibrate_stream(
        &Backend::Cpu,
        &mut stream,
        a.percentile,
        PercentileMethod::Linear,
        batch_size,
        all_rows,
        false,
    )?;
    stream.rewind()?;
    let plan = BuildPlan {
        batch_size,
        model: Some("sentence-transformers/all-MiniLM-L6-v2".into()),
        hook: Some("hidden_states[3] (residual stream after block 3 of 6)".into()),
        ..BuildPlan::new(BuildConfig {
            saturation_window: None,
            ..BuildConfig::default()
        })
    };
    let dict = pipeline::build_stream(&Backend::Cpu, &mut stream, &cal, &plan)?.dictionary;
    println!(
        "exemplar demo: {} activations (D = {}) of all-MiniLM-L6-v2, layer 3, on {} passages of Python's documentation",
        stream.total_rows(),
        stream.dim(),
        count_documents(DEMO_PROVENANCE)
    );
    println!(
        "calibration: p{} of within-batch pairwise cosine distances → θ = {:.4}; build: K = {} regions\n",
        cal.percentile,
        cal.theta,
        dict.len()
    );
    print!("{}", report::regions_text(&dict, a.top, 4));
    if let Some(out) = &a.out {
        dict.save(out, a.force)?;
        println!("\nwrote {}", out.display());
    } else {
        println!("\n(save it with --out FILE, then try `exemplar inspect FILE` and `exemplar eval FILE`)");
    }
    Ok(())
}

fn count_documents(sidecar: &[u8]) -> usize {
    sidecar
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

/// The torch device and weight dtype for `--device` and `--dtype`.
#[cfg(feature = "torch")]
pub(super) fn model_device(device: &str, dtype: Option<&str>) -> Result<(tch::Device, tch::Kind)> {
    let device = match device {
        "cuda" if tch::Cuda::is_available() => tch::Device::Cuda(0),
        "cuda" => bail!("--device cuda: no CUDA device is available to libtorch"),
        "auto" if tch::Cuda::is_available() => tch::Device::Cuda(0),
        _ => tch::Device::Cpu,
    };
    let kind = match (dtype, device) {
        (Some("bf16"), _) | (None, tch::Device::Cuda(_)) => tch::Kind::BFloat16,
        _ => tch::Kind::Float,
    };
    Ok((device, kind))
}

#[cfg(feature = "torch")]
fn text_build(
    a: &BuildArgs,
    dir: &Path,
    dev: &Backend,
    pairs: Vec<pipeline::BuildPair>,
    plan: &BuildPlan,
    ckpt: Option<&pipeline::CheckpointPlan>,
) -> Result<Vec<exemplar::build::BuildOutput>> {
    use exemplar::data::corpus::CorpusReader;
    use exemplar::model::{Gemma, HookPoint, Tokenizer};
    use exemplar::pipeline::text::{TextOptions, TextSource};
    let hooks = a
        .hook
        .iter()
        .map(|h| HookPoint::parse(h))
        .collect::<exemplar::Result<Vec<_>>>()?;
    let (device, kind) = model_device(&a.device, a.dtype.as_deref())?;
    let reader = CorpusReader::open(&a.corpus.corpus, corpus_options(&a.corpus))?;
    let model = Gemma::load(dir, kind, device)?;
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"), model.config.bos_token_id)?;
    let mut src = TextSource::with_hooks(
        reader,
        &tok,
        &model,
        hooks,
        TextOptions {
            ctx: a.corpus.ctx,
            batch_documents: a.batch_documents.unwrap_or(128),
            min_tokens: a.corpus.min_tokens,
            final_position: a.corpus.final_position,
            pack: a.corpus.pack,
        },
    )?
    .with_model_dir(dir)?;
    let out = pipeline::run_builds(dev, &mut src, pairs, plan, ckpt)?;
    let s = src.corpus_stats();
    if s.skipped_empty + s.skipped_short + s.skipped_invalid > 0 {
        eprintln!(
            "corpus: skipped {} empty, {} short (--min-chars), {} invalid (--skip-invalid) documents",
            s.skipped_empty, s.skipped_short, s.skipped_invalid
        );
    }
    Ok(out)
}

#[cfg(not(feature = "torch"))]
fn text_build(
    _: &BuildArgs,
    _: &Path,
    _: &Backend,
    _: Vec<pipeline::BuildPair>,
    _: &BuildPlan,
    _: Option<&pipeline::CheckpointPlan>,
) -> Result<Vec<exemplar::build::BuildOutput>> {
    bail!("--model needs exemplar built with the `torch` feature")
}

#[cfg(feature = "torch")]
pub fn activations(a: ActivationsArgs) -> Result<()> {
    use exemplar::data::corpus::CorpusReader;
    use exemplar::model::extract::{extract_to_file, ExtractOptions};
    use exemplar::model::{Gemma, HookPoint, Tokenizer};
    let hook = HookPoint::parse(&a.hook)?;
    let (device, kind) = model_device(&a.device, a.dtype.as_deref())?;
    a.output.check()?;
    if a.corpus.corpus.is_empty() {
        bail!("--corpus: give at least one corpus file");
    }
    let mut reader = CorpusReader::open(&a.corpus.corpus, corpus_options(&a.corpus))?;
    let mut docs: Vec<(i64, String)> = Vec::new();
    while let Some(d) = reader.next_document()? {
        docs.push((d.index as i64, d.text));
    }
    let model = Gemma::load(&a.model, kind, device)?;
    if hook.layer >= model.config.num_hidden_layers {
        bail!(
            "{hook}: {} has {} blocks",
            a.model.display(),
            model.config.num_hidden_layers
        );
    }
    let tok = Tokenizer::from_file(&a.model.join("tokenizer.json"), model.config.bos_token_id)?;
    let s = extract_to_file(
        &model,
        &tok,
        hook,
        &docs,
        &ExtractOptions {
            ctx: a.corpus.ctx,
            batch_prompts: a.batch_prompts,
            min_tokens: a.corpus.min_tokens,
            final_position: a.corpus.final_position,
            pack: a.corpus.pack,
        },
        &a.output.out,
        a.output.force,
    )?;
    println!(
        "{} rows (D = {}) from {} documents ({} tokens, BOS included; {} skipped with fewer than {} tokens after the BOS) at {hook}",
        s.rows, s.dim, s.documents, s.tokens, s.skipped_documents, a.corpus.min_tokens.max(1)
    );
    println!("corpus fingerprint {}", reader.fingerprint());
    println!(
        "wrote {} and its provenance sidecar",
        a.output.out.display()
    );
    Ok(())
}
