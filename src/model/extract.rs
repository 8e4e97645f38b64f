//! Text → activations at a hook, written as a file `exemplar build` reads: a safetensors
//! `activations` tensor `(N, D)` (f32) with one row per non-BOS, non-pad token, and its
//! `<file>.provenance.jsonl` sidecar (document id, token strings, positions).

use super::{Gemma2, HookKind, HookPoint, Tokenizer};
use crate::error::{Error, Result};
use crate::output::{check_writable, AtomicFile};
use crate::tensorfile::{self, TensorOut};
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Settings of an extraction.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Tokens kept per document after the BOS (the reference's ctx: 128).
    pub ctx: usize,
    /// Documents per forward pass.
    pub batch_prompts: usize,
}

/// What an extraction wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractSummary {
    pub documents: usize,
    pub skipped_documents: usize,
    pub rows: usize,
    pub tokens: usize,
    pub dim: usize,
}

/// Runs `documents` through `model` and keeps the activations at `hook` of every token but the
/// BOS (and padding). Documents are truncated to BOS + `ctx` tokens; those with no token after
/// the BOS are skipped (counted). Writes `out` and `<out>.provenance.jsonl` atomically.
pub fn extract_to_file(
    model: &Gemma2,
    tokenizer: &Tokenizer,
    hook: HookPoint,
    documents: &[String],
    options: &ExtractOptions,
    out: &Path,
    force: bool,
) -> Result<ExtractSummary> {
    if hook.kind == HookKind::Z {
        return Err(Error::param(
            "hook",
            "attn.hook_z is per head; extract a residual-stream hook",
        ));
    }
    if options.ctx == 0 || options.batch_prompts == 0 {
        return Err(Error::param("ctx/batch-prompts", "must be at least 1"));
    }
    let sidecar = crate::data::provenance::sidecar_path(out);
    check_writable(out, force)?;
    check_writable(&sidecar, force)?;
    let pad = model.config.pad_token_id;
    let d = model.config.hidden_size;
    let mut docs: Vec<(usize, Vec<i64>)> = Vec::new();
    let mut skipped = 0;
    for (i, text) in documents.iter().enumerate() {
        let mut ids = tokenizer.encode(text)?;
        ids.truncate(options.ctx + 1);
        if ids.len() < 2 {
            skipped += 1;
        } else {
            docs.push((i, ids));
        }
    }
    if docs.is_empty() {
        return Err(Error::EmptyInput(
            "no document has a token after the BOS".into(),
        ));
    }
    let pb = crate::pipeline::progress_bar(docs.len() as u64, "forward");
    let mut rows: Vec<f32> = Vec::new();
    let mut lines = Vec::with_capacity(docs.len());
    let mut tokens = 0usize;
    for chunk in docs.chunks(options.batch_prompts) {
        let t = chunk.iter().map(|(_, ids)| ids.len()).max().unwrap_or(0);
        let mut flat = Vec::with_capacity(chunk.len() * t);
        let mut mask = Vec::with_capacity(chunk.len() * t);
        for (_, ids) in chunk {
            flat.extend(
                ids.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad, t - ids.len())),
            );
            mask.extend(
                std::iter::repeat_n(1i64, ids.len()).chain(std::iter::repeat_n(0, t - ids.len())),
            );
        }
        let (b, ti) = (chunk.len() as i64, t as i64);
        let input = Tensor::from_slice(&flat).view([b, ti]);
        let mask = Tensor::from_slice(&mask).view([b, ti]);
        let fwd = model.forward(&input, &mask, &[hook], &[], false)?;
        let acts = fwd.hooks[&hook].to_kind(Kind::Float).to_device(Device::Cpu);
        for (bi, (doc, ids)) in chunk.iter().enumerate() {
            let n = ids.len() as i64 - 1;
            let x = acts.get(bi as i64).narrow(0, 1, n).contiguous();
            let mut buf = vec![0.0f32; (n as usize) * d];
            let len = buf.len();
            x.copy_data(&mut buf, len);
            rows.extend_from_slice(&buf);
            tokens += ids.len();
            lines.push(serde_json::json!({
                "doc_id": doc,
                "tokens": tokenizer.token_strings(ids),
                "positions": (1..ids.len()).collect::<Vec<_>>(),
            }));
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let n = rows.len() / d;
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("hook".to_string(), hook.name());
    meta.insert("ctx".to_string(), options.ctx.to_string());
    meta.insert(
        "producer".to_string(),
        format!("exemplar {} activations", env!("CARGO_PKG_VERSION")),
    );
    // The sidecar first: a reader that finds the activations also finds their provenance.
    let mut f = AtomicFile::create(&sidecar, force)?;
    for l in &lines {
        serde_json::to_writer(&mut f, l).map_err(|e| Error::io(&sidecar, e.into()))?;
        f.write_all(b"\n").map_err(|e| Error::io(&sidecar, e))?;
    }
    f.commit()?;
    tensorfile::write(
        out,
        vec![TensorOut::f32("activations", vec![n, d], &rows)],
        &meta,
        force,
    )?;
    Ok(ExtractSummary {
        documents: docs.len(),
        skipped_documents: skipped,
        rows: n,
        tokens,
        dim: d,
    })
}
