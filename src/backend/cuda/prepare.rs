//! Launchers of `kernels/prepare.cu`: raw activations (f32, or bf16 bits) to centered unit
//! directions, optionally through a row gather (BOS and padding dropped). The CPU twin is
//! `geometry::directions`, bit for bit.

use super::launch::{check_i32, check_len, check_nonempty, check_rows, launch, warp_grid};
use super::CudaDevice;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

/// The element types the prepare kernels read: f32, and bf16 as its raw bits (`u16`).
pub(crate) trait PrepElem: DeviceRepr {
    /// The kernel that reads this type.
    const KERNEL: &'static str;
}

impl PrepElem for f32 {
    const KERNEL: &'static str = "prepare_f32";
}

impl PrepElem for u16 {
    const KERNEL: &'static str = "prepare_bf16";
}

/// The activations a prepare launch reads: a cudarc buffer, or `len` elements at a device
/// address owned by someone else (a torch or DLPack tensor: `prepare_torch`, `prepare_raw`).
pub(crate) enum PrepInput<'a, T> {
    Slice(&'a CudaSlice<T>),
    Raw { ptr: u64, len: usize },
}

impl CudaDevice {
    /// Centered unit directions of `n` rows of `x` (f32, row stride `d`), optionally gathered
    /// through `rows` (output row `r` is input row `rows[r]`; an index outside `x` is an error,
    /// detected on the device before the row is read). A row equal to the center is an error
    /// naming its output row index.
    pub fn prepare_f32(
        &self,
        x: &CudaSlice<f32>,
        n: usize,
        d: usize,
        center: &CudaSlice<f32>,
        rows: Option<&CudaSlice<i64>>,
    ) -> Result<CudaSlice<f32>> {
        // SAFETY: a cudarc buffer carries its own extent; there is no raw address to vouch for.
        unsafe { self.prepare(PrepInput::Slice(x), n, d, center, rows) }
    }

    /// [`CudaDevice::prepare_f32`] for bf16 input given as its raw bits (`u16`), e.g. a torch
    /// bf16 residual stream; bf16 → f32 is exact, so the result equals the CPU's on the
    /// up-cast rows.
    pub fn prepare_bf16(
        &self,
        x: &CudaSlice<u16>,
        n: usize,
        d: usize,
        center: &CudaSlice<f32>,
        rows: Option<&CudaSlice<i64>>,
    ) -> Result<CudaSlice<f32>> {
        // SAFETY: as in prepare_f32, a buffer with its own extent.
        unsafe { self.prepare(PrepInput::Slice(x), n, d, center, rows) }
    }

    /// Centered unit directions of `n` rows of width `d` read in place at the device address
    /// `ptr`, memory this crate does not own (a DLPack or torch tensor): f32 values, or bf16
    /// given as raw bits when `bf16`. The same result as [`CudaDevice::prepare_f32`] /
    /// [`CudaDevice::prepare_bf16`] on a copy. The Python package reads CUDA tensors through
    /// DLPack with it; [`CudaDevice::prepare_torch`](super::torch) is the checked tch twin.
    ///
    /// # Safety
    ///
    /// `ptr` must be the device address of `n·d` initialised, row-major elements (f32, or bf16
    /// when `bf16`) in this device's context (check it with [`super::pointer_context`]), and
    /// that memory must stay allocated and unwritten (by any stream) until this call returns;
    /// it returns only after the kernel has finished. Kernels run on the legacy default stream:
    /// work that wrote the memory on another stream must be synchronised with it first.
    pub unsafe fn prepare_raw(
        &self,
        ptr: u64,
        bf16: bool,
        n: usize,
        d: usize,
        center: &CudaSlice<f32>,
    ) -> Result<CudaSlice<f32>> {
        let len = n.checked_mul(d).ok_or_else(|| {
            Error::param(
                "rows",
                format!("{n} rows of width {d} overflow the address space"),
            )
        })?;
        // SAFETY: the caller vouches for `len = n·d` elements of the named type at `ptr`, in
        // this context, allocated and unwritten until this call returns (the contract above).
        unsafe {
            if bf16 {
                self.prepare::<u16>(PrepInput::Raw { ptr, len }, n, d, center, None)
            } else {
                self.prepare::<f32>(PrepInput::Raw { ptr, len }, n, d, center, None)
            }
        }
    }

