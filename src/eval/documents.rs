//! Token activations grouped by document, and the labelled-text datasets the probes read.
//!
//! Two sources give the same [`DocumentActivations`]: activation files whose provenance sidecars
//! name the `doc_id` of every row ([`read_documents`]), or (feature `torch`) texts run through a
//! Gemma-2 checkpoint ([`texts_through_model`], which extracts into a temporary file and reads it
//! back the same way, so both paths share one reader). The datasets are JSON Lines of
//! `{"text", "label"}` ([`read_labeled_jsonl`]); in activation-file mode line `i` is document
//! `i` unless the line has a `"doc_id"`.

use crate::data::{ActivationStream, StreamOptions};
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The token rows of each document, in stream order (so the last row is the last token).
#[derive(Debug, Clone)]
pub struct DocumentActivations {
    pub dim: usize,
    /// `doc_id → n_tokens × dim` rows.
    pub docs: BTreeMap<i64, Vec<f32>>,
}

impl DocumentActivations {
    /// The rows of `doc_id`, or an error naming the document.
    pub fn get(&self, doc_id: i64) -> Result<&[f32]> {
        self.docs.get(&doc_id).map(|v| v.as_slice()).ok_or_else(|| {
            Error::param(
                "doc_id",
                format!("document {doc_id} has no activation rows"),
            )
        })
    }
}

/// Reads every row of `paths` and groups them by the `doc_id` of their provenance sidecars.
/// Errors when the files have no sidecars (rows cannot be tied to documents).
pub fn read_documents(paths: &[PathBuf], options: StreamOptions) -> Result<DocumentActivations> {
    let mut stream = ActivationStream::open(paths, options)?;
    if !stream.has_provenance() {
        return Err(Error::format(
            &paths[0],
            "no provenance sidecar (<file>.provenance.jsonl): rows cannot be grouped by document",
        ));
    }
    let dim = stream.dim();
    let mut docs: BTreeMap<i64, Vec<f32>> = BTreeMap::new();
    while let Some(batch) = stream.next_batch(8192)? {
        let tokens = batch
            .tokens
            .as_ref()
            .expect("a stream with provenance gives token refs");
        for (i, t) in tokens.iter().enumerate() {
            docs.entry(t.doc_id)
                .or_default()
                .extend_from_slice(&batch.data[i * dim..(i + 1) * dim]);
        }
    }
    Ok(DocumentActivations { dim, docs })
}

/// Runs `texts` through the Gemma-2 checkpoint in `model_dir` (on the CPU, f32) and returns the
/// activations at `hook` of every token but the BOS, grouped by document: document `i` is
/// `texts[i]`. Texts truncated to `ctx` tokens. A text with no token after the BOS is an error.
#[cfg(feature = "torch")]
pub fn texts_through_model(
    model_dir: &Path,
    hook: &str,
    texts: &[String],
    ctx: usize,
    batch_prompts: usize,
) -> Result<DocumentActivations> {
    use crate::model::extract::{extract_to_file, ExtractOptions};
    use crate::model::{Gemma, HookPoint, Tokenizer};
    let hook = HookPoint::parse(hook)?;
    let model = Gemma::load(model_dir, tch::Kind::Float, tch::Device::Cpu)?;
    if hook.layer >= model.config.num_hidden_layers {
        return Err(Error::param(
            "hook",
            format!(
                "{hook}: {} has {} blocks",
                model_dir.display(),
                model.config.num_hidden_layers
            ),
        ));
    }
    let tok = Tokenizer::from_file(&model_dir.join("tokenizer.json"), model.config.bos_token_id)?;
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let out = dir.path().join("activations.safetensors");
    // Document i of `texts` gets id i.
    let numbered: Vec<(i64, String)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (i as i64, t.clone()))
        .collect();
    let summary = extract_to_file(
        &model,
        &tok,
        hook,
        &numbered,
        &ExtractOptions {
            ctx,
            batch_prompts,
            min_tokens: 1,
            final_position: false,
            pack: false,
        },
        &out,
        false,
    )?;
    let docs = read_documents(&[out], StreamOptions::default())?;
    if summary.skipped_documents > 0 {
        let missing = (0..texts.len() as i64)
            .find(|i| !docs.docs.contains_key(i))
            .unwrap_or(0);
        return Err(Error::param(
            "text",
            format!(
                "{} text(s) have no token after the BOS (the first is text {missing})",
                summary.skipped_documents
            ),
        ));
    }
    Ok(docs)
}

