//! CUDA tensors through DLPack, read in place (feature `cuda`): `Dictionary.assign` on a torch
//! (or any DLPack) CUDA tensor runs the library's prepare kernel on the tensor's own memory
//! ([`CudaDevice::prepare_raw`]) and the exact nearest-exemplar search against exemplars kept on
//! the device; only the ids and distances come back to the host.
//!
//! The view is non-owning: the DLPack capsule (which owns the producer's managed tensor and
//! frees it when collected) is held for as long as the memory is read, it is never consumed, and
//! the deleter is never called here. The capsule is asked for with `stream=1` (the legacy default
//! stream, on which the library's kernels run), so the producer orders its pending work before
//! our launches, as the DLPack protocol specifies.

use crate::builds::backend;
use crate::dictionary::PyDictionary;
use crate::errors::{invalid, to_py, IntoPy};
use crate::rows::shaped;
use cudarc::driver::CudaSlice;
use exemplar::backend::cuda::{pointer_context, CudaDevice};
use exemplar::backend::Backend;
use exemplar::{geometry, Error};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods, PyDict};
use std::ffi::c_void;
use std::sync::Arc;

#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

const DL_CUDA: i32 = 2;
const DL_FLOAT: u8 = 2;
const DL_BFLOAT: u8 = 4;

/// A CUDA tensor's rows, viewed through its DLPack capsule (kept alive here).
pub struct CudaRows {
    _capsule: Py<PyAny>,
    ptr: u64,
    bf16: bool,
    rows: usize,
    dim: usize,
    lead: Vec<usize>,
    device_id: usize,
}

impl CudaRows {
    /// Views `x` (a CUDA tensor on device `id`): f32 or bf16, shape `(..., D)`, row-major
    /// contiguous.
    pub fn from_dlpack(
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        what: &str,
        id: i64,
    ) -> PyResult<Self> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("stream", 1)?;
        let capsule = x.call_method("__dlpack__", (), Some(&kwargs))?;
        let cap = capsule.cast::<PyCapsule>()?;
        let ptr = cap.pointer_checked(Some(c"dltensor"))?;
        // SAFETY: a capsule named "dltensor" holds a DLManagedTensor (the DLPack protocol), owned
        // by the capsule until a consumer renames it; we only read it while holding the capsule.
        let t = unsafe { &(*(ptr.as_ptr() as *const DLManagedTensor)).dl_tensor };
        let bad = |m: String| invalid(py, format!("{what} {m}"));
        if t.device.device_type != DL_CUDA || i64::from(t.device.device_id) != id {
            return Err(bad(
                "changed device between __dlpack_device__ and __dlpack__".into(),
            ));
        }
        let bf16 = match (t.dtype.code, t.dtype.bits, t.dtype.lanes) {
            (DL_FLOAT, 32, 1) => false,
            (DL_BFLOAT, 16, 1) => true,
            (c, b, l) => {
                return Err(bad(format!(
                    "is a CUDA tensor of DLPack dtype (code {c}, {b} bits, {l} lanes); the GPU \
                     reads float32 or bfloat16 in place: convert with x.float()"
                )))
            }
        };
        let ndim = usize::try_from(t.ndim).unwrap_or(0);
        if ndim == 0 {
            return Err(bad("is a scalar; rows of shape (..., D) are needed".into()));
        }
        // SAFETY: `shape` (and `strides`, when not null) hold `ndim` values (DLPack).
        let shape: Vec<i64> = unsafe { std::slice::from_raw_parts(t.shape, ndim) }.to_vec();
        if shape.iter().any(|&s| s < 0) {
            return Err(bad(format!("has shape {shape:?}")));
        }
        let shape: Vec<usize> = shape.iter().map(|&s| s as usize).collect();
        if !t.strides.is_null() {
            let strides = unsafe { std::slice::from_raw_parts(t.strides, ndim) };
            let mut want = 1usize;
            for i in (0..ndim).rev() {
                if shape[i] != 1 && strides[i] as usize != want {
                    return Err(bad(
                        "is not contiguous; pass x.contiguous() (the GPU reads it in place)".into(),
                    ));
                }
                want *= shape[i];
            }
        }
        let (&dim, lead) = shape.split_last().expect("ndim ≥ 1");
        let rows: usize = lead.iter().product();
        Ok(CudaRows {
            ptr: t.data as u64 + t.byte_offset,
            bf16,
            rows,
            dim,
            lead: lead.to_vec(),
            device_id: id as usize,
            _capsule: capsule.unbind(),
        })
    }
}

