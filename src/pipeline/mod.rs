//! Drivers over an [`ActivationStream`]: calibration, the streaming build, and assignment, with
//! progress bars (rate and ETA on a terminal, silent in pipes and CI) and errors that name the
//! file and row.

use crate::backend::Backend;
use crate::build::{BuildConfig, BuildOutput, Builder};
use crate::calibrate::{self, Calibration, CalibrationError, PercentileMethod};
use crate::data::{ActivationBatch, ActivationStream};
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
pub use crate::progress::progress_bar;
use indicatif::ProgressStyle;

mod sources;
#[cfg(feature = "torch")]
pub mod text;

use sources::locate_error;
pub use sources::{BatchSource, DocumentBatches, RowBatches};
use std::time::Instant;

/// Calibrates on the first rows of `stream`: whole batches of `batch_size` rows until at least
/// `calibration_activations` rows are read (so it may read up to one batch more, like the
/// reference). The stream is left after those rows; call `rewind` to build from the start.
pub fn calibrate_stream(
    backend: &Backend,
    stream: &mut ActivationStream,
    percentile: f64,
    method: PercentileMethod,
    batch_size: usize,
    calibration_activations: u64,
    standardize: bool,
) -> Result<Calibration> {
    calibrate::check_percentile(percentile)?;
    if batch_size == 0 {
        return Err(Error::param("batch size", "must be at least 1"));
    }
    if calibration_activations == 0 {
        return Err(Error::param(
            "calibration activations",
            "must be at least 1",
        ));
    }
    let d = stream.dim();
    let target = calibration_activations.min(stream.total_rows());
    let pb = progress_bar(target, "calibrate");
    let mut batches: Vec<Vec<f32>> = Vec::new();
    let mut rows: Vec<Vec<u64>> = Vec::new();
    let mut total = 0u64;
    while total < calibration_activations {
        let Some(b) = stream.next_batch(batch_size)? else {
            break;
        };
        total += b.rows() as u64;
        pb.set_position(total.min(target));
        rows.push(b.stream_rows);
        batches.push(b.data);
    }
    if total == 0 {
        return Err(Error::EmptyInput("no rows to calibrate on".into()));
    }
    pb.set_message("percentiles");
    let calibrate = if standardize {
        calibrate::calibrate_standardized_on
    } else {
        calibrate::calibrate_batches_on
    };
    let cal =
        calibrate(backend, &batches, d, percentile, method, batch_size).map_err(|e| match e {
            CalibrationError::Lib(e) => e,
            CalibrationError::ZeroNorm { batch, row } => {
                let (path, r) = stream.locate(rows[batch][row]);
                Error::ZeroNorm {
                    path: path.to_path_buf(),
                    row: r,
                }
            }
        });
    pb.finish_and_clear();
    cal
}

/// What to build and when to stop.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    pub config: BuildConfig,
    /// Rows per batch.
    pub batch_size: usize,
    /// Stop after exactly this many activations (the last batch is cut short).
    pub max_activations: Option<u64>,
    /// Stop after the batch in which this many tokens (BOS included) have been streamed.
    pub max_tokens: Option<u64>,
    /// Drop partitions with fewer members at the end.
    pub min_members: u64,
    /// Recorded in the dictionary's metadata.
    pub model: Option<String>,
    pub hook: Option<String>,
    /// Rows of the whole input, when known (needed to record assignments).
    pub total_rows: Option<u64>,
}

impl BuildPlan {
    /// A plan with `config`, no budget, `min_members` 1, batches of whole documents or the
    /// source's own size (`batch_size` 0) and nothing recorded about the model.
    pub fn new(config: BuildConfig) -> Self {
        BuildPlan {
            config,
            batch_size: 0,
            max_activations: None,
            max_tokens: None,
            min_members: 1,
            model: None,
            hook: None,
            total_rows: None,
        }
    }
}

