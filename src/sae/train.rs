//! A TopK sparse autoencoder trained in tch on an activation stream, the standard recipe of Gao
//! et al. (2024), so EP's build compute can be set against an SAE's on the same data:
//!
//! * `f = topk(relu((x − b_dec) W_enc + b_enc))`, `x̂ = f W_dec + b_dec`, loss `‖x − x̂‖²`
//!   averaged over the batch, normalised by the batch's variance (so the learning rate does not
//!   depend on the activations' scale);
//! * tied initialisation (`W_enc = W_decᵀ`, unit-norm random decoder rows), `b_dec` = the mean
//!   of the first batch, `b_enc = 0`;
//! * decoder rows renormalised to unit norm after every step;
//! * Adam (β = 0.9, 0.999) with the learning rate `2·10⁻⁴ / √(F / 2¹⁴)` unless given;
//! * dead-feature tracking: a feature that has not fired for `dead_after` rows is dead; the AuxK
//!   loss (coefficient 1/32, top-`k_aux` of the dead features reconstructing the residual)
//!   revives them.
//!
//! FLOPs are counted as executed: per row 2·D·F for the encoder and 2·F·D for the (dense)
//! decoder forward, twice that for the backward, plus the same ×3 for the AuxK decode when dead
//! features exist.
//!
//! Several epochs (`epochs` > 1): the budget's rows (`max_rows`, or the whole input) are read
//! once into memory and each epoch visits them in a fresh seeded random order. With held-out
//! rows (`eval_rows`), the held-out FVU is measured every `eval_every` training rows and at the
//! end (its FLOPs, 4·D·F per held-out row, are counted apart in `eval_flops`), and training stops
//! once it has not improved on its best by more than the relative `tolerance` for `patience`
//! checks in a row (`stopped` = "converged"); else at `epochs` ("max epochs"), the end of a
//! single pass ("end of input") or `max_seconds` ("time limit"). The curve of checks is in the
//! record.

use super::{Sae, SaeActivation};
use crate::data::ActivationStream;
use crate::error::{Error, Result};
use serde_json::{json, Map};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Features F.
    pub width: usize,
    /// Active features per row.
    pub k: usize,
    /// Rows per step.
    pub batch_size: usize,
    /// Stop after this many rows (None: the whole stream, one epoch).
    pub max_rows: Option<u64>,
    /// Adam learning rate (None: `2e-4 / sqrt(F / 16384)`).
    pub lr: Option<f64>,
    /// Weight of the AuxK loss (0 disables it).
    pub aux_k_coef: f64,
    /// Rows without firing after which a feature counts as dead.
    pub dead_after: u64,
    pub seed: i64,
    pub device: Device,
    /// Passes over the budget's rows at most (1: one streamed pass).
    pub epochs: u64,
    /// Held-out rows (row-major, D columns) whose FVU decides convergence; empty: none.
    pub eval_rows: Vec<f32>,
    /// Training rows between two held-out checks (0: once per epoch).
    pub eval_every: u64,
    /// Relative improvement of the best held-out FVU that counts as progress.
    pub tolerance: f64,
    /// Checks without progress after which training stops.
    pub patience: u32,
    /// Wall-clock limit of the training loop in seconds.
    pub max_seconds: Option<f64>,
}

impl TrainConfig {
    /// The standard recipe at width `width` and sparsity `k`, on the CPU.
    pub fn new(width: usize, k: usize) -> Self {
        TrainConfig {
            width,
            k,
            batch_size: 4096,
            max_rows: None,
            lr: None,
            aux_k_coef: 1.0 / 32.0,
            dead_after: 1_000_000,
            seed: 0,
            device: Device::Cpu,
            epochs: 1,
            eval_rows: Vec::new(),
            eval_every: 0,
            tolerance: 0.01,
            patience: 2,
            max_seconds: None,
        }
    }

    /// The learning rate used.
    pub fn learning_rate(&self) -> f64 {
        self.lr
            .unwrap_or_else(|| 2e-4 / (self.width as f64 / 16384.0).sqrt())
    }
}

