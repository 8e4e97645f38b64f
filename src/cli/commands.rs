//! The subcommands.

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

/// Checks an output before any work: it must not exist (unless `force`) and its directory must
/// exist, so a long run never ends in an error that it could have reported at the start.
fn check_writable(path: &Path, force: bool) -> Result<()> {
    exemplar::output::check_writable(path, force)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "cannot write {}: the directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

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
    check_writable(&a.out, a.force)?;
    let mut stream = open_stream(&a.input)?;
    let dev = backend(&a.device)?;
    let cal = pipeline::calibrate_stream(
        &dev,
        &mut stream,
        a.percentile,
        method(&a.calibration.percentile_method),
        a.batch_size,
        a.calibration.calibration_activations,
    )?;
    cal.save(
        &a.out,
        &paths(&stream),
        Some(&stream.fingerprint()),
        a.force,
    )
    .with_context(|| format!("writing {}", a.out.display()))?;
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
    println!("wrote {}", a.out.display());
    Ok(())
}

pub fn build(a: BuildArgs) -> Result<()> {
    check_writable(&a.out, a.force)?;
    if let Some(p) = &a.assignments {
        if p == &a.out || resolved(p) == resolved(&a.out) {
            bail!(
                "--assignments {} and --out {} name the same file",
                p.display(),
                a.out.display()
            );
        }
        check_writable(p, a.force)?;
    }
    let mut stream = open_stream(&a.input)?;
    let dev = backend(&a.device)?;
    let cal = match (&a.calibration, a.percentile) {
        (Some(path), _) => {
            let cal = Calibration::load(path)?;
            if cal.dim() != stream.dim() {
                return Err(exemplar::Error::DimensionMismatch {
                    what: format!(
                        "activations {} (calibration {})",
                        a.input.activations[0].display(),
                        path.display()
                    ),
                    expected: cal.dim(),
                    found: stream.dim(),
                }
                .into());
            }
            cal
        }
        (None, Some(p)) => {
            let cal = pipeline::calibrate_stream(
                &dev,
                &mut stream,
                p,
                method(&a.calibration_args.percentile_method),
                a.batch_size,
                a.calibration_args.calibration_activations,
            )?;
            eprintln!(
                "calibrated: θ = {:.6} on {} rows",
                cal.theta, cal.n_activations
            );
            stream.rewind()?;
            cal
        }
        (None, None) => unreachable!("clap requires --calibration or --percentile"),
    };
    let plan = BuildPlan {
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
            merge_threshold: a
                .merge_close
                .then(|| a.merge_threshold.unwrap_or(cal.theta)),
            record_assignments: a.assignments.as_ref().map(|_| 0),
        },
        batch_size: a.batch_size,
        max_activations: a.max_activations,
        max_tokens: a.max_tokens,
        min_members: a.min_members,
        model: a.model.clone(),
        hook: a.hook.clone(),
    };
    let out = pipeline::build_stream(&dev, &mut stream, &cal, &plan)?;
    let dict = out.dictionary;
    // The dictionary first: it is the result; the assignments line up with it.
    dict.save(&a.out, a.force)
        .with_context(|| format!("writing {}", a.out.display()))?;
    if let (Some(path), Some(ids)) = (&a.assignments, out.assignments) {
        npy::write_npy_file(path, &NpyArray::vector(ids), a.force)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    note_skipped(&stream);
    let info = dict.info();
    println!(
        "K = {} partitions from {} activations in {} batches ({}), θ = {:.6}, {:.1}s",
        dict.len(),
        info.activations_streamed,
        info.batches,
        if info.saturated {
            "saturated"
        } else {
            "not saturated"
        },
        dict.theta(),
        info.build_seconds
    );
    println!("wrote {}", a.out.display());
    if let Some(p) = &a.assignments {
        println!("wrote {}", p.display());
    }
    Ok(())
}

pub fn assign(a: AssignArgs) -> Result<()> {
    check_writable(&a.out, a.force)?;
    let dict = Dictionary::load(&a.dictionary)?;
    let mut stream = open_stream(&a.input)?;
    let dev = backend(&a.device)?;
    let (ids, dists) = pipeline::assign_stream(&dev, &mut stream, &dict, a.batch_size)?;
    let within = dict.within_threshold(&dists);
    let n_valid = ids.iter().filter(|&&i| i >= 0).count();
    let n_within = within.iter().filter(|&&w| w).count();
    npy::write_npz(
        &a.out,
        &[
            ("ids", NpyArray::vector(ids)),
            ("distances", NpyArray::vector(dists.clone())),
            ("within_threshold", NpyArray::vector(within)),
        ],
        a.force,
    )
    .with_context(|| format!("writing {}", a.out.display()))?;
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
    println!("wrote {}", a.out.display());
    Ok(())
}

pub fn encode(a: EncodeArgs) -> Result<()> {
    check_writable(&a.out, a.force)?;
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
                match exemplar::geometry::directions(&b.data, dict.center()) {
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
    npy::write_npy_file(&a.out, &NpyArray::matrix(codes, n, k)?, a.force)
        .with_context(|| format!("writing {}", a.out.display()))?;
    note_skipped(&stream);
    println!(
        "wrote {} ({n} × {k}, readout {}, basis {})",
        a.out.display(),
        a.readout,
        a.basis
    );
    Ok(())
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let dict = Dictionary::load(&a.dictionary)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::summary_json(&dict, a.top, a.examples))?
        );
    } else {
        print!(
            "{}",
            report::summary_text(&dict, &a.dictionary, a.top, a.examples)
        );
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
        check_writable(out, a.force)?;
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
    )?;
    stream.rewind()?;
    let plan = BuildPlan {
        config: BuildConfig {
            saturation_window: None,
            ..BuildConfig::default()
        },
        batch_size,
        max_activations: None,
        max_tokens: None,
        min_members: 1,
        model: Some("sentence-transformers/all-MiniLM-L6-v2".into()),
        hook: Some("hidden_states[3] (residual stream after block 3 of 6)".into()),
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

#[cfg(feature = "torch")]
pub fn activations(a: ActivationsArgs) -> Result<()> {
    use exemplar::model::extract::{extract_to_file, ExtractOptions};
    use exemplar::model::{Gemma2, HookPoint, Tokenizer};
    let hook = HookPoint::parse(&a.hook)?;
    let device = match a.device.as_str() {
        "cuda" if tch::Cuda::is_available() => tch::Device::Cuda(0),
        "cuda" => bail!("--device cuda: no CUDA device is available to libtorch"),
        _ => tch::Device::Cpu,
    };
    let kind = match (a.dtype.as_deref(), device) {
        (Some("bf16"), _) | (None, tch::Device::Cuda(_)) => tch::Kind::BFloat16,
        _ => tch::Kind::Float,
    };
    check_writable(&a.out, a.force)?;
    let text = std::fs::read(&a.text).with_context(|| format!("reading {}", a.text.display()))?;
    let text = String::from_utf8(text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 (invalid byte at offset {})",
            a.text.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let docs: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    if docs.is_empty() {
        bail!(
            "{}: no non-empty line (one document per line)",
            a.text.display()
        );
    }
    let model = Gemma2::load(&a.model, kind, device)?;
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
            ctx: a.ctx,
            batch_prompts: a.batch_prompts,
        },
        &a.out,
        a.force,
    )?;
    println!(
        "{} rows (D = {}) from {} documents ({} tokens, BOS included; {} empty after tokenization) at {hook}",
        s.rows, s.dim, s.documents, s.tokens, s.skipped_documents
    );
    println!("wrote {} and its provenance sidecar", a.out.display());
    Ok(())
}