/// Builds a dictionary from `stream` (from its current position) with `calibration`.
pub fn build_stream(
    backend: &Backend,
    stream: &mut ActivationStream,
    calibration: &Calibration,
    plan: &BuildPlan,
) -> Result<BuildOutput> {
    if stream.dim() != calibration.dim() {
        return Err(Error::DimensionMismatch {
            what: format!("activations ({})", stream.paths()[0].display()),
            expected: calibration.dim(),
            found: stream.dim(),
        });
    }
    if plan.batch_size == 0 {
        return Err(Error::param("batch size", "must be at least 1"));
    }
    if plan.max_activations == Some(0) || plan.max_tokens == Some(0) {
        return Err(Error::param("budget", "a budget must be at least 1"));
    }
    let start = Instant::now();
    let mut config = plan.config.clone();
    if config.record_assignments.is_some() {
        config.record_assignments = Some(stream.total_rows());
    }
    let mut builder = Builder::new(calibration.center.clone(), calibration.theta, config)?
        .with_scaling(calibration.scaling.clone())?
        .with_backend(backend.clone());
    let total = plan
        .max_activations
        .map_or(stream.total_rows(), |m| m.min(stream.total_rows()));
    let pb = progress_bar(total, "build");
    let mut acts = 0u64;
    let mut tokens = 0u64;
    loop {
        let want = match plan.max_activations {
            Some(m) if acts >= m => break,
            Some(m) => ((m - acts) as usize).min(plan.batch_size),
            None => plan.batch_size,
        };
        let Some(batch) = stream.next_batch(want)? else {
            break;
        };
        let batch = match &calibration.scaling {
            Some(sc) => standardize_batch(sc, &batch)?,
            None => batch,
        };
        let out = builder
            .add_batch(&batch)
            .map_err(|e| locate_error(stream, e))?;
        acts += out.rows as u64;
        tokens += batch.new_tokens;
        pb.set_position(acts.min(total));
        pb.set_message(format!(
            "K={} new={:.2}%",
            out.partitions,
            100.0 * out.new_partitions as f64 / out.rows as f64
        ));
        if out.saturated {
            break;
        }
        if plan.max_tokens.is_some_and(|m| tokens >= m) {
            break;
        }
    }
    pb.finish_and_clear();
    if acts == 0 {
        return Err(Error::EmptyInput("no rows to build from".into()));
    }
    let info = builder.info_mut();
    record_plan(info, calibration, plan);
    info.inputs = stream
        .paths()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    info.input_fingerprint = Some(stream.fingerprint());
    info.model = plan.model.clone();
    info.hook = plan.hook.clone();
    info.build_seconds = start.elapsed().as_secs_f64();
    info.created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    builder.try_finish(plan.min_members)
}

/// Nearest exemplar and distance of every row of `stream`, aligned with the input rows
/// (skipped non-finite rows get id −1 and distance NaN).
pub fn assign_stream(
    backend: &Backend,
    stream: &mut ActivationStream,
    dict: &Dictionary,
    batch_size: usize,
) -> Result<(Vec<i64>, Vec<f32>)> {
    if stream.dim() != dict.dim() {
        return Err(Error::DimensionMismatch {
            what: format!("activations ({})", stream.paths()[0].display()),
            expected: dict.dim(),
            found: stream.dim(),
        });
    }
    let n = stream.total_rows() as usize;
    let mut ids = vec![-1i64; n];
    let mut dists = vec![f32::NAN; n];
    let pb = progress_bar(n as u64, "assign");
    // The exemplars are prepared once (on a GPU: copied to the device once).
    let cands = if dict.is_empty() {
        None
    } else {
        Some(backend.candidates(dict.exemplars(), dict.dim())?)
    };
    while let Some(b) = stream.next_batch(batch_size.max(1))? {
        let u =
            crate::geometry::directions(&dict.to_space(&b.data), dict.center()).map_err(|z| {
                let (path, r) = stream.locate(b.stream_rows[z.index]);
                Error::ZeroNorm {
                    path: path.to_path_buf(),
                    row: r,
                }
            })?;
        let Some(cands) = cands.as_ref() else {
            // No exemplar: every row is id −1 at distance +inf (as the reference).
            for &r in &b.stream_rows {
                dists[r as usize] = f32::INFINITY;
            }
            pb.inc(b.rows() as u64 + b.skipped_nonfinite);
            continue;
        };
        let (i, sims) = backend.nearest_among(&u, cands)?;
        for (j, &r) in b.stream_rows.iter().enumerate() {
            ids[r as usize] = i[j] as i64;
            dists[r as usize] = crate::geometry::distance_from_similarity(sims[j]) as f32;
        }
        pb.inc(b.rows() as u64 + b.skipped_nonfinite);
    }
    pb.finish_and_clear();
    Ok((ids, dists))
}

/// Calibrates on the first batches of `source` until at least `calibration_activations` rows
/// are read (whole batches, like the reference). Returns the calibration and the batches read,
/// each with the source's position after it, so the build can replay them instead of reading
/// them again.
pub fn calibrate_source(
    backend: &Backend,
    source: &mut dyn BatchSource,
    percentile: f64,
    method: PercentileMethod,
    calibration_activations: u64,
    standardize: bool,
) -> Result<(Calibration, Vec<(ActivationBatch, serde_json::Value)>)> {
    calibrate::check_percentile(percentile)?;
    let read = read_calibration(source, calibration_activations)?;
    let cal = calibrate_read(backend, source, &read, 0, percentile, method, standardize)?;
    let read = read
        .into_iter()
        .map(|(mut b, p)| (b.swap_remove(0), p))
        .collect();
    Ok((cal, read))
}

