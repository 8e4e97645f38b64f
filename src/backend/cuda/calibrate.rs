//! Launchers of `kernels/calibrate.cu`: the exact pairwise-distance percentile (histogram pass,
//! window pass, f64 window), the twin of `backend::cpu::pairwise_distance_percentile`.

use super::launch::{blocks_256, check_i32, check_len, check_nonempty, launch, warp_grid};
use super::CudaDevice;
use crate::backend::cpu::calibrate::{
    check_percentile, combine, needed_ranks, window_bounds, PercentileMethod,
};
use crate::error::{CudaError, Error, Result};
use cudarc::driver::{CudaSlice, PushKernelArg};

impl CudaDevice {
    /// The exact pairwise-distance percentile of the unit rows `u` (`n × d`, n ≥ 2); the same
    /// value as [`crate::backend::cpu::pairwise_distance_percentile`].
    pub fn pairwise_percentile(
        &self,
        u: &CudaSlice<f32>,
        n: usize,
        d: usize,
        percentile: f64,
        method: PercentileMethod,
    ) -> Result<f64> {
        const OP: &str = "pairwise_percentile";
        check_percentile(percentile)?;
        check_nonempty(OP, "width d", d)?;
        check_len(OP, "rows", u.len(), n * d)?;
        if n < 2 {
            return Err(Error::EmptyInput(
                "a percentile of pairs needs at least 2 rows".into(),
            ));
        }
        let (ni, di) = (check_i32(OP, "rows", n)?, check_i32(OP, "d", d)?);
        let pairs = n * (n - 1) / 2;
        let ranks = needed_ranks(pairs, percentile / 100.0, method);
        let bins = 1usize << 16;
        let s = &self.stream;
        let tiles = (n as u32).div_ceil(64);
        let cfg = blocks_256((tiles, tiles, 1));
        let mut hist = self.zeros::<u64>(bins)?;
        let bi = bins as i32;
        let mut b = s.launch_builder(self.f("pairs_histogram"));
        b.arg(u).arg(&ni).arg(&di).arg(&bi).arg(&mut hist);
        // SAFETY: u holds n·d; hist holds `bins` counters.
        unsafe { b.launch(cfg) }.map_err(launch("pairs_histogram"))?;
        let hist = self.download(&hist)?;
        let (lo, hi) = window_bounds(&hist, &ranks, d);
        let mut capacity: usize = 1 << 20;
        loop {
            let mut below = self.zeros::<u64>(1)?;
            let mut window = self.zeros::<i32>(2 * capacity)?;
            let mut count = self.zeros::<u32>(1)?;
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
            unsafe { b.launch(cfg) }.map_err(launch("pairs_window"))?;
            let found = self.download(&count)?[0] as usize;
            if found > capacity {
                capacity = found;
                continue;
            }
            let below = self.download(&below)?[0];
            let mut exact = self.zeros::<f64>(found.max(1))?;
            let fi = check_i32(OP, "window pairs", found)?;
            let mut b = s.launch_builder(self.f("pairs_exact_f64"));
            b.arg(u).arg(&di).arg(&window).arg(&fi).arg(&mut exact);
            // SAFETY: window holds `found` valid pairs of row indices < n; exact holds found.
            unsafe { b.launch(warp_grid(found.max(1))) }.map_err(launch("pairs_exact_f64"))?;
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
                            CudaError::Internal {
                                op: OP,
                                what: format!("the distance window does not hold rank {r}"),
                            }
                            .into()
                        })
                })
                .collect::<Result<_>>()?;
            return Ok(combine(&picked, pairs, percentile / 100.0, method));
        }
    }
}
