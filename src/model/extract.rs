//! Text → activations at a hook, written as a file `exemplar build` reads: a safetensors
//! `activations` tensor `(N, D)` (f32) with one row per non-BOS, non-pad token, and its
//! `<file>.provenance.jsonl` sidecar (document id, token strings, positions).

use super::rows::{forward_rows, RowSelection};
use super::windows::{prepare_document, Packer};
use super::{Gemma, HookPoint, Tokenizer};
use crate::error::{Error, Result};
use crate::output::{check_writable, AtomicFile};
use crate::tensorfile::{self, TensorOut};
use std::io::Write;
use std::path::Path;

/// Settings of an extraction.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Tokens kept per document after the BOS (the reference's ctx: 128).
    pub ctx: usize,
    /// Documents per forward pass.
    pub batch_prompts: usize,
    /// Documents with fewer tokens after the BOS are skipped (at least 1).
    pub min_tokens: usize,
    /// Keep only the last token of each document.
    pub final_position: bool,
    /// Pack documents into windows of BOS + `ctx` tokens ([`Packer`]); the sidecar's
    /// documents are then the windows.
    pub pack: bool,
}

/// What an extraction wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractSummary {
    /// Documents kept (after the token filter).
    pub documents: usize,
    /// Packed windows, when packing.
    pub windows: Option<usize>,
    pub skipped_documents: usize,
    pub rows: usize,
    pub tokens: usize,
    pub dim: usize,
}

/// Runs `documents` (`(doc_id, text)`, in order) through `model` and keeps the activations at
/// `hook` of every token but the BOS (and padding), or of the last token only. Documents are
/// truncated to BOS + `ctx` tokens; those with fewer than `min_tokens` tokens after the BOS are
/// skipped (counted). Tokenisation and the forward are those of a build from text
/// ([`super::text`]). Writes `out` and `<out>.provenance.jsonl` atomically.
pub fn extract_to_file(
    model: &Gemma,
    tokenizer: &Tokenizer,
    hook: HookPoint,
    documents: &[(i64, String)],
    options: &ExtractOptions,
    out: &Path,
    force: bool,
) -> Result<ExtractSummary> {
    if !hook.kind.is_residual_width() {
        return Err(Error::param(
            "hook",
            format!("{hook} is per head or an attention map; extract a d_model-wide hook (hook_resid_*, hook_attn_out, hook_mlp_out)"),
        ));
    }
    if options.pack && options.final_position {
        return Err(Error::param(
            "pack",
            "packed windows have no per-document final position; use one or the other",
        ));
    }
    if options.ctx == 0 || options.batch_prompts == 0 {
        return Err(Error::param("ctx/batch-prompts", "must be at least 1"));
    }
    let sidecar = crate::data::provenance::sidecar_path(out);
    check_writable(out, force)?;
    check_writable(&sidecar, force)?;
    let d = model.config.hidden_size;
    let mut docs: Vec<(i64, Vec<i64>)> = Vec::new();
    let mut skipped = 0;
    // Tokenised in parallel (a document is tokenised whole before truncation); the first
    // failure in document order is the error.
    use rayon::prelude::*;
    // Packed documents are kept whole: they continue into the next window.
    let ctx = if options.pack {
        usize::MAX - 1
    } else {
        options.ctx
    };
    let prepared: Vec<Result<Option<Vec<i64>>>> = documents
        .par_iter()
        .map(|(_, text)| prepare_document(tokenizer, text, ctx, options.min_tokens))
        .collect();
    for ((i, _), ids) in documents.iter().zip(prepared) {
        match ids? {
            Some(ids) => docs.push((*i, ids)),
            None => skipped += 1,
        }
    }
    let kept_documents = docs.len();
    let c = &model.config;
    let select = if options.pack {
        // The windows replace the documents (document id = window index).
        let mut packer = Packer::new(options.ctx, c.bos_token_id);
        let mut windows = Vec::new();
        for (_, ids) in &docs {
            packer.push_document(ids);
            while let Some(w) = packer.next_window() {
                windows.push((packer.windows() as i64 - 1, w));
            }
        }
        docs = windows;
        RowSelection::AfterBosExcept(vec![c.bos_token_id, c.eos_token_id, c.pad_token_id])
    } else if options.final_position {
        RowSelection::Last
    } else {
        RowSelection::AfterBos
    };
    if docs.is_empty() {
        return Err(Error::EmptyInput(if options.pack {
            format!(
                "the documents hold fewer tokens than one window of BOS + {}",
                options.ctx
            )
        } else {
            "no document has enough tokens after the BOS".into()
        }));
    }
    let pb = crate::progress::progress_bar(docs.len() as u64, "forward");
    let mut rows: Vec<f32> = Vec::new();
    let mut lines = Vec::with_capacity(docs.len());
    let mut tokens = 0usize;
    for chunk in docs.chunks(options.batch_prompts) {
        let refs: Vec<&[i64]> = chunk.iter().map(|(_, ids)| ids.as_slice()).collect();
        let (r, positions, _) = forward_rows(model, hook, &refs, &select)?;
        rows.extend_from_slice(&r);
        for ((doc, ids), pos) in chunk.iter().zip(positions) {
            tokens += ids.len();
            lines.push(serde_json::json!({
                "doc_id": doc,
                "tokens": tokenizer.token_strings(ids),
                "positions": pos,
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
        "final_position".to_string(),
        options.final_position.to_string(),
    );
    meta.insert("packed".to_string(), options.pack.to_string());
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
        documents: kept_documents,
        windows: options.pack.then_some(docs.len()),
        skipped_documents: skipped,
        rows: n,
        tokens,
        dim: d,
    })
}
