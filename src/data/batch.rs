//! Batches of activation rows: [`ActivationBatch`] (rows in stream order, up-cast to f32, with
//! their stream rows and, when known, their documents and token positions) and, with `torch`,
//! [`TensorRows`] (rows still in a model's tensor). Every batch source produces these: the
//! activation-file stream (`stream.rs`), the pipeline's document batches and the text source.

use crate::data::provenance::Document;

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
    /// The rows still in a torch tensor (a model's hooked activations, on the model's
    /// device) instead of `data`, which is then empty: a CUDA build reads them in place
    /// (architecture.md §5); anything else copies them out with
    /// [`ActivationBatch::host_data`].
    #[cfg(feature = "torch")]
    pub tensor_rows: Option<TensorRows>,
}

/// Rows of a batch held in a torch tensor: row `i` of the batch is row `index[i]` of
/// `tensor` (`M × D`, f32 or bf16, contiguous, on any device).
#[cfg(feature = "torch")]
#[derive(Debug)]
pub struct TensorRows {
    pub tensor: tch::Tensor,
    pub index: Vec<i64>,
}

#[cfg(feature = "torch")]
impl Clone for TensorRows {
    /// Shares the tensor's storage (the rows are never written).
    fn clone(&self) -> Self {
        TensorRows {
            tensor: self.tensor.shallow_clone(),
            index: self.index.clone(),
        }
    }
}

#[cfg(feature = "torch")]
impl TensorRows {
    /// Checks the shape and the index: a 2-D contiguous f32 or bf16 tensor of width `dim`, and
    /// every index a row of it.
    pub fn new(tensor: tch::Tensor, index: Vec<i64>, dim: usize) -> crate::Result<Self> {
        use crate::error::Error;
        let size = tensor.size();
        if size.len() != 2 || size[1] != dim as i64 {
            return Err(Error::param(
                "tensor rows",
                format!("shape {size:?} is not rows × {dim}"),
            ));
        }
        if !matches!(tensor.kind(), tch::Kind::Float | tch::Kind::BFloat16) {
            return Err(Error::param(
                "tensor rows",
                format!("dtype {:?}; f32 or bf16 is needed", tensor.kind()),
            ));
        }
        if !tensor.is_contiguous() {
            return Err(Error::param("tensor rows", "the tensor is not contiguous"));
        }
        if let Some(&bad) = index.iter().find(|&&i| i < 0 || i >= size[0]) {
            return Err(Error::param(
                "tensor rows",
                format!("index {bad} is outside the tensor's {} rows", size[0]),
            ));
        }
        Ok(TensorRows { tensor, index })
    }

    /// The indexed rows as f32 on the host, row-major (a device-to-host copy on a GPU).
    pub fn to_host(&self) -> Vec<f32> {
        let d = self.tensor.size()[1] as usize;
        let n = self.index.len();
        let mut out = vec![0.0f32; n * d];
        if n > 0 {
            let idx = tch::Tensor::from_slice(&self.index).to_device(self.tensor.device());
            let rows = self
                .tensor
                .index_select(0, &idx)
                .to_device(tch::Device::Cpu)
                .to_kind(tch::Kind::Float)
                .contiguous();
            rows.copy_data(&mut out, n * d);
        }
        out
    }
}

impl ActivationBatch {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.stream_rows.len()
    }

    /// Row `i` (of `data`: see [`ActivationBatch::host_data`] for rows still in a tensor).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows as f32 on the host: `data`, or a copy of the rows still in a tensor.
    pub fn host_data(&self) -> std::borrow::Cow<'_, [f32]> {
        #[cfg(feature = "torch")]
        if let Some(t) = &self.tensor_rows {
            return t.to_host().into();
        }
        self.data.as_slice().into()
    }

    /// Keeps the first `n` rows' values (`data` or the tensor index); the caller trims the
    /// rest of the record (rows, tokens, documents).
    pub fn truncate_values(&mut self, n: usize) {
        self.data.truncate(n * self.dim);
        #[cfg(feature = "torch")]
        if let Some(t) = self.tensor_rows.as_mut() {
            t.index.truncate(n);
        }
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

#[cfg(all(test, feature = "torch"))]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn tensor_rows_gather_in_index_order_and_refuse_bad_shapes() {
        let t = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([4, 3]);
        let rows = TensorRows::new(t.shallow_clone(), vec![3, 0, 3], 3).unwrap();
        assert_eq!(
            rows.to_host(),
            [9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 9.0, 10.0, 11.0]
        );
        let bf = TensorRows::new(t.to_kind(Kind::BFloat16), vec![1], 3).unwrap();
        assert_eq!(bf.to_host(), [3.0, 4.0, 5.0]);
        let mut b = ActivationBatch {
            dim: 3,
            stream_rows: vec![7, 8, 9],
            tensor_rows: Some(rows),
            ..Default::default()
        };
        assert_eq!(b.host_data().len(), 9);
        b.truncate_values(2);
        b.stream_rows.truncate(2);
        assert_eq!(&*b.host_data(), [9.0, 10.0, 11.0, 0.0, 1.0, 2.0]);
        let err = |r: crate::Result<TensorRows>| r.unwrap_err().to_string();
        assert!(err(TensorRows::new(t.shallow_clone(), vec![4], 3)).contains("index 4"));
        assert!(err(TensorRows::new(t.shallow_clone(), vec![-1], 3)).contains("index -1"));
        assert!(err(TensorRows::new(t.shallow_clone(), vec![0], 4)).contains("rows × 4"));
        assert!(err(TensorRows::new(t.transpose(0, 1), vec![0], 4)).contains("contiguous"));
        assert!(err(TensorRows::new(t.to_kind(Kind::Half), vec![0], 3)).contains("dtype"));
    }
}
