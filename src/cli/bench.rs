//! `exemplar bench`: times a build from text (a random Gemma-2 of a named shape, or a checkpoint
//! with a corpus) and reports tokens, activations, model and clustering FLOPs, wall time,
//! tokens/s, device-seconds, MFU, peak memory and device-to-host bytes per batch, for these
//! paths over the same documents (with `--model`, the corpus' first `--documents` documents,
//! tokenised once before timing; otherwise seeded random ids):
//!
//! * `build`: the forward stops at the hook (no final norm, no unembedding) and feeds the
//!   clustering;
//! * `harvest`: the reference's style — the full forward with logits, the hooked activations
//!   copied to the host (and the f32 rows uploaded again for the clustering on a GPU);
//! * `text` (with `--model`): what `exemplar build --model` runs, reading and tokenising the
//!   corpus on its read-ahead thread as it goes.
//!
//! It also measures the device's dense GEMM rate with the same library (libtorch) at the
//! model's MLP shape, so the forward's rate can be read as a fraction of it.
//!
//! Next to them it prints the reference pipeline's cost model (ep-reference-spec.md §11.2) for
//! the same token count. On a GPU the build path copies the hooked rows to the host only for the
//! calibration; after it the clustering reads the hooked tensor in place, and the report counts
//! the bytes that still cross per batch (activations, and the clustering's own transfers).

use super::commands::model_device;
use anyhow::{bail, Context, Result};
use clap::Args;
use exemplar::backend::{Backend, DeviceChoice};
use exemplar::build::BuildConfig;
use exemplar::data::{ActivationBatch, Document, TokenRef};
use exemplar::dictionary::BuildInfo;
use exemplar::model::rows::{forward_hooks, HookValues, RowSelection};
use exemplar::model::{Gemma, GemmaConfig, HookPoint};
use exemplar::pipeline::{self, BatchSource, BuildPlan, CalibrationSpec};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Random-weight model shape: tiny (D 64, 4 layers), small (D 256, 8 layers), gemma-2-2b.
    #[arg(long, default_value = "tiny", value_parser = ["tiny", "small", "gemma-2-2b"], conflicts_with = "model")]
    pub shape: String,
    /// A checkpoint directory instead of a random model (needs --corpus).
    #[arg(long, value_name = "DIR", requires = "corpus")]
    pub model: Option<PathBuf>,
    /// Corpus files for --model (otherwise documents are seeded random token ids).
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub corpus: Vec<PathBuf>,
    /// Hook (layer L of the shape: blocks.L.hook_resid_post).
    #[arg(long, default_value = "blocks.1.hook_resid_post")]
    pub hook: String,
    /// Documents to stream.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub documents: usize,
    /// Tokens per document after the BOS.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub ctx: usize,
    /// Documents per batch.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub batch_documents: usize,
    /// Percentile that sets θ (calibrated on the first batches).
    #[arg(long, short = 'p', default_value_t = 1.0)]
    pub percentile: f64,
    /// Calibration activations (at most the streamed documents' rows: every path calibrates on them).
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    pub calibration_activations: u64,
    /// Device: cpu, cuda, or auto.
    #[arg(long, default_value = "auto", value_parser = ["cpu", "cuda", "auto"])]
    pub device: String,
    /// Weight dtype (default: f32 on cpu, bf16 on cuda).
    #[arg(long, value_parser = ["f32", "bf16"])]
    pub dtype: Option<String>,
    /// Peak dense TFLOP/s of the device for MFU (default: a table of known GPUs; none on CPU).
    #[arg(long, value_name = "TFLOPS")]
    pub peak_tflops: Option<f64>,
    /// Skip the harvest path.
    #[arg(long)]
    pub no_harvest: bool,
    /// Standardise every dimension (as `build --standardize`).
    #[arg(long)]
    pub standardize: bool,
    /// Seed of the random weights and tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the JSON here.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite --out.
    #[arg(long)]
    pub force: bool,
    /// Print only the JSON.
    #[arg(long)]
    pub json: bool,
}

