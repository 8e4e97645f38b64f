//! EP vs SAE build compute on the same activation stream: at each budget (activations), build an
//! EP dictionary (calibration + streaming build, as `exemplar build` does) and train a TopK SAE
//! (src/sae/train.rs) on the first rows of the stream, then measure both on held-out rows.
//!
//! Compute is reported as each side spent it: EP's clustering FLOPs come from the dictionary's own
//! metadata (`clustering_flops`), plus the calibration's pairwise-distance GEMMs (2 passes of
//! 2·b²·D per calibration batch of b rows); the SAE's from the trainer's count. Wall time is
//! measured around each build. Quality is measured the same way for both, through the SAE view:
//! EP as a TopK (k = 1) SAE over its exemplars (`Sae::from_dictionary`), so
//! * `explained_variance` = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² on the held-out rows;
//! * `l0` = mean number of non-zero codes per row;
//! * with ground truth (e.g. from `exemplar synth`): the mean over true features of the best
//!   |cosine| with any learned direction (exemplars for EP, decoder rows for the SAE) and the
//!   fraction above 0.9.

use super::synthetic::feature_recovery;
use crate::backend::Backend;
use crate::build::BuildConfig;
use crate::calibrate::PercentileMethod;
use crate::data::{ActivationStream, StreamOptions};
use crate::dictionary::Basis;
use crate::error::{Error, Result};
use crate::pipeline::{build_stream, calibrate_stream, BuildPlan};
use crate::sae::train::{train_topk_sae, TrainConfig, TrainRecord};
use crate::sae::Sae;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Activation budgets, ascending.
    pub budgets: Vec<u64>,
    /// EP: percentile, batch size, calibration rows (capped at the budget), build settings.
    pub percentile: f64,
    pub batch_size: usize,
    pub calibration_activations: u64,
    pub build: BuildConfig,
    /// SAE training settings (`max_rows` is set per budget).
    pub sae: TrainConfig,
}

/// Quality of one artifact on the held-out rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quality {
    pub explained_variance: f64,
    pub l0: f64,
    /// Mean over true features of the best |cos| with a learned direction (with ground truth).
    pub feature_recovery_mean: Option<f64>,
    /// Fraction of true features with a learned direction at |cos| > 0.9 (with ground truth).
    pub feature_recovery_frac: Option<f64>,
}

/// EP at one budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpPoint {
    pub budget: u64,
    /// Rows the build streamed (fewer than the budget when it saturated).
    pub activations: u64,
    pub saturated: bool,
    pub partitions: usize,
    pub theta: f64,
    pub calibration_activations: u64,
    pub clustering_flops: f64,
    pub calibration_flops: f64,
    pub flops: f64,
    /// Wall seconds of calibration + build.
    pub seconds: f64,
    pub backend: String,
    pub dictionary: String,
    pub quality: Quality,
}

/// The SAE at one budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaePoint {
    pub budget: u64,
    pub training: TrainRecord,
    pub sae: String,
    pub quality: Quality,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    pub inputs: Vec<String>,
    pub eval_inputs: Vec<String>,
    pub eval_rows: usize,
    pub dim: usize,
    pub ground_truth: Option<String>,
    pub percentile: f64,
    pub sae_width: usize,
    pub sae_k: usize,
    pub ep: Vec<EpPoint>,
    pub sae: Vec<SaePoint>,
    pub crate_version: String,
}

/// Held-out rows and optional ground-truth features.
pub struct EvalSet {
    pub rows: Vec<f32>,
    pub dim: usize,
    pub truth: Option<Vec<f32>>,
}

