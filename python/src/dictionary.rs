//! `Dictionary`: a loaded or built EP dictionary, and what users do with it (the CLI's
//! `assign` and `encode`, distances, the OOD flag), on the library's own functions.

use crate::builds::backend;
use crate::errors::{invalid, to_py, IntoPy};
use crate::rows::{extract, finite_rows, shaped, HostRows, Input};
use exemplar::dictionary::{Basis, Readout};
use exemplar::{geometry, Dictionary, Error};
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::Arc;

/// Rows per batch of `assign` (the CLI's `--batch-size` default).
const ASSIGN_BATCH: usize = 16_384;
/// Rows per batch of `encode` and `distances` (as `exemplar encode` reads its input).
const ENCODE_BATCH: usize = 4096;

/// An EP dictionary (see docs/python.md).
#[pyclass(name = "Dictionary", module = "exemplar", frozen)]
pub struct PyDictionary {
    pub inner: Arc<Dictionary>,
    /// The exemplars and center on the CUDA device, uploaded at the first CUDA-tensor assign.
    #[cfg(feature = "cuda")]
    pub device: std::sync::OnceLock<crate::cuda::DeviceDictionary>,
}

impl PyDictionary {
    pub fn new(d: Dictionary) -> Self {
        PyDictionary {
            inner: Arc::new(d),
            #[cfg(feature = "cuda")]
            device: std::sync::OnceLock::new(),
        }
    }
}

/// The rows of a host input in batches of `batch` kept rows, in order: `f(rows, indices)` gets
/// the f32 rows and their row indices in `x`. A non-finite row is an error naming it (`what`,
/// row) unless `skip_nonfinite`, when it is left out (the caller fills its outputs). The GIL is
/// held only while rows are copied out of `x`; `f` runs without it.
fn for_batches<T: Send>(
    py: Python<'_>,
    x: &HostRows,
    what: &str,
    batch: usize,
    skip_nonfinite: bool,
    mut f: impl FnMut(&[f32], &[usize]) -> exemplar::Result<T> + Send,
    mut put: impl FnMut(T, &[usize]),
) -> PyResult<()> {
    let d = x.dim;
    let mut pending: Vec<f32> = Vec::new();
    let mut idx: Vec<usize> = Vec::new();
    let mut next = 0usize;
    loop {
        // Fill up to one batch of kept rows.
        while idx.len() < batch && next < x.rows {
            let n = (x.rows - next).min(batch - idx.len());
            let (data, _) = x.read(py, next, n, false)?;
            for (i, ok) in finite_rows(&data, d).into_iter().enumerate() {
                if !ok {
                    if skip_nonfinite {
                        continue;
                    }
                    return Err(to_py(
                        py,
                        Error::NonFinite {
                            path: what.into(),
                            row: (next + i) as u64,
                        },
                    ));
                }
                pending.extend_from_slice(&data[i * d..(i + 1) * d]);
                idx.push(next + i);
            }
            next += n;
        }
        if idx.is_empty() {
            return Ok(());
        }
        let out = py.detach(|| f(&pending, &idx)).py_err(py)?;
        put(out, &idx);
        py.check_signals()?;
        pending.clear();
        idx.clear();
    }
}

/// A row equal to the center, named by its row in `x`.
fn zero_norm(what: &str, idx: &[usize], z: geometry::ZeroNormRow) -> Error {
    Error::ZeroNorm {
        path: what.into(),
        row: idx[z.index] as u64,
    }
}

fn readout(py: Python<'_>, name: &str, k: usize) -> PyResult<Readout> {
    Ok(match name {
        "one-hot" => Readout::OneHot,
        "topk" => Readout::TopK(k),
        "topk-cosine" => Readout::TopKCosine(k),
        "signed" => Readout::Signed,
        "cosine" => Readout::Cosine,
        other => {
            return Err(invalid(
                py,
                format!(
                    "invalid readout: `{other}` is not one-hot, topk, topk-cosine, signed or \
                     cosine"
                ),
            ))
        }
    })
}

