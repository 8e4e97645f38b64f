//! The CUDA backend (feature `cuda`): device probing that never panics, kernel compilation
//! with NVRTC (prebuilt PTX from `build.rs` when nvcc was found, NVRTC otherwise or when the
//! PTX will not load), a per-device module cache, and the crate's only kernel launch sites.
//! Every launcher checks lengths and shapes before its `unsafe` launch.
//!
//! Kernels and their CPU twins:
//!
//! | kernel (`kernels/`) | CPU twin |
//! |---|---|
//! | `prepare_f32`, `prepare_bf16` | `geometry::directions` (bit-identical) |
//! | `nearest_top2_f32` + `resolve_f64` + `recheck_f64` | `linalg::screen_rows` + `Screen::resolve` (identical ids and f64 similarities) |
//! | `pairs_histogram` + `pairs_window` + `pairs_exact_f64` | `calibrate::pairwise_distance_percentile` (identical value) |
//! | `stats_direction_sums`, `stats_counts_and_distances` | `Builder::record_member`'s sums (bit-identical) |

use crate::calibrate::PercentileMethod;
use crate::error::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::HashMap;
use std::sync::Arc;

/// The kernel sources, embedded so NVRTC can compile them on any machine.
pub const KERNELS: &[(&str, &str)] = &[
    ("prepare", include_str!("../../kernels/prepare.cu")),
    ("nearest", include_str!("../../kernels/nearest.cu")),
    ("calibrate", include_str!("../../kernels/calibrate.cu")),
    ("stats", include_str!("../../kernels/stats.cu")),
];

/// Every kernel entry point, by module.
pub const ENTRY_POINTS: &[(&str, &[&str])] = &[
    ("prepare", &["prepare_f32", "prepare_bf16"]),
    (
        "nearest",
        &["nearest_top2_f32", "resolve_f64", "recheck_f64"],
    ),
    (
        "calibrate",
        &["pairs_histogram", "pairs_window", "pairs_exact_f64"],
    ),
    (
        "stats",
        &["stats_direction_sums", "stats_counts_and_distances"],
    ),
];

/// Whether the CUDA driver library (libcuda) can be loaded. Never panics.
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names; loads nothing else.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC (libnvrtc.so.13; the torch 2.11 wheel ships it under nvidia/cu13/lib) can be
/// loaded. Never panics.
pub fn nvrtc_available() -> bool {
    // SAFETY: as above, a dlopen probe.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn cuda_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("{what}: {e}"))
}

/// Compiles one kernel source with NVRTC for a virtual architecture such as `compute_90`.
pub fn compile(name: &str, source: &str, arch: &'static str) -> Result<Ptx> {
    if !nvrtc_available() {
        return Err(Error::CudaUnavailable(
            "libnvrtc.so.13 cannot be loaded (install torch==2.11.0 and put site-packages/nvidia/cu13/lib on LD_LIBRARY_PATH)".into(),
        ));
    }
    let opts = CompileOptions {
        arch: Some(arch),
        name: Some(format!("{name}.cu")),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source, opts)
        .map_err(|e| cuda_err(&format!("compiling kernels/{name}.cu with NVRTC"), e))
}

/// A CUDA device with its context, the legacy default stream (which orders with torch's
/// default stream, so torch memory can be used directly), and the loaded kernels.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    name: String,
    compute_capability: (i32, i32),
}

/// Rows of width `dim` on the device with amortised growth (capacity at least doubles), for
/// the exemplar matrix that grows batch by batch: only new rows cross to the device.
pub struct GrowableRows {
    buf: CudaSlice<f32>,
    rows: usize,
    dim: usize,
}

impl GrowableRows {
    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The held rows, `rows × dim`.
    pub fn view(&self) -> CudaView<'_, f32> {
        self.buf.slice(0..self.rows * self.dim)
    }

    /// Forgets every row (capacity is kept).
    pub fn clear(&mut self) {
        self.rows = 0;
    }
}

const WARPS_PER_BLOCK: u32 = 8;

