//! Launchers of `kernels/prepare.cu`: raw activations (f32, or bf16 bits) to centered unit
//! directions, optionally through a row gather (BOS and padding dropped). The CPU twin is
//! `geometry::directions`, bit for bit.

use super::launch::{check_i32, check_len, cuda_err, warp_grid};
use super::CudaDevice;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, PushKernelArg};

/// The activations a prepare launch reads: a cudarc buffer, or the address of memory owned by
/// someone else (a torch tensor, see `backend::cuda::torch`) that the caller has checked holds
/// `x_len` elements of the kernel's type on this device's context.
pub(crate) enum PrepInput<'a, T> {
    Slice(&'a CudaSlice<T>),
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    Raw(u64),
}

impl CudaDevice {
    /// Centered unit directions of `n` rows of `x` (f32, row stride `d`), optionally gathered
    /// through `rows` (each index must lie in `x`; the caller guarantees it, e.g. from a mask).
    /// A row equal to the center is an error naming its output row index.
    pub fn prepare_f32(
        &self,
        x: &CudaSlice<f32>,
        n: usize,
        d: usize,
        center: &CudaSlice<f32>,
        rows: Option<&CudaSlice<i64>>,
    ) -> Result<CudaSlice<f32>> {
        self.prepare(
            "prepare_f32",
            PrepInput::Slice(x),
            x.len(),
            n,
            d,
            center,
            rows,
        )
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
        self.prepare(
            "prepare_bf16",
            PrepInput::Slice(x),
            x.len(),
            n,
            d,
            center,
            rows,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare<T>(
        &self,
        kernel: &str,
        x: PrepInput<'_, T>,
        x_len: usize,
        n: usize,
        d: usize,
        center: &CudaSlice<f32>,
        rows: Option<&CudaSlice<i64>>,
    ) -> Result<CudaSlice<f32>> {
        check_len("center", center.len(), d)?;
        match rows {
            Some(r) => {
                check_len("rows", r.len(), n)?;
                if x_len % d != 0 {
                    return Err(Error::param(
                        "cuda launch",
                        format!("x holds {x_len} values, not a multiple of d = {d}"),
                    ));
                }
            }
            None => check_len("x", x_len, n * d)?,
        }
        let (ni, di) = (check_i32("rows", n)?, check_i32("d", d)?);
        if n == 0 {
            // A zero-block grid is an invalid launch, and an empty output cannot be allocated.
            return Err(Error::param(
                "cuda launch",
                "prepare needs at least one row",
            ));
        }
        let mut out = self
            .stream
            .alloc_zeros::<f32>(n * d)
            .map_err(|e| cuda_err("alloc", e))?;
        let mut zero = self.upload(&[i32::MAX])?;
        let mut bad = self.upload(&[i32::MAX])?;
        let stride = d as i64;
        let x_rows = (x_len / d) as i64;
        let null = 0u64;
        let raw = match x {
            PrepInput::Raw(p) => p,
            PrepInput::Slice(_) => 0,
        };
        let mut b = self.stream.launch_builder(self.f(kernel));
        match x {
            PrepInput::Slice(x) => b.arg(x),
            PrepInput::Raw(_) => b.arg(&raw),
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
        // SAFETY: x (a buffer, or raw memory whose extent and context the caller checked) holds
        // x_rows whole rows of d values of the kernel's element type, and the
        // kernel reads only rows it has checked to lie in 0..x_rows (a gather index outside is
        // flagged in `bad`, not read); center holds d f32, out holds n·d, zero and bad hold 1.
        unsafe { b.launch(warp_grid(n)) }.map_err(|e| cuda_err(kernel, e))?;
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