#[pymethods]
impl PyDictionary {
    /// Loads a dictionary file (`exemplar build`'s output).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let d = py.detach(|| Dictionary::load(&path)).py_err(py)?;
        Ok(PyDictionary::new(d))
    }

    /// Writes the dictionary file (atomically; an existing file only with `force=True`).
    #[pyo3(signature = (path, *, force = false))]
    fn save(&self, py: Python<'_>, path: PathBuf, force: bool) -> PyResult<()> {
        py.detach(|| self.inner.save(&path, force)).py_err(py)
    }

    /// Nearest exemplar of every row of `x` (shape `(..., D)`) and its cosine distance:
    /// `(ids int64 (...), distances float32 (...))`, exactly as `exemplar assign`. With
    /// `skip_nonfinite`, rows holding NaN/Inf get id −1 and distance NaN (else they are an
    /// error). `device`: "cpu", "cuda" or "auto" for host input; a CUDA tensor is read in place
    /// on its device.
    #[pyo3(signature = (x, *, device = "cpu", skip_nonfinite = false))]
    fn assign<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        device: &str,
        skip_nonfinite: bool,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let x = match extract(py, x, "x")? {
            Input::Host(h) => h,
            #[cfg(feature = "cuda")]
            Input::Cuda(c) => return crate::cuda::assign(py, self, c),
        };
        self.check_dim(py, &x)?;
        let dict = self.inner.clone();
        let mut ids = vec![-1i64; x.rows];
        let mut dists = vec![f32::NAN; x.rows];
        if dict.is_empty() {
            // No exemplar: every row is id −1 at distance +inf (as `exemplar assign`).
            dists.iter_mut().for_each(|v| *v = f32::INFINITY);
        } else {
            let dev = backend(py, device)?;
            let cands = dev.candidates(dict.exemplars(), dict.dim()).py_err(py)?;
            for_batches(
                py,
                &x,
                "x",
                ASSIGN_BATCH,
                skip_nonfinite,
                |rows, idx| {
                    let u = geometry::directions(rows, dict.center())
                        .map_err(|z| zero_norm("x", idx, z))?;
                    dev.nearest_among(&u, &cands)
                },
                |(i, sims), idx| {
                    for (j, &r) in idx.iter().enumerate() {
                        ids[r] = i[j] as i64;
                        dists[r] = geometry::distance_from_similarity(sims[j]) as f32;
                    }
                },
            )?;
        }
        Ok((x.shaped(py, ids, &[])?, x.shaped(py, dists, &[])?))
    }

    /// Cosine distances of every row of `x` to every exemplar, float32 `(..., K)`, clamped to
    /// [0, 2] (one f32 GEMM; `assign` is the exact decision). Rows skipped with
    /// `skip_nonfinite` are NaN.
    #[pyo3(signature = (x, *, skip_nonfinite = false))]
    fn distances<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        skip_nonfinite: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let x = self.host(py, x, "distances")?;
        let dict = self.inner.clone();
        let k = dict.len();
        let mut out = vec![f32::NAN; x.rows * k];
        for_batches(
            py,
            &x,
            "x",
            ENCODE_BATCH,
            skip_nonfinite,
            |rows, idx| {
                dict.distances(rows)
                    .map_err(|e| relocate(e, rows, dict.center(), idx))
            },
            |v, idx| {
                for (j, &r) in idx.iter().enumerate() {
                    out[r * k..(r + 1) * k].copy_from_slice(&v[j * k..(j + 1) * k]);
                }
            },
        )?;
        x.shaped(py, out, &[k])
    }

    /// Within-θ flags (`distance ≤ θ`, the OOD signal) of distances from `assign`: bool, same
    /// shape.
    fn within_threshold<'py>(
        &self,
        py: Python<'py>,
        distances: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let np = py.import("numpy")?;
        let arr = np.call_method1("asarray", (distances,))?;
        let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
        if kind != "f" {
            return Err(invalid(
                py,
                "within_threshold takes distances (a float array, as assign returns them)",
            ));
        }
        let f32s = np
            .getattr("ascontiguousarray")?
            .call1((arr, np.getattr("float32")?))?;
        let typed = f32s.cast::<numpy::PyArrayDyn<f32>>()?;
        let shape = typed.shape().to_vec();
        let ro = typed.try_readonly()?;
        let flags = self
            .inner
            .within_threshold(ro.as_slice().map_err(|e| invalid(py, e.to_string()))?);
        shaped(py, flags, &shape, &[])
    }

    /// Codes of `x` (shape `(..., D)`): float32 `(..., K)`, as `exemplar encode`. `readout`:
    /// one-hot (default), topk, topk-cosine, signed or cosine; `k` for the top-k readouts;
    /// `basis`: exemplar or mean. Rows skipped with `skip_nonfinite` are all zeros.
    #[pyo3(signature = (x, *, readout = "one-hot", k = 1, basis = "exemplar", skip_nonfinite = false))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        readout: &str,
        k: usize,
        basis: &str,
        skip_nonfinite: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let readout = self::readout(py, readout, k)?;
        let basis = match basis {
            "exemplar" => Basis::Exemplar,
            "mean" => Basis::Mean,
            other => {
                return Err(invalid(
                    py,
                    format!("invalid basis: `{other}` is not exemplar or mean"),
                ))
            }
        };
        let x = self.host(py, x, "encode")?;
        let dict = self.inner.clone();
        let kk = dict.len();
        let mut out = vec![0.0f32; x.rows * kk];
        for_batches(
            py,
            &x,
            "x",
            ENCODE_BATCH,
            skip_nonfinite,
            |rows, idx| {
                dict.encode(rows, basis, readout)
                    .map_err(|e| relocate(e, rows, dict.center(), idx))
            },
            |v, idx| {
                for (j, &r) in idx.iter().enumerate() {
                    out[r * kk..(r + 1) * kk].copy_from_slice(&v[j * kk..(j + 1) * kk]);
                }
            },
        )?;
        x.shaped(py, out, &[kk])
    }

    /// The closest (or farthest) examples kept for partition `k`: a list of dicts with
    /// `distance`, `row` (stream row), `doc_id`, `position` and `context` (the token in
    /// `[[…]]` with `window` tokens either side, when the build had provenance).
    #[pyo3(signature = (k, *, which = "closest", window = 8))]
    fn examples<'py>(
        &self,
        py: Python<'py>,
        k: usize,
        which: &str,
        window: usize,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let d = &self.inner;
        if k >= d.len() {
            return Err(invalid(
                py,
                format!("partition {k} does not exist (K = {})", d.len()),
            ));
        }
        let exs = match which {
            "closest" => d.closest_examples(k),
            "farthest" => d.farthest_examples(k),
            other => {
                return Err(invalid(
                    py,
                    format!("invalid which: `{other}` is not closest or farthest"),
                ))
            }
        };
        exs.iter()
            .map(|e| {
                let m = PyDict::new(py);
                m.set_item("distance", e.distance)?;
                m.set_item("row", e.stream_row)?;
                m.set_item("doc_id", e.token.map(|t| t.doc_id))?;
                m.set_item("position", e.token.map(|t| t.position))?;
                m.set_item("context", d.example_context(e, window))?;
                Ok(m)
            })
            .collect()
    }

    /// Width D.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    /// θ, the cosine-distance threshold.
    #[getter]
    fn theta(&self) -> f64 {
        self.inner.theta()
    }
    /// The center c, float32 (D,).
    #[getter]
    fn center<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        PyArray1::from_slice(py, self.inner.center())
    }
    /// The unit exemplars e_k, float32 (K, D).
    #[getter]
    fn exemplars<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let d = &self.inner;
        PyArray1::from_slice(py, d.exemplars()).reshape([d.len(), d.dim()])
    }
    /// Unit vectors along Σ member directions, float32 (K, D).
    #[getter]
    fn mean_directions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let d = &self.inner;
        PyArray1::from_vec(py, d.mean_directions()).reshape([d.len(), d.dim()])
    }
    /// Members per partition at build time (exemplar included), int64 (K,).
    #[getter]
    fn member_counts<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        let c: Vec<i64> = self
            .inner
            .member_counts()
            .iter()
            .map(|&c| c as i64)
            .collect();
        PyArray1::from_vec(py, c)
    }
    /// ‖Σ member directions‖ / count per partition, float64 (K,).
    #[getter]
    fn coherence<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        let d = &self.inner;
        PyArray1::from_vec(py, (0..d.len()).map(|k| d.coherence(k)).collect())
    }
    /// The file's `exemplar` metadata object (θ, D, K and the build record; docs/format.md).
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let d = &self.inner;
        let mut v = serde_json::json!({
            "theta": d.theta(),
            "dim": d.dim(),
            "partitions": d.len(),
        });
        let info = serde_json::to_value(d.info()).map_err(|e| invalid(py, e.to_string()))?;
        if let (Some(m), serde_json::Value::Object(i)) = (v.as_object_mut(), info) {
            m.extend(i);
        }
        py.import("json")?.call_method1("loads", (v.to_string(),))
    }
    fn __len__(&self) -> usize {
        self.inner.len()
    }
    fn __repr__(&self) -> String {
        format!("{} D={}", self.inner, self.inner.dim())
    }
}

