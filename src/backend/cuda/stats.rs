//! Launchers of `kernels/stats.cu`: per-partition running sums of a batch's memberships, in
//! stream order per partition, bit-identical to `Builder::record_member`.

use super::buffers::DeviceSums;
use super::launch::{blocks_256, check_i32, check_len, check_rows, launch, MAX_GRID_Y};
use super::CudaDevice;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};

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

/// The checks both launchers make: `u` holds whole rows of width `d`, every membership names a
/// partition below `k` and a row of `u`, and the counts fit the kernels' 32-bit indices.
fn check_memberships(
    op: &'static str,
    u_len: usize,
    d: usize,
    k: usize,
    memberships: impl Iterator<Item = (u32, u32)>,
) -> Result<()> {
    let n_rows = check_rows(op, "rows of u", u_len, d)?;
    check_i32(op, "d", d)?;
    let mut count = 0usize;
    for (p, r) in memberships {
        if p as usize >= k || r as usize >= n_rows {
            return Err(Error::param(
                "memberships",
                format!("membership (partition {p}, row {r}) is outside K = {k}, rows = {n_rows}"),
            ));
        }
        count += 1;
    }
    check_i32(op, "memberships", count)?;
    Ok(())
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
        const OP: &str = "stats_update";
        let k = counts.len();
        check_len(OP, "sums", sums.len(), k * d)?;
        check_len(OP, "sum_d", sum_d.len(), k)?;
        check_len(OP, "sum_d2", sum_d2.len(), k)?;
        check_memberships(OP, u.len(), d, k, memberships.iter().map(|m| (m.0, m.1)))?;
        if memberships.is_empty() {
            return Ok(());
        }
        let (parts, offsets, order) = csr_by_partition(memberships.iter().map(|m| m.0));
        let members: Vec<i32> = order.iter().map(|&i| memberships[i].1 as i32).collect();
        let dists: Vec<f64> = order.iter().map(|&i| memberships[i].2).collect();
        let (dp, doff, dm, dd) = (
            self.upload(&parts)?,
            self.upload(&offsets)?,
            self.upload(&members)?,
            self.upload(&dists)?,
        );
        self.direction_sums(&u.slice(..), d, (&dp, &doff, &dm), sums)?;
        // parts.len() ≤ memberships, checked to fit i32.
        let np = parts.len() as i32;
        let cfg = blocks_256(((parts.len() as u32).div_ceil(256), 1, 1));
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
        // SAFETY: parts < K (checked); offsets has np + 1 entries, positions in dists;
        // counts, sum_d and sum_d2 hold K each; one thread per partition, bounded by np.
        unsafe { b.launch(cfg) }.map_err(launch("stats_counts_and_distances"))?;
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
        check_memberships(
            "add_direction_sums",
            u.len(),
            d,
            s.rows,
            memberships.iter().copied(),
        )?;
        if memberships.is_empty() {
            return Ok(());
        }
        let (parts, offsets, order) = csr_by_partition(memberships.iter().map(|m| m.0));
        let members: Vec<i32> = order.iter().map(|&i| memberships[i].1 as i32).collect();
        let (dp, doff, dm) = (
            self.upload(&parts)?,
            self.upload(&offsets)?,
            self.upload(&members)?,
        );
        self.direction_sums(u, d, (&dp, &doff, &dm), &mut s.buf)
    }

    /// The `stats_direction_sums` launches of a batch grouped by partition (`csr` = the
    /// partitions, the offsets of their members and the members, on the device), one partition
    /// per grid row in launches of at most [`MAX_GRID_Y`] partitions. The caller has checked
    /// the memberships against `u` and `sums` ([`check_memberships`]).
    fn direction_sums(
        &self,
        u: &CudaView<'_, f32>,
        d: usize,
        csr: (&CudaSlice<i32>, &CudaSlice<i32>, &CudaSlice<i32>),
        sums: &mut CudaSlice<f64>,
    ) -> Result<()> {
        let (dp, doff, dm) = csr;
        let n_parts = dp.len();
        let di = d as i32; // checked by check_memberships
        for t0 in (0..n_parts).step_by(MAX_GRID_Y) {
            let cnt = MAX_GRID_Y.min(n_parts - t0);
            let cnt_i = cnt as i32;
            let (pv, ov) = (dp.slice(t0..t0 + cnt), doff.slice(t0..t0 + cnt + 1));
            let cfg = blocks_256(((d as u32).div_ceil(256), cnt as u32, 1));
            let mut b = self.stream.launch_builder(self.f("stats_direction_sums"));
            b.arg(u)
                .arg(&di)
                .arg(&pv)
                .arg(&ov)
                .arg(dm)
                .arg(&cnt_i)
                .arg(&mut *sums);
            // SAFETY: every partition is below the table's K and every member below the rows of
            // u (checked by the caller); this launch reads cnt parts and cnt + 1 offsets
            // (absolute positions in members); sums holds at least K·d.
            unsafe { b.launch(cfg) }.map_err(launch("stats_direction_sums"))?;
        }
        Ok(())
    }
}
