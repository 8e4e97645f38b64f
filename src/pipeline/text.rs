//! A corpus run through a model as a build's batch source ([`TextSource`]): documents are read,
//! tokenised into sequences (`model::windows`: one document per sequence, or packed windows),
//! run through the model in batches with the forward stopping at the hook (`model::rows`), and
//! every non-BOS, non-padding position becomes a row (or only the last token, with
//! `final_position`). `exemplar activations` uses the same steps, so a build from text and a
//! build from the written activations see identical rows.
//!
//! With several hooks ([`TextSource::with_hooks`]) one forward per batch, stopping after the
//! deepest hooked block, gives every hook's rows, so a build of several hooks and percentiles
//! (`pipeline::run_builds`) runs the model once per batch.
//!
//! Reading and tokenising run ahead of the forward: a thread reads a batch's worth of documents
//! at a time and tokenises them in parallel (rayon's pool; a document is tokenised whole before
//! it is truncated, as HF tokenizers do, so long documents make this the costly host step), and
//! queues them, in order, with their token strings (a bounded queue of two batches). The next
//! batch's documents are ready when a forward ends, and the batches do not depend on the timing.
//!
//! After [`TextSource::keep_rows_in_tensors`] (which `pipeline::run_builds` calls for a CUDA
//! build once the calibration's rows are read) the hooked tensors are not copied: each batch
//! carries them ([`ActivationBatch::tensor_rows`]) with the index of every row, and the
//! builder's prepare kernel reads them in place on the GPU (architecture.md §5).

use super::BatchSource;
use crate::data::corpus::{CorpusOptions, CorpusReader, CorpusStats};
use crate::data::{ActivationBatch, Document, TokenRef};
use crate::dictionary::BuildInfo;
use crate::error::{Error, Result};
use crate::model::rows::{forward_hooks, HookBatch, HookValues, RowSelection};
use crate::model::windows::{prepare_document, Packer};
use crate::model::{Gemma, HookPoint, Tokenizer};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::Instant;
use tch::Device;

/// How documents become rows.
#[derive(Debug, Clone, PartialEq)]
pub struct TextOptions {
    /// Tokens kept per document after the BOS (the reference's ctx: 128).
    pub ctx: usize,
    /// Documents per batch (forward pass and clustering batch; the reference's 128).
    pub batch_documents: usize,
    /// Documents with fewer tokens after the BOS (after truncation) are skipped (at least 1).
    pub min_tokens: usize,
    /// Keep only the last token of each document.
    pub final_position: bool,
    /// Pack documents into windows of BOS + `ctx` tokens (`model::windows::Packer`, SAELens's
    /// packing) instead of one truncated document per sequence; `batch_documents` counts
    /// windows, and every window position but the BOS tokens becomes a row.
    pub pack: bool,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions {
            ctx: 128,
            batch_documents: 128,
            min_tokens: 1,
            final_position: false,
            pack: false,
        }
    }
}

/// `[BOS] + ids` of a document and each id's token string.
type Tokenized = (Vec<i64>, Vec<String>);

/// A document read and tokenised ahead: `ids` is `None` when the token filter drops it.
struct Prepared {
    index: u64,
    text: String,
    ids: Option<Tokenized>,
    /// The reader's counters after this document.
    stats: CorpusStats,
}

/// What the read-ahead thread sends: documents in order, then the end or an error.
enum Ahead {
    Doc(Prepared),
    End,
    Failed(Error),
}

