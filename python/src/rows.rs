//! Rows from Python: numpy arrays (float32, float16, ml_dtypes.bfloat16) and torch tensors
//! (CPU; CUDA through DLPack in `cuda.rs`) of shape `(..., D)`, read as `n × D` f32 rows the
//! way the CLI reads activation files; and [`RowFeed`], which cuts such rows into the build's
//! batches exactly as `ActivationStream::next_batch` cuts files (kept rows, skipped non-finite
//! rows, stream row numbers, and the input fingerprint of `docs/format.md`).

use crate::errors::invalid;
use exemplar::data::ActivationBatch;
use exemplar::Error;
use half::slice::HalfFloatSliceExt;
use numpy::{PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;

/// The element type of rows given from Python (as in activation files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    Bf16,
}

impl Elem {
    /// The name the input fingerprint hashes (`f32`, `f16`, `bf16`), as for files.
    pub fn name(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F16 => "f16",
            Elem::Bf16 => "bf16",
        }
    }

    fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::Bf16 => 2,
        }
    }
}

/// Host rows given from Python: a C-contiguous numpy array holding `rows × dim` values of
/// `elem` (bfloat16 as its `uint16` bits), with the caller's leading shape.
pub struct HostRows {
    array: Py<PyAny>,
    pub elem: Elem,
    pub rows: usize,
    pub dim: usize,
    /// `x.shape[:-1]`: outputs per row take this shape.
    pub lead: Vec<usize>,
}

/// What an argument `x` holds.
pub enum Input {
    Host(HostRows),
    /// A CUDA tensor, as its DLPack capsule's view (`cuda.rs`).
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaRows),
}

/// DLPack device types (dlpack.h).
const DL_CPU: i64 = 1;
const DL_CUDA: i64 = 2;

/// Whether `obj` is a torch tensor (without importing torch).
fn is_torch_tensor(obj: &Bound<'_, PyAny>) -> bool {
    let t = obj.get_type();
    let module = t
        .getattr("__module__")
        .ok()
        .and_then(|m| m.extract::<String>().ok())
        .unwrap_or_default();
    module.starts_with("torch") && obj.hasattr("detach").unwrap_or(false)
}

/// The DLPack device `(type, id)` of `obj`, when it has one.
fn dlpack_device(obj: &Bound<'_, PyAny>) -> PyResult<Option<(i64, i64)>> {
    if !obj.hasattr("__dlpack_device__")? {
        return Ok(None);
    }
    let dev = obj.call_method0("__dlpack_device__")?;
    Ok(Some(dev.extract::<(i64, i64)>()?))
}

/// Reads `x` (named `what` in messages): a numpy array or torch tensor of shape `(..., D)`.
pub fn extract(py: Python<'_>, x: &Bound<'_, PyAny>, what: &str) -> PyResult<Input> {
    let np = py.import("numpy")?;
    let is_ndarray = x.is_instance(&np.getattr("ndarray")?)?;
    if !is_ndarray {
        if let Some((kind, id)) = dlpack_device(x)? {
            if kind == DL_CUDA {
                return cuda_input(py, x, what, id);
            }
            if kind != DL_CPU {
                return Err(invalid(
                    py,
                    format!(
                        "{what} is on a device exemplar cannot read (DLPack device type {kind}); \
                         pass a CPU tensor (x.cpu()) or a numpy array"
                    ),
                ));
            }
        }
    }
    let (array, elem) = if !is_ndarray && is_torch_tensor(x) {
        torch_to_numpy(py, x, what)?
    } else {
        numpy_rows(py, &np, x, what)?
    };
    let shape: Vec<usize> = array.getattr("shape")?.extract()?;
    let Some((&dim, lead)) = shape.split_last() else {
        return Err(invalid(
            py,
            format!("{what} is a scalar; rows of shape (..., D) are needed"),
        ));
    };
    if dim == 0 {
        return Err(invalid(
            py,
            format!("{what} has shape {shape:?}: its last axis (D) is empty"),
        ));
    }
    Ok(Input::Host(HostRows {
        array: array.unbind(),
        elem,
        rows: lead.iter().product(),
        dim,
        lead: lead.to_vec(),
    }))
}

