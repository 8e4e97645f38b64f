//! Launchers of `kernels/leaders.cu`: phase B of a batch (in-batch leaders in stream order,
//! appended to the exemplar buffer) and the row gather that feeds it. The CPU twin is
//! `backend::cpu::leaders_cpu`.

use super::buffers::GrowableRows;
use super::launch::{
    blocks_256, check_i32, check_len, check_nonempty, check_rows, launch, warp_grid, MAX_GRID_Y,
};
use super::CudaDevice;
use crate::backend::cpu::LeaderDecision;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};

const OP: &str = "leaders";

impl CudaDevice {
    /// Phase B on the device: sequential leader clustering of the unit rows `w` (`m × d`,
    /// stream order) with threshold `theta`, the twin of
    /// [`crate::backend::cpu::leaders_cpu`] (identical decisions and f64 similarities).
    /// The new leaders are appended to `g` in ordinal order (after the rows it held at the call;
    /// only leaders appended by this call are candidates). Chunks of 512 rows: each chunk's rows
    /// are resolved against earlier chunks' leaders by [`CudaDevice::nearest_device`], and among
    /// themselves by a single-warp scan over exact pair similarities. One scalar (the leader
    /// count) crosses to the host per chunk.
    pub fn leaders(
        &self,
        w: &CudaView<'_, f32>,
        m: usize,
        d: usize,
        theta: f64,
        g: &mut GrowableRows,
    ) -> Result<Vec<LeaderDecision>> {
        const C: usize = 512;
        check_nonempty(OP, "width d", d)?;
        check_len(OP, "rows", w.len(), m * d)?;
        if g.dim != d {
            return Err(Error::DimensionMismatch {
                what: "exemplar buffer".into(),
                expected: d,
                found: g.dim,
            });
        }
        crate::geometry::check_threshold(theta)?;
        if m == 0 {
            return Ok(Vec::new());
        }
        let (_, di) = (check_i32(OP, "rows", m)?, check_i32(OP, "d", d)?);
        check_i32(OP, "exemplar values", (g.rows + m) * d)?;
        let s = &self.stream;
        let first = g.rows;
        let mut ord = self.zeros::<i32>(m)?;
        let mut sim = self.zeros::<f64>(m)?;
        let mut is_leader = self.zeros::<i32>(m)?;
        let cmax = C.min(m);
        let mut pair = self.zeros::<f64>(cmax * cmax)?;
        let mut leader_rows = self.zeros::<i32>(cmax)?;
        let mut count = self.zeros::<i32>(1)?;
        let none_ord = self.upload(&vec![-1i32; cmax])?;
        let none_sim = self.upload(&vec![f64::NEG_INFINITY; cmax])?;
        let mut made = 0usize; // leaders so far (ordinals 0..made)
        for s0 in (0..m).step_by(C) {
            let c = C.min(m - s0);
            let ci = c as i32;
            let chunk = w.slice(s0 * d..(s0 + c) * d);
            // Earlier chunks' leaders: exact nearest (ordinal, f64 similarity) per row.
            let prev = if made > 0 {
                let lv = g.buf.slice(first * d..(first + made) * d);
                let screen = self.screen_for(made, d);
                Some(self.nearest_device(screen, &chunk, c, &lv, made, d, None)?)
            } else {
                None
            };
            if c > 1 {
                let pairs = c * (c - 1) / 2;
                let mut b = s.launch_builder(self.f("pair_sims_f64"));
                b.arg(&chunk).arg(&ci).arg(&di).arg(&mut pair);
                // SAFETY: chunk holds c·d values; pair holds cmax² ≥ c² and the kernel writes
                // [a·c + b] for b < a < c, one warp per pair.
                unsafe { b.launch(warp_grid(pairs)) }.map_err(launch("pair_sims_f64"))?;
            }
            let base = made as i32;
            let (po, ps) = match &prev {
                Some((i, v)) => (i.slice(..), v.slice(..)),
                None => (none_ord.slice(..c), none_sim.slice(..c)),
            };
            let mut ord_c = ord.slice_mut(s0..s0 + c);
            let mut sim_c = sim.slice_mut(s0..s0 + c);
            let mut lead_c = is_leader.slice_mut(s0..s0 + c);
            let mut b = s.launch_builder(self.f("leaders_scan"));
            b.arg(&ci)
                .arg(&theta)
                .arg(&base)
                .arg(&po)
                .arg(&ps)
                .arg(&pair)
                .arg(&mut ord_c)
                .arg(&mut sim_c)
                .arg(&mut lead_c)
                .arg(&mut leader_rows)
                .arg(&mut count);
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: one warp; prev ordinals/similarities hold c each, pair c² (written above
            // for every b < a < c, the only entries read), the three outputs are c-long views,
            // leader_rows holds cmax ≥ c, count 1.
            unsafe { b.launch(cfg) }.map_err(launch("leaders_scan"))?;
            // Room for every row of the chunk becoming a leader, then the copy.
            self.reserve_rows(g, c)?;
            let row0 = (first + made) as i64;
            let mut b = s.launch_builder(self.f("append_leaders"));
            b.arg(&chunk)
                .arg(&di)
                .arg(&leader_rows)
                .arg(&count)
                .arg(&base)
                .arg(&mut g.buf)
                .arg(&row0);
            let cfg = blocks_256(((d as u32).div_ceil(256), c as u32, 1));
            // SAFETY: the kernel copies count − base ≤ c rows (the scan adds at most c), each of
            // d values, from chunk rows leader_rows[i] < c to rows row0 + i < g.rows + c, within
            // the capacity reserved above.
            unsafe { b.launch(cfg) }.map_err(launch("append_leaders"))?;
            made = self.download(&count)?[0] as usize;
            g.rows = first + made;
        }
        let (ord, sim, lead) = (
            self.download(&ord)?,
            self.download(&sim)?,
            self.download(&is_leader)?,
        );
        Ok((0..m)
            .map(|i| {
                if lead[i] != 0 {
                    LeaderDecision::Leader {
                        ordinal: ord[i] as u32,
                    }
                } else {
                    LeaderDecision::Follow {
                        ordinal: ord[i] as u32,
                        sim: sim[i],
                    }
                }
            })
            .collect())
    }

    /// Rows of `u` gathered by index into a new buffer: `out[r] = u[rows[r]]` (e.g. a batch's
    /// unmatched rows, for [`CudaDevice::leaders`]).
    pub fn gather_rows(
        &self,
        u: &CudaView<'_, f32>,
        d: usize,
        rows: &[u32],
    ) -> Result<CudaSlice<f32>> {
        const OP: &str = "gather_rows";
        let n_u = check_rows(OP, "u", u.len(), d)?;
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= n_u) {
            return Err(Error::param(
                "rows",
                format!("gather index {r} is outside the {n_u} rows"),
            ));
        }
        check_nonempty(OP, "gathered rows", rows.len())?;
        let (di, ni) = (check_i32(OP, "d", d)?, check_i32(OP, "rows", rows.len())?);
        let idx: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        let idx = self.upload(&idx)?;
        let mut out = self.zeros::<f32>(rows.len() * d)?;
        let mut b = self.stream.launch_builder(self.f("gather_rows"));
        b.arg(u).arg(&di).arg(&idx).arg(&ni).arg(&mut out);
        let cfg = blocks_256((
            (d as u32).div_ceil(256),
            rows.len().min(MAX_GRID_Y) as u32,
            1,
        ));
        // SAFETY: every index is < n_u (checked), out holds rows·d.
        unsafe { b.launch(cfg) }.map_err(launch("gather_rows"))?;
        Ok(out)
    }
}