/// Batches read for calibration: per read, every stream's batch and the source's position
/// after it.
type Read = Vec<(Vec<ActivationBatch>, serde_json::Value)>;

/// Reads whole batches of every stream until at least `calibration_activations` rows are read.
fn read_calibration(source: &mut dyn BatchSource, calibration_activations: u64) -> Result<Read> {
    if calibration_activations == 0 {
        return Err(Error::param(
            "calibration activations",
            "must be at least 1",
        ));
    }
    let pb = progress_bar(calibration_activations, "calibrate");
    let mut read: Read = Vec::new();
    let mut total = 0u64;
    while total < calibration_activations {
        let Some(b) = source.next_batches(usize::MAX)? else {
            break;
        };
        total += b[0].rows() as u64;
        pb.set_position(total.min(calibration_activations));
        read.push((b, source.position()));
    }
    pb.finish_and_clear();
    if total == 0 {
        return Err(Error::EmptyInput("no rows to calibrate on".into()));
    }
    Ok(read)
}

/// The calibration of stream `stream` of the batches `read`.
fn calibrate_read(
    backend: &Backend,
    source: &dyn BatchSource,
    read: &Read,
    stream: usize,
    percentile: f64,
    method: PercentileMethod,
    standardize: bool,
) -> Result<Calibration> {
    let batches: Vec<Vec<f32>> = read
        .iter()
        .map(|(b, _)| b[stream].host_data().into_owned())
        .collect();
    let largest = read
        .iter()
        .map(|(b, _)| b[stream].rows())
        .max()
        .unwrap_or(0);
    let calibrate = if standardize {
        calibrate::calibrate_standardized_on
    } else {
        calibrate::calibrate_batches_on
    };
    calibrate(backend, &batches, source.dim(), percentile, method, largest).map_err(|e| match e {
        CalibrationError::Lib(e) => e,
        CalibrationError::ZeroNorm { batch, row } => source.locate(Error::ZeroNorm {
            path: "<stream>".into(),
            row: read[batch].0[stream].stream_rows[row],
        }),
    })
}

/// How a [`run_build`] gets its calibration.
pub enum CalibrationSpec {
    /// A calibration computed beforehand (a file).
    Fixed(Calibration),
    /// Calibrate on the first batches of the source, then build from the start of it.
    Inline {
        percentile: f64,
        method: PercentileMethod,
        activations: u64,
        /// Standardise every dimension first (estimated on the calibration rows).
        standardize: bool,
    },
}

/// One dictionary of a [`run_builds`]: the source stream (hook) it clusters, its calibration,
/// and the hook recorded in its metadata.
pub struct BuildPair {
    pub stream: usize,
    pub calibration: CalibrationSpec,
    pub hook: Option<String>,
}

/// Checkpointing of a [`run_build`].
pub struct CheckpointPlan {
    pub path: std::path::PathBuf,
    /// Write one every this many batches (and at the end).
    pub every: u64,
    /// The run's flags and inputs (a JSON object); a resume must present the same.
    pub identity: serde_json::Value,
    /// Continue from the checkpoint at `path`.
    pub resume: bool,
    /// Sleep this long after each batch (testing aid for kill-and-resume tests).
    pub throttle: Option<std::time::Duration>,
}

/// The streaming build over any [`BatchSource`], with inline calibration, budgets, saturation,
/// checkpoints and resume. The dictionary is identical whether or not the run was interrupted
/// and resumed (timings aside).
pub fn run_build(
    backend: &Backend,
    source: &mut dyn BatchSource,
    calibration: CalibrationSpec,
    plan: &BuildPlan,
    checkpoint: Option<&CheckpointPlan>,
) -> Result<BuildOutput> {
    let pair = BuildPair {
        stream: 0,
        calibration,
        hook: plan.hook.clone(),
    };
    let mut out = run_builds(backend, source, vec![pair], plan, checkpoint)?;
    Ok(out.pop().expect("one pair, one output"))
}

/// One dictionary being built by [`run_builds`].
struct Run {
    builder: Builder,
    cal: Calibration,
    stream: usize,
    hook: Option<String>,
    acts: u64,
    tokens: u64,
    cluster_seconds: f64,
    /// The source's record is taken when the run stops (the source may read on for others).
    recorded: bool,
}