impl PyDictionary {
    fn check_dim(&self, py: Python<'_>, x: &HostRows) -> PyResult<()> {
        if x.dim != self.inner.dim() {
            return Err(to_py(
                py,
                Error::DimensionMismatch {
                    what: "x".into(),
                    expected: self.inner.dim(),
                    found: x.dim,
                },
            ));
        }
        Ok(())
    }

    /// Host rows of `x` for `op` (CUDA tensors are read in place by `assign` only).
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn host(&self, py: Python<'_>, x: &Bound<'_, PyAny>, op: &str) -> PyResult<HostRows> {
        match extract(py, x, "x")? {
            Input::Host(h) => {
                self.check_dim(py, &h)?;
                Ok(h)
            }
            #[cfg(feature = "cuda")]
            Input::Cuda(_) => Err(invalid(
                py,
                format!(
                    "{op}: x is a CUDA tensor; only assign reads CUDA tensors in place: pass \
                     x.cpu()"
                ),
            )),
        }
    }
}

/// A zero-norm row reported by the library as an invalid parameter (its index in the batch),
/// renamed to its row in `x`.
fn relocate(e: Error, rows: &[f32], center: &[f32], idx: &[usize]) -> Error {
    match e {
        Error::InvalidParameter {
            name: "activations",
            ..
        } => match geometry::directions(rows, center) {
            Err(z) => zero_norm("x", idx, z),
            Ok(_) => e,
        },
        e => e,
    }
}