/// The dictionary on the device: its center and exemplars, uploaded once.
pub struct DeviceDictionary {
    dev: Arc<CudaDevice>,
    center: CudaSlice<f32>,
    exemplars: CudaSlice<f32>,
}

/// `Dictionary.assign` of a CUDA tensor: prepare in place, exact nearest on the device.
pub fn assign<'py>(
    py: Python<'py>,
    d: &PyDictionary,
    x: CudaRows,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let dict = d.inner.clone();
    if x.dim != dict.dim() {
        return Err(to_py(
            py,
            Error::DimensionMismatch {
                what: "x".into(),
                expected: dict.dim(),
                found: x.dim,
            },
        ));
    }
    let Backend::Cuda(dev) = backend(py, "cuda")? else {
        unreachable!("device \"cuda\" is CUDA or an error")
    };
    if dev.context().ordinal() != x.device_id {
        return Err(invalid(
            py,
            format!(
                "x is on cuda:{}, but exemplar uses cuda:{}",
                x.device_id,
                dev.context().ordinal()
            ),
        ));
    }
    let mut ids = vec![-1i64; x.rows];
    let mut dists = vec![f32::INFINITY; x.rows];
    if x.rows > 0 && !dict.is_empty() {
        let on_dev = match d.device.get() {
            Some(v) => v,
            None => {
                let v = DeviceDictionary {
                    center: dev.upload(dict.center()).py_err(py)?,
                    exemplars: dev.upload(dict.exemplars()).py_err(py)?,
                    dev: dev.clone(),
                };
                d.device.get_or_init(|| v)
            }
        };
        let r = py.detach(|| -> exemplar::Result<(Vec<i32>, Vec<f64>)> {
            let ctx = pointer_context(x.ptr)?;
            if ctx != on_dev.dev.context().cu_ctx() {
                return Err(Error::param(
                    "x",
                    "lives in another CUDA context than exemplar's device (torch and exemplar \
                     must share the primary context)",
                ));
            }
            // SAFETY: `x` views a live DLPack tensor (its capsule is held by `x` until this
            // returns) of rows·dim row-major contiguous elements of the checked dtype, at `ptr`,
            // in this device's context (checked above); the producer ordered its writes before
            // the legacy default stream (`stream=1`), on which the kernel runs.
            let u = unsafe {
                on_dev
                    .dev
                    .prepare_raw(x.ptr, x.bf16, x.rows, x.dim, &on_dev.center)
            }
            .map_err(|e| match e {
                Error::InvalidParameter {
                    name: "activations",
                    message,
                } => zero_norm_row(&message).map_or(
                    Error::InvalidParameter {
                        name: "activations",
                        message: message.clone(),
                    },
                    |row| Error::ZeroNorm {
                        path: "x".into(),
                        row,
                    },
                ),
                e => e,
            })?;
            on_dev.dev.nearest(
                &u,
                x.rows,
                &on_dev.exemplars.as_view(),
                dict.len(),
                dict.dim(),
            )
        });
        let (i, sims) = r.py_err(py)?;
        for (j, (&k, &s)) in i.iter().zip(&sims).enumerate() {
            ids[j] = k as i64;
            dists[j] = geometry::distance_from_similarity(s) as f32;
        }
    }
    Ok((
        shaped(py, ids, &x.lead, &[])?,
        shaped(py, dists, &x.lead, &[])?,
    ))
}

/// The row of the prepare kernel's zero-norm message (`row R has zero norm after centering`).
fn zero_norm_row(message: &str) -> Option<u64> {
    message
        .strip_prefix("row ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
