//! Launchers of `kernels/stats.cu`: per-partition running sums of a batch's memberships, in
//! stream order per partition, bit-identical to `Builder::record_member`.

use super::buffers::DeviceSums;
use super::launch::{check_i32, check_len, cuda_err, MAX_GRID_Y};
use super::CudaDevice;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};

/// Memberships grouped by partition (CSR): the partitions in increasing order, the offsets of
/// their members, and the membership indices in that order. The sort is stable, so each
/// partition keeps its members in stream order.
fn csr_by_partition(parts_of: impl Iterator<Item = u32>) -> (Vec<i32>, Vec<i32>, Vec<usize>) {
    let p: Vec<u32> = parts_of.collect();
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by_key(|&i| p[i]);
    let (mut parts, mut offsets) = (Vec::new(), vec![0i32]);
    for (pos, &i) in order.iter().enumerate() {
        if parts.last() != Some(&(p[i] as i32)) {
            if !parts.is_empty() {
                offsets.push(pos as i32);
            }
            parts.push(p[i] as i32);
        }
    }
    offsets.push(order.len() as i32);
    (parts, offsets, order)
}

impl CudaDevice {
    /// Adds one batch's memberships to device running statistics, in stream order per
    /// partition so every f64 sum is bit-identical to the CPU builder's: `sums` (`K × d`)
    /// gains the member directions, `counts`, `sum_d` and `sum_d2` the counts and distances.
    /// `memberships` are `(partition, row of u, distance)` in stream order.
    #[allow(clippy::too_many_arguments)]
    pub fn stats_update(
        &self,
        u: &CudaSlice<f32>,
        d: usize,
        memberships: &[(u32, u32, f64)],
        sums: &mut CudaSlice<f64>,
        counts: &mut CudaSlice<i64>,
        sum_d: &mut CudaSlice<f64>,
        sum_d2: &mut CudaSlice<f64>,
    ) -> Result<()> {
        let k = counts.len();
        check_len("sums", sums.len(), k * d)?;
        check_len("sum_d", sum_d.len(), k)?;
        check_len("sum_d2", sum_d2.len(), k)?;
        let n_rows = u.len() / d.max(1);
        if let Some(&(p, r, _)) = memberships
            .iter()
            .find(|(p, r, _)| *p as usize >= k || *r as usize >= n_rows)
        {
            return Err(Error::param(
                "cuda launch",
                format!("membership (partition {p}, row {r}) is outside K = {k}, rows = {n_rows}"),
            ));
        }
        if memberships.is_empty() {
            return Ok(());
        }
        let (parts, offsets, order) = csr_by_partition(memberships.iter().map(|m| m.0));
        let members: Vec<i32> = order.iter().map(|&i| memberships[i].1 as i32).collect();
        let dists: Vec<f64> = order.iter().map(|&i| memberships[i].2).collect();
        let np = check_i32("partitions", parts.len())?;
        let di = check_i32("d", d)?;
        let (dp, doff, dm, dd) = (
            self.upload(&parts)?,
            self.upload(&offsets)?,
            self.upload(&members)?,
            self.upload(&dists)?,
        );
        let cfg = LaunchConfig {
            grid_dim: ((d as u32).div_ceil(256), parts.len() as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(self.f("stats_direction_sums"));
        b.arg(u)
            .arg(&di)
            .arg(&dp)
            .arg(&doff)
            .arg(&dm)
            .arg(&np)
            .arg(&mut *sums);
        // SAFETY: parts < K, members < rows of u (checked above), offsets has np + 1 entries,
        // sums holds K·d.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("stats_direction_sums", e))?;
        let cfg = LaunchConfig {
            grid_dim: ((parts.len() as u32).div_ceil(256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self
            .stream
            .launch_builder(self.f("stats_counts_and_distances"));
        b.arg(&dp)
            .arg(&doff)
            .arg(&dd)
            .arg(&np)
            .arg(&mut *counts)
            .arg(&mut *sum_d)
            .arg(&mut *sum_d2);
        // SAFETY: as above; counts, sum_d and sum_d2 hold K each.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("stats_counts_and_distances", e))?;
        Ok(())
    }

    /// Adds one batch's member directions to `s`: the direction-sum half of
    /// [`CudaDevice::stats_update`] (same kernel, same per-partition stream order, so the sums
    /// are bit-identical to the CPU builder's). `memberships` are `(partition, row of u)` in
    /// stream order; `u` holds whole rows of width `s`'s dim.
    pub fn add_direction_sums(
        &self,
        u: &CudaView<'_, f32>,
        memberships: &[(u32, u32)],
        s: &mut DeviceSums,
    ) -> Result<()> {
        let d = s.dim;
        let n_rows = u.len() / d;
        if u.len() % d != 0 {
            return Err(Error::param("cuda launch", "stats: rows are not n × d"));
        }
        if let Some(&(p, r)) = memberships
            .iter()
            .find(|(p, r)| *p as usize >= s.rows || *r as usize >= n_rows)
        {
            return Err(Error::param(
                "cuda launch",
                format!(
                    "membership (partition {p}, row {r}) is outside K = {}, rows = {n_rows}",
                    s.rows
                ),
            ));
        }
        if memberships.is_empty() {
            return Ok(());
        }
        let (parts, offsets, order) = csr_by_partition(memberships.iter().map(|m| m.0));
        let members: Vec<i32> = order.iter().map(|&i| memberships[i].1 as i32).collect();
        check_i32("partitions", parts.len())?;
        let di = check_i32("d", d)?;
        let (dp, doff, dm) = (
            self.upload(&parts)?,
            self.upload(&offsets)?,
            self.upload(&members)?,
        );
        // One partition per grid row, in launches of at most MAX_GRID_Y partitions.
        for t0 in (0..parts.len()).step_by(MAX_GRID_Y) {
            let cnt = MAX_GRID_Y.min(parts.len() - t0);
            let cnt_i = cnt as i32;
            let (pv, ov) = (dp.slice(t0..t0 + cnt), doff.slice(t0..t0 + cnt + 1));
            let cfg = LaunchConfig {
                grid_dim: ((d as u32).div_ceil(256), cnt as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = self.stream.launch_builder(self.f("stats_direction_sums"));
            b.arg(u)
                .arg(&di)
                .arg(&pv)
                .arg(&ov)
                .arg(&dm)
                .arg(&cnt_i)
                .arg(&mut s.buf);
            // SAFETY: parts < s.rows and members < rows of u (checked above); this launch reads
            // cnt parts and cnt + 1 offsets (absolute positions in members); s.buf holds at
            // least s.rows·d.
            unsafe { b.launch(cfg) }.map_err(|e| cuda_err("stats_direction_sums", e))?;
        }
        Ok(())
    }
}