/// The named shapes (Gemma-2 config.json fields).
fn shape_config(name: &str) -> Result<GemmaConfig> {
    let (h, i, l, nh, nkv, hd, v) = match name {
        "tiny" => (64, 128, 4, 4, 2, 16, 512),
        "small" => (256, 1024, 8, 4, 2, 64, 4096),
        "gemma-2-2b" => (2304, 9216, 26, 8, 4, 256, 256_000),
        other => bail!("unknown shape {other}"),
    };
    let v = serde_json::json!({
        "model_type": "gemma2", "hidden_size": h, "intermediate_size": i,
        "num_hidden_layers": l, "num_attention_heads": nh, "num_key_value_heads": nkv,
        "head_dim": hd, "vocab_size": v, "rope_theta": 10000.0, "query_pre_attn_scalar": hd,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 4096,
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
        "bos_token_id": 2, "pad_token_id": 0,
    });
    GemmaConfig::from_json(&v).map_err(|e| anyhow::anyhow!("shape {name}: {e}"))
}

/// Documents given as token ids (`[BOS] + ids`), run through the model at the hook.
/// `full` runs the whole model with logits and counts the harvest's host round trip.
struct TokenDocs<'a> {
    model: &'a Gemma,
    hook: HookPoint,
    docs: &'a [Vec<i64>],
    batch: usize,
    full: bool,
    next_doc: usize,
    rows: u64,
    flops: f64,
    forward_seconds: f64,
    d2h: u64,
    h2d: u64,
    batches: u64,
    /// Leave the build path's rows in the hooked tensor (set by the pipeline on a GPU).
    in_tensors: bool,
    /// (d2h, batches) when the rows started to stay in the tensors.
    switched_at: Option<(u64, u64)>,
}

impl<'a> TokenDocs<'a> {
    /// `docs`, `batch` per forward (the full forward with logits and host copies when `full`).
    fn new(
        model: &'a Gemma,
        hook: HookPoint,
        docs: &'a [Vec<i64>],
        batch: usize,
        full: bool,
    ) -> Self {
        TokenDocs {
            model,
            hook,
            docs,
            batch,
            full,
            next_doc: 0,
            rows: 0,
            flops: 0.0,
            forward_seconds: 0.0,
            d2h: 0,
            h2d: 0,
            batches: 0,
            in_tensors: false,
            switched_at: None,
        }
    }
}

/// `documents` documents of `ctx` seeded random ids after the BOS.
fn random_documents(model: &Gemma, documents: usize, ctx: usize, seed: u64) -> Vec<Vec<i64>> {
    let v = model.config.vocab_size as u64;
    let bos = model.config.bos_token_id;
    (0..documents)
        .map(|doc| {
            std::iter::once(bos)
                .chain((0..ctx).map(|t| {
                    let r =
                        exemplar::build::uniform_below(seed, (doc * (ctx + 1) + t) as u64, v - 3);
                    3 + r as i64
                }))
                .collect()
        })
        .collect()
}

/// The first `documents` documents of the corpus that keep a token after the BOS, tokenised
/// and truncated as a build from text does.
fn corpus_documents(
    tok: &exemplar::model::Tokenizer,
    corpus: &[PathBuf],
    documents: usize,
    ctx: usize,
) -> Result<Vec<Vec<i64>>> {
    use exemplar::data::corpus::{CorpusOptions, CorpusReader};
    let mut reader = CorpusReader::open(corpus, CorpusOptions::default())?;
    let mut out = Vec::with_capacity(documents);
    while out.len() < documents {
        let Some(doc) = reader.next_document()? else {
            break;
        };
        if let Some(ids) = exemplar::model::windows::prepare_document(tok, &doc.text, ctx, 1)? {
            out.push(ids);
        }
    }
    if out.is_empty() {
        bail!("the corpus has no document with a token after the BOS");
    }
    Ok(out)
}

