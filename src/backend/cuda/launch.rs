//! What every launcher shares: the checks made before a launch (lengths, shapes, 32-bit index
//! widths), grid shapes, and the typed errors of failed CUDA calls.

use crate::error::{CudaError, Error, Result};
use cudarc::driver::{DriverError, LaunchConfig};

/// Warps per block of the warp-per-row kernels.
pub(super) const WARPS_PER_BLOCK: u32 = 8;

/// The largest grid height; kernels with a row per grid.y stride over it.
pub(super) const MAX_GRID_Y: usize = 65_535;

/// One warp per item, [`WARPS_PER_BLOCK`] warps per block.
pub(super) fn warp_grid(items: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((items as u32).div_ceil(WARPS_PER_BLOCK), 1, 1),
        block_dim: (32 * WARPS_PER_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid of `grid` blocks of 256 threads.
pub(super) fn blocks_256(grid: (u32, u32, u32)) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The error of arguments that do not fit kernel `op`.
pub(super) fn shape(
    op: &'static str,
    what: impl Into<String>,
    expected: impl std::fmt::Display,
    found: impl std::fmt::Display,
) -> Error {
    CudaError::Shape {
        op,
        what: what.into(),
        expected: expected.to_string(),
        found: found.to_string(),
    }
    .into()
}

/// `what` must hold exactly `expected` values.
pub(super) fn check_len(op: &'static str, what: &str, len: usize, expected: usize) -> Result<()> {
    if len != expected {
        return Err(shape(
            op,
            what,
            format!("{expected} values"),
            format!("{len} values"),
        ));
    }
    Ok(())
}

/// `v` as the kernels' 32-bit index type.
pub(super) fn check_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| shape(op, what, format!("at most {}", i32::MAX), v))
}

/// At least one row (or candidate): a zero-block grid is an invalid launch, and an empty output
/// cannot be allocated.
pub(super) fn check_nonempty(op: &'static str, what: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(shape(op, what, "at least 1", 0));
    }
    Ok(())
}

/// `len` values are whole rows of width `d` (`d ≥ 1`); returns the row count.
pub(super) fn check_rows(op: &'static str, what: &str, len: usize, d: usize) -> Result<usize> {
    if d == 0 || len % d != 0 {
        return Err(shape(
            op,
            what,
            format!("whole rows of width {d}"),
            format!("{len} values"),
        ));
    }
    Ok(len / d)
}

/// Maps a failed driver call (allocation, copy, query) to its typed error.
pub(super) fn driver(op: &'static str) -> impl FnOnce(DriverError) -> Error {
    move |source| CudaError::Driver { op, source }.into()
}

/// Maps a failed launch of `kernel` to its typed error.
pub(super) fn launch(kernel: &'static str) -> impl FnOnce(DriverError) -> Error {
    move |source| CudaError::Launch { kernel, source }.into()
}