/// Several dictionaries from one read of `source`: each [`BuildPair`] clusters one of the
/// source's streams (a hook of a text source, read from one forward per batch) with its own
/// calibration, builder and saturation, and stops on its own; the source is read until every
/// pair has stopped. Each dictionary is the one [`run_build`] gives for its stream and
/// calibration alone (the source's record, e.g. documents read, is taken when the pair stops);
/// only what the source shares differs: a text source's model FLOPs and forward time are
/// those of the shared forward (to the deepest hook). Inline calibrations are computed on the
/// same first batches, so they must agree on the number of calibration activations, and
/// calibrations are all inline or all fixed. With several pairs the checkpoint is a set (a
/// directory, [`crate::checkpoint::save_set`]) holding every pair's dictionary at the same
/// point of the source.
pub fn run_builds(
    backend: &Backend,
    source: &mut dyn BatchSource,
    pairs: Vec<BuildPair>,
    plan: &BuildPlan,
    checkpoint: Option<&CheckpointPlan>,
) -> Result<Vec<BuildOutput>> {
    if plan.max_activations == Some(0) || plan.max_tokens == Some(0) {
        return Err(Error::param("budget", "a budget must be at least 1"));
    }
    if checkpoint.is_some_and(|c| c.every == 0) {
        return Err(Error::param("checkpoint every", "must be at least 1 batch"));
    }
    if pairs.is_empty() {
        return Err(Error::param("hook/percentile", "nothing to build"));
    }
    if let Some(p) = pairs.iter().find(|p| p.stream >= source.streams()) {
        return Err(Error::param(
            "hook",
            format!(
                "stream {} asked of a source with {}",
                p.stream,
                source.streams()
            ),
        ));
    }
    let inline: Vec<u64> = pairs
        .iter()
        .filter_map(|p| match &p.calibration {
            CalibrationSpec::Inline { activations, .. } => Some(*activations),
            CalibrationSpec::Fixed(_) => None,
        })
        .collect();
    if !inline.is_empty() && (inline.len() != pairs.len() || inline.iter().any(|&a| a != inline[0]))
    {
        return Err(Error::param(
            "calibration",
            "the builds of one run calibrate inline on the same activations, or all use \
             calibration files",
        ));
    }
    for p in &pairs {
        if let CalibrationSpec::Inline { percentile, .. } = p.calibration {
            calibrate::check_percentile(percentile)?;
        }
    }
    let start = Instant::now();
    let mut config = plan.config.clone();
    if config.record_assignments.is_some() {
        config.record_assignments = Some(plan.total_rows.unwrap_or(0));
    }
    let mut replay: std::collections::VecDeque<(Vec<ActivationBatch>, serde_json::Value)> =
        Default::default();
    let mut elapsed_before = 0.0f64;
    let mut runs: Vec<Run> = Vec::with_capacity(pairs.len());
    match checkpoint.filter(|c| c.resume) {
        Some(c) => {
            let saved = if pairs.len() == 1 {
                vec![crate::checkpoint::load(&c.path)?]
            } else {
                crate::checkpoint::load_set(&c.path)?
            };
            if saved.len() != pairs.len() {
                return Err(Error::param(
                    "resume",
                    format!(
                        "{} holds {} dictionaries; this build makes {}",
                        c.path.display(),
                        saved.len(),
                        pairs.len()
                    ),
                ));
            }
            let position = saved[0].1.position.clone();
            elapsed_before = saved[0].1.elapsed_seconds;
            for ((dict, rec, assignments), pair) in saved.into_iter().zip(pairs) {
                let diffs = crate::checkpoint::identity_differences(&rec.identity, &c.identity);
                if !diffs.is_empty() {
                    return Err(Error::param(
                        "resume",
                        format!(
                            "{} was written by a build with other flags or inputs; refusing to \
                             resume ({})",
                            c.path.display(),
                            diffs.join("; ")
                        ),
                    ));
                }
                if rec.position != position {
                    return Err(Error::param(
                        "resume",
                        format!(
                            "{}: its dictionaries were saved at different points of the input",
                            c.path.display()
                        ),
                    ));
                }
                let cal = rec
                    .calibration
                    .calibration(dict.center().to_vec(), dict.scaling().cloned())?;
                let mut config = config.clone();
                resolve_merge_threshold(&mut config, &cal);
                let mut b = Builder::restore(dict, rec.builder, assignments, config)?
                    .with_backend(backend.clone());
                b.info_mut().resumed += 1;
                runs.push(Run {
                    builder: b,
                    cal,
                    stream: pair.stream,
                    hook: pair.hook,
                    acts: rec.activations,
                    tokens: rec.tokens,
                    cluster_seconds: 0.0,
                    recorded: rec.stopped,
                });
            }
            source.seek(&position)?;
        }
        None => {
            let read = match inline.first() {
                Some(&n) => read_calibration(source, n)?,
                None => vec![],
            };
            for pair in pairs {
                let cal = match pair.calibration {
                    CalibrationSpec::Fixed(c) => c,
                    CalibrationSpec::Inline {
                        percentile,
                        method,
                        standardize,
                        ..
                    } => calibrate_read(
                        backend,
                        source,
                        &read,
                        pair.stream,
                        percentile,
                        method,
                        standardize,
                    )?,
                };
                let mut config = config.clone();
                resolve_merge_threshold(&mut config, &cal);
                let mut b = Builder::new(cal.center.clone(), cal.theta, config)?
                    .with_scaling(cal.scaling.clone())?
                    .with_backend(backend.clone());
                if !read.is_empty() {
                    b.info_mut().timings.calibration_seconds = Some(start.elapsed().as_secs_f64());
                }
                runs.push(Run {
                    builder: b,
                    cal,
                    stream: pair.stream,
                    hook: pair.hook,
                    acts: 0,
                    tokens: 0,
                    cluster_seconds: 0.0,
                    recorded: false,
                });
            }
            replay.extend(read);
        }
    }
    // The calibration's rows came to the host; from here on a GPU build reads the model's
    // tensors in place.
    if backend.is_cuda() {
        source.keep_rows_in_tensors();
    }
    for r in &runs {
        if source.dim() != r.cal.dim() {
            return Err(Error::DimensionMismatch {
                what: "activations".into(),
                expected: r.cal.dim(),
                found: source.dim(),
            });
        }
    }
    let save_checkpoint = |runs: &[Run], position: serde_json::Value| -> Result<()> {
        let Some(c) = checkpoint else { return Ok(()) };
        let records: Vec<crate::checkpoint::CheckpointRecord> = runs
            .iter()
            .map(|r| {
                let mut rec = crate::checkpoint::CheckpointRecord::new(
                    c.identity.clone(),
                    r.builder.state(),
                    crate::checkpoint::CalibrationRecord::of(&r.cal),
                    position.clone(),
                );
                rec.activations = r.acts;
                rec.tokens = r.tokens;
                rec.elapsed_seconds = elapsed_before + start.elapsed().as_secs_f64();
                rec.stopped = r.recorded;
                rec
            })
            .collect();
        if let [r] = runs {
            return crate::checkpoint::save(
                &c.path,
                r.builder.try_dictionary()?,
                &records[0],
                r.builder.recorded_assignments(),
            );
        }
        let items = runs
            .iter()
            .zip(&records)
            .map(|(r, rec)| {
                Ok((
                    r.builder.try_dictionary()?,
                    rec,
                    r.builder.recorded_assignments(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        crate::checkpoint::save_set(&c.path, &items)
    };
    let pb = progress_bar(plan.max_activations.unwrap_or(0), "build");
    if plan.max_activations.is_none() {
        pb.set_style(
            ProgressStyle::with_template("{prefix:>10} {elapsed_precise} {human_pos} rows  {msg}")
                .expect("template"),
        );
    }
    pb.set_position(runs[0].acts);
    let stopped = |r: &Run| {
        r.builder.is_saturated()
            || plan.max_tokens.is_some_and(|m| r.tokens >= m)
            || plan.max_activations.is_some_and(|m| r.acts >= m)
    };
    let mut position = serde_json::Value::Null;
    let mut since_checkpoint = 0u64;
    loop {
        for r in runs.iter_mut().filter(|r| !r.recorded && stopped(r)) {
            source.record(r.builder.info_mut());
            r.recorded = true;
        }
        let want = |r: &Run| match plan.max_activations {
            Some(m) => (m - r.acts) as usize,
            None => usize::MAX,
        };
        let Some(most) = runs.iter().filter(|r| !r.recorded).map(want).max() else {
            break;
        };
        let batches = match replay.pop_front() {
            Some((b, p)) => {
                position = p;
                b
            }
            None => match source.next_batches(most)? {
                Some(b) => {
                    position = source.position();
                    b
                }
                None => break,
            },
        };
        let mut shown = Vec::new();
        for r in runs.iter_mut().filter(|r| !r.recorded) {
            let full = &batches[r.stream];
            let cut;
            let batch = if full.rows() > want(r) {
                let mut b = full.clone();
                truncate_batch(&mut b, want(r));
                cut = b;
                &cut
            } else {
                full
            };
            // A standardised build clusters the standardised rows.
            let scaled;
            let batch = match &r.cal.scaling {
                Some(sc) => {
                    scaled = standardize_batch(sc, batch)?;
                    &scaled
                }
                None => batch,
            };
            let t = Instant::now();
            let out = r.builder.add_batch(batch).map_err(|e| source.locate(e))?;
            r.cluster_seconds += t.elapsed().as_secs_f64();
            r.acts += out.rows as u64;
            r.tokens += batch.new_tokens;
            shown.push((r.acts, r.tokens, out));
        }
        let (acts, tokens, _) = shown[0];
        pb.set_position(acts);
        let secs = (elapsed_before + start.elapsed().as_secs_f64()).max(1e-9);
        let ks: Vec<String> = shown.iter().map(|s| s.2.partitions.to_string()).collect();
        let new: Vec<String> = shown
            .iter()
            .map(|s| {
                format!(
                    "{:.2}%",
                    100.0 * s.2.new_partitions as f64 / s.2.rows.max(1) as f64
                )
            })
            .collect();
        pb.set_message(format!(
            "{:.0} tok/s  K={}  new={}",
            tokens as f64 / secs,
            ks.join("/"),
            new.join("/")
        ));
        since_checkpoint += 1;
        if let Some(c) = checkpoint {
            if since_checkpoint >= c.every {
                save_checkpoint(&runs, position.clone())?;
                since_checkpoint = 0;
            }
            if let Some(d) = c.throttle {
                std::thread::sleep(d);
            }
        }
    }
    pb.finish_and_clear();
    if runs.iter().any(|r| r.acts == 0) {
        return Err(Error::EmptyInput("no rows to build from".into()));
    }
    if checkpoint.is_some() {
        if position.is_null() {
            position = source.position();
        }
        save_checkpoint(&runs, position)?;
    }
    let mut outputs = Vec::with_capacity(runs.len());
    for mut r in runs {
        if !r.recorded {
            source.record(r.builder.info_mut());
        }
        let (cal, cluster_seconds) = (&r.cal, r.cluster_seconds);
        let info = r.builder.info_mut();
        info.timings.clustering_seconds += cluster_seconds;
        record_plan(info, cal, plan);
        info.model = plan.model.clone();
        info.hook = r.hook.clone();
        info.build_seconds = elapsed_before + start.elapsed().as_secs_f64();
        info.created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        outputs.push(r.builder.try_finish(plan.min_members)?);
    }
    Ok(outputs)
}

/// The calibration and the plan's batch size and budgets, into a build's record.
/// `batch` with every row standardised (`z = (x − μ)·s` in f32): host rows on the host; rows
/// still in a model's tensor with the same two f32 operations on the tensor's device (so a GPU
/// build reads the standardised rows in place and equals the CPU build).
fn standardize_batch(
    scaling: &crate::geometry::Scaling,
    batch: &ActivationBatch,
) -> Result<ActivationBatch> {
    let mut out = batch.clone();
    #[cfg(feature = "torch")]
    if let Some(t) = &batch.tensor_rows {
        let dev = t.tensor.device();
        let mean = tch::Tensor::from_slice(&scaling.mean).to_device(dev);
        let inv = tch::Tensor::from_slice(&scaling.inv_std).to_device(dev);
        let z = ((t.tensor.to_kind(tch::Kind::Float) - mean) * inv).contiguous();
        out.tensor_rows = Some(crate::data::TensorRows::new(z, t.index.clone(), batch.dim)?);
        return Ok(out);
    }
    out.data = scaling.apply(&batch.data);
    Ok(out)
}

fn record_plan(info: &mut crate::dictionary::BuildInfo, cal: &Calibration, plan: &BuildPlan) {
    info.percentile = Some(cal.percentile);
    info.percentile_method = Some(cal.method.as_str().into());
    info.calibration_activations = Some(cal.n_activations);
    info.calibration_batch_size = Some(cal.batch_size as u64);
    info.batch_size = plan.batch_size as u64;
    info.max_activations = plan.max_activations;
    info.max_tokens = plan.max_tokens;
}

/// A merge threshold given as NaN means θ, known once calibrated.
fn resolve_merge_threshold(config: &mut BuildConfig, cal: &Calibration) {
    if config.merge_threshold.is_some_and(f64::is_nan) {
        config.merge_threshold = Some(cal.theta);
    }
}

/// Keeps the first `n ≥ 1` rows of a batch. Documents left without a row go, with their
/// tokens: they started in this batch, since rows are in stream order and the first row stays.
fn truncate_batch(b: &mut ActivationBatch, n: usize) {
    b.truncate_values(n);
    b.stream_rows.truncate(n);
    if let Some(t) = b.tokens.as_mut() {
        t.truncate(n);
        let ids: Vec<i64> = t.iter().map(|t| t.doc_id).collect();
        let (kept, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut b.documents)
            .into_iter()
            .partition(|d| ids.contains(&d.doc_id));
        b.documents = kept;
        let gone_tokens: u64 = gone.iter().map(|d| d.tokens.len() as u64).sum();
        b.new_tokens = b.new_tokens.saturating_sub(gone_tokens);
    } else {
        b.new_tokens = b.new_tokens.min(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::npy::{write_npy_file, NpyArray};
    use crate::data::StreamOptions;

    /// 7 documents with 1..=5 rows (D = 2) and their sidecar; returns the file and the rows
    /// per document.
    fn write_docs(dir: &std::path::Path) -> (std::path::PathBuf, Vec<usize>) {
        let rows = vec![3usize, 1, 5, 2, 4, 1, 2];
        let n: usize = rows.iter().sum();
        let data: Vec<f32> = (0..n * 2).map(|i| i as f32 + 1.0).collect();
        let p = dir.join("x.npy");
        write_npy_file(&p, &NpyArray::matrix(data, n, 2).unwrap(), false).unwrap();
        let mut side = String::new();
        for (doc, &r) in rows.iter().enumerate() {
            let tokens: Vec<String> = (0..=r).map(|t| format!("d{doc}t{t}")).collect();
            let positions: Vec<usize> = (1..=r).collect();
            side.push_str(
                &serde_json::json!({"doc_id": doc + 10, "tokens": tokens, "positions": positions})
                    .to_string(),
            );
            side.push('\n');
        }
        std::fs::write(crate::data::provenance::sidecar_path(&p), side).unwrap();
        (p, rows)
    }

    #[test]
    fn document_batches_hold_whole_documents() {
        let dir = tempfile::tempdir().unwrap();
        let (p, rows) = write_docs(dir.path());
        let mut s =
            ActivationStream::open(std::slice::from_ref(&p), StreamOptions::default()).unwrap();
        let mut src = DocumentBatches::new(&mut s, 3).unwrap();
        let mut got = Vec::new();
        while let Some(b) = src.next_batch(usize::MAX).unwrap() {
            let ids: Vec<i64> = b.documents.iter().map(|d| d.doc_id).collect();
            got.push((b.rows(), ids, b.new_tokens, b.stream_rows[0]));
        }
        // Documents 10..12 (3+1+5 rows), 13..15 (2+4+1), 16 (2); tokens = rows + 1 (the BOS).
        assert_eq!(
            got,
            vec![
                (9, vec![10, 11, 12], 12, 0),
                (7, vec![13, 14, 15], 10, 9),
                (2, vec![16], 3, 16),
            ]
        );
        assert_eq!(rows.iter().sum::<usize>(), 18);
        // Seeking to the position after the first batch gives the second batch again.
        let mut s2 = ActivationStream::open(&[p], StreamOptions::default()).unwrap();
        let mut again = DocumentBatches::new(&mut s2, 3).unwrap();
        again.seek(&serde_json::json!({"rows": 9})).unwrap();
        let b = again.next_batch(usize::MAX).unwrap().unwrap();
        assert_eq!(b.stream_rows, (9..16).collect::<Vec<u64>>());
        assert_eq!(b.data[0], 19.0);
        assert_eq!(again.position(), serde_json::json!({"rows": 16}));
        // A budget cuts a batch short.
        let c = again.next_batch(1).unwrap().unwrap();
        assert_eq!((c.rows(), c.new_tokens), (1, 3));
    }

    /// Two activation streams of equal length read together, as a text source reads several
    /// hooks from one forward.
    struct TwoStreams<'a> {
        a: RowBatches<'a>,
        b: RowBatches<'a>,
        reads: u64,
    }

    impl BatchSource for TwoStreams<'_> {
        fn dim(&self) -> usize {
            self.a.dim()
        }
        fn streams(&self) -> usize {
            2
        }
        fn next_batch(&mut self, max_rows: usize) -> Result<Option<ActivationBatch>> {
            Ok(self.next_batches(max_rows)?.map(|mut v| v.swap_remove(0)))
        }
        fn next_batches(&mut self, max_rows: usize) -> Result<Option<Vec<ActivationBatch>>> {
            self.reads += 1;
            match (self.a.next_batch(max_rows)?, self.b.next_batch(max_rows)?) {
                (Some(x), Some(y)) => Ok(Some(vec![x, y])),
                _ => Ok(None),
            }
        }
        fn position(&self) -> serde_json::Value {
            self.a.position()
        }
        fn seek(&mut self, _: &serde_json::Value) -> Result<()> {
            unreachable!("not checkpointed")
        }
        fn record(&self, info: &mut crate::dictionary::BuildInfo) {
            info.documents_read = Some(self.reads);
        }
    }

    /// `run_builds` over two streams × two percentiles gives each pair the dictionary of
    /// `run_build` on that stream alone (one stream saturates early, the other never; the
    /// activation budget cuts the last batch), and reads the source once per batch, until the
    /// last pair stops.
    #[test]
    fn run_builds_gives_each_pair_its_single_build() {
        let dir = tempfile::tempdir().unwrap();
        let (n, d) = (300usize, 16usize);
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) as f32 - 0.5
        };
        // Stream 0: three tight clusters (saturates); stream 1: noise (keeps growing).
        let mut x0 = Vec::with_capacity(n * d);
        let mut x1 = Vec::with_capacity(n * d);
        for i in 0..n {
            for j in 0..d {
                let c = if j == i % 3 { 5.0 } else { 0.0 };
                x0.push(c + 0.01 * next());
                x1.push(next());
            }
        }
        let paths: Vec<_> = [x0, x1]
            .into_iter()
            .enumerate()
            .map(|(i, x)| {
                let p = dir.path().join(format!("s{i}.npy"));
                write_npy_file(&p, &NpyArray::matrix(x, n, d).unwrap(), false).unwrap();
                p
            })
            .collect();
        let open = |i: usize| {
            ActivationStream::open(std::slice::from_ref(&paths[i]), StreamOptions::default())
                .unwrap()
        };
        let plan = BuildPlan {
            batch_size: 32,
            max_activations: Some(250),
            ..BuildPlan::new(BuildConfig {
                reservoir_size: 3,
                examples_per_partition: 2,
                ..Default::default()
            })
        };
        let inline = |p: f64| CalibrationSpec::Inline {
            percentile: p,
            method: PercentileMethod::Linear,
            activations: 50,
            standardize: false,
        };
        let backend = Backend::Cpu;
        let (mut s0, mut s1) = (open(0), open(1));
        let mut src = TwoStreams {
            a: RowBatches::new(&mut s0, 32),
            b: RowBatches::new(&mut s1, 32),
            reads: 0,
        };
        let mut pairs = vec![];
        for stream in 0..2 {
            for p in [5.0, 60.0] {
                pairs.push(BuildPair {
                    stream,
                    calibration: inline(p),
                    hook: Some(format!("stream {stream}")),
                });
            }
        }
        let outs = run_builds(&backend, &mut src, pairs, &plan, None).unwrap();
        let mut reads = vec![];
        for (k, out) in outs.iter().enumerate() {
            let (stream, p) = (k / 2, [5.0, 60.0][k % 2]);
            // The stream alone (read twice, so `reads` counts as above).
            let (mut s, mut again) = (open(stream), open(stream));
            let mut alone = TwoStreams {
                a: RowBatches::new(&mut s, 32),
                b: RowBatches::new(&mut again, 32),
                reads: 0,
            };
            let single = run_build(&backend, &mut alone, inline(p), &plan, None).unwrap();
            let (a, b) = (&out.dictionary, &single.dictionary);
            assert_eq!(a.exemplars(), b.exemplars(), "pair {k}");
            assert_eq!(a.member_counts(), b.member_counts(), "pair {k}");
            assert_eq!(a.theta(), b.theta(), "pair {k}");
            let (ia, ib) = (a.info(), b.info());
            assert_eq!(ia.activations_streamed, ib.activations_streamed, "pair {k}");
            assert_eq!(ia.saturated, ib.saturated, "pair {k}");
            assert_eq!(ia.documents_read, ib.documents_read, "pair {k}");
            assert_eq!(
                ia.hook.as_deref(),
                Some(format!("stream {stream}").as_str())
            );
            reads.push((ia.documents_read.unwrap(), ia.saturated));
        }
        // The noise at percentile 5 ran to the budget: 250 rows in batches of 32 = 8 reads,
        // the last cut to 26 rows; another pair saturated earlier. The source was read once
        // per batch until the last pair stopped.
        assert_eq!(outs[2].dictionary.info().activations_streamed, 250);
        assert_eq!(reads[2], (8, false));
        assert!(reads.iter().any(|&(r, sat)| sat && r < 8), "{reads:?}");
        assert_eq!(src.reads, 8);
    }

    #[test]
    fn truncating_a_batch_drops_the_tokens_of_documents_left_without_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = write_docs(dir.path());
        let mut s = ActivationStream::open(&[p], StreamOptions::default()).unwrap();
        let mut b = s.next_batch(9).unwrap().unwrap();
        assert_eq!(b.new_tokens, 4 + 2 + 6);
        truncate_batch(&mut b, 3);
        assert_eq!((b.rows(), b.new_tokens, b.documents.len()), (3, 4, 1));
        truncate_batch(&mut b, 2);
        assert_eq!((b.rows(), b.new_tokens, b.documents.len()), (2, 4, 1));
    }
}