    /// The launcher behind [`CudaDevice::prepare_f32`], [`CudaDevice::prepare_bf16`] and
    /// [`CudaDevice::prepare_torch`](super::torch): checks every length and shape, launches the
    /// kernel of `T`, and reports a gather index outside `x` or a zero-norm row as an error.
    ///
    /// # Safety
    ///
    /// For `PrepInput::Raw { ptr, len }`, `ptr` must be the device address of `len` initialised
    /// elements of `T` in this device's context, and that memory must stay allocated and
    /// unwritten (by any stream) until this call returns; the call returns only after the
    /// kernel has finished (it downloads the kernel's flags). `PrepInput::Slice` asks nothing.
    pub(crate) unsafe fn prepare<T: PrepElem>(
        &self,
        x: PrepInput<'_, T>,
        n: usize,
        d: usize,
        center: &CudaSlice<f32>,
        rows: Option<&CudaSlice<i64>>,
    ) -> Result<CudaSlice<f32>> {
        const OP: &str = "prepare";
        let x_len = match &x {
            PrepInput::Slice(s) => s.len(),
            PrepInput::Raw { len, .. } => *len,
        };
        check_nonempty(OP, "width d", d)?;
        check_nonempty(OP, "rows", n)?;
        check_len(OP, "center", center.len(), d)?;
        let x_rows = match rows {
            Some(r) => {
                check_len(OP, "gather list", r.len(), n)?;
                check_rows(OP, "x", x_len, d)?
            }
            None => {
                check_len(OP, "x", x_len, n * d)?;
                n
            }
        };
        let (ni, di) = (check_i32(OP, "rows", n)?, check_i32(OP, "d", d)?);
        let mut out = self.zeros::<f32>(n * d)?;
        let mut zero = self.upload(&[i32::MAX])?;
        let mut bad = self.upload(&[i32::MAX])?;
        let stride = d as i64;
        let x_rows = x_rows as i64;
        let null = 0u64;
        let raw = match x {
            PrepInput::Raw { ptr, .. } => ptr,
            PrepInput::Slice(_) => 0,
        };
        let mut b = self.stream.launch_builder(self.f(T::KERNEL));
        match x {
            PrepInput::Slice(x) => b.arg(x),
            PrepInput::Raw { .. } => b.arg(&raw),
        };
        b.arg(&stride).arg(&x_rows);
        match rows {
            Some(r) => b.arg(r),
            None => b.arg(&null),
        };
        b.arg(&ni)
            .arg(&di)
            .arg(center)
            .arg(&mut out)
            .arg(&mut zero)
            .arg(&mut bad);
        // SAFETY: x (a buffer, or raw memory this function's contract vouches for) holds x_rows
        // whole rows of d values of T, the kernel's element type (T::KERNEL), and the kernel
        // reads only rows it has checked to lie in 0..x_rows (a gather index outside is
        // flagged in `bad`, not read); center holds d f32, out holds n·d, zero and bad hold 1.
        unsafe { b.launch(warp_grid(n)) }.map_err(launch(T::KERNEL))?;
        // These downloads wait for the kernel: raw memory is no longer read after them.
        let bad = self.download(&bad)?[0];
        if bad != i32::MAX {
            return Err(Error::param(
                "rows",
                format!("gather index of output row {bad} is outside the {x_rows} input rows"),
            ));
        }
        let z = self.download(&zero)?[0];
        if z != i32::MAX {
            return Err(Error::param(
                "activations",
                format!("row {z} has zero norm after centering"),
            ));
        }
        Ok(out)
    }
}