fn warp_grid(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(WARPS_PER_BLOCK), 1, 1),
        block_dim: (32 * WARPS_PER_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn check_len(what: &str, len: usize, expected: usize) -> Result<()> {
    if len != expected {
        return Err(Error::param(
            "cuda launch",
            format!("{what} holds {len} values, expected {expected}"),
        ));
    }
    Ok(())
}

fn check_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::param(
            "cuda launch",
            format!("{what} = {v} exceeds the kernels' 32-bit indices"),
        )
    })
}

impl CudaDevice {
    /// Opens device `ordinal`: probes the driver and NVRTC first (a machine without them gets
    /// [`Error::CudaUnavailable`], never a panic), then compiles and loads every kernel for the
    /// device's compute capability.
    pub fn open(ordinal: usize) -> Result<Self> {
        if !driver_available() {
            return Err(Error::CudaUnavailable(
                "the CUDA driver (libcuda.so) cannot be loaded".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::CudaUnavailable(format!("CUDA device {ordinal}: {e}")))?;
        let name = ctx.name().map_err(|e| cuda_err("device name", e))?;
        let cc = ctx
            .compute_capability()
            .map_err(|e| cuda_err("compute capability", e))?;
        let arch: &'static str = Box::leak(format!("compute_{}{}", cc.0, cc.1).into_boxed_str());
        let stream = ctx.default_stream();
        let mut functions = HashMap::new();
        for ((module, src), (_, entries)) in KERNELS.iter().zip(ENTRY_POINTS) {
            let ptx = compile(module, src, arch)?;
            let m: Arc<CudaModule> = ctx
                .load_module(ptx)
                .map_err(|e| cuda_err(&format!("loading kernels/{module}.cu"), e))?;
            for &entry in entries.iter() {
                let f = m.load_function(entry).map_err(|e| cuda_err(entry, e))?;
                functions.insert(entry, f);
            }
        }
        Ok(CudaDevice {
            ctx,
            stream,
            functions,
            name,
            compute_capability: cc,
        })
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// The context (shared with torch: the device's primary context).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn f(&self, name: &str) -> &CudaFunction {
        &self.functions[name]
    }

    /// Copies a host slice to the device.
    pub fn upload<T: cudarc::driver::DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(host)
            .map_err(|e| cuda_err("host → device copy", e))
    }

    /// Copies a device slice to the host.
    pub fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        dev: &CudaSlice<T>,
    ) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(dev)
            .map_err(|e| cuda_err("device → host copy", e))
    }

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
        self.prepare("prepare_f32", x, x.len(), n, d, center, rows)
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
        self.prepare("prepare_bf16", x, x.len(), n, d, center, rows)
    }

    #[allow(clippy::too_many_arguments)]
    fn prepare<T>(
        &self,
        kernel: &str,
        x: &CudaSlice<T>,
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
        let mut b = self.stream.launch_builder(self.f(kernel));
        b.arg(x).arg(&stride).arg(&x_rows);
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
        // SAFETY: x holds x_rows whole rows of d values of the kernel's element type, and the
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

    /// The exact nearest candidate of every row of `u` (`n × d`) among `e` (`k × d`, k ≥ 1):
    /// the f32 screen, then f64 resolution (ambiguous rows re-checked over all candidates).
    /// Returns ids and exact similarities; only these per-row scalars cross to the host.
    pub fn nearest(
        &self,
        u: &CudaSlice<f32>,
        n: usize,
        e: &CudaView<'_, f32>,
        k: usize,
        d: usize,
    ) -> Result<(Vec<i32>, Vec<f64>)> {
        check_len("rows", u.len(), n * d)?;
        check_len("candidates", e.len(), k * d)?;
        if n == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        if k == 0 {
            return Err(Error::param(
                "cuda launch",
                "nearest needs at least one candidate",
            ));
        }
        let (ni, ki, di) = (
            check_i32("rows", n)?,
            check_i32("candidates", k)?,
            check_i32("d", d)?,
        );
        let s = &self.stream;
        let mut idx = s.alloc_zeros::<i32>(n).map_err(|e| cuda_err("alloc", e))?;
        let mut best = s.alloc_zeros::<f32>(n).map_err(|e| cuda_err("alloc", e))?;
        let mut second = s.alloc_zeros::<f32>(n).map_err(|e| cuda_err("alloc", e))?;
        let cfg = LaunchConfig {
            grid_dim: ((n as u32).div_ceil(64), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(self.f("nearest_top2_f32"));
        b.arg(u)
            .arg(e)
            .arg(&ni)
            .arg(&ki)
            .arg(&di)
            .arg(&mut idx)
            .arg(&mut best)
            .arg(&mut second);
        // SAFETY: u holds n·d, e holds k·d, the outputs n each (checked above).
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("nearest_top2_f32", e))?;
        let mut sim = s.alloc_zeros::<f64>(n).map_err(|e| cuda_err("alloc", e))?;
        let mut amb = s.alloc_zeros::<i32>(n).map_err(|e| cuda_err("alloc", e))?;
        let margin = crate::linalg::screen_margin(d);
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
        // SAFETY: as above; sim and amb hold n each.
        unsafe { b.launch(warp_grid(n)) }.map_err(|e| cuda_err("resolve_f64", e))?;
        let flags = self.download(&amb)?;
        let rows: Vec<i32> = flags
            .iter()
            .enumerate()
            .filter(|(_, &f)| f != 0)
            .map(|(i, _)| i as i32)
            .collect();
        if !rows.is_empty() {
            let r = self.upload(&rows)?;
            let nr = rows.len() as i32;
            let mut b = s.launch_builder(self.f("recheck_f64"));
            b.arg(u)
                .arg(e)
                .arg(&ki)
                .arg(&di)
                .arg(&r)
                .arg(&nr)
                .arg(&mut idx)
                .arg(&mut sim);
            // SAFETY: r lists nr row indices < n; idx and sim hold n each.
            unsafe { b.launch(warp_grid(rows.len())) }.map_err(|e| cuda_err("recheck_f64", e))?;
        }
        Ok((self.download(&idx)?, self.download(&sim)?))
    }

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
        // CSR by partition; a stable sort keeps each partition's rows in stream order.
        let mut order: Vec<usize> = (0..memberships.len()).collect();
        order.sort_by_key(|&i| memberships[i].0);
        let (mut parts, mut offsets, mut members, mut dists) =
            (Vec::new(), vec![0i32], Vec::new(), Vec::new());
        for &i in &order {
            let (p, r, dist) = memberships[i];
            if parts.last() != Some(&(p as i32)) {
                if !parts.is_empty() {
                    offsets.push(members.len() as i32);
                }
                parts.push(p as i32);
            }
            members.push(r as i32);
            dists.push(dist);
        }
        offsets.push(members.len() as i32);
        let np = parts.len() as i32;
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

    /// An empty [`GrowableRows`] of width `dim`.
    pub fn growable_rows(&self, dim: usize) -> Result<GrowableRows> {
        if dim == 0 {
            return Err(Error::param(
                "cuda launch",
                "rows need a width of at least 1",
            ));
        }
        let buf = self
            .stream
            .alloc_zeros::<f32>(16 * dim)
            .map_err(|e| cuda_err("alloc", e))?;
        Ok(GrowableRows { buf, rows: 0, dim })
    }

    /// Appends host rows (`m × dim`) to `g`, growing its device buffer when full (the old
    /// rows move device to device).
    pub fn append_rows(&self, g: &mut GrowableRows, host: &[f32]) -> Result<()> {
        let d = g.dim;
        if host.len() % d != 0 {
            return Err(Error::param(
                "cuda launch",
                format!("{} values are not whole rows of width {d}", host.len()),
            ));
        }
        let need = g.rows + host.len() / d;
        if need * d > g.buf.len() {
            let cap = need.max(2 * g.buf.len() / d).max(16);
            let mut grown = self
                .stream
                .alloc_zeros::<f32>(cap * d)
                .map_err(|e| cuda_err("alloc", e))?;
            if g.rows > 0 {
                self.stream
                    .memcpy_dtod(
                        &g.buf.slice(0..g.rows * d),
                        &mut grown.slice_mut(0..g.rows * d),
                    )
                    .map_err(|e| cuda_err("device → device copy", e))?;
            }
            g.buf = grown;
        }
        if !host.is_empty() {
            self.stream
                .memcpy_htod(host, &mut g.buf.slice_mut(g.rows * d..need * d))
                .map_err(|e| cuda_err("host → device copy", e))?;
        }
        g.rows = need;
        Ok(())
    }
}