#[cfg(feature = "cuda")]
fn cuda_input(py: Python<'_>, x: &Bound<'_, PyAny>, what: &str, id: i64) -> PyResult<Input> {
    Ok(Input::Cuda(crate::cuda::CudaRows::from_dlpack(
        py, x, what, id,
    )?))
}

#[cfg(not(feature = "cuda"))]
fn cuda_input(py: Python<'_>, _: &Bound<'_, PyAny>, what: &str, id: i64) -> PyResult<Input> {
    Err(crate::errors::to_py(
        py,
        Error::CudaUnavailable(format!(
            "{what} is a CUDA tensor (device cuda:{id}), but this build of the exemplar Python \
             package has no CUDA support (it was built without the `cuda` feature); pass x.cpu(), \
             or reinstall with CUDA (docs/python.md)"
        )),
    ))
}

/// A host array for `x`: C-contiguous, native byte order, float32 / float16 / bfloat16 bits.
fn numpy_rows<'py>(
    py: Python<'py>,
    np: &Bound<'py, PyModule>,
    x: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<(Bound<'py, PyAny>, Elem)> {
    let mut arr = np.call_method1("asarray", (x,))?;
    let dtype = arr.getattr("dtype")?;
    let name: String = dtype.getattr("name")?.extract()?;
    let elem = match name.as_str() {
        "float32" => Elem::F32,
        "float16" => Elem::F16,
        "bfloat16" => Elem::Bf16,
        other => {
            return Err(invalid(
                py,
                format!(
                    "{what} has dtype {other}; exemplar reads float32, float16 or bfloat16 \
                     (ml_dtypes) rows, as in activation files: convert with \
                     x.astype(numpy.float32)"
                ),
            ))
        }
    };
    if !dtype.getattr("isnative")?.extract::<bool>()? {
        let native = dtype.call_method1("newbyteorder", ("=",))?;
        arr = arr.call_method1("astype", (native,))?;
    }
    if elem == Elem::Bf16 {
        arr = arr.call_method1("view", (np.getattr("uint16")?,))?;
    }
    if arr.getattr("ndim")?.extract::<usize>()? == 0 {
        return Err(invalid(
            py,
            format!("{what} is a scalar; rows of shape (..., D) are needed"),
        ));
    }
    let arr = np.call_method1("ascontiguousarray", (arr,))?;
    Ok((arr, elem))
}

/// A CPU torch tensor as a host array (no copy when it is contiguous; bfloat16 as its bits).
fn torch_to_numpy<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<(Bound<'py, PyAny>, Elem)> {
    let t = x.call_method0("detach")?;
    let device: String = t.getattr("device")?.getattr("type")?.extract()?;
    if device != "cpu" {
        return Err(invalid(
            py,
            format!("{what} is a tensor on {device}; pass a CPU tensor (x.cpu())"),
        ));
    }
    let dtype: String = t.getattr("dtype")?.str()?.extract()?;
    let t = t.call_method0("contiguous")?;
    let torch = py.import("torch")?;
    let (t, elem) = match dtype.as_str() {
        "torch.float32" => (t, Elem::F32),
        "torch.float16" => (t, Elem::F16),
        "torch.bfloat16" => (
            t.call_method1("view", (torch.getattr("int16")?,))?,
            Elem::Bf16,
        ),
        other => {
            return Err(invalid(
                py,
                format!(
                    "{what} has dtype {other}; exemplar reads float32, float16 or bfloat16 rows: \
                     convert with x.float()"
                ),
            ))
        }
    };
    let mut arr = t.call_method0("numpy")?;
    if elem == Elem::Bf16 {
        let np = py.import("numpy")?;
        arr = arr.call_method1("view", (np.getattr("uint16")?,))?;
    }
    Ok((arr, elem))
}