impl EvalSet {
    /// Reads up to `max_rows` rows of `paths`, and the `features` tensor of `ground_truth`.
    pub fn load(
        paths: &[PathBuf],
        options: StreamOptions,
        max_rows: usize,
        ground_truth: Option<&Path>,
    ) -> Result<Self> {
        let mut s = ActivationStream::open(paths, options)?;
        let dim = s.dim();
        let mut rows = Vec::new();
        while rows.len() / dim < max_rows {
            let Some(b) = s.next_batch(max_rows - rows.len() / dim)? else {
                break;
            };
            rows.extend_from_slice(&b.data);
        }
        if rows.is_empty() {
            return Err(Error::EmptyInput("no held-out rows to evaluate on".into()));
        }
        let truth = match ground_truth {
            None => None,
            Some(p) => {
                let f = crate::tensorfile::TensorFile::open(p)?;
                let (v, shape) = f.f32_any("features")?;
                if shape.len() != 2 || shape[1] != dim {
                    return Err(Error::format(
                        p,
                        format!("tensor `features` has shape {shape:?}, expected (F, {dim})"),
                    ));
                }
                Some(v)
            }
        };
        Ok(EvalSet { rows, dim, truth })
    }
}

/// Quality of `sae` (and its `directions`, for recovery) on `eval`.
pub fn quality(sae: &Sae, directions: &[f32], eval: &EvalSet) -> Result<Quality> {
    let d = eval.dim;
    if sae.d_in != d {
        return Err(Error::DimensionMismatch {
            what: "held-out activations".into(),
            expected: sae.d_in,
            found: d,
        });
    }
    let n = eval.rows.len() / d;
    let codes = sae.encode(&eval.rows)?;
    let recon = sae.decode(&codes)?;
    let mut mean = vec![0.0f64; d];
    for r in eval.rows.chunks(d) {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let (mut err, mut tot) = (0.0f64, 0.0f64);
    for (x, xh) in eval.rows.chunks(d).zip(recon.chunks(d)) {
        for j in 0..d {
            err += (x[j] as f64 - xh[j] as f64).powi(2);
            tot += (x[j] as f64 - mean[j]).powi(2);
        }
    }
    let l0 = codes.iter().filter(|&&c| c != 0.0).count() as f64 / n as f64;
    let (rm, rf) = match &eval.truth {
        Some(t) => {
            let (m, f) = feature_recovery(t, directions, d, 0.9);
            (Some(m), Some(f))
        }
        None => (None, None),
    };
    Ok(Quality {
        explained_variance: 1.0 - err / tot.max(1e-30),
        l0,
        feature_recovery_mean: rm,
        feature_recovery_frac: rf,
    })
}

/// Runs the sweep; artifacts go to `out_dir` (`ep-<budget>.safetensors`, `sae-<budget>/`).
pub fn run_sweep(
    backend: &Backend,
    paths: &[PathBuf],
    options: StreamOptions,
    eval: &EvalSet,
    cfg: &SweepConfig,
    out_dir: &Path,
    force: bool,
) -> Result<SweepReport> {
    if cfg.budgets.is_empty() || cfg.budgets.contains(&0) {
        return Err(Error::param("budgets", "give at least one positive budget"));
    }
    let mut ep = Vec::new();
    let mut saes = Vec::new();
    let mut stream = ActivationStream::open(paths, options.clone())?;
    if stream.dim() != eval.dim {
        return Err(Error::DimensionMismatch {
            what: "held-out activations".into(),
            expected: stream.dim(),
            found: eval.dim,
        });
    }
    let d = stream.dim();
    for &budget in &cfg.budgets {
        // EP: calibrate on the first rows (within the budget), then build from the start.
        stream.rewind()?;
        let start = Instant::now();
        let cal_rows = cfg.calibration_activations.min(budget);
        let cal = calibrate_stream(
            backend,
            &mut stream,
            cfg.percentile,
            PercentileMethod::Linear,
            cfg.batch_size,
            cal_rows,
            false,
        )?;
        stream.rewind()?;
        let plan = BuildPlan {
            batch_size: cfg.batch_size,
            max_activations: Some(budget),
            ..BuildPlan::new(cfg.build.clone())
        };
        let out = build_stream(backend, &mut stream, &cal, &plan)?;
        let seconds = start.elapsed().as_secs_f64();
        let dict = out.dictionary;
        let calibration_flops: f64 = {
            let full = (cal.n_activations / cal.batch_size as u64) as f64;
            let rest = (cal.n_activations % cal.batch_size as u64) as f64;
            let b = cal.batch_size as f64;
            4.0 * d as f64 * (full * b * b + rest * rest)
        };
        let info = dict.info().clone();
        let path = out_dir.join(format!("ep-{budget}.safetensors"));
        dict.save(&path, force)?;
        let view = Sae::from_dictionary(&dict, Basis::Exemplar, 1)?;
        let q = quality(&view, dict.exemplars(), eval)?;
        ep.push(EpPoint {
            budget,
            activations: info.activations_streamed,
            saturated: info.saturated,
            partitions: dict.len(),
            theta: dict.theta(),
            calibration_activations: cal.n_activations,
            clustering_flops: info.clustering_flops,
            calibration_flops,
            flops: info.clustering_flops + calibration_flops,
            seconds,
            backend: info.backend.clone(),
            dictionary: path.display().to_string(),
            quality: q,
        });
        // SAE on the same first rows.
        stream.rewind()?;
        let mut tc = cfg.sae.clone();
        tc.max_rows = Some(budget);
        let (sae, record) = train_topk_sae(&mut stream, &tc)?;
        let dir = out_dir.join(format!("sae-{budget}"));
        sae.save_saelens(&dir, force)?;
        let q = quality(&sae, &sae.w_dec, eval)?;
        saes.push(SaePoint {
            budget,
            training: record,
            sae: dir.display().to_string(),
            quality: q,
        });
    }
    Ok(SweepReport {
        inputs: paths.iter().map(|p| p.display().to_string()).collect(),
        eval_inputs: Vec::new(),
        eval_rows: eval.rows.len() / eval.dim,
        dim: d,
        ground_truth: None,
        percentile: cfg.percentile,
        sae_width: cfg.sae.width,
        sae_k: cfg.sae.k,
        ep,
        sae: saes,
        crate_version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Draws `report` as a PNG: explained variance against FLOPs, and with ground truth the fraction
/// of true features recovered, EP and the SAE as two series labelled with their budgets.
pub fn plot(report: &SweepReport, path: &Path, force: bool) -> Result<()> {
    use super::plot::{write_png, Panel, Series};
    let ep_pts = |f: &dyn Fn(&Quality) -> Option<f64>| -> Vec<(f64, f64, String)> {
        report
            .ep
            .iter()
            .filter_map(|e| f(&e.quality).map(|y| (e.flops.max(1.0), y, short(e.budget))))
            .collect()
    };
    let sae_pts = |f: &dyn Fn(&Quality) -> Option<f64>| -> Vec<(f64, f64, String)> {
        report
            .sae
            .iter()
            .filter_map(|s| f(&s.quality).map(|y| (s.training.flops.max(1.0), y, short(s.budget))))
            .collect()
    };
    let mut panels = vec![Panel {
        title: "explained variance (held out)".into(),
        x_label: "build / training FLOPs".into(),
        y_label: "explained variance".into(),
        series: vec![
            Series {
                name: "EP (k = 1)".into(),
                points: ep_pts(&|q| Some(q.explained_variance)),
            },
            Series {
                name: format!("TopK SAE (k = {})", report.sae_k),
                points: sae_pts(&|q| Some(q.explained_variance)),
            },
        ],
    }];
    if report.ground_truth.is_some() {
        panels.push(Panel {
            title: "ground-truth features recovered (|cos| > 0.9)".into(),
            x_label: "build / training FLOPs".into(),
            y_label: "fraction recovered".into(),
            series: vec![
                Series {
                    name: "EP exemplars".into(),
                    points: ep_pts(&|q| q.feature_recovery_frac),
                },
                Series {
                    name: "SAE decoder rows".into(),
                    points: sae_pts(&|q| q.feature_recovery_frac),
                },
            ],
        });
    }
    write_png(path, &panels, force)
}

/// 12000 → "12k", 3000000 → "3M".
fn short(n: u64) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}