/// What a training run spent and reached.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainRecord {
    pub rows: u64,
    pub steps: u64,
    pub width: usize,
    pub k: usize,
    pub learning_rate: f64,
    /// FLOPs executed by the training steps (see the module docs).
    pub flops: f64,
    /// Wall-clock seconds of the training loop (input reading included, held-out checks not).
    pub seconds: f64,
    /// Seconds the device was held (the training loop's wall time on that device).
    pub device_seconds: f64,
    pub device: String,
    /// Normalised MSE (fraction of variance unexplained) of the last 10 steps' batches.
    pub final_fvu: f64,
    /// Features dead at the end.
    pub dead_fraction: f64,
    /// Epochs begun (1 for a single streamed pass).
    #[serde(default)]
    pub epochs: u64,
    /// Why training stopped: "end of input", "max epochs", "converged" or "time limit".
    #[serde(default)]
    pub stopped: String,
    /// Held-out FVU at the end (None without held-out rows).
    #[serde(default)]
    pub eval_fvu: Option<f64>,
    /// Fraction of features that never fire on the held-out rows at the end.
    #[serde(default)]
    pub eval_dead_fraction: Option<f64>,
    /// Held-out rows.
    #[serde(default)]
    pub eval_rows: usize,
    /// FLOPs of the held-out checks (not in `flops`).
    #[serde(default)]
    pub eval_flops: f64,
    /// Wall seconds of the held-out checks during training (not in `seconds`).
    #[serde(default)]
    pub eval_seconds: f64,
    /// The held-out checks, in order.
    #[serde(default)]
    pub curve: Vec<CurvePoint>,
}

/// One held-out check during training.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvePoint {
    pub epoch: u64,
    pub steps: u64,
    pub rows: u64,
    /// Mean training-batch FVU of the last 10 steps.
    pub train_fvu: f64,
    pub eval_fvu: f64,
    pub seconds: f64,
}

/// Held-out FVU and the fraction of features that never fire, in chunks of rows.
fn eval_fvu(
    x_all: &Tensor,
    w_enc: &Tensor,
    b_enc: &Tensor,
    w_dec: &Tensor,
    b_dec: &Tensor,
    k: i64,
) -> (f64, f64) {
    tch::no_grad(|| {
        let n = x_all.size()[0];
        let f = w_enc.size()[1];
        let mean = x_all.mean_dim([0i64].as_slice(), true, Kind::Float);
        let (mut err, mut tot) = (0.0f64, 0.0f64);
        let mut fired = Tensor::zeros([f], (Kind::Int64, x_all.device()));
        let mut s = 0;
        while s < n {
            let x = x_all.narrow(0, s, (n - s).min(2048));
            let pre = (&x - b_dec).matmul(w_enc) + b_enc;
            let (vals, idx) = pre.topk(k, -1, true, false);
            let z = pre.zeros_like().scatter(-1, &idx, &vals.relu());
            let recon = z.matmul(w_dec) + b_dec;
            err += f64::try_from(
                (&x - recon)
                    .square()
                    .to_kind(Kind::Double)
                    .sum(Kind::Double),
            )
            .unwrap_or(f64::NAN);
            tot += f64::try_from(
                (&x - &mean)
                    .square()
                    .to_kind(Kind::Double)
                    .sum(Kind::Double),
            )
            .unwrap_or(f64::NAN);
            fired = fired.index_add(
                0,
                &idx.flatten(0, -1),
                &vals.gt(0.0).to_kind(Kind::Int64).flatten(0, -1),
            );
            s += 2048;
        }
        let dead =
            f64::try_from(fired.eq(0).to_kind(Kind::Double).mean(Kind::Double)).unwrap_or(f64::NAN);
        (err / tot.max(1e-30), dead)
    })
}

fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

fn tch_err(e: tch::TchError) -> Error {
    Error::param("torch", e.to_string())
}