/// One line of a labelled dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledText {
    /// 1-based line number in the file.
    pub line: usize,
    /// The `doc_id` field, or the index of the line among the data lines.
    pub doc_id: i64,
    pub text: Option<String>,
    /// The label as written (an integer label becomes its decimal string).
    pub label: String,
}

/// Parses one JSON Lines file into objects, with errors naming `file:line`. Blank lines are
/// skipped. Returns `(line number, object)` pairs.
pub fn read_jsonl_objects(path: &Path) -> Result<Vec<(usize, serde_json::Map<String, Value>)>> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(text).map_err(|e| {
        Error::format(
            path,
            format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        )
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| Error::format(path, format!("line {}: invalid JSON: {e}", i + 1)))?;
        match v {
            Value::Object(m) => out.push((i + 1, m)),
            _ => {
                return Err(Error::format(
                    path,
                    format!("line {}: expected a JSON object", i + 1),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(Error::EmptyInput(format!(
            "{}: no data lines",
            path.display()
        )));
    }
    Ok(out)
}

/// A string or integer field rendered as a string, or an error naming `path:line`.
pub(crate) fn label_field(
    path: &Path,
    line: usize,
    m: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<String> {
    match m.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Some(Value::String(_)) => Err(Error::format(path, format!("line {line}: empty \"{key}\""))),
        Some(other) => Err(Error::format(
            path,
            format!("line {line}: \"{key}\" must be a string or an integer, got {other}"),
        )),
        None => Err(Error::format(
            path,
            format!("line {line}: missing \"{key}\""),
        )),
    }
}

/// An optional integer `doc_id`, or an error naming `path:line`.
pub(crate) fn doc_id_field(
    path: &Path,
    line: usize,
    m: &serde_json::Map<String, Value>,
) -> Result<Option<i64>> {
    match m.get("doc_id") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            Error::format(
                path,
                format!("line {line}: \"doc_id\" must be an integer, got {v}"),
            )
        }),
    }
}

/// A text field: present and non-empty when `require`, else optional.
pub(crate) fn text_field(
    path: &Path,
    line: usize,
    m: &serde_json::Map<String, Value>,
    key: &str,
    require: bool,
) -> Result<Option<String>> {
    match m.get(key) {
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(Error::format(path, format!("line {line}: empty \"{key}\"")))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        None | Some(Value::Null) if !require => Ok(None),
        None | Some(Value::Null) => Err(Error::format(
            path,
            format!("line {line}: missing \"{key}\""),
        )),
        Some(other) => Err(Error::format(
            path,
            format!("line {line}: \"{key}\" must be a string, got {other}"),
        )),
    }
}

/// Reads a `{"text", "label"}` JSON Lines dataset. `require_text`: text mode (every line needs a
/// non-empty `text`); otherwise `text` is optional and lines are matched to activation
/// documents by `doc_id` (default: the index of the line among the data lines). Duplicate
/// `doc_id`s are an error.
pub fn read_labeled_jsonl(path: &Path, require_text: bool) -> Result<Vec<LabeledText>> {
    let mut out: Vec<LabeledText> = Vec::new();
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for (i, (line, m)) in read_jsonl_objects(path)?.into_iter().enumerate() {
        let text = text_field(path, line, &m, "text", require_text)?;
        let label = label_field(path, line, &m, "label")?;
        let doc_id = doc_id_field(path, line, &m)?.unwrap_or(i as i64);
        if let Some(first) = seen.insert(doc_id, line) {
            return Err(Error::format(
                path,
                format!("line {line}: doc_id {doc_id} already used on line {first}"),
            ));
        }
        out.push(LabeledText {
            line,
            doc_id,
            text,
            label,
        });
    }
    Ok(out)
}