impl HostRows {
    /// The array's values as little-endian bytes of `elem`, rows `start .. start + count`,
    /// passed to `f` while the array is borrowed.
    fn with_bytes<R>(
        &self,
        py: Python<'_>,
        start: usize,
        count: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> PyResult<R> {
        let (a, b) = (start * self.dim, (start + count) * self.dim);
        let arr = self.array.bind(py);
        macro_rules! bytes_of {
            ($t:ty) => {{
                let typed = arr.cast::<PyArrayDyn<$t>>()?;
                let ro = typed.try_readonly()?;
                let s = ro.as_slice().map_err(|e| invalid(py, e.to_string()))?;
                Ok(f(bytemuck::cast_slice(&s[a..b])))
            }};
        }
        match self.elem {
            Elem::F32 => bytes_of!(f32),
            Elem::F16 => bytes_of!(half::f16),
            Elem::Bf16 => bytes_of!(u16),
        }
    }

    /// Rows `start .. start + count` as f32 (exact: f16 and bf16 up-cast as the CLI decodes
    /// files), and with `raw`, their bytes in the source dtype (for the input fingerprint).
    pub fn read(
        &self,
        py: Python<'_>,
        start: usize,
        count: usize,
        raw: bool,
    ) -> PyResult<(Vec<f32>, Vec<u8>)> {
        let elem = self.elem;
        self.with_bytes(py, start, count, |bytes| {
            (
                decode(elem, bytes),
                if raw { bytes.to_vec() } else { vec![] },
            )
        })
    }

    /// A numpy array of `shape(lead + extra)` from `values` (row-major).
    pub fn shaped<'py, T: numpy::Element>(
        &self,
        py: Python<'py>,
        values: Vec<T>,
        extra: &[usize],
    ) -> PyResult<Bound<'py, PyAny>> {
        shaped(py, values, &self.lead, extra)
    }
}

/// `values` as a numpy array of shape `lead + extra`.
pub fn shaped<'py, T: numpy::Element>(
    py: Python<'py>,
    values: Vec<T>,
    lead: &[usize],
    extra: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    let flat = numpy::PyArray1::from_vec(py, values);
    let shape: Vec<usize> = lead.iter().chain(extra).copied().collect();
    flat.call_method1("reshape", (PyTuple::new(py, shape)?,))
}

/// Little-endian `elem` bytes to f32 (`bytes` is whole elements; native order is
/// little-endian on every platform the wheels are built for).
pub fn decode(elem: Elem, bytes: &[u8]) -> Vec<f32> {
    match elem {
        Elem::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Elem::F16 => {
            let halves: Vec<half::f16> = bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect();
            let mut out = vec![0.0f32; halves.len()];
            halves.convert_to_f32_slice(&mut out);
            out
        }
        Elem::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect(),
    }
}

/// Whether every value of each `dim`-wide row is finite.
pub fn finite_rows(data: &[f32], dim: usize) -> Vec<bool> {
    data.chunks(dim)
        .map(|r| r.iter().all(|v| v.is_finite()))
        .collect()
}

/// Rows pushed into a [`RowFeed`] and not yet all consumed.
struct Chunk {
    /// Index of the input (file-like unit of the fingerprint) the rows belong to.
    segment: usize,
    elem: Elem,
    raw: Vec<u8>,
    data: Vec<f32>,
    finite: Vec<bool>,
    first_stream_row: u64,
    /// Rows of this chunk consumed so far.
    pos: usize,
}

impl Chunk {
    fn rows(&self) -> usize {
        self.finite.len()
    }
}

/// Cuts rows pushed from Python into build batches, as `ActivationStream::next_batch` cuts
/// activation files: a batch holds up to `max_rows` *kept* rows in order; a non-finite row is an
/// error naming its input and row, or (with `skip_nonfinite`) is dropped and counted in the
/// batch where the next kept row lands (trailing skipped rows are counted in no batch, as in the
/// CLI); rows are numbered across inputs, skipped ones included. The fingerprint is the CLI's:
/// SHA-256 of `D` (u64 LE), then per input from which rows were consumed, its dtype name, a
/// newline, and the raw bytes of the rows consumed from it.
pub struct RowFeed {
    dim: usize,
    skip_nonfinite: bool,
    hasher: Sha256,
    entered: Option<usize>,
    chunks: VecDeque<Chunk>,
    kept_buffered: usize,
    next_stream_row: u64,
    /// `(first stream row, name)` of each push, to name a row in errors.
    names: Vec<(u64, String)>,
    skipped: u64,
}