/// Trains a TopK SAE on `stream` (from its current position).
pub fn train_topk_sae(
    stream: &mut ActivationStream,
    cfg: &TrainConfig,
) -> Result<(Sae, TrainRecord)> {
    let d = stream.dim();
    let f = cfg.width;
    if f == 0 || cfg.k == 0 || cfg.k > f {
        return Err(Error::param(
            "k",
            format!("must be in 1..=width ({f}), got {}", cfg.k),
        ));
    }
    if cfg.batch_size == 0 {
        return Err(Error::param("batch size", "must be at least 1"));
    }
    if cfg.max_rows == Some(0) {
        return Err(Error::param("max activations", "must be at least 1"));
    }
    if cfg.epochs == 0 {
        return Err(Error::param("epochs", "must be at least 1"));
    }
    if !cfg.eval_rows.is_empty() && cfg.eval_rows.len() % d != 0 {
        return Err(Error::DimensionMismatch {
            what: "held-out rows of the SAE training".into(),
            expected: d,
            found: cfg.eval_rows.len(),
        });
    }
    if cfg.epochs > 1 {
        if let Some(m) = cfg.max_rows {
            if m > stream.total_rows() {
                return Err(Error::param(
                    "max activations",
                    format!(
                        "the budget of {m} rows is larger than the input ({} rows in {})",
                        stream.total_rows(),
                        stream
                            .paths()
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    let lr = cfg.learning_rate();
    if !(lr.is_finite() && lr > 0.0) {
        return Err(Error::param("lr", format!("must be positive, got {lr}")));
    }
    tch::manual_seed(cfg.seed);
    let dev = cfg.device;
    let vs = nn::VarStore::new(dev);
    let root = vs.root();
    let (di, fi) = (d as i64, f as i64);
    let dec0 = Tensor::randn([fi, di], (Kind::Float, dev));
    let dec0 = &dec0 / dec0.norm_scalaropt_dim(2, [1], true);
    let w_dec = root.var_copy("W_dec", &dec0);
    let w_enc = root.var_copy("W_enc", &dec0.transpose(0, 1).contiguous());
    let b_enc = root.var_copy("b_enc", &Tensor::zeros([fi], (Kind::Float, dev)));
    let b_dec = root.var_copy("b_dec", &Tensor::zeros([di], (Kind::Float, dev)));
    let mut opt = nn::Adam {
        beta1: 0.9,
        beta2: 0.999,
        wd: 0.0,
        eps: 1e-8,
        amsgrad: false,
    }
    .build(&vs, lr)
    .map_err(tch_err)?;

    let budget = cfg.max_rows.unwrap_or(u64::MAX).min(stream.total_rows());
    // Several epochs: the budget's rows in memory, visited in a seeded random order per epoch.
    let memory = if cfg.epochs > 1 {
        let mut v: Vec<f32> = Vec::with_capacity(budget as usize * d);
        while (v.len() / d) < budget as usize {
            let Some(b) = stream.next_batch(budget as usize - v.len() / d)? else {
                break;
            };
            v.extend_from_slice(&b.data);
        }
        let n = (v.len() / d) as i64;
        if n == 0 {
            return Err(Error::EmptyInput("no rows to train the SAE on".into()));
        }
        Some(Tensor::from_slice(&v).view([n, di]).to_device(dev))
    } else {
        None
    };
    let x_eval = (!cfg.eval_rows.is_empty()).then(|| {
        Tensor::from_slice(&cfg.eval_rows)
            .view([(cfg.eval_rows.len() / d) as i64, di])
            .to_device(dev)
    });
    let n_eval = cfg.eval_rows.len() / d;
    let epoch_rows = match &memory {
        Some(m) => m.size()[0] as u64,
        None => budget,
    };
    let eval_every = if cfg.eval_every == 0 {
        epoch_rows
    } else {
        cfg.eval_every
    };
    let pb = crate::progress::progress_bar(epoch_rows.saturating_mul(cfg.epochs), "train-sae");
    let mut since_fired = Tensor::zeros([fi], (Kind::Int64, dev));
    let (mut rows, mut steps, mut flops) = (0u64, 0u64, 0f64);
    let mut recent_fvu: Vec<f64> = Vec::new();
    let start = Instant::now();
    let k_aux = (d / 2).max(1) as i64;
    let (mut epoch, mut epoch_pos, mut perm) = (1u64, 0i64, None::<Tensor>);
    let (mut since_check, mut best_eval, mut no_progress) = (0u64, f64::INFINITY, 0u32);
    let (mut curve, mut eval_flops, mut eval_seconds) = (Vec::<CurvePoint>::new(), 0f64, 0f64);
    let mut stopped = "end of input";
    loop {
        if let Some(limit) = cfg.max_seconds {
            if start.elapsed().as_secs_f64() >= limit {
                stopped = "time limit";
                break;
            }
        }
        let x = match &memory {
            None => {
                let want = match cfg.max_rows {
                    Some(m) if rows >= m => break,
                    Some(m) => cfg.batch_size.min((m - rows) as usize),
                    None => cfg.batch_size,
                };
                let Some(batch) = stream.next_batch(want)? else {
                    break;
                };
                let n = batch.rows() as i64;
                if n == 0 {
                    continue;
                }
                Tensor::from_slice(&batch.data).view([n, di]).to_device(dev)
            }
            Some(m) => {
                let total = m.size()[0];
                if epoch_pos >= total {
                    if epoch >= cfg.epochs {
                        stopped = "max epochs";
                        break;
                    }
                    epoch += 1;
                    epoch_pos = 0;
                    perm = None;
                }
                let p = perm.get_or_insert_with(|| Tensor::randperm(total, (Kind::Int64, dev)));
                let n = (cfg.batch_size as i64).min(total - epoch_pos);
                let idx = p.narrow(0, epoch_pos, n);
                epoch_pos += n;
                m.index_select(0, &idx)
            }
        };
        let n = x.size()[0];
        if steps == 0 {
            tch::no_grad(|| {
                let mut b = b_dec.shallow_clone();
                b.copy_(&x.mean_dim([0i64].as_slice(), false, Kind::Float));
            });
        }
        let var = tch::no_grad(|| {
            (&x - x.mean_dim([0i64].as_slice(), true, Kind::Float))
                .square()
                .sum(Kind::Float)
                .clamp_min(1e-12)
        });
        let pre = (&x - &b_dec).matmul(&w_enc) + &b_enc;
        let (vals, idx) = pre.topk(cfg.k as i64, -1, true, false);
        let z = pre.zeros_like().scatter(-1, &idx, &vals.relu());
        let recon = z.matmul(&w_dec) + &b_dec;
        let err = &x - &recon;
        let mse = err.square().sum(Kind::Float) / &var;
        flops += 12.0 * (d * f) as f64 * n as f64;
        // Dead features: not among any row's active set for `dead_after` rows.
        let fired = tch::no_grad(|| {
            Tensor::zeros([fi], (Kind::Int64, dev))
                .index_add(
                    0,
                    &idx.flatten(0, -1),
                    &vals.gt(0.0).to_kind(Kind::Int64).flatten(0, -1),
                )
                .gt(0)
        });
        since_fired = tch::no_grad(|| (&since_fired + n).masked_fill(&fired, 0));
        let dead = since_fired.ge(cfg.dead_after as i64);
        let n_dead = i64::try_from(dead.sum(Kind::Int64)).unwrap_or(0);
        let loss = if cfg.aux_k_coef > 0.0 && n_dead > 0 {
            let ka = k_aux.min(n_dead);
            let masked = pre.masked_fill(&dead.logical_not(), f64::NEG_INFINITY);
            let (av, ai) = masked.topk(ka, -1, true, false);
            let za = pre.zeros_like().scatter(-1, &ai, &av.relu());
            let e_hat = za.matmul(&w_dec);
            let e = err.detach();
            let aux = (&e - e_hat).square().sum(Kind::Float)
                / e.square().sum(Kind::Float).clamp_min(1e-12);
            flops += 6.0 * (d * f) as f64 * n as f64;
            &mse + aux * cfg.aux_k_coef
        } else {
            mse.shallow_clone()
        };
        opt.backward_step(&loss);
        tch::no_grad(|| {
            let mut w = w_dec.shallow_clone();
            let normed = &w_dec / w_dec.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
            w.copy_(&normed);
        });
        let fvu = f64::try_from(&mse).unwrap_or(f64::NAN);
        if !fvu.is_finite() {
            return Err(Error::param(
                "training",
                format!("the loss became non-finite at step {steps}; lower the learning rate"),
            ));
        }
        recent_fvu.push(fvu);
        if recent_fvu.len() > 10 {
            recent_fvu.remove(0);
        }
        rows += n as u64;
        steps += 1;
        since_check += n as u64;
        pb.set_position(rows);
        pb.set_message(format!("fvu {fvu:.4}  dead {n_dead}"));
        if let Some(xe) = &x_eval {
            if since_check >= eval_every {
                since_check = 0;
                let t = Instant::now();
                let (e, _) = eval_fvu(xe, &w_enc, &b_enc, &w_dec, &b_dec, cfg.k as i64);
                eval_seconds += t.elapsed().as_secs_f64();
                eval_flops += 4.0 * (d * f) as f64 * n_eval as f64;
                curve.push(CurvePoint {
                    epoch,
                    steps,
                    rows,
                    train_fvu: recent_fvu.iter().sum::<f64>() / recent_fvu.len() as f64,
                    eval_fvu: e,
                    seconds: start.elapsed().as_secs_f64(),
                });
                if e < best_eval * (1.0 - cfg.tolerance) {
                    no_progress = 0;
                } else {
                    no_progress += 1;
                }
                best_eval = best_eval.min(e);
                if no_progress >= cfg.patience {
                    stopped = "converged";
                    break;
                }
            }
        }
    }
    if dev.is_cuda() {
        tch::Cuda::synchronize(match dev {
            Device::Cuda(i) => i as i64,
            _ => 0,
        });
    }
    let seconds = start.elapsed().as_secs_f64() - eval_seconds;
    pb.finish_and_clear();
    if rows == 0 {
        return Err(Error::EmptyInput("no rows to train the SAE on".into()));
    }
    let dead_fraction = {
        let dead = since_fired.ge(cfg.dead_after.min(rows) as i64);
        f64::try_from(dead.to_kind(Kind::Double).mean(Kind::Double)).unwrap_or(0.0)
    };
    let host = |t: &Tensor| -> Vec<f32> {
        let t = t
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let mut v = vec![0.0f32; t.numel()];
        let len = v.len();
        t.copy_data(&mut v, len);
        v
    };
    let (eval_fvu_end, eval_dead) = match &x_eval {
        Some(xe) => {
            let (e, dead) = eval_fvu(xe, &w_enc, &b_enc, &w_dec, &b_dec, cfg.k as i64);
            eval_flops += 4.0 * (d * f) as f64 * n_eval as f64;
            (Some(e), Some(dead))
        }
        None => (None, None),
    };
    let record = TrainRecord {
        rows,
        steps,
        width: f,
        k: cfg.k,
        learning_rate: lr,
        flops,
        seconds,
        device_seconds: seconds,
        device: device_name(dev),
        final_fvu: recent_fvu.iter().sum::<f64>() / recent_fvu.len().max(1) as f64,
        dead_fraction,
        epochs: epoch,
        stopped: stopped.into(),
        eval_fvu: eval_fvu_end,
        eval_dead_fraction: eval_dead,
        eval_rows: n_eval,
        eval_flops,
        eval_seconds,
        curve,
    };
    let mut metadata = Map::new();
    metadata.insert(
        "exemplar_training".into(),
        json!({
            "recipe": "TopK (Gao et al. 2024): tied init, unit-norm decoder rows, Adam, AuxK",
            "record": record,
            "inputs": stream.paths().iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "input_fingerprint": stream.fingerprint(),
            "crate_version": env!("CARGO_PKG_VERSION"),
        }),
    );
    let sae = Sae {
        d_in: d,
        d_sae: f,
        w_enc: host(&w_enc),
        w_dec: host(&w_dec),
        b_enc: host(&b_enc),
        b_dec: host(&b_dec),
        apply_b_dec_to_input: true,
        activation: SaeActivation::TopK { k: cfg.k },
        metadata,
    };
    sae.validate(std::path::Path::new("<trained SAE>"))?;
    Ok((sae, record))
}
