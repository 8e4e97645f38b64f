//! The build's batch sources over activation files: [`RowBatches`] (a fixed number of rows) and
//! [`DocumentBatches`] (whole documents of a provenance sidecar), and the [`BatchSource`] trait
//! they share with a model over a corpus (`pipeline::text::TextSource`).

use crate::data::{ActivationBatch, ActivationStream};
use crate::error::{Error, Result};

/// Turns a row error reported with a stream row (`<stream>`) into one naming file and row.
pub(super) fn locate_error(stream: &ActivationStream, e: Error) -> Error {
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

/// A source of activation batches for [`run_build`]: activation files (row or document
/// batches), or a model over a corpus (`model::text`). Sources are deterministic, so a run can
/// resume at a recorded [`BatchSource::position`].
pub trait BatchSource {
    /// Width D of the rows.
    fn dim(&self) -> usize;
    /// The next batch, cut to at most `max_rows` rows (the build's budget); `None` at the end.
    fn next_batch(&mut self, max_rows: usize) -> Result<Option<ActivationBatch>>;
    /// Streams read together: 1, or one per hook of a text source at several hooks.
    fn streams(&self) -> usize {
        1
    }
    /// The next batch of every stream (the same rows, tokens and documents; several from one
    /// read, e.g. one forward), each cut to at most `max_rows` rows; `None` at the end.
    fn next_batches(&mut self, max_rows: usize) -> Result<Option<Vec<ActivationBatch>>> {
        Ok(self.next_batch(max_rows)?.map(|b| vec![b]))
    }
    /// Where the source stands after the batches returned so far (stored in checkpoints).
    fn position(&self) -> serde_json::Value;
    /// Moves a freshly opened source to a recorded `position`.
    fn seek(&mut self, position: &serde_json::Value) -> Result<()>;
    /// From the next batch on, leave the rows in the model's tensors
    /// ([`ActivationBatch::tensor_rows`]) for the clustering to read in place, where the source
    /// can; returns whether it will. The rows' values do not change.
    fn keep_rows_in_tensors(&mut self) -> bool {
        false
    }
    /// Maps an error naming a stream row (`<stream>`) to one naming the input.
    fn locate(&self, e: Error) -> Error {
        e
    }
    /// Fills the input's part of the build record (inputs, fingerprints, model FLOPs, ...),
    /// called once at the end.
    fn record(&self, info: &mut crate::dictionary::BuildInfo);
}

fn position_u64(position: &serde_json::Value, key: &str) -> Result<u64> {
    position.get(key).and_then(|v| v.as_u64()).ok_or_else(|| {
        Error::param(
            "checkpoint",
            format!("the recorded input position has no `{key}`"),
        )
    })
}

/// Reads and drops `kept` kept rows from the start of a rewound stream.
fn skip_rows(stream: &mut ActivationStream, kept: u64) -> Result<()> {
    stream.rewind()?;
    let mut left = kept;
    while left > 0 {
        let Some(b) = stream.next_batch(left.min(1 << 16) as usize)? else {
            return Err(Error::param(
                "checkpoint",
                format!("the input has fewer than the {kept} rows the checkpoint has clustered"),
            ));
        };
        left -= b.rows() as u64;
    }
    Ok(())
}

fn record_stream(stream: &ActivationStream, info: &mut crate::dictionary::BuildInfo) {
    info.inputs = stream
        .paths()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    info.input_fingerprint = Some(stream.fingerprint());
}

/// Batches of a fixed number of rows from an [`ActivationStream`].
pub struct RowBatches<'a> {
    pub stream: &'a mut ActivationStream,
    pub batch_size: usize,
    emitted: u64,
}

impl<'a> RowBatches<'a> {
    pub fn new(stream: &'a mut ActivationStream, batch_size: usize) -> Self {
        RowBatches {
            stream,
            batch_size,
            emitted: 0,
        }
    }
}

impl BatchSource for RowBatches<'_> {
    fn dim(&self) -> usize {
        self.stream.dim()
    }
    fn next_batch(&mut self, max_rows: usize) -> Result<Option<ActivationBatch>> {
        if self.batch_size == 0 {
            return Err(Error::param("batch size", "must be at least 1"));
        }
        let b = self.stream.next_batch(max_rows.min(self.batch_size))?;
        if let Some(b) = &b {
            self.emitted += b.rows() as u64;
        }
        Ok(b)
    }
    fn position(&self) -> serde_json::Value {
        serde_json::json!({ "rows": self.emitted })
    }
    fn seek(&mut self, position: &serde_json::Value) -> Result<()> {
        let rows = position_u64(position, "rows")?;
        skip_rows(self.stream, rows)?;
        self.emitted = rows;
        Ok(())
    }
    fn locate(&self, e: Error) -> Error {
        locate_error(&*self.stream, e)
    }
    fn record(&self, info: &mut crate::dictionary::BuildInfo) {
        record_stream(self.stream, info);
    }
}

