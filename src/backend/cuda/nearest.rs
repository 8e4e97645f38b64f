//! Launchers of `kernels/nearest.cu`: the exact nearest candidate of every row. A screen (FP32
//! SGEMM, bf16 tensor cores, or cuBLAS bf16 GEMM, each with a fused top-2) picks a winner and
//! flags rows it cannot separate; f64 resolution in the canonical order settles every row, so
//! ids and similarities equal the CPU twin's, `backend::cpu::nearest_rows`.

use super::launch::{
    blocks_256, check_i32, check_len, check_nonempty, launch, shape, warp_grid, MAX_GRID_Y,
};
use super::CudaDevice;
use crate::error::{CudaError, Error, Result};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use std::sync::atomic::Ordering;

/// The screen of [`CudaDevice::nearest_with`]; both give the same exact result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScreenKind {
    /// Tiled FP32 SGEMM with a fused top-2 (margin [`crate::backend::cpu::screen_margin`]).
    F32,
    /// bf16 tensor-core MMA (sm_80+) with a fused top-2 (margin [`bf16_screen_margin`]).
    Bf16TensorCores,
    /// cuBLAS bf16 GEMM (f32 output, sm_80+) over tiles of rows, then a top-2 pass over each
    /// tile: the FAISS-style GEMM + k-selection baseline as a screen (same margin as the MMA
    /// screen). Chosen only through `EXEMPLAR_NEAREST_SCREEN=cublas-bf16`.
    CublasBf16,
}

impl ScreenKind {
    /// Parses `EXEMPLAR_NEAREST_SCREEN`: `f32`, `bf16-mma`, `cublas-bf16`, or `auto` (`None`).
    pub fn parse(s: &str) -> Result<Option<ScreenKind>> {
        match s {
            "auto" => Ok(None),
            "f32" => Ok(Some(ScreenKind::F32)),
            "bf16-mma" => Ok(Some(ScreenKind::Bf16TensorCores)),
            "cublas-bf16" => Ok(Some(ScreenKind::CublasBf16)),
            _ => Err(Error::param(
                "EXEMPLAR_NEAREST_SCREEN",
                format!("`{s}` is not auto, f32, bf16-mma or cublas-bf16"),
            )),
        }
    }

    /// Tensor cores when the device has them and the GEMM is big enough to pay for the bf16
    /// copies and the wider margin (k ≥ 256 and k·d ≥ 2²⁰); the FP32 screen otherwise.
    pub fn auto(cc: (i32, i32), k: usize, d: usize) -> ScreenKind {
        if cc.0 >= 8 && k >= 256 && k * d >= 1 << 20 {
            ScreenKind::Bf16TensorCores
        } else {
            ScreenKind::F32
        }
    }
}

/// The ambiguity margin of the bf16 screen: more than twice its error bound
/// `2⁻⁷ + 2⁻¹⁵ + d·2⁻²²` on the similarity of two unit vectors (bf16 rounding of both, then
/// f32 tensor-core accumulation; see `kernels/nearest.cu`). About 0.0176 at d = 2304.
pub fn bf16_screen_margin(d: usize) -> f32 {
    let eps = 2.0f64.powi(-7) + 2.0f64.powi(-15) + d as f64 * 2.0f64.powi(-22);
    (2.1 * eps) as f32
}

impl CudaDevice {
    /// The screen for a nearest search against `k` candidates of width `d`: the one
    /// `EXEMPLAR_NEAREST_SCREEN` forces, or [`ScreenKind::auto`]. Every screen gives the same
    /// exact result; this only chooses the speed.
    pub fn screen_for(&self, k: usize, d: usize) -> ScreenKind {
        self.screen_override
            .unwrap_or_else(|| ScreenKind::auto(self.compute_capability, k, d))
    }

    /// The exact nearest candidate of every row of `u` (`n × d`) among `e` (`k × d`, k ≥ 1):
    /// a screen (tensor cores when [`ScreenKind::auto`] picks them), then f64 resolution
    /// (ambiguous rows re-checked over all candidates). Returns ids and exact similarities,
    /// identical to [`crate::backend::cpu::nearest_rows`]; only these per-row scalars cross to the host.
    pub fn nearest(
        &self,
        u: &CudaSlice<f32>,
        n: usize,
        e: &CudaView<'_, f32>,
        k: usize,
        d: usize,
    ) -> Result<(Vec<i32>, Vec<f64>)> {
        let screen = self.screen_for(k, d);
        self.nearest_with(screen, u, n, e, k, d, None)
    }

