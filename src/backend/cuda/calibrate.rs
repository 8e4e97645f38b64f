//! Launchers of `kernels/calibrate.cu`: the exact pairwise-distance percentile (histogram pass,
//! window pass, f64 window), the twin of `calibrate::pairwise_distance_percentile`.

use super::launch::{check_i32, check_len, cuda_err, warp_grid};
use super::CudaDevice;
use crate::calibrate::PercentileMethod;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

impl CudaDevice {
    /// The exact pairwise-distance percentile of the unit rows `u` (`n × d`, n ≥ 2); the same
    /// value as [`crate::calibrate::pairwise_distance_percentile`].
    pub fn pairwise_percentile(
        &self,
        u: &CudaSlice<f32>,
        n: usize,
        d: usize,
        percentile: f64,
        method: PercentileMethod,
    ) -> Result<f64> {
        crate::calibrate::check_percentile(percentile)?;
        check_len("rows", u.len(), n * d)?;
        if n < 2 {
            return Err(Error::EmptyInput(
                "a percentile of pairs needs at least 2 rows".into(),
            ));
        }
        let (ni, di) = (check_i32("rows", n)?, check_i32("d", d)?);
        let pairs = n * (n - 1) / 2;
        let ranks = crate::calibrate::needed_ranks(pairs, percentile / 100.0, method);
        let bins = 1usize << 16;
        let s = &self.stream;
        let tiles = (n as u32).div_ceil(64);
        let cfg = LaunchConfig {
            grid_dim: (tiles, tiles, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut hist = s
            .alloc_zeros::<u64>(bins)
            .map_err(|e| cuda_err("alloc", e))?;
        let bi = bins as i32;
        let mut b = s.launch_builder(self.f("pairs_histogram"));
        b.arg(u).arg(&ni).arg(&di).arg(&bi).arg(&mut hist);
        // SAFETY: u holds n·d; hist holds `bins` counters.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("pairs_histogram", e))?;
        let hist = self.download(&hist)?;
        let (lo, hi) = crate::calibrate::window_bounds(&hist, &ranks, d);
        let mut capacity: usize = 1 << 20;
        loop {
            let mut below = s.alloc_zeros::<u64>(1).map_err(|e| cuda_err("alloc", e))?;
            let mut window = s
                .alloc_zeros::<i32>(2 * capacity)
                .map_err(|e| cuda_err("alloc", e))?;
            let mut count = s.alloc_zeros::<u32>(1).map_err(|e| cuda_err("alloc", e))?;
            let cap = capacity as u32;
            let mut b = s.launch_builder(self.f("pairs_window"));
            b.arg(u)
                .arg(&ni)
                .arg(&di)
                .arg(&lo)
                .arg(&hi)
                .arg(&mut below)
                .arg(&mut window)
                .arg(&cap)
                .arg(&mut count);
            // SAFETY: window holds 2·capacity indices and the kernel writes only below `cap`.
            unsafe { b.launch(cfg) }.map_err(|e| cuda_err("pairs_window", e))?;
            let found = self.download(&count)?[0] as usize;
            if found > capacity {
                capacity = found;
                continue;
            }
            let below = self.download(&below)?[0];
            let mut exact = s
                .alloc_zeros::<f64>(found.max(1))
                .map_err(|e| cuda_err("alloc", e))?;
            let fi = found as i32;
            let mut b = s.launch_builder(self.f("pairs_exact_f64"));
            b.arg(u).arg(&di).arg(&window).arg(&fi).arg(&mut exact);
            // SAFETY: window holds `found` valid pairs of row indices < n; exact holds found.
            unsafe { b.launch(warp_grid(found.max(1))) }
                .map_err(|e| cuda_err("pairs_exact_f64", e))?;
            let mut vals = self.download(&exact)?;
            vals.truncate(found);
            vals.sort_by(f64::total_cmp);
            let picked: Vec<f64> = ranks
                .iter()
                .map(|&r| {
                    (r as u64)
                        .checked_sub(below)
                        .and_then(|k| vals.get(k as usize).copied())
                        .ok_or_else(|| {
                            Error::Cuda(
                                "calibration window does not contain the target rank".into(),
                            )
                        })
                })
                .collect::<Result<_>>()?;
            return Ok(crate::calibrate::combine(
                &picked,
                pairs,
                percentile / 100.0,
                method,
            ));
        }
    }
}