/// Batches of whole documents from an [`ActivationStream`] with provenance sidecars: each batch
/// holds the rows of `documents` consecutive documents (the last may hold fewer), as a build
/// from text batches them.
pub struct DocumentBatches<'a> {
    pub stream: &'a mut ActivationStream,
    pub documents: usize,
    /// Rows read but not yet emitted, with their tokens, and the documents seen with them.
    pending: ActivationBatch,
    /// Kept rows emitted so far.
    emitted: u64,
    done: bool,
}

impl<'a> DocumentBatches<'a> {
    pub fn new(stream: &'a mut ActivationStream, documents: usize) -> Result<Self> {
        if !stream.has_provenance() {
            return Err(Error::param(
                "batch documents",
                "batches of documents need a provenance sidecar for every activation file",
            ));
        }
        if documents == 0 {
            return Err(Error::param("batch documents", "must be at least 1"));
        }
        let dim = stream.dim();
        Ok(DocumentBatches {
            stream,
            documents,
            pending: ActivationBatch {
                dim,
                tokens: Some(vec![]),
                ..Default::default()
            },
            emitted: 0,
            done: false,
        })
    }

    /// The index of the first row after the first `n` documents of `pending`, if the pending
    /// rows hold `n` complete documents (a document is complete once a later one starts, or at
    /// the end of the stream).
    fn cut(&self, n: usize) -> Option<usize> {
        let toks = self
            .pending
            .tokens
            .as_ref()
            .expect("document batches have tokens");
        let mut seen = 0usize;
        for i in 1..toks.len() {
            if toks[i].doc_id != toks[i - 1].doc_id {
                seen += 1;
                if seen == n {
                    return Some(i);
                }
            }
        }
        (self.done && !toks.is_empty()).then_some(toks.len())
    }
}

impl BatchSource for DocumentBatches<'_> {
    fn dim(&self) -> usize {
        self.stream.dim()
    }
    fn next_batch(&mut self, max_rows: usize) -> Result<Option<ActivationBatch>> {
        let cut = loop {
            if let Some(c) = self.cut(self.documents) {
                break c;
            }
            if self.done {
                return Ok(None);
            }
            match self.stream.next_batch(4096)? {
                None => self.done = true,
                Some(b) => {
                    let p = &mut self.pending;
                    p.data.extend_from_slice(&b.data);
                    p.stream_rows.extend_from_slice(&b.stream_rows);
                    p.tokens
                        .as_mut()
                        .expect("tokens")
                        .extend(b.tokens.expect("a stream with provenance has tokens"));
                    for d in b.documents {
                        if !p.documents.iter().any(|x| x.doc_id == d.doc_id) {
                            p.documents.push(d);
                        }
                    }
                    p.skipped_nonfinite += b.skipped_nonfinite;
                }
            }
        };
        let cut = cut.min(max_rows);
        let d = self.pending.dim;
        let p = &mut self.pending;
        let toks = p.tokens.as_mut().expect("tokens");
        let rest_toks = toks.split_off(cut);
        let batch_toks = std::mem::replace(toks, rest_toks);
        let rest_rows = p.stream_rows.split_off(cut);
        let batch_rows = std::mem::replace(&mut p.stream_rows, rest_rows);
        let rest_data = p.data.split_off(cut * d);
        let batch_data = std::mem::replace(&mut p.data, rest_data);
        let mut ids: Vec<i64> = batch_toks.iter().map(|t| t.doc_id).collect();
        ids.dedup();
        let (docs, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut p.documents)
            .into_iter()
            .partition(|doc| ids.contains(&doc.doc_id));
        let still: Vec<i64> = p
            .tokens
            .as_ref()
            .expect("tokens")
            .iter()
            .map(|t| t.doc_id)
            .collect();
        p.documents = keep
            .into_iter()
            .chain(
                docs.iter()
                    .filter(|doc| still.contains(&doc.doc_id))
                    .cloned(),
            )
            .collect();
        let new_tokens = docs.iter().map(|doc| doc.tokens.len() as u64).sum();
        let skipped = std::mem::take(&mut p.skipped_nonfinite);
        self.emitted += batch_rows.len() as u64;
        Ok(Some(ActivationBatch {
            dim: d,
            data: batch_data,
            stream_rows: batch_rows,
            tokens: Some(batch_toks),
            documents: docs,
            new_tokens,
            skipped_nonfinite: skipped,
            #[cfg(feature = "torch")]
            tensor_rows: None,
        }))
    }
    fn position(&self) -> serde_json::Value {
        serde_json::json!({ "rows": self.emitted })
    }
    fn seek(&mut self, position: &serde_json::Value) -> Result<()> {
        let rows = position_u64(position, "rows")?;
        skip_rows(self.stream, rows)?;
        self.emitted = rows;
        Ok(())
    }
    fn locate(&self, e: Error) -> Error {
        locate_error(&*self.stream, e)
    }
    fn record(&self, info: &mut crate::dictionary::BuildInfo) {
        record_stream(self.stream, info);
        info.batch_documents = Some(self.documents as u64);
    }
}
