//! What every launcher shares: length and index-width checks made before a launch, grid shapes,
//! and the error of a failed CUDA call.

use crate::error::{Error, Result};
use cudarc::driver::LaunchConfig;

pub(super) fn cuda_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("{what}: {e}"))
}

pub(super) const WARPS_PER_BLOCK: u32 = 8;

/// The largest grid height; kernels with a row per grid.y stride over it.
pub(super) const MAX_GRID_Y: usize = 65_535;

pub(super) fn warp_grid(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(WARPS_PER_BLOCK), 1, 1),
        block_dim: (32 * WARPS_PER_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn check_len(what: &str, len: usize, expected: usize) -> Result<()> {
    if len != expected {
        return Err(Error::param(
            "cuda launch",
            format!("{what} holds {len} values, expected {expected}"),
        ));
    }
    Ok(())
}

pub(super) fn check_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::param(
            "cuda launch",
            format!("{what} = {v} exceeds the kernels' 32-bit indices"),
        )
    })
}
