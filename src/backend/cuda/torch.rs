//! Zero-copy input from torch (features `cuda` + `torch`): a non-owning view of a CUDA
//! `tch::Tensor` that the prepare kernel reads in place (architecture.md §5: the residual
//! stream goes from the model's forward pass to the EP kernels without a copy).
//!
//! Safety rests on three checks and one convention:
//! * the tensor is on this device, f32 or bf16, 2-D and contiguous, and its storage lies in
//!   this device's context (torch uses the primary context, as does [`CudaDevice`]);
//! * the view borrows the tensor, so the memory outlives every launch that reads it;
//! * the memory is never turned into a cudarc buffer (`upgrade_device_ptr` would free torch's
//!   memory on drop), only passed to kernels as an address;
//! * launches go to the legacy default stream, which torch's default stream is, so they are
//!   ordered after the forward pass that wrote the tensor (no event needed). Work that torch
//!   queued on a side stream must be synchronised by the caller.

use super::prepare::PrepInput;
use super::CudaDevice;
use crate::error::{Error, Result};
use cudarc::driver::CudaSlice;
use tch::{Device, Kind, Tensor};

/// Element type of a torch view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchDtype {
    F32,
    Bf16,
}

/// A borrowed `rows × dim` CUDA tensor, checked for use by this crate's kernels.
pub struct TorchRows<'a> {
    _tensor: &'a Tensor,
    ptr: u64,
    rows: usize,
    dim: usize,
    dtype: TorchDtype,
}

impl<'a> TorchRows<'a> {
    /// Checks `t` and views it: device `dev`, f32 or bf16, 2-D, contiguous, on `dev`'s context.
    pub fn new(dev: &CudaDevice, t: &'a Tensor) -> Result<Self> {
        let bad = |m: String| Error::param("tensor", m);
        let ordinal = dev.context().ordinal();
        if t.device() != Device::Cuda(ordinal) {
            return Err(bad(format!(
                "is on {:?}, not CUDA device {ordinal}",
                t.device()
            )));
        }
        let dtype = match t.kind() {
            Kind::Float => TorchDtype::F32,
            Kind::BFloat16 => TorchDtype::Bf16,
            k => return Err(bad(format!("has dtype {k:?}; f32 or bf16 is needed"))),
        };
        let size = t.size();
        if size.len() != 2 || size.iter().any(|&s| s < 0) {
            return Err(bad(format!("has shape {size:?}; rows × dim is needed")));
        }
        let (rows, dim) = (size[0] as usize, size[1] as usize);
        if !t.is_contiguous() {
            return Err(bad("is not contiguous".into()));
        }
        if t.numel() != rows * dim || rows == 0 || dim == 0 {
            return Err(bad(format!(
                "holds {} elements for shape {size:?}",
                t.numel()
            )));
        }
        let ptr = t.data_ptr() as u64;
        if ptr == 0 {
            return Err(bad("has no storage".into()));
        }
        let ctx = pointer_context(ptr)?;
        if ctx != dev.context().cu_ctx() {
            return Err(bad(
                "lives in another CUDA context than the exemplar device (torch and exemplar must share the primary context)".into(),
            ));
        }
        Ok(TorchRows {
            _tensor: t,
            ptr,
            rows,
            dim,
            dtype,
        })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Element type.
    pub fn dtype(&self) -> TorchDtype {
        self.dtype
    }

    /// The device address (for diagnostics).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

pub use super::pointer_context;

impl CudaDevice {
    /// Centered unit directions of a torch tensor's rows, read in place (no copy): the same
    /// result as [`CudaDevice::prepare_f32`] / [`CudaDevice::prepare_bf16`] on a copy of it.
    /// `rows` optionally gathers (e.g. drops BOS and padding positions); without it every row
    /// is prepared.
    pub fn prepare_torch(
        &self,
        x: &TorchRows<'_>,
        center: &CudaSlice<f32>,
        rows: Option<&CudaSlice<i64>>,
    ) -> Result<CudaSlice<f32>> {
        let n = rows.map_or(x.rows, |r| r.len());
        let (ptr, len) = (x.ptr, x.rows * x.dim);
        // SAFETY: TorchRows::new checked that the tensor is on this device, in this device's
        // context, contiguous, of the element type named by x.dtype, with rows·dim = len
        // elements at ptr; `x` borrows the tensor, so the memory stays allocated through this
        // call. Launches use the legacy default stream, so they run after torch's writes on its
        // default stream (side streams are the caller's to synchronise, as documented).
        let out = unsafe {
            match x.dtype {
                TorchDtype::F32 => {
                    self.prepare::<f32>(PrepInput::Raw { ptr, len }, n, x.dim, center, rows)
                }
                TorchDtype::Bf16 => {
                    self.prepare::<u16>(PrepInput::Raw { ptr, len }, n, x.dim, center, rows)
                }
            }
        }?;
        self.count_read_in_place(n);
        Ok(out)
    }
}