/// The read-ahead thread's side: reads documents a chunk at a time, tokenises each chunk in
/// parallel (rayon; a long document is tokenised whole before truncation, as HF does, so this
/// is the costly part), and sends them in order until the end, an error (after the documents
/// read before it), or the receiver's drop.
fn read_ahead(
    mut reader: CorpusReader,
    tokenizer: Tokenizer,
    options: TextOptions,
    tx: std::sync::mpsc::SyncSender<Ahead>,
) {
    use rayon::prelude::*;
    let chunk = options.batch_documents.clamp(1, 1024);
    loop {
        let mut docs = Vec::with_capacity(chunk);
        let mut last = None;
        while docs.len() < chunk {
            match reader.next_document() {
                Ok(Some(doc)) => docs.push((doc, reader.stats())),
                Ok(None) => {
                    last = Some(Ahead::End);
                    break;
                }
                Err(e) => {
                    last = Some(Ahead::Failed(e));
                    break;
                }
            }
        }
        let ids: Vec<Result<Option<Vec<i64>>>> = docs
            .par_iter()
            .map(|(doc, _)| {
                // Packed documents are kept whole: they continue into the next window.
                let ctx = if options.pack {
                    usize::MAX - 1
                } else {
                    options.ctx
                };
                prepare_document(&tokenizer, &doc.text, ctx, options.min_tokens)
            })
            .collect();
        for ((doc, stats), ids) in docs.into_iter().zip(ids) {
            let item = match ids {
                Ok(ids) => Ahead::Doc(Prepared {
                    index: doc.index,
                    ids: ids.map(|ids| {
                        // A packed window's strings are looked up when it is cut.
                        let tokens = if options.pack {
                            Vec::new()
                        } else {
                            tokenizer.token_strings(&ids)
                        };
                        (ids, tokens)
                    }),
                    text: doc.text,
                    stats,
                }),
                Err(e) => Ahead::Failed(e),
            };
            let failed = matches!(item, Ahead::Failed(_));
            if tx.send(item).is_err() || failed {
                return;
            }
        }
        if let Some(item) = last {
            let _ = tx.send(item);
            return;
        }
    }
}

/// Where the documents come from: the reader itself until the first batch (so a resume can
/// skip documents), then the read-ahead thread.
enum Feed {
    Reader(Box<CorpusReader>),
    Ahead(Receiver<Ahead>),
    Done,
}

/// A corpus run through a model at one or several hooks, as a [`BatchSource`] of
/// whole-document batches. With several hooks, one forward per batch (stopping after the
/// deepest hooked block) gives a batch per hook ([`BatchSource::next_batches`]), all with the
/// same rows, tokens and documents.
pub struct TextSource<'a> {
    feed: Feed,
    paths: Vec<PathBuf>,
    corpus_options: CorpusOptions,
    /// SHA-256 of the documents consumed, as [`CorpusReader::fingerprint`] hashes them.
    hasher: Sha256,
    /// Corpus documents consumed (kept or skipped by the token filter), and the reader's
    /// counters as of the last one.
    consumed: u64,
    stats: CorpusStats,
    tokenizer: &'a Tokenizer,
    model: &'a Gemma,
    hooks: Vec<HookPoint>,
    options: TextOptions,
    /// The checkpoint directory and the SHA-256 of its config.json, recorded in the dictionary.
    model_record: Option<(String, String)>,
    rows: u64,
    skipped_tokens: u64,
    model_flops: f64,
    forward_seconds: f64,
    /// Device-to-host bytes of the hooked activations copied so far.
    d2h_bytes: u64,
    batches: u64,
    /// Leave the rows in the hooked tensors (see [`TextSource::keep_rows_in_tensors`]).
    in_tensors: bool,
    switched_at: Option<(u64, u64)>,
    /// Packs documents into windows (`TextOptions::pack`).
    packer: Option<Packer>,
}

impl<'a> TextSource<'a> {
    pub fn new(
        reader: CorpusReader,
        tokenizer: &'a Tokenizer,
        model: &'a Gemma,
        hook: HookPoint,
        options: TextOptions,
    ) -> Result<Self> {
        Self::with_hooks(reader, tokenizer, model, vec![hook], options)
    }