/// The process's peak resident memory (VmHWM) since the last [`reset_peak_rss`], in bytes
/// (Linux; `None` elsewhere).
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak-RSS mark (Linux ≥ 4.0: `5` to /proc/self/clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The device's dense GEMM rate (FLOP/s) in the model's dtype through libtorch: the MLP's
/// up-projection shape at the bench's batch (`rows × d_model` by `d_model × d_ff`), best of
/// five after a warm-up.
fn gemm_rate(model: &Gemma, rows: i64) -> f64 {
    let c = &model.config;
    let (d, f) = (c.hidden_size as i64, c.intermediate_size as i64);
    let opts = (model.kind(), model.device());
    let _guard = tch::no_grad_guard();
    let a = Tensor::randn([rows, d], opts);
    let b = Tensor::randn([f, d], opts);
    let sync = || {
        if let Device::Cuda(i) = model.device() {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let _ = a.matmul(&b.tr());
    sync();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t0 = Instant::now();
        let c = a.matmul(&b.tr());
        sync();
        best = best.min(t0.elapsed().as_secs_f64());
        drop(c);
    }
    2.0 * (rows * d * f) as f64 / best
}

impl BatchSource for TokenDocs<'_> {
    fn dim(&self) -> usize {
        self.model.config.hidden_size
    }
    fn next_batch(&mut self, max_rows: usize) -> exemplar::Result<Option<ActivationBatch>> {
        if self.next_doc >= self.docs.len() {
            return Ok(None);
        }
        let end = (self.next_doc + self.batch).min(self.docs.len());
        let docs = &self.docs[self.next_doc..end];
        let refs: Vec<&[i64]> = docs.iter().map(|d| d.as_slice()).collect();
        let t0 = Instant::now();
        let d = self.dim();
        let elem = if self.model.kind() == Kind::Float {
            4
        } else {
            2
        };
        let mut tensor_rows = None;
        let (data, positions) = if self.full {
            // The reference: every block and the unembedding, the hooked [B, T, D] to the
            // host, then the kept rows.
            let c = &self.model.config;
            let t = docs.iter().map(Vec::len).max().unwrap_or(0);
            let mut flat = Vec::with_capacity(docs.len() * t);
            let mut mask = Vec::with_capacity(docs.len() * t);
            for ids in docs {
                flat.extend(
                    ids.iter()
                        .copied()
                        .chain(std::iter::repeat_n(c.pad_token_id, t - ids.len())),
                );
                mask.extend(
                    std::iter::repeat_n(1i64, ids.len())
                        .chain(std::iter::repeat_n(0, t - ids.len())),
                );
            }
            let dev = self.model.device();
            let (b, ti) = (docs.len() as i64, t as i64);
            let input = Tensor::from_slice(&flat).view([b, ti]).to_device(dev);
            let mask = Tensor::from_slice(&mask).view([b, ti]).to_device(dev);
            let fwd = tch::no_grad(|| self.model.forward(&input, &mask, &[self.hook], &[], true))?;
            if let Some(l) = &fwd.logits {
                let _ = l.sum(Kind::Float).double_value(&[]); // the logits are really computed
            }
            let host = fwd.hooks[&self.hook]
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
                .view([b * ti, d as i64]);
            let positions: Vec<Vec<i64>> = docs
                .iter()
                .map(|ids| (1..ids.len() as i64).collect())
                .collect();
            let index: Vec<i64> = positions
                .iter()
                .enumerate()
                .flat_map(|(bi, pos)| pos.iter().map(move |&p| bi as i64 * ti + p))
                .collect();
            let n = index.len();
            let rows = exemplar::data::TensorRows::new(host, index, d)?.to_host();
            if dev != Device::Cpu {
                self.d2h += (docs.len() * t * d * elem) as u64;
                // The f32 rows go back for the GPU clustering.
                let _back = Tensor::from_slice(&rows).to_device(dev);
                self.h2d += (n * d * 4) as u64;
            }
            self.flops += self.model.forward_flops(
                (docs.len() * t) as u64,
                t as u64,
                c.num_hidden_layers - 1,
            ) + 2.0 * (c.hidden_size * c.vocab_size * docs.len() * t) as f64;
            (rows, positions)
        } else {
            let f = forward_hooks(
                self.model,
                &[self.hook],
                &refs,
                &RowSelection::AfterBos,
                self.in_tensors,
            )?;
            self.flops += f.flops;
            self.d2h += f.d2h_bytes;
            match f.values.into_iter().next().expect("one hook") {
                HookValues::Host(rows) => (rows, f.positions),
                HookValues::Tensor(t) => {
                    tensor_rows = Some(t);
                    (Vec::new(), f.positions)
                }
            }
        };
        if self.model.device() != Device::Cpu {
            tch::Cuda::synchronize(0);
        }
        self.forward_seconds += t0.elapsed().as_secs_f64();
        self.batches += 1;
        let mut tokens = Vec::new();
        let mut documents = Vec::new();
        for (k, pos) in positions.iter().enumerate() {
            let doc_id = (self.next_doc + k) as i64;
            documents.push(Document {
                doc_id,
                tokens: docs[k].iter().map(|i| format!("<id {i}>")).collect(),
            });
            tokens.extend(pos.iter().map(|&p| TokenRef {
                doc_id,
                position: p,
            }));
        }
        let n = tokens.len().min(max_rows);
        tokens.truncate(n);
        let new_tokens = docs.iter().map(|d| d.len() as u64).sum();
        self.next_doc = end;
        let stream_rows = (self.rows..self.rows + n as u64).collect();
        self.rows += n as u64;
        let mut batch = ActivationBatch {
            dim: d,
            data,
            stream_rows,
            tokens: Some(tokens),
            documents,
            new_tokens,
            tensor_rows,
            ..Default::default()
        };
        // Whole documents are kept, so cutting rows here only trims the last document's.
        batch.truncate_values(n);
        Ok(Some(batch))
    }
    fn keep_rows_in_tensors(&mut self) -> bool {
        // The harvest path is the reference's: its rows always come to the host.
        if !self.full && !self.in_tensors {
            self.in_tensors = true;
            self.switched_at = Some((self.d2h, self.batches));
        }
        self.in_tensors
    }
    fn position(&self) -> serde_json::Value {
        serde_json::json!({ "next_doc": self.next_doc })
    }
    fn seek(&mut self, _: &serde_json::Value) -> exemplar::Result<()> {
        Err(exemplar::Error::param(
            "bench",
            "benchmark runs do not resume",
        ))
    }
    fn record(&self, info: &mut BuildInfo) {
        info.model_flops = Some(self.flops);
        info.timings.forward_seconds = Some(self.forward_seconds);
    }
}

/// Known dense bf16 peaks (TFLOP/s) by device name.
fn known_peak(name: &str) -> Option<f64> {
    let n = name.to_ascii_lowercase();
    [
        ("h200", 989.0),
        ("h100", 989.0),
        ("a100", 312.0),
        ("l40s", 362.0),
        ("a10", 125.0),
    ]
    .iter()
    .find(|(k, _)| n.contains(k))
    .map(|&(_, v)| v)
}

fn gpu_name() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if let Some(out) = &a.out {
        super::args::check_output(out, a.force)?;
    }
    let (device, kind) = model_device(&a.device, a.dtype.as_deref())?;
    let hook = HookPoint::parse(&a.hook)?;
    let model = match &a.model {
        Some(dir) => Gemma::load(dir, kind, device)?,
        None => Gemma::random(shape_config(&a.shape)?, kind, device, a.seed as i64),
    };
    if hook.layer >= model.config.num_hidden_layers {
        bail!(
            "{hook}: the model has {} blocks",
            model.config.num_hidden_layers
        );
    }
    let backend = match device {
        Device::Cuda(_) => Backend::select(DeviceChoice::parse("cuda")?)?.0,
        _ => Backend::Cpu,
    };
    let device_name = match device {
        Device::Cuda(_) => gpu_name().unwrap_or_else(|| "cuda".into()),
        _ => format!("cpu ({} threads)", rayon::current_num_threads()),
    };
    let peak = a.peak_tflops.or_else(|| known_peak(&device_name));
    let tok = match &a.model {
        Some(dir) => Some(exemplar::model::Tokenizer::from_file(
            &dir.join("tokenizer.json"),
            model.config.bos_token_id,
        )?),
        None => None,
    };
    // The documents every path streams, tokenised before any timing.
    let docs = match &tok {
        Some(tok) => corpus_documents(tok, &a.corpus, a.documents, a.ctx)?,
        None => random_documents(&model, a.documents, a.ctx, a.seed),
    };
    let mut paths = vec![("build", false)];
    if !a.no_harvest {
        paths.push(("harvest", true));
    }
    if tok.is_some() {
        paths.push(("text", false));
    }
    // Warm-up (not timed): the first forward pays for libtorch's lazy initialisation and the
    // allocator's first requests, which would otherwise be charged to the first path.
    {
        let warm = &docs[..a.batch_documents.min(docs.len())];
        let refs: Vec<&[i64]> = warm.iter().map(|d| d.as_slice()).collect();
        forward_hooks(&model, &[hook], &refs, &RowSelection::AfterBos, false)?;
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    }
    // The GEMM rate of this device through libtorch, at the MLP's shape of one batch.
    let batch_rows = (a.batch_documents.min(docs.len()) * (a.ctx + 1)) as i64;
    let gemm = gemm_rate(&model, batch_rows);
    // Every path calibrates on the same rows: the streamed documents' (the text path's reader
    // would otherwise go on into the corpus past them to fill a larger calibration sample).
    let streamed_rows: u64 = docs.iter().map(|d| d.len().saturating_sub(1) as u64).sum();
    let calibration_activations = a.calibration_activations.min(streamed_rows.max(1));
    let mut results = Vec::new();
    for (name, full) in paths {
        let plan = BuildPlan {
            hook: Some(hook.name()),
            ..BuildPlan::new(BuildConfig {
                saturation_window: None,
                ..BuildConfig::default()
            })
        };
        let cal = CalibrationSpec::Inline {
            percentile: a.percentile,
            method: exemplar::calibrate::PercentileMethod::Linear,
            activations: calibration_activations,
            standardize: a.standardize,
        };
        reset_peak_rss();
        let t0 = Instant::now();
        let bus0 = backend.transferred_bytes().unwrap_or((0, 0));
        let near0 = backend.nearest_totals().unwrap_or((0, 0, 0));
        let in_place0 = backend.rows_read_in_place().unwrap_or(0);
        let (dict, d2h, h2d, batches, switched) = match (&tok, name) {
            (Some(tok), "text") => {
                use exemplar::data::corpus::{CorpusOptions, CorpusReader};
                use exemplar::pipeline::text::{TextOptions, TextSource};
                let reader = CorpusReader::open(&a.corpus, CorpusOptions::default())?;
                let mut src = TextSource::new(
                    reader,
                    tok,
                    &model,
                    hook,
                    TextOptions {
                        ctx: a.ctx,
                        batch_documents: a.batch_documents,
                        min_tokens: 1,
                        final_position: false,
                        pack: false,
                    },
                )?;
                // The same documents as the other paths: stop after their tokens.
                let plan = BuildPlan {
                    max_tokens: Some(docs.iter().map(|d| d.len() as u64).sum()),
                    ..plan
                };
                let out = pipeline::run_build(&backend, &mut src, cal, &plan, None)?;
                let (d2h, b) = src.transfer();
                (out.dictionary, d2h, 0, b, src.transfer_at_switch())
            }
            _ => {
                let mut src = TokenDocs::new(&model, hook, &docs, a.batch_documents, full);
                let out = pipeline::run_build(&backend, &mut src, cal, &plan, None)?;
                (
                    out.dictionary,
                    src.d2h,
                    src.h2d,
                    src.batches,
                    src.switched_at,
                )
            }
        };
        let wall = t0.elapsed().as_secs_f64();
        let bus1 = backend.transferred_bytes().unwrap_or((0, 0));
        let near1 = backend.nearest_totals().unwrap_or((0, 0, 0));
        // After the calibration (whose rows come to the host once), per batch: what the
        // hooked activations' copies moved; and the CUDA backend's own transfers over the
        // whole run (calibration uploads included) per batch clustered.
        let (d2h_after, batches_after) = match switched {
            Some((d, b)) => (d2h - d, batches - b),
            None => (d2h, batches),
        };
        let cluster_batches = dict.info().batches.max(1) as f64;
        let info = dict.info();
        let mflops = info.model_flops.unwrap_or(0.0);
        let total = mflops + info.clustering_flops;
        results.push(serde_json::json!({
            "path": name,
            "tokens": info.tokens_streamed,
            "activations": info.activations_streamed,
            "batches": batches,
            "partitions": dict.len(),
            "theta": dict.theta(),
            "model_flops": mflops,
            "clustering_flops": info.clustering_flops,
            "wall_seconds": wall,
            "forward_seconds": info.timings.forward_seconds,
            "clustering_seconds": info.timings.clustering_seconds,
            "calibration_seconds": info.timings.calibration_seconds,
            "tokens_per_second": info.tokens_streamed as f64 / wall,
            "device_seconds": wall,
            "mfu": peak.map(|p| total / wall / (p * 1e12)),
            "clustering_over_forward": info.timings.forward_seconds.map(|f| info.timings.clustering_seconds / f.max(1e-12)),
            // Rows the clustering read from the hooked tensor without a copy.
            "rows_read_in_place": backend.rows_read_in_place().unwrap_or(0) - in_place0,
            "d2h_bytes_per_batch": d2h as f64 / batches.max(1) as f64,
            "h2d_bytes_per_batch": h2d as f64 / batches.max(1) as f64,
            "activation_d2h_bytes_calibration": switched.map(|s| s.0),
            "activation_d2h_bytes_per_batch_after_calibration": d2h_after as f64 / batches_after.max(1) as f64,
            "clustering_h2d_bytes_per_batch": (bus1.0 - bus0.0) as f64 / cluster_batches,
            "clustering_d2h_bytes_per_batch": (bus1.1 - bus0.1) as f64 / cluster_batches,
            // The GPU nearest searches (phase A, strict order): rows searched, rows the screen
            // could not settle, rows re-checked over every exemplar.
            "nearest_rows": near1.0 - near0.0,
            "nearest_ambiguous_rows": near1.1 - near0.1,
            "nearest_rechecked_rows": near1.2 - near0.2,
            // Peak resident memory of the process during this path (Linux VmHWM, reset first).
            "peak_rss_bytes": peak_rss(),
            // The forward's achieved rate, and as a fraction of the measured GEMM rate.
            "forward_flops_per_second": info.timings.forward_seconds.map(|f| mflops / f.max(1e-12)),
            "forward_over_gemm": info.timings.forward_seconds.map(|f| mflops / f.max(1e-12) / gemm),
        }));
    }
    // The reference pipeline's cost model (ep-reference-spec.md §11.2) for the same tokens.
    let c = &model.config;
    let tokens = results[0]["tokens"].as_u64().unwrap_or(0);
    let acts = results[0]["activations"].as_u64().unwrap_or(0);
    let seq = (a.ctx + 1) as u64;
    let truncated = model.forward_flops(tokens, seq, hook.layer);
    let all_blocks = model.forward_flops(tokens, seq, c.num_hidden_layers - 1);
    let unembed = 2.0 * (c.hidden_size * c.vocab_size) as f64 * tokens as f64;
    let rows_per_batch = (a.batch_documents * a.ctx) as f64;
    let d = c.hidden_size as f64;
    let reference = serde_json::json!({
        "source": "ep-reference-spec.md §11.2: full forward (all blocks) + unembedding on every position, bf16 rows to the host, f32 rows back to the device, a .npz shard per batch",
        "tokens": tokens,
        "activations": acts,
        "model_flops": all_blocks + unembed,
        "model_flops_blocks": all_blocks,
        "model_flops_unembedding": unembed,
        "truncated_forward_flops": truncated,
        "wasted_fraction": 1.0 - truncated / (all_blocks + unembed),
        "d2h_bytes_per_batch": rows_per_batch * d * 2.0,
        "h2d_bytes_per_batch": rows_per_batch * d * 4.0,
        "shard_bytes_per_batch": rows_per_batch * d * 4.0,
        "logits_bytes_per_batch": (a.batch_documents as f64) * seq as f64 * c.vocab_size as f64 * 2.0,
    });
    let report = serde_json::json!({
        "device": device_name,
        "peak_tflops": peak,
        "model": match &a.model { Some(m) => m.display().to_string(), None => format!("random gemma-2 shape {}", a.shape) },
        "dtype": format!("{kind:?}"),
        "hidden_size": c.hidden_size,
        "layers": c.num_hidden_layers,
        "vocab_size": c.vocab_size,
        "hook": hook.name(),
        "ctx": a.ctx,
        "batch_documents": a.batch_documents,
        "percentile": a.percentile,
        "calibration_activations": calibration_activations,
        "documents": docs.len(),
        "threads": tch::get_num_threads(),
        "gemm_flops_per_second": gemm,
        "gemm_shape": format!("[{batch_rows}, {}] x [{}, {}] ({kind:?})", model.config.hidden_size, model.config.hidden_size, model.config.intermediate_size),
        "note": "on a GPU the build path copies the hooked rows to the host only for the calibration; afterwards the clustering reads the hooked tensor in place (activation_d2h_bytes_per_batch_after_calibration), and clustering_*_bytes_per_batch are every transfer the CUDA backend made during the run (the calibration's uploads included; per batch: gather indices up; ids, similarities, new exemplars and reservoir rows down), over the batches clustered. The harvest path copies every batch to the host and back (the reference)",
        "results": results,
        "reference_cost_model": reference,
    });
    let text = serde_json::to_string_pretty(&report)?;
    if !a.json {
        eprintln!(
            "{:<8} {:>10} {:>10} {:>6} {:>12} {:>12} {:>9} {:>10} {:>8} {:>9} {:>9} {:>9} {:>14} {:>14}",
            "path",
            "tokens",
            "acts",
            "K",
            "model TFLOP",
            "clust TFLOP",
            "wall s",
            "tok/s",
            "MFU",
            "clust/fwd",
            "fwd/GEMM",
            "peak GB",
            "acts D2H B/b",
            "clust D2H B/b"
        );
        for r in report["results"].as_array().expect("array") {
            eprintln!(
                "{:<8} {:>10} {:>10} {:>6} {:>12.4} {:>12.4} {:>9.2} {:>10.0} {:>8} {:>9} {:>9} {:>9} {:>14.0} {:>14.0}",
                r["path"].as_str().unwrap_or(""),
                r["tokens"].as_u64().unwrap_or(0),
                r["activations"].as_u64().unwrap_or(0),
                r["partitions"].as_u64().unwrap_or(0),
                r["model_flops"].as_f64().unwrap_or(0.0) / 1e12,
                r["clustering_flops"].as_f64().unwrap_or(0.0) / 1e12,
                r["wall_seconds"].as_f64().unwrap_or(0.0),
                r["tokens_per_second"].as_f64().unwrap_or(0.0),
                r["mfu"]
                    .as_f64()
                    .map_or("-".to_string(), |m| format!("{:.2}%", 100.0 * m)),
                r["clustering_over_forward"]
                    .as_f64()
                    .map_or("-".to_string(), |m| format!("{:.1}%", 100.0 * m)),
                r["forward_over_gemm"]
                    .as_f64()
                    .map_or("-".to_string(), |m| format!("{:.1}%", 100.0 * m)),
                r["peak_rss_bytes"]
                    .as_f64()
                    .map_or("-".to_string(), |m| format!("{:.2}", m / 1e9)),
                r["activation_d2h_bytes_per_batch_after_calibration"]
                    .as_f64()
                    .unwrap_or(0.0),
                r["clustering_d2h_bytes_per_batch"].as_f64().unwrap_or(0.0),
            );
        }
        for r in report["results"].as_array().expect("array") {
            let rows = r["nearest_rows"].as_u64().unwrap_or(0);
            if rows > 0 {
                let share = |k: &str| 100.0 * r[k].as_u64().unwrap_or(0) as f64 / rows as f64;
                eprintln!(
                    "{}: GPU nearest searched {rows} rows; the screen left {:.2}% ambiguous, {:.2}% were re-checked over every exemplar",
                    r["path"].as_str().unwrap_or(""),
                    share("nearest_ambiguous_rows"),
                    share("nearest_rechecked_rows"),
                );
            }
        }
        eprintln!(
            "GEMM rate (libtorch, {}): {:.1} GFLOP/s on {} threads",
            report["gemm_shape"].as_str().unwrap_or(""),
            gemm / 1e9,
            tch::get_num_threads()
        );
        eprintln!(
            "reference cost model: {:.4} TFLOP (blocks {:.4} + unembedding {:.4}) vs truncated forward {:.4} TFLOP ({:.0}% wasted); D2H {:.0} B + H2D {:.0} B + shard {:.0} B per batch",
            reference["model_flops"].as_f64().unwrap_or(0.0) / 1e12,
            all_blocks / 1e12,
            unembed / 1e12,
            truncated / 1e12,
            100.0 * reference["wasted_fraction"].as_f64().unwrap_or(0.0),
            rows_per_batch * d * 2.0,
            rows_per_batch * d * 4.0,
            rows_per_batch * d * 4.0,
        );
    }
    println!("{text}");
    if let Some(out) = &a.out {
        exemplar::output::write_atomic(out, text.as_bytes(), a.force)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
