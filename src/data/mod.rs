//! Activation inputs: `.npy` and `.safetensors` files streamed in order as f32 row batches, with
//! an optional provenance sidecar per file (see `docs/inputs.md`), and the `.npy`/`.npz`
//! writers used for per-row outputs.

pub mod corpus;
pub mod npy;
pub mod provenance;
mod safetensors_input;
mod stream;

pub use provenance::Document;
pub use stream::{ActivationStream, StreamOptions};

/// Where a row of a batch comes from in its document: the document's id and the token position
/// (index into the document's token list, BOS at 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenRef {
    pub doc_id: i64,
    pub position: i64,
}

/// A batch of activation rows in stream order, up-cast to f32.
#[derive(Debug, Clone, Default)]
pub struct ActivationBatch {
    /// Width `D` of every row.
    pub dim: usize,
    /// `rows() × dim` values, row-major.
    pub data: Vec<f32>,
    /// For each row, its index in the input stream (rows of all files counted in order,
    /// skipped non-finite rows included), so per-row outputs line up with the input.
    pub stream_rows: Vec<u64>,
    /// For each row, its document and position, when every input file has a sidecar.
    pub tokens: Option<Vec<TokenRef>>,
    /// The documents that have at least one row in this batch (empty without sidecars).
    pub documents: Vec<Document>,
    /// Tokens (BOS included) of the documents whose *first* row is in this batch; without
    /// sidecars, one per row.
    pub new_tokens: u64,
    /// Non-finite rows dropped from this batch (only with `skip_nonfinite`).
    pub skipped_nonfinite: u64,
}

impl ActivationBatch {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.stream_rows.len()
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// A batch built from an in-memory `(n, dim)` matrix, rows numbered from `first_stream_row`
    /// (no provenance). Useful for library users and tests.
    pub fn from_rows(data: Vec<f32>, dim: usize, first_stream_row: u64) -> Self {
        assert!(
            dim > 0 && data.len() % dim == 0,
            "data length must be a multiple of dim"
        );
        let n = data.len() / dim;
        ActivationBatch {
            dim,
            stream_rows: (first_stream_row..first_stream_row + n as u64).collect(),
            new_tokens: n as u64,
            data,
            ..Default::default()
        }
    }
}