impl RowFeed {
    pub fn new(dim: usize, skip_nonfinite: bool) -> Self {
        let mut hasher = Sha256::new();
        hasher.update((dim as u64).to_le_bytes());
        RowFeed {
            dim,
            skip_nonfinite,
            hasher,
            entered: None,
            chunks: VecDeque::new(),
            kept_buffered: 0,
            next_stream_row: 0,
            names: vec![],
            skipped: 0,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Kept rows pushed and not yet taken.
    pub fn buffered(&self) -> usize {
        self.kept_buffered
    }

    /// Stream rows pushed so far (skipped ones included).
    pub fn rows_pushed(&self) -> u64 {
        self.next_stream_row
    }

    /// Non-finite rows dropped so far.
    #[cfg(test)]
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Adds rows of input `segment`, named `name` in errors (their row numbers there start at
    /// `first_row_in_name`). A non-finite row without `skip_nonfinite` is an error and nothing
    /// is added.
    pub fn push(
        &mut self,
        name: &str,
        first_row_in_name: u64,
        segment: usize,
        elem: Elem,
        raw: Vec<u8>,
        data: Vec<f32>,
    ) -> exemplar::Result<()> {
        if data.len() % self.dim != 0 || raw.len() != data.len() * elem.size() {
            return Err(Error::DimensionMismatch {
                what: name.to_string(),
                expected: self.dim,
                found: data.len(),
            });
        }
        let finite = finite_rows(&data, self.dim);
        if !self.skip_nonfinite {
            if let Some(i) = finite.iter().position(|&f| !f) {
                return Err(Error::NonFinite {
                    path: name.into(),
                    row: first_row_in_name + i as u64,
                });
            }
        }
        let n = finite.len();
        if n == 0 {
            return Ok(());
        }
        self.kept_buffered += finite.iter().filter(|&&f| f).count();
        if self.names.last().map(|(_, s)| s.as_str()) != Some(name) {
            self.names
                .push((self.next_stream_row - first_row_in_name, name.to_string()));
        }
        self.chunks.push_back(Chunk {
            segment,
            elem,
            raw,
            data,
            finite,
            first_stream_row: self.next_stream_row,
            pos: 0,
        });
        self.next_stream_row += n as u64;
        Ok(())
    }

    /// Hashes rows `a..b` of the front chunk (entering its input first).
    fn hash_rows(&mut self, a: usize, b: usize) {
        let c = self.chunks.front().expect("a chunk");
        if self.entered != Some(c.segment) {
            self.hasher.update(c.elem.name().as_bytes());
            self.hasher.update(b"\n");
            self.entered = Some(c.segment);
        }
        let w = self.dim * c.elem.size();
        self.hasher.update(&c.raw[a * w..b * w]);
    }

    /// The next batch of up to `max_rows ≥ 1` kept rows from the rows buffered; `None` when no
    /// kept row is buffered.
    pub fn take(&mut self, max_rows: usize) -> Option<ActivationBatch> {
        if self.kept_buffered == 0 || max_rows == 0 {
            return None;
        }
        let d = self.dim;
        let want = max_rows.min(self.kept_buffered);
        let mut batch = ActivationBatch {
            dim: d,
            data: Vec::with_capacity(want * d),
            stream_rows: Vec::with_capacity(want),
            ..Default::default()
        };
        while batch.stream_rows.len() < want {
            let (start, end) = {
                let c = self.chunks.front().expect("kept rows are buffered");
                let mut i = c.pos;
                while i < c.rows() && batch.stream_rows.len() < want {
                    if c.finite[i] {
                        batch.data.extend_from_slice(&c.data[i * d..(i + 1) * d]);
                        batch.stream_rows.push(c.first_stream_row + i as u64);
                    } else {
                        batch.skipped_nonfinite += 1;
                    }
                    i += 1;
                }
                (c.pos, i)
            };
            self.hash_rows(start, end);
            let c = self.chunks.front_mut().expect("a chunk");
            c.pos = end;
            if c.pos == c.rows() {
                self.chunks.pop_front();
            }
        }
        self.kept_buffered -= want;
        self.skipped += batch.skipped_nonfinite;
        batch.new_tokens = want as u64;
        Some(batch)
    }

    /// At the end of the input: consumes (hashes) the rows left, all skipped non-finite rows.
    pub fn finish_trailing(&mut self) {
        debug_assert_eq!(self.kept_buffered, 0);
        while let Some(c) = self.chunks.front() {
            let (a, b) = (c.pos, c.rows());
            self.skipped += (b - a) as u64;
            self.hash_rows(a, b);
            self.chunks.pop_front();
        }
    }

    /// The input fingerprint so far (lowercase hex).
    pub fn fingerprint(&self) -> String {
        let digest = self.hasher.clone().finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The name of the push holding stream row `row`, and the row's index there.
    pub fn locate(&self, row: u64) -> (String, u64) {
        let i = self.names.partition_point(|(first, _)| *first <= row);
        match i.checked_sub(1).and_then(|i| self.names.get(i)) {
            Some((first, name)) => (name.clone(), row - first),
            None => ("<input>".into(), row),
        }
    }

    /// An error naming a stream row (`<stream>`) renamed to its input and row.
    pub fn locate_error(&self, e: Error) -> Error {
        match e {
            Error::ZeroNorm { row, .. } => {
                let (name, r) = self.locate(row);
                Error::ZeroNorm {
                    path: name.into(),
                    row: r,
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_f32(f: &mut RowFeed, seg: usize, rows: &[[f32; 2]]) {
        let data: Vec<f32> = rows.iter().flatten().copied().collect();
        let raw = bytemuck::cast_slice(&data).to_vec();
        f.push("in", 0, seg, Elem::F32, raw, data).unwrap();
    }

    #[test]
    fn batches_count_kept_rows_and_attach_skipped_rows_to_the_next_kept_row() {
        let nan = f32::NAN;
        let mut f = RowFeed::new(2, true);
        push_f32(&mut f, 0, &[[1., 0.], [nan, 0.], [2., 0.], [3., 0.]]);
        push_f32(&mut f, 0, &[[nan, 1.], [4., 0.], [nan, nan]]);
        assert_eq!(f.buffered(), 4);
        let a = f.take(2).unwrap();
        assert_eq!(a.stream_rows, [0, 2]);
        assert_eq!(a.skipped_nonfinite, 1);
        let b = f.take(5).unwrap();
        assert_eq!(b.stream_rows, [3, 5]);
        assert_eq!(b.skipped_nonfinite, 1);
        assert_eq!(b.data, [3., 0., 4., 0.]);
        assert!(f.take(1).is_none());
        f.finish_trailing();
        assert_eq!(f.skipped(), 3);
    }

    #[test]
    fn a_nonfinite_row_is_an_error_naming_it_and_nothing_is_pushed() {
        let mut f = RowFeed::new(2, false);
        let data = vec![1.0, 2.0, f32::INFINITY, 0.0];
        let raw = bytemuck::cast_slice(&data).to_vec();
        let e = f.push("x", 10, 0, Elem::F32, raw, data).unwrap_err();
        assert_eq!(
            e.to_string(),
            "x: row 11 holds a non-finite value (NaN or Inf)"
        );
        assert_eq!((f.buffered(), f.rows_pushed()), (0, 0));
    }

    #[test]
    fn decodes_f16_and_bf16_exactly() {
        let v = [1.5f32, -2.0, 65504.0, 0.000061035156];
        let f16: Vec<u8> = v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        assert_eq!(decode(Elem::F16, &f16), v);
        let bf: Vec<u8> = [1.5f32, -2.0, 3.0e38]
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        assert_eq!(
            decode(Elem::Bf16, &bf),
            [1.5, -2.0, half::bf16::from_f32(3.0e38).to_f32()]
        );
    }
}
