//! Drivers over an [`ActivationStream`]: calibration, the streaming build, and assignment, with
//! progress bars (rate and ETA on a terminal, silent in pipes and CI) and errors that name the
//! file and row.

use crate::backend::Backend;
use crate::build::{BuildConfig, BuildOutput, Builder};
use crate::calibrate::{self, Calibration, CalibrationError, PercentileMethod};
use crate::data::ActivationStream;
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// A progress bar on stderr, hidden unless stderr is a terminal and `CI` is unset.
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let visible = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
    let pb = ProgressBar::with_draw_target(
        Some(len),
        if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {human_pos}/{human_len} rows  {per_sec}  ETA {eta}  {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Turns a row error reported with a stream row (`<stream>`) into one naming file and row.
fn locate_error(stream: &ActivationStream, e: Error) -> Error {
    match e {
        Error::ZeroNorm { row, .. } => {
            let (path, r) = stream.locate(row);
            Error::ZeroNorm {
                path: path.to_path_buf(),
                row: r,
            }
        }
        other => other,
    }
}

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
    let cal = calibrate::calibrate_batches_on(backend, &batches, d, percentile, method, batch_size)
        .map_err(|e| match e {
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
    info.percentile = Some(calibration.percentile);
    info.percentile_method = Some(calibration.method.as_str().into());
    info.calibration_activations = Some(calibration.n_activations);
    info.calibration_batch_size = Some(calibration.batch_size as u64);
    info.batch_size = plan.batch_size as u64;
    info.max_activations = plan.max_activations;
    info.max_tokens = plan.max_tokens;
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
    Ok(builder.finish(plan.min_members))
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
        let u = crate::geometry::directions(&b.data, dict.center()).map_err(|z| {
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