    /// [`CudaDevice::nearest`] with a chosen screen, and optional per-row candidate limits
    /// (row `r` considers only candidates `j < limits[r]`; a row with none gets id −1 and
    /// similarity −∞).
    #[allow(clippy::too_many_arguments)]
    pub fn nearest_with(
        &self,
        screen: ScreenKind,
        u: &CudaSlice<f32>,
        n: usize,
        e: &CudaView<'_, f32>,
        k: usize,
        d: usize,
        limits: Option<&CudaSlice<i32>>,
    ) -> Result<(Vec<i32>, Vec<f64>)> {
        if n == 0 && u.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let (idx, sim) = self.nearest_device(screen, &u.as_view(), n, e, k, d, limits)?;
        Ok((self.download(&idx)?, self.download(&sim)?))
    }

    /// [`CudaDevice::nearest_with`] leaving ids and similarities on the device. The host sees
    /// only the ambiguity flags (to launch the re-check on those rows alone).
    #[allow(clippy::too_many_arguments)]
    pub fn nearest_device(
        &self,
        screen: ScreenKind,
        u: &CudaView<'_, f32>,
        n: usize,
        e: &CudaView<'_, f32>,
        k: usize,
        d: usize,
        limits: Option<&CudaSlice<i32>>,
    ) -> Result<(CudaSlice<i32>, CudaSlice<f64>)> {
        let (idx, best, second, margin) = self.screen_device(screen, u, n, e, k, d, limits)?;
        // screen_device checked the shapes and that they fit 32-bit indices.
        let (ni, ki, di) = (n as i32, k as i32, d as i32);
        let mut idx = idx;
        let null = 0u64;
        let s = &self.stream;
        let mut sim = self.zeros::<f64>(n)?;
        let mut amb = self.zeros::<i32>(n)?;
        let mut b = s.launch_builder(self.f("resolve_f64"));
        b.arg(u)
            .arg(e)
            .arg(&ni)
            .arg(&di)
            .arg(&idx)
            .arg(&best)
            .arg(&second)
            .arg(&margin)
            .arg(&mut sim)
            .arg(&mut amb);
        // SAFETY: as above; the screen wrote ids in −1..k; sim and amb hold n each.
        unsafe { b.launch(warp_grid(n)) }.map_err(launch("resolve_f64"))?;
        let flags = self.download(&amb)?;
        let rows: Vec<i32> = flags
            .iter()
            .enumerate()
            .filter(|(_, &f)| f != 0)
            .map(|(i, _)| i as i32)
            .collect();
        // Tensor-core screen: the ambiguous rows' contenders (candidates within the margin of
        // the best) are listed by a second bf16 pass and only they are resolved in f64; rows
        // with too many contenders fall back to the full re-check.
        self.last_ambiguous.store(rows.len(), Ordering::Relaxed);
        self.nearest_totals[0].fetch_add(n as u64, Ordering::Relaxed);
        self.nearest_totals[1].fetch_add(rows.len() as u64, Ordering::Relaxed);
        let bf16 = matches!(screen, ScreenKind::Bf16TensorCores | ScreenKind::CublasBf16);
        let rows = if bf16 && limits.is_none() && !rows.is_empty() {
            let best = self.download(&best)?;
            self.resolve_contenders(u, e, k, d, &rows, &best, margin, &mut idx, &mut sim)?
        } else {
            rows
        };
        self.last_rechecked.store(rows.len(), Ordering::Relaxed);
        self.nearest_totals[2].fetch_add(rows.len() as u64, Ordering::Relaxed);
        if !rows.is_empty() {
            let r = self.upload(&rows)?;
            let nr = rows.len() as i32;
            // About 32 candidates per warp, 8 warps per block.
            let parts = k.div_ceil(256).clamp(1, 1024);
            let mut pi = self.zeros::<i32>(parts * rows.len())?;
            let mut ps = self.zeros::<f64>(parts * rows.len())?;
            let cfg = blocks_256((parts as u32, rows.len().min(MAX_GRID_Y) as u32, 1));
            let mut b = s.launch_builder(self.f("recheck_partial_f64"));
            b.arg(u).arg(e).arg(&ki).arg(&di).arg(&r).arg(&nr);
            match limits {
                Some(l) => b.arg(l),
                None => b.arg(&null),
            };
            b.arg(&mut pi).arg(&mut ps);
            // SAFETY: r lists nr row indices < n; the partials hold parts·nr (grid.x = parts,
            // rows stride over grid.y).
            unsafe { b.launch(cfg) }.map_err(launch("recheck_partial_f64"))?;
            let pa = parts as i32;
            let mut b = s.launch_builder(self.f("recheck_reduce"));
            b.arg(&r)
                .arg(&nr)
                .arg(&pa)
                .arg(&pi)
                .arg(&ps)
                .arg(&mut idx)
                .arg(&mut sim);
            // SAFETY: as above; idx and sim hold n each and r's indices are < n.
            unsafe { b.launch(LaunchConfig::for_num_elems(rows.len() as u32)) }
                .map_err(launch("recheck_reduce"))?;
        }
        Ok((idx, sim))
    }