    /// A source at several distinct hooks (batch `i` of [`BatchSource::next_batches`] is
    /// `hooks[i]`'s), from one forward per batch.
    pub fn with_hooks(
        reader: CorpusReader,
        tokenizer: &'a Tokenizer,
        model: &'a Gemma,
        hooks: Vec<HookPoint>,
        options: TextOptions,
    ) -> Result<Self> {
        if options.ctx == 0 || options.batch_documents == 0 {
            return Err(Error::param("ctx/batch documents", "must be at least 1"));
        }
        if hooks.is_empty() {
            return Err(Error::param("hook", "at least one hook is needed"));
        }
        for (i, hook) in hooks.iter().enumerate() {
            if hook.layer >= model.config.num_hidden_layers {
                return Err(Error::param(
                    "hook",
                    format!(
                        "{hook}: the model has {} blocks",
                        model.config.num_hidden_layers
                    ),
                ));
            }
            if !hook.kind.is_residual_width() {
                return Err(Error::param(
                    "hook",
                    format!("{hook} is per head or an attention map; build from a d_model-wide hook (hook_resid_*, hook_attn_out, hook_mlp_out)"),
                ));
            }
            if hooks[..i].contains(hook) {
                return Err(Error::param("hook", format!("{hook} is given twice")));
            }
        }
        let packer = options
            .pack
            .then(|| Packer::new(options.ctx, model.config.bos_token_id));
        Ok(TextSource {
            paths: reader.paths().to_vec(),
            corpus_options: reader.options().clone(),
            feed: Feed::Reader(Box::new(reader)),
            hasher: Sha256::new(),
            consumed: 0,
            stats: CorpusStats::default(),
            tokenizer,
            model,
            hooks,
            options,
            model_record: None,
            rows: 0,
            skipped_tokens: 0,
            model_flops: 0.0,
            forward_seconds: 0.0,
            d2h_bytes: 0,
            batches: 0,
            in_tensors: false,
            switched_at: None,
            packer,
        })
    }

    /// Records the checkpoint directory (and hashes its config.json) in the dictionary.
    pub fn with_model_dir(mut self, dir: &std::path::Path) -> Result<Self> {
        let p = dir.join("config.json");
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        use sha2::Digest;
        let h = sha2::Sha256::digest(&bytes);
        self.model_record = Some((
            dir.display().to_string(),
            h.iter().map(|b| format!("{b:02x}")).collect(),
        ));
        Ok(self)
    }

    /// Forward FLOPs so far.
    pub fn model_flops(&self) -> f64 {
        self.model_flops
    }

    /// Seconds in forward passes (and the copy to the host) so far.
    pub fn forward_seconds(&self) -> f64 {
        self.forward_seconds
    }

    /// Device-to-host bytes of hooked activations so far, and batches.
    pub fn transfer(&self) -> (u64, u64) {
        (self.d2h_bytes, self.batches)
    }

    /// [`TextSource::transfer`] as of the switch to leaving rows in the tensors (`None`
    /// before it).
    pub fn transfer_at_switch(&self) -> Option<(u64, u64)> {
        self.switched_at
    }

    /// The corpus reader's counters as of the last document consumed.
    pub fn corpus_stats(&self) -> CorpusStats {
        self.stats
    }

    /// The SHA-256 of the documents consumed so far (as `CorpusReader::fingerprint`).
    pub fn corpus_fingerprint(&self) -> String {
        let digest = self.hasher.clone().finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn consume(&mut self, text: &str, stats: CorpusStats) {
        self.hasher.update((text.len() as u64).to_le_bytes());
        self.hasher.update(text.as_bytes());
        self.consumed += 1;
        self.stats = stats;
    }

    /// The next document, tokenised, with its token strings (`None`: dropped by the token
    /// filter); `None` at the end.
    fn next_prepared(&mut self) -> Result<Option<(u64, Option<Tokenized>)>> {
        if let Feed::Reader(_) = self.feed {
            let Feed::Reader(reader) = std::mem::replace(&mut self.feed, Feed::Done) else {
                unreachable!()
            };
            let (tx, rx) = sync_channel(2 * self.options.batch_documents);
            let tok = self.tokenizer.clone();
            let options = self.options.clone();
            std::thread::Builder::new()
                .name("exemplar-tokenize".into())
                .spawn(move || read_ahead(*reader, tok, options, tx))
                .map_err(|e| Error::param("tokenizer thread", e.to_string()))?;
            self.feed = Feed::Ahead(rx);
        }
        let Feed::Ahead(rx) = &self.feed else {
            return Ok(None);
        };
        match rx.recv() {
            Ok(Ahead::Doc(p)) => {
                self.consume(&p.text, p.stats);
                Ok(Some((p.index, p.ids)))
            }
            Ok(Ahead::End) => {
                self.feed = Feed::Done;
                Ok(None)
            }
            Ok(Ahead::Failed(e)) => {
                self.feed = Feed::Done;
                Err(e)
            }
            Err(_) => {
                self.feed = Feed::Done;
                Err(Error::param("tokenizer thread", "ended without a result"))
            }
        }
    }

    /// Sets the counters (rows, FLOPs, seconds, ...) recorded in a checkpoint's `position`.
    fn restore_counters(&mut self, position: &serde_json::Value) -> Result<()> {
        let get = |k: &str| {
            position.get(k).ok_or_else(|| {
                Error::param(
                    "checkpoint",
                    format!("the recorded corpus position has no `{k}`"),
                )
            })
        };

        self.rows = get("rows")?.as_u64().unwrap_or(0);
        self.model_flops = get("model_flops")?.as_f64().unwrap_or(0.0);
        self.forward_seconds = get("forward_seconds")?.as_f64().unwrap_or(0.0);
        self.d2h_bytes = get("d2h_bytes")?.as_u64().unwrap_or(0);
        self.batches = get("batches")?.as_u64().unwrap_or(0);
        Ok(())
    }

    /// The next `n` packed windows (fewer at the end of the corpus), each with its window index
    /// as document id and its token strings.
    fn next_windows(&mut self, n: usize) -> Result<Vec<(i64, Tokenized)>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let packer = self.packer.as_mut().expect("packed source");
            if let Some(w) = packer.next_window() {
                let id = packer.windows() as i64 - 1;
                let strings = self.tokenizer.token_strings(&w);
                out.push((id, (w, strings)));
                continue;
            }
            match self.next_prepared()? {
                Some((_, Some((ids, _)))) => self
                    .packer
                    .as_mut()
                    .expect("packed source")
                    .push_document(&ids),
                Some((_, None)) => self.skipped_tokens += 1,
                None => break,
            }
        }
        Ok(out)
    }
}