    /// The screen alone: per row of `u` the screen's best candidate (−1 if none), its value and
    /// the runner-up's, left on the device, and the margin within which the two are ambiguous.
    /// [`CudaDevice::nearest_device`] resolves them exactly; this is public for benchmarks.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub fn screen_device(
        &self,
        screen: ScreenKind,
        u: &CudaView<'_, f32>,
        n: usize,
        e: &CudaView<'_, f32>,
        k: usize,
        d: usize,
        limits: Option<&CudaSlice<i32>>,
    ) -> Result<(CudaSlice<i32>, CudaSlice<f32>, CudaSlice<f32>, f32)> {
        const OP: &str = "nearest";
        check_nonempty(OP, "width d", d)?;
        check_nonempty(OP, "rows", n)?;
        check_nonempty(OP, "candidates", k)?;
        check_len(OP, "rows", u.len(), n * d)?;
        check_len(OP, "candidates", e.len(), k * d)?;
        if let Some(l) = limits {
            check_len(OP, "limits", l.len(), n)?;
        }
        if screen != ScreenKind::F32 && self.compute_capability.0 < 8 {
            let (major, minor) = self.compute_capability;
            return Err(shape(
                OP,
                format!("compute capability for the {screen:?} screen"),
                "8.0 or later",
                format!("{major}.{minor}"),
            ));
        }
        let (ni, ki, di) = (
            check_i32(OP, "rows", n)?,
            check_i32(OP, "candidates", k)?,
            check_i32(OP, "d", d)?,
        );
        let s = &self.stream;
        let mut idx = self.zeros::<i32>(n)?;
        let mut best = self.zeros::<f32>(n)?;
        let mut second = self.zeros::<f32>(n)?;
        let null = 0u64;
        let margin = match screen {
            ScreenKind::F32 => {
                let cfg = blocks_256(((n as u32).div_ceil(64), 1, 1));
                let mut b = s.launch_builder(self.f("nearest_top2_f32"));
                b.arg(u).arg(e).arg(&ni).arg(&ki).arg(&di);
                match limits {
                    Some(l) => b.arg(l),
                    None => b.arg(&null),
                };
                b.arg(&mut idx).arg(&mut best).arg(&mut second);
                // SAFETY: u holds n·d, e holds k·d, limits (if any) n, the outputs n each
                // (checked above); the kernel bounds every index by n, k and d.
                unsafe { b.launch(cfg) }.map_err(launch("nearest_top2_f32"))?;
                crate::backend::cpu::screen_margin(d)
            }
            ScreenKind::Bf16TensorCores => {
                let dp = d.next_multiple_of(32);
                let dpi = check_i32(OP, "padded d", dp)?;
                check_i32(OP, "padded values", n.max(k) * dp)?;
                let ub = self.to_bf16_padded(u, n, d, dp)?;
                let eb = self.to_bf16_padded(e, k, d, dp)?;
                // Enough blocks to fill the GPU: split the candidate tiles when rows are few.
                let row_blocks = n.div_ceil(128);
                let tiles = k.div_ceil(128);
                let splits = (264usize.div_ceil(row_blocks)).clamp(1, tiles.min(64));
                let mut pi = self.zeros::<i32>(splits * n)?;
                let mut pb = self.zeros::<f32>(splits * n)?;
                let mut ps = self.zeros::<f32>(splits * n)?;
                let cfg = blocks_256((row_blocks as u32, splits as u32, 1));
                let mut b = s.launch_builder(self.f("nearest_top2_bf16_mma"));
                b.arg(&ub).arg(&eb).arg(&ni).arg(&ki).arg(&dpi);
                match limits {
                    Some(l) => b.arg(l),
                    None => b.arg(&null),
                };
                b.arg(&mut pi).arg(&mut pb).arg(&mut ps);
                // SAFETY: ub holds n·dp and eb k·dp bf16 (dp a multiple of 32, so every 16-byte
                // load is aligned and inside its row); rows ≥ n and candidates ≥ k are not
                // read; the partial outputs hold splits·n each (grid.y = splits).
                unsafe { b.launch(cfg) }.map_err(launch("nearest_top2_bf16_mma"))?;
                let si = splits as i32;
                let mut b = s.launch_builder(self.f("top2_merge_splits"));
                b.arg(&ni)
                    .arg(&si)
                    .arg(&pi)
                    .arg(&pb)
                    .arg(&ps)
                    .arg(&mut idx)
                    .arg(&mut best)
                    .arg(&mut second);
                // SAFETY: the partials hold splits·n, the outputs n (one thread per row).
                unsafe { b.launch(LaunchConfig::for_num_elems(n as u32)) }
                    .map_err(launch("top2_merge_splits"))?;
                bf16_screen_margin(d)
            }
            ScreenKind::CublasBf16 => {
                use cudarc::cublas::sys::cudaDataType_t;
                use cudarc::cublas::sys::{
                    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t,
                };
                use cudarc::driver::{DevicePtr, DevicePtrMut};
                let dp = d.next_multiple_of(32);
                let dpi = check_i32(OP, "padded d", dp)?;
                check_i32(OP, "padded values", n.max(k) * dp)?;
                let blas = self.blas()?;
                let ub = self.to_bf16_padded(u, n, d, dp)?;
                let eb = self.to_bf16_padded(e, k, d, dp)?;
                // The similarity matrix a tile of rows at a time: at most 2^26 f32 (256 MiB).
                let tile = ((1usize << 26) / k).clamp(1, n);
                let mut c = self.zeros::<f32>(tile * k)?;
                let (alpha, beta) = (1.0f32, 0.0f32);
                for r0 in (0..n).step_by(tile) {
                    let t = tile.min(n - r0);
                    let ti = t as i32; // t ≤ n, which fits i32
                    {
                        let ut = ub.slice(r0 * dp..(r0 + t) * dp);
                        let (a_ptr, _a) = eb.device_ptr(s);
                        let (b_ptr, _b) = ut.device_ptr(s);
                        let (c_ptr, _c) = c.device_ptr_mut(s);
                        // SAFETY: column-major C (k × t, ldc k) = Aᵀ·B with A = the bf16
                        // candidates (dp × k, lda dp) and B = the tile's bf16 rows (dp × t, ldb
                        // dp): eb holds k·dp, ut t·dp and c tile·k ≥ t·k elements; alpha and
                        // beta are f32 as CUBLAS_COMPUTE_32F requires; cuBLAS runs on this
                        // device's stream, ordered with the kernels around it.
                        unsafe {
                            cudarc::cublas::result::gemm_ex(
                                *blas.handle(),
                                cublasOperation_t::CUBLAS_OP_T,
                                cublasOperation_t::CUBLAS_OP_N,
                                ki,
                                ti,
                                dpi,
                                (&alpha) as *const f32 as *const _,
                                a_ptr as *const _,
                                cudaDataType_t::CUDA_R_16BF,
                                dpi,
                                b_ptr as *const _,
                                cudaDataType_t::CUDA_R_16BF,
                                dpi,
                                (&beta) as *const f32 as *const _,
                                c_ptr as *mut _,
                                cudaDataType_t::CUDA_R_32F,
                                ki,
                                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                            )
                        }
                        .map_err(|source| CudaError::Cublas {
                            op: "GemmEx (bf16 screen)",
                            source,
                        })?;
                    }
                    let r0i = r0 as i32;
                    let mut b = s.launch_builder(self.f("top2_rows_f32"));
                    b.arg(&c).arg(&ti).arg(&ki);
                    match limits {
                        Some(l) => b.arg(l),
                        None => b.arg(&null),
                    };
                    b.arg(&r0i).arg(&mut idx).arg(&mut best).arg(&mut second);
                    // SAFETY: c holds t·k similarities (row-major t × k), limits (if any) n;
                    // the kernel writes rows r0 .. r0 + t ≤ n of idx, best and second (n each).
                    unsafe { b.launch(warp_grid(t)) }.map_err(launch("top2_rows_f32"))?;
                }
                bf16_screen_margin(d)
            }
        };
        Ok((idx, best, second, margin))
    }

    /// The contender pass of the tensor-core screen for the ambiguous `rows`: lists, per row,
    /// the candidates whose bf16 screen value is at least `best[row] − margin`, and writes the
    /// exact f64 maximum over them (lowest index on ties) into `idx` and `sim`. Returns the rows
    /// whose list overflowed, which the caller re-checks over all candidates.
    #[allow(clippy::too_many_arguments)]
    fn resolve_contenders(
        &self,
        u: &CudaView<'_, f32>,
        e: &CudaView<'_, f32>,
        k: usize,
        d: usize,
        rows: &[i32],
        best: &[f32],
        margin: f32,
        idx: &mut CudaSlice<i32>,
        sim: &mut CudaSlice<f64>,
    ) -> Result<Vec<i32>> {
        const MAX_CONT: usize = 64;
        let s = &self.stream;
        let n2 = rows.len();
        let dp = d.next_multiple_of(32);
        let gathered: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let w = self.gather_rows(u, d, &gathered)?;
        let ub = self.to_bf16_padded(&w.slice(..), n2, d, dp)?;
        let eb = self.to_bf16_padded(e, k, d, dp)?;
        let floor: Vec<f32> = rows.iter().map(|&r| best[r as usize] - margin).collect();
        let floor = self.upload(&floor)?;
        let mut count = self.zeros::<i32>(n2)?;
        let mut list = self.zeros::<i32>(n2 * MAX_CONT)?;
        let (n2i, ki, dpi, di, mc) = (n2 as i32, k as i32, dp as i32, d as i32, MAX_CONT as i32);
        let row_blocks = n2.div_ceil(128);
        let splits = (264usize.div_ceil(row_blocks)).clamp(1, k.div_ceil(128).min(64));
        let cfg = blocks_256((row_blocks as u32, splits as u32, 1));
        let mut b = s.launch_builder(self.f("contenders_bf16_mma"));
        b.arg(&ub)
            .arg(&eb)
            .arg(&n2i)
            .arg(&ki)
            .arg(&dpi)
            .arg(&floor)
            .arg(&mc)
            .arg(&mut count)
            .arg(&mut list);
        // SAFETY: ub holds n2·dp and eb k·dp bf16 (dp a multiple of 32); floor and count hold
        // n2, list n2·MAX_CONT and the kernel writes a slot only below MAX_CONT.
        unsafe { b.launch(cfg) }.map_err(launch("contenders_bf16_mma"))?;
        let r = self.upload(rows)?;
        let mut b = s.launch_builder(self.f("contenders_f64"));
        b.arg(u)
            .arg(e)
            .arg(&di)
            .arg(&r)
            .arg(&n2i)
            .arg(&mc)
            .arg(&count)
            .arg(&list)
            .arg(&mut *idx)
            .arg(&mut *sim);
        let cfg = blocks_256((n2.min(MAX_GRID_Y) as u32, 1, 1));
        // SAFETY: rows are < n (idx, sim and u hold n rows), listed candidates are < k; rows
        // stride over grid.x; overflowing lists are not read.
        unsafe { b.launch(cfg) }.map_err(launch("contenders_f64"))?;
        let count = self.download(&count)?;
        Ok(rows
            .iter()
            .zip(&count)
            .filter(|(_, &c)| c as usize > MAX_CONT || c == 0)
            .map(|(&r, _)| r)
            .collect())
    }

    /// bf16 bits (round to nearest even) of `x` (`n × d`), zero padded to width `dp`.
    fn to_bf16_padded(
        &self,
        x: &CudaView<'_, f32>,
        n: usize,
        d: usize,
        dp: usize,
    ) -> Result<CudaSlice<u16>> {
        const OP: &str = "to_bf16_padded";
        check_len(OP, "rows", x.len(), n * d)?;
        check_nonempty(OP, "rows", n)?;
        if dp < d || dp == 0 {
            return Err(shape(
                OP,
                "padded width",
                format!("at least d = {d}, and 1"),
                dp,
            ));
        }
        let mut out = self.zeros::<u16>(n * dp)?;
        let (ni, di, dpi) = (
            check_i32(OP, "rows", n)?,
            check_i32(OP, "d", d)?,
            check_i32(OP, "padded width", dp)?,
        );
        let cfg = blocks_256(((dp as u32).div_ceil(256), n.min(MAX_GRID_Y) as u32, 1));
        let mut b = self.stream.launch_builder(self.f("to_bf16_padded"));
        b.arg(x).arg(&ni).arg(&di).arg(&dpi).arg(&mut out);
        // SAFETY: x holds n·d f32, out n·dp u16; grid = (dp columns, n rows), bounds-checked.
        unsafe { b.launch(cfg) }.map_err(launch("to_bf16_padded"))?;
        Ok(out)
    }
}