impl BatchSource for TextSource<'_> {
    fn dim(&self) -> usize {
        self.model.config.hidden_size
    }

    fn streams(&self) -> usize {
        self.hooks.len()
    }

    /// The first hook's batch (the only one for a single-hook source).
    fn next_batch(&mut self, max_rows: usize) -> Result<Option<ActivationBatch>> {
        Ok(self.next_batches(max_rows)?.map(|mut v| v.swap_remove(0)))
    }

    fn next_batches(&mut self, max_rows: usize) -> Result<Option<Vec<ActivationBatch>>> {
        let docs = if self.packer.is_some() {
            self.next_windows(self.options.batch_documents)?
        } else {
            let mut docs: Vec<(i64, Tokenized)> = Vec::with_capacity(self.options.batch_documents);
            while docs.len() < self.options.batch_documents {
                let Some((index, ids)) = self.next_prepared()? else {
                    break;
                };
                match ids {
                    Some(ids) => docs.push((index as i64, ids)),
                    None => self.skipped_tokens += 1,
                }
            }
            docs
        };
        if docs.is_empty() {
            return Ok(None);
        }
        let select = if self.packer.is_some() {
            let c = &self.model.config;
            RowSelection::AfterBosExcept(vec![c.bos_token_id, c.eos_token_id, c.pad_token_id])
        } else if self.options.final_position {
            RowSelection::Last
        } else {
            RowSelection::AfterBos
        };
        let t0 = Instant::now();
        let refs: Vec<&[i64]> = docs.iter().map(|(_, (ids, _))| ids.as_slice()).collect();
        let HookBatch {
            values: per_hook,
            positions,
            flops,
            d2h_bytes,
        } = forward_hooks(self.model, &self.hooks, &refs, &select, self.in_tensors)?;
        self.forward_seconds += t0.elapsed().as_secs_f64();
        self.model_flops += flops;
        self.d2h_bytes += d2h_bytes;
        let d = self.dim();
        self.batches += 1;
        let mut tokens = Vec::new();
        let mut documents = Vec::with_capacity(docs.len());
        let mut new_tokens = 0u64;
        for ((doc_id, (ids, strings)), pos) in docs.into_iter().zip(&positions) {
            if tokens.len() >= max_rows {
                break;
            }
            new_tokens += ids.len() as u64;
            documents.push(Document {
                doc_id,
                tokens: strings,
            });
            tokens.extend(pos.iter().map(|&p| TokenRef {
                doc_id,
                position: p,
            }));
        }
        let n = tokens.len().min(max_rows);
        tokens.truncate(n);
        let stream_rows: Vec<u64> = (self.rows..self.rows + n as u64).collect();
        self.rows += n as u64;
        Ok(Some(
            per_hook
                .into_iter()
                .map(|values| {
                    let mut b = ActivationBatch {
                        dim: d,
                        stream_rows: stream_rows.clone(),
                        tokens: Some(tokens.clone()),
                        documents: documents.clone(),
                        new_tokens,
                        ..Default::default()
                    };
                    match values {
                        HookValues::Host(data) => b.data = data,
                        HookValues::Tensor(t) => b.tensor_rows = Some(t),
                    }
                    b.truncate_values(n);
                    b
                })
                .collect(),
        ))
    }

    /// From the next batch on, leaves the rows in the hooked tensors (on the model's device)
    /// instead of copying them to the host: a CUDA build reads them in place, anything else
    /// copies them when it needs them. The rows are the same either way.
    fn keep_rows_in_tensors(&mut self) -> bool {
        if !self.in_tensors {
            self.in_tensors = true;
            self.switched_at = Some(self.transfer());
        }
        true
    }

    fn position(&self) -> serde_json::Value {
        serde_json::json!({
            "documents_read": self.consumed,
            "skipped_tokens": self.skipped_tokens,
            "rows": self.rows,
            "model_flops": self.model_flops,
            "forward_seconds": self.forward_seconds,
            "d2h_bytes": self.d2h_bytes,
            "batches": self.batches,
            "windows": self.packer.as_ref().map(Packer::windows),
        })
    }

    fn seek(&mut self, position: &serde_json::Value) -> Result<()> {
        let get = |k: &str| {
            position.get(k).ok_or_else(|| {
                Error::param(
                    "checkpoint",
                    format!("the recorded corpus position has no `{k}`"),
                )
            })
        };
        if self.packer.is_some() {
            // Windows cut across documents: cut them again (tokenising, no forward) and drop
            // the ones already clustered.
            let windows = get("windows")?.as_u64().ok_or_else(|| {
                Error::param("checkpoint", "the recorded position has no window count")
            })?;
            let mut left = windows;
            while left > 0 {
                let got = self.next_windows(left.min(1024) as usize)?;
                if got.is_empty() {
                    return Err(Error::param(
                        "checkpoint",
                        format!("the corpus packs into fewer than the {windows} windows the checkpoint has read"),
                    ));
                }
                left -= got.len() as u64;
            }
            self.restore_counters(position)?;
            return Ok(());
        }
        let docs = get("documents_read")?.as_u64().unwrap_or(0);
        let Feed::Reader(reader) = &mut self.feed else {
            return Err(Error::param(
                "checkpoint",
                "seek on a source already read from",
            ));
        };
        let mut skipped = Vec::new();
        for _ in 0..docs {
            match reader.next_document()? {
                Some(d) => skipped.push((d.text, reader.stats())),
                None => {
                    return Err(Error::param(
                        "checkpoint",
                        format!(
                            "the corpus has fewer than the {docs} documents the checkpoint has read"
                        ),
                    ))
                }
            }
        }
        for (text, stats) in skipped {
            self.consume(&text, stats);
        }
        self.restore_counters(position)
    }

    fn record(&self, info: &mut BuildInfo) {
        let opts = &self.corpus_options;
        info.corpus = self.paths.iter().map(|p| p.display().to_string()).collect();
        info.corpus_fingerprint = Some(self.corpus_fingerprint());
        info.order_seed = opts.shuffle.map(|s| s.seed);
        info.order_buffer = opts.shuffle.map(|s| s.buffer as u64);
        info.min_chars = Some(opts.min_chars as u64);
        info.ctx = Some(self.options.ctx as u64);
        info.batch_documents = Some(self.options.batch_documents as u64);
        info.min_tokens = Some(self.options.min_tokens.max(1) as u64);
        info.final_position = self.options.final_position;
        info.packed = self.options.pack;
        info.documents_read = Some(self.consumed);
        info.documents_skipped_tokens = Some(self.skipped_tokens);
        info.model_flops = Some(self.model_flops);
        info.timings.forward_seconds = Some(self.forward_seconds);
        info.timings.activation_d2h_bytes =
            (self.model.device() != Device::Cpu).then_some(self.d2h_bytes);
        if let Some((dir, hash)) = &self.model_record {
            info.model_path = Some(dir.clone());
            info.model_config_hash = Some(hash.clone());
        }
    }
}
