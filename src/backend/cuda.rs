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

use crate::backend::leaders::LeaderDecision;
use crate::calibrate::PercentileMethod;
use crate::error::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The kernel sources, embedded so NVRTC can compile them on any machine.
pub const KERNELS: &[(&str, &str)] = &[
    ("prepare", include_str!("../../kernels/prepare.cu")),
    ("nearest", include_str!("../../kernels/nearest.cu")),
    ("leaders", include_str!("../../kernels/leaders.cu")),
    ("calibrate", include_str!("../../kernels/calibrate.cu")),
    ("stats", include_str!("../../kernels/stats.cu")),
];

/// `kernels/common.cuh`: the reduction order and the top-2 type every module shares.
pub const COMMON_HEADER: &str = include_str!("../../kernels/common.cuh");

/// The line by which a kernel module includes [`COMMON_HEADER`].
const COMMON_INCLUDE: &str = "#include \"common.cuh\"";

/// `source` as NVRTC compiles it: its `#include "common.cuh"` line replaced by the header's
/// text (the embedded sources have no directory for NVRTC to search), with `#line` directives so
/// that compiler messages still name the right file and line. nvcc reads the same header from
/// `kernels/` (build.rs), so both compilers see one definition.
pub fn with_common_header(name: &str, source: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(source.len() + COMMON_HEADER.len() + 64);
    for (i, line) in source.lines().enumerate() {
        if line.trim() == COMMON_INCLUDE {
            out.push_str("#line 1 \"common.cuh\"\n");
            out.push_str(COMMON_HEADER);
            // Writing to a String cannot fail.
            let _ = writeln!(out, "#line {} \"{name}.cu\"", i + 2);
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Every kernel entry point, by module.
pub const ENTRY_POINTS: &[(&str, &[&str])] = &[
    ("prepare", &["prepare_f32", "prepare_bf16"]),
    (
        "nearest",
        &[
            "nearest_top2_f32",
            "resolve_f64",
            "recheck_partial_f64",
            "recheck_reduce",
            "to_bf16_padded",
            "nearest_top2_bf16_mma",
            "contenders_bf16_mma",
            "contenders_f64",
            "top2_merge_splits",
            "top2_rows_f32",
        ],
    ),
    (
        "leaders",
        &[
            "pair_sims_f64",
            "leaders_scan",
            "append_leaders",
            "gather_rows",
        ],
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

/// PTX that `build.rs` compiled with nvcc: `PREBUILT` lists (module, virtual architecture as
/// 10·major + minor, PTX) and is empty when no nvcc was found; `PREBUILT_WITH` names the nvcc.
pub mod prebuilt {
    include!(concat!(env!("OUT_DIR"), "/prebuilt_kernels.rs"));
}

/// The prebuilt PTX of `module` for the highest architecture not above `cc` (10·major + minor):
/// PTX of a virtual architecture is JIT-compiled by the driver for any later GPU.
pub fn prebuilt_ptx(module: &str, cc: u32) -> Option<(u32, &'static str)> {
    pick_ptx(prebuilt::PREBUILT, module, cc)
}

/// [`prebuilt_ptx`] over any table of (module, architecture, PTX).
pub fn pick_ptx<'t>(
    table: &[(&str, u32, &'t str)],
    module: &str,
    cc: u32,
) -> Option<(u32, &'t str)> {
    table
        .iter()
        .filter(|(m, arch, _)| *m == module && *arch <= cc)
        .max_by_key(|(_, arch, _)| *arch)
        .map(|&(_, arch, ptx)| (arch, ptx))
}

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

/// PTX compiled by NVRTC in this process, by (module, architecture): a device opened again
/// (or a second device of the same architecture) does not recompile.
static PTX_CACHE: Mutex<Option<HashMap<(String, String), String>>> = Mutex::new(None);

/// Set once the fallback from prebuilt PTX to NVRTC has been reported.
static FALLBACK_REPORTED: AtomicBool = AtomicBool::new(false);

/// Compiles one kernel source with NVRTC for a virtual architecture such as `compute_90`
/// (memoised per process). A `#include "common.cuh"` line in it is served from
/// [`COMMON_HEADER`] ([`with_common_header`]).
pub fn compile(name: &str, source: &str, arch: &'static str) -> Result<Ptx> {
    let key = (name.to_string(), arch.to_string());
    if let Some(src) = PTX_CACHE
        .lock()
        .map_err(|_| Error::Cuda("the PTX cache lock is poisoned".into()))?
        .as_ref()
        .and_then(|c| c.get(&key))
    {
        return Ok(Ptx::from_src(src.clone()));
    }
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
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(with_common_header(name, source), opts)
        .map_err(|e| cuda_err(&format!("compiling kernels/{name}.cu with NVRTC"), e))?;
    PTX_CACHE
        .lock()
        .map_err(|_| Error::Cuda("the PTX cache lock is poisoned".into()))?
        .get_or_insert_with(HashMap::new)
        .insert(key, ptx.to_src());
    Ok(ptx)
}

/// Where a device's kernels came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelOrigin {
    /// nvcc PTX from `build.rs`, for this virtual architecture.
    Prebuilt(u32),
    /// NVRTC at device open (no prebuilt PTX for this device).
    Nvrtc,
    /// NVRTC because the prebuilt PTX would not load; the reason.
    NvrtcAfterPrebuiltFailed(String),
}

/// A CUDA device with its context, the legacy default stream (which orders with torch's
/// default stream, so torch memory can be used directly), and the loaded kernels.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    name: String,
    compute_capability: (i32, i32),
    origin: KernelOrigin,
    /// Rows the last nearest search found ambiguous, and those it re-checked in f64 over all
    /// candidates (for benchmarks and diagnostics).
    last_ambiguous: AtomicUsize,
    last_rechecked: AtomicUsize,
    /// Bytes copied by this device's host ↔ device transfers so far (for benchmarks: they
    /// show what crosses the bus per batch).
    h2d_bytes: AtomicU64,
    d2h_bytes: AtomicU64,
    /// Totals over every nearest search so far: rows searched, rows the screen left
    /// ambiguous, and rows re-checked over all candidates.
    nearest_totals: [AtomicU64; 3],
    /// Rows prepared straight from torch memory ([`CudaDevice::prepare_torch`]) so far.
    rows_read_in_place: AtomicU64,
    /// The screen `EXEMPLAR_NEAREST_SCREEN` forces (`None`: [`ScreenKind::auto`]).
    screen_override: Option<ScreenKind>,
    /// cuBLAS on this device's stream, created at the first cuBLAS screen (or why it could
    /// not be).
    blas: std::sync::OnceLock<std::result::Result<cudarc::cublas::CudaBlas, String>>,
}

/// What the nearest searches of a [`CudaDevice`] did so far (see
/// [`CudaDevice::nearest_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NearestTotals {
    /// Rows searched.
    pub rows: u64,
    /// Rows whose screen's best and runner-up were within the screen's margin.
    pub ambiguous: u64,
    /// Rows re-checked in f64 over all candidates (too many contenders, or the FP32 screen).
    pub rechecked: u64,
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

/// Per-partition f64 direction sums resident on the device (`rows × dim`, with spare
/// capacity that is kept at zero), for a build whose statistics are updated on the GPU.
pub struct DeviceSums {
    buf: CudaSlice<f64>,
    rows: usize,
    dim: usize,
}

impl DeviceSums {
    /// Partitions held.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

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

const WARPS_PER_BLOCK: u32 = 8;

/// The largest grid height; kernels with a row per grid.y stride over it.
const MAX_GRID_Y: usize = 65_535;

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

/// The activations a prepare launch reads: a cudarc buffer, or the address of memory owned by
/// someone else (a torch tensor, see `backend::cuda_torch`) that the caller has checked holds
/// `x_len` elements of the kernel's type on this device's context.
pub(crate) enum PrepInput<'a, T> {
    Slice(&'a CudaSlice<T>),
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    Raw(u64),
}

/// The screen of [`CudaDevice::nearest_with`]; both give the same exact result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScreenKind {
    /// Tiled FP32 SGEMM with a fused top-2 (margin [`crate::linalg::screen_margin`]).
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
        let cc_num = (cc.0 * 10 + cc.1) as u32;
        let stream = ctx.default_stream();
        let load = |ptx: Ptx, module: &str| -> Result<HashMap<&'static str, CudaFunction>> {
            let m: Arc<CudaModule> = ctx
                .load_module(ptx)
                .map_err(|e| cuda_err(&format!("loading kernels/{module}.cu"), e))?;
            let entries = ENTRY_POINTS
                .iter()
                .find(|(m, _)| *m == module)
                .map(|(_, e)| *e)
                .unwrap_or(&[]);
            entries
                .iter()
                .map(|&entry| {
                    m.load_function(entry)
                        .map(|f| (entry, f))
                        .map_err(|e| cuda_err(entry, e))
                })
                .collect()
        };
        // Prebuilt PTX first (all modules, or none); NVRTC when there is none or it will not load.
        let mut functions = HashMap::new();
        let mut origin = KernelOrigin::Nvrtc;
        let prebuilt: Option<Vec<(u32, &str)>> = KERNELS
            .iter()
            .map(|(m, _)| prebuilt_ptx(m, cc_num))
            .collect();
        if let Some(prebuilt) = prebuilt {
            let loaded: Result<Vec<_>> = KERNELS
                .iter()
                .zip(&prebuilt)
                .map(|((m, _), (_, ptx))| load(Ptx::from_src(*ptx), m))
                .collect();
            match loaded {
                Ok(maps) => {
                    maps.into_iter().for_each(|m| functions.extend(m));
                    origin =
                        KernelOrigin::Prebuilt(prebuilt.iter().map(|p| p.0).min().unwrap_or(0));
                }
                Err(e) => {
                    if !FALLBACK_REPORTED.swap(true, Ordering::Relaxed) {
                        eprintln!(
                            "note: the prebuilt CUDA kernels ({}) will not load on {name} (sm_{}{}): {e}; compiling them with NVRTC instead",
                            prebuilt::PREBUILT_WITH, cc.0, cc.1
                        );
                    }
                    origin = KernelOrigin::NvrtcAfterPrebuiltFailed(e.to_string());
                }
            }
        }
        let screen_override = match std::env::var("EXEMPLAR_NEAREST_SCREEN") {
            Ok(v) => ScreenKind::parse(v.trim())?,
            Err(std::env::VarError::NotPresent) => None,
            Err(e) => return Err(Error::param("EXEMPLAR_NEAREST_SCREEN", e.to_string())),
        };
        if functions.is_empty() {
            let arch: &'static str =
                Box::leak(format!("compute_{}{}", cc.0, cc.1).into_boxed_str());
            for (module, src) in KERNELS {
                functions.extend(load(compile(module, src, arch)?, module)?);
            }
        }
        Ok(CudaDevice {
            ctx,
            stream,
            functions,
            name,
            compute_capability: cc,
            origin,
            last_ambiguous: AtomicUsize::new(0),
            h2d_bytes: AtomicU64::new(0),
            d2h_bytes: AtomicU64::new(0),
            nearest_totals: Default::default(),
            rows_read_in_place: AtomicU64::new(0),
            last_rechecked: AtomicUsize::new(0),
            screen_override,
            blas: std::sync::OnceLock::new(),
        })
    }

    /// The screen for a nearest search against `k` candidates of width `d`: the one
    /// `EXEMPLAR_NEAREST_SCREEN` forces, or [`ScreenKind::auto`]. Every screen gives the same
    /// exact result; this only chooses the speed.
    pub fn screen_for(&self, k: usize, d: usize) -> ScreenKind {
        self.screen_override
            .unwrap_or_else(|| ScreenKind::auto(self.compute_capability, k, d))
    }

    /// cuBLAS on this device's stream (created once; probed first, since cudarc panics on a
    /// missing library).
    fn blas(&self) -> Result<&cudarc::cublas::CudaBlas> {
        self.blas
            .get_or_init(|| {
                // SAFETY: a dlopen probe of libcublas by its candidate names.
                if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                    return Err("libcublas cannot be loaded".into());
                }
                cudarc::cublas::CudaBlas::new(self.stream.clone()).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::Cuda(format!("cuBLAS: {e}")))
    }

    /// Bytes copied host → device and device → host by this device's transfers so far.
    pub fn transferred_bytes(&self) -> (u64, u64) {
        (
            self.h2d_bytes.load(Ordering::Relaxed),
            self.d2h_bytes.load(Ordering::Relaxed),
        )
    }

    fn count_h2d<T>(&self, n: usize) {
        self.h2d_bytes
            .fetch_add((n * std::mem::size_of::<T>()) as u64, Ordering::Relaxed);
    }

    fn count_d2h<T>(&self, n: usize) {
        self.d2h_bytes
            .fetch_add((n * std::mem::size_of::<T>()) as u64, Ordering::Relaxed);
    }

    /// Rows prepared straight from torch memory so far: what shows that a build read the
    /// hooked tensor in place rather than a copy of it.
    pub fn rows_read_in_place(&self) -> u64 {
        self.rows_read_in_place.load(Ordering::Relaxed)
    }

    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(crate) fn count_read_in_place(&self, rows: usize) {
        self.rows_read_in_place
            .fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Totals of every nearest search so far.
    pub fn nearest_totals(&self) -> NearestTotals {
        let t = &self.nearest_totals;
        NearestTotals {
            rows: t[0].load(Ordering::Relaxed),
            ambiguous: t[1].load(Ordering::Relaxed),
            rechecked: t[2].load(Ordering::Relaxed),
        }
    }

    /// Rows of the last nearest search that its screen could not settle (resolved over their
    /// contenders with the tensor-core screen, over all candidates with the FP32 screen).
    pub fn last_ambiguous_rows(&self) -> usize {
        self.last_ambiguous.load(Ordering::Relaxed)
    }

    /// Rows of the last nearest search re-checked in f64 over all candidates.
    pub fn last_rechecked_rows(&self) -> usize {
        self.last_rechecked.load(Ordering::Relaxed)
    }

    /// Where the loaded kernels came from (prebuilt PTX or NVRTC).
    pub fn kernel_origin(&self) -> &KernelOrigin {
        &self.origin
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
        self.count_h2d::<T>(host.len());
        self.stream
            .clone_htod(host)
            .map_err(|e| cuda_err("host → device copy", e))
    }

    /// Copies a device slice to the host.
    pub fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        dev: &CudaSlice<T>,
    ) -> Result<Vec<T>> {
        self.count_d2h::<T>(dev.len());
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

    /// The exact nearest candidate of every row of `u` (`n × d`) among `e` (`k × d`, k ≥ 1):
    /// a screen (tensor cores when [`ScreenKind::auto`] picks them), then f64 resolution
    /// (ambiguous rows re-checked over all candidates). Returns ids and exact similarities,
    /// identical to [`crate::linalg::nearest_rows`]; only these per-row scalars cross to the host.
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
        let alloc_i32 = |len: usize| s.alloc_zeros::<i32>(len).map_err(|e| cuda_err("alloc", e));
        let mut sim = s.alloc_zeros::<f64>(n).map_err(|e| cuda_err("alloc", e))?;
        let mut amb = alloc_i32(n)?;
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
        unsafe { b.launch(warp_grid(n)) }.map_err(|e| cuda_err("resolve_f64", e))?;
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
            let mut pi = alloc_i32(parts * rows.len())?;
            let mut ps = s
                .alloc_zeros::<f64>(parts * rows.len())
                .map_err(|e| cuda_err("alloc", e))?;
            let cfg = LaunchConfig {
                grid_dim: (parts as u32, rows.len().min(MAX_GRID_Y) as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = s.launch_builder(self.f("recheck_partial_f64"));
            b.arg(u).arg(e).arg(&ki).arg(&di).arg(&r).arg(&nr);
            match limits {
                Some(l) => b.arg(l),
                None => b.arg(&null),
            };
            b.arg(&mut pi).arg(&mut ps);
            // SAFETY: r lists nr row indices < n; the partials hold parts·nr (grid.x = parts,
            // rows stride over grid.y).
            unsafe { b.launch(cfg) }.map_err(|e| cuda_err("recheck_partial_f64", e))?;
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
                .map_err(|e| cuda_err("recheck_reduce", e))?;
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
        check_len("rows", u.len(), n * d)?;
        check_len("candidates", e.len(), k * d)?;
        if let Some(l) = limits {
            check_len("limits", l.len(), n)?;
        }
        if n == 0 {
            return Err(Error::param(
                "cuda launch",
                "nearest needs at least one row",
            ));
        }
        if k == 0 {
            return Err(Error::param(
                "cuda launch",
                "nearest needs at least one candidate",
            ));
        }
        if screen != ScreenKind::F32 && self.compute_capability.0 < 8 {
            return Err(Error::param(
                "cuda launch",
                "the bf16 screens need compute capability 8.0 or later",
            ));
        }
        let (ni, ki, di) = (
            check_i32("rows", n)?,
            check_i32("candidates", k)?,
            check_i32("d", d)?,
        );
        let s = &self.stream;
        let alloc_i32 = |len: usize| s.alloc_zeros::<i32>(len).map_err(|e| cuda_err("alloc", e));
        let alloc_f32 = |len: usize| s.alloc_zeros::<f32>(len).map_err(|e| cuda_err("alloc", e));
        let mut idx = alloc_i32(n)?;
        let mut best = alloc_f32(n)?;
        let mut second = alloc_f32(n)?;
        let null = 0u64;
        let margin = match screen {
            ScreenKind::F32 => {
                let cfg = LaunchConfig {
                    grid_dim: ((n as u32).div_ceil(64), 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut b = s.launch_builder(self.f("nearest_top2_f32"));
                b.arg(u).arg(e).arg(&ni).arg(&ki).arg(&di);
                match limits {
                    Some(l) => b.arg(l),
                    None => b.arg(&null),
                };
                b.arg(&mut idx).arg(&mut best).arg(&mut second);
                // SAFETY: u holds n·d, e holds k·d, limits (if any) n, the outputs n each
                // (checked above); the kernel bounds every index by n, k and d.
                unsafe { b.launch(cfg) }.map_err(|e| cuda_err("nearest_top2_f32", e))?;
                crate::linalg::screen_margin(d)
            }
            ScreenKind::Bf16TensorCores => {
                let dp = d.next_multiple_of(32);
                let dpi = check_i32("padded d", dp)?;
                check_i32("padded rows", n.max(k) * dp)?;
                let ub = self.to_bf16_padded(u, n, d, dp)?;
                let eb = self.to_bf16_padded(e, k, d, dp)?;
                // Enough blocks to fill the GPU: split the candidate tiles when rows are few.
                let row_blocks = n.div_ceil(128);
                let tiles = k.div_ceil(128);
                let splits = (264usize.div_ceil(row_blocks)).clamp(1, tiles.min(64));
                let mut pi = alloc_i32(splits * n)?;
                let mut pb = alloc_f32(splits * n)?;
                let mut ps = alloc_f32(splits * n)?;
                let cfg = LaunchConfig {
                    grid_dim: (row_blocks as u32, splits as u32, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
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
                unsafe { b.launch(cfg) }.map_err(|e| cuda_err("nearest_top2_bf16_mma", e))?;
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
                    .map_err(|e| cuda_err("top2_merge_splits", e))?;
                bf16_screen_margin(d)
            }
            ScreenKind::CublasBf16 => {
                use cudarc::cublas::sys::cudaDataType_t;
                use cudarc::cublas::sys::{
                    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t,
                };
                use cudarc::driver::{DevicePtr, DevicePtrMut};
                let dp = d.next_multiple_of(32);
                let dpi = check_i32("padded d", dp)?;
                check_i32("padded rows", n.max(k) * dp)?;
                let blas = self.blas()?;
                let ub = self.to_bf16_padded(u, n, d, dp)?;
                let eb = self.to_bf16_padded(e, k, d, dp)?;
                // The similarity matrix a tile of rows at a time: at most 2^26 f32 (256 MiB).
                let tile = ((1usize << 26) / k).clamp(1, n);
                let mut c = alloc_f32(tile * k)?;
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
                        .map_err(|e| cuda_err("cublasGemmEx (bf16 screen)", e))?;
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
                    unsafe { b.launch(warp_grid(t)) }.map_err(|e| cuda_err("top2_rows_f32", e))?;
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
        let mut count = s.alloc_zeros::<i32>(n2).map_err(|e| cuda_err("alloc", e))?;
        let mut list = s
            .alloc_zeros::<i32>(n2 * MAX_CONT)
            .map_err(|e| cuda_err("alloc", e))?;
        let (n2i, ki, dpi, di, mc) = (n2 as i32, k as i32, dp as i32, d as i32, MAX_CONT as i32);
        let row_blocks = n2.div_ceil(128);
        let splits = (264usize.div_ceil(row_blocks)).clamp(1, k.div_ceil(128).min(64));
        let cfg = LaunchConfig {
            grid_dim: (row_blocks as u32, splits as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
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
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("contenders_bf16_mma", e))?;
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
        let cfg = LaunchConfig {
            grid_dim: (n2.min(MAX_GRID_Y) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: rows are < n (idx, sim and u hold n rows), listed candidates are < k; rows
        // stride over grid.x; overflowing lists are not read.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("contenders_f64", e))?;
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
        check_len("rows", x.len(), n * d)?;
        if dp < d || n == 0 {
            return Err(Error::param("cuda launch", "bf16 copy: bad shape"));
        }
        let mut out = self
            .stream
            .alloc_zeros::<u16>(n * dp)
            .map_err(|e| cuda_err("alloc", e))?;
        let (ni, di, dpi) = (
            check_i32("rows", n)?,
            check_i32("d", d)?,
            check_i32("dp", dp)?,
        );
        let cfg = LaunchConfig {
            grid_dim: ((dp as u32).div_ceil(256), n.min(MAX_GRID_Y) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(self.f("to_bf16_padded"));
        b.arg(x).arg(&ni).arg(&di).arg(&dpi).arg(&mut out);
        // SAFETY: x holds n·d f32, out n·dp u16; grid = (dp columns, n rows), bounds-checked.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("to_bf16_padded", e))?;
        Ok(out)
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

    /// Ensures `g` can take `extra` more rows without reallocating (the old rows move device
    /// to device when it grows; capacity at least doubles).
    pub fn reserve_rows(&self, g: &mut GrowableRows, extra: usize) -> Result<()> {
        let d = g.dim;
        let need = g.rows + extra;
        if need * d <= g.buf.len() {
            return Ok(());
        }
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
        Ok(())
    }

    /// Phase B on the device: sequential leader clustering of the unit rows `w` (`m × d`,
    /// stream order) with threshold `theta`, the twin of
    /// [`crate::backend::leaders::leaders_cpu`] (identical decisions and f64 similarities).
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
        check_len("rows", w.len(), m * d)?;
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
        let (_, di) = (check_i32("rows", m)?, check_i32("d", d)?);
        check_i32("exemplar values", (g.rows + m) * d)?;
        let s = &self.stream;
        let first = g.rows;
        let mut ord = s.alloc_zeros::<i32>(m).map_err(|e| cuda_err("alloc", e))?;
        let mut sim = s.alloc_zeros::<f64>(m).map_err(|e| cuda_err("alloc", e))?;
        let mut is_leader = s.alloc_zeros::<i32>(m).map_err(|e| cuda_err("alloc", e))?;
        let cmax = C.min(m);
        let mut pair = s
            .alloc_zeros::<f64>(cmax * cmax)
            .map_err(|e| cuda_err("alloc", e))?;
        let mut leader_rows = s
            .alloc_zeros::<i32>(cmax)
            .map_err(|e| cuda_err("alloc", e))?;
        let mut count = s.alloc_zeros::<i32>(1).map_err(|e| cuda_err("alloc", e))?;
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
                unsafe { b.launch(warp_grid(pairs)) }.map_err(|e| cuda_err("pair_sims_f64", e))?;
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
            unsafe { b.launch(cfg) }.map_err(|e| cuda_err("leaders_scan", e))?;
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
            let cfg = LaunchConfig {
                grid_dim: ((d as u32).div_ceil(256), c as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the kernel copies count − base ≤ c rows (the scan adds at most c), each of
            // d values, from chunk rows leader_rows[i] < c to rows row0 + i < g.rows + c, within
            // the capacity reserved above.
            unsafe { b.launch(cfg) }.map_err(|e| cuda_err("append_leaders", e))?;
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
        let n_u = u.len() / d.max(1);
        if d == 0 || u.len() % d != 0 {
            return Err(Error::param("cuda launch", "gather: rows are not n × d"));
        }
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= n_u) {
            return Err(Error::param(
                "cuda launch",
                format!("gather index {r} is outside the {n_u} rows"),
            ));
        }
        if rows.is_empty() {
            return Err(Error::param("cuda launch", "gather needs at least one row"));
        }
        let (di, ni) = (check_i32("d", d)?, check_i32("rows", rows.len())?);
        let idx: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        let idx = self.upload(&idx)?;
        let mut out = self
            .stream
            .alloc_zeros::<f32>(rows.len() * d)
            .map_err(|e| cuda_err("alloc", e))?;
        let mut b = self.stream.launch_builder(self.f("gather_rows"));
        b.arg(u).arg(&di).arg(&idx).arg(&ni).arg(&mut out);
        let cfg = LaunchConfig {
            grid_dim: (
                (d as u32).div_ceil(256),
                rows.len().min(MAX_GRID_Y) as u32,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every index is < n_u (checked), out holds rows·d.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("gather_rows", e))?;
        Ok(out)
    }

    /// Appends rows already on the device (`m × dim`, e.g. a prepared batch row) to `g`,
    /// growing it when full; nothing crosses to the host.
    pub fn append_device_rows(&self, g: &mut GrowableRows, rows: &CudaView<'_, f32>) -> Result<()> {
        let d = g.dim;
        if rows.len() % d != 0 {
            return Err(Error::param(
                "cuda launch",
                format!("{} values are not whole rows of width {d}", rows.len()),
            ));
        }
        let m = rows.len() / d;
        if m == 0 {
            return Ok(());
        }
        self.reserve_rows(g, m)?;
        self.stream
            .memcpy_dtod(rows, &mut g.buf.slice_mut(g.rows * d..(g.rows + m) * d))
            .map_err(|e| cuda_err("device → device copy", e))?;
        g.rows += m;
        Ok(())
    }

    /// Copies a device view to the host.
    pub fn download_view<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        v: &CudaView<'_, T>,
    ) -> Result<Vec<T>> {
        self.count_d2h::<T>(v.len());
        self.stream
            .clone_dtoh(v)
            .map_err(|e| cuda_err("device → host copy", e))
    }

    /// Per-partition f64 direction sums on the device, initialised from host sums (`K × dim`).
    pub fn upload_sums(&self, host: &[f64], dim: usize) -> Result<DeviceSums> {
        if dim == 0 || host.len() % dim != 0 {
            return Err(Error::param(
                "cuda launch",
                format!("{} sums are not whole rows of width {dim}", host.len()),
            ));
        }
        let rows = host.len() / dim;
        let mut buf = self
            .stream
            .alloc_zeros::<f64>(rows.max(16) * dim)
            .map_err(|e| cuda_err("alloc", e))?;
        if rows > 0 {
            self.count_h2d::<f64>(host.len());
            self.stream
                .memcpy_htod(host, &mut buf.slice_mut(0..rows * dim))
                .map_err(|e| cuda_err("host → device copy", e))?;
        }
        Ok(DeviceSums { buf, rows, dim })
    }

    /// Grows `s` to `rows` partitions; the new ones start at zero (capacity at least doubles,
    /// old sums move device to device).
    pub fn grow_sums(&self, s: &mut DeviceSums, rows: usize) -> Result<()> {
        let d = s.dim;
        if rows <= s.rows {
            return Ok(());
        }
        if rows * d > s.buf.len() {
            let cap = rows.max(2 * s.buf.len() / d);
            let mut grown = self
                .stream
                .alloc_zeros::<f64>(cap * d)
                .map_err(|e| cuda_err("alloc", e))?;
            if s.rows > 0 {
                self.stream
                    .memcpy_dtod(
                        &s.buf.slice(0..s.rows * d),
                        &mut grown.slice_mut(0..s.rows * d),
                    )
                    .map_err(|e| cuda_err("device → device copy", e))?;
            }
            s.buf = grown;
        } else {
            // Rows past the old count may hold sums of partitions since merged away.
            self.stream
                .memset_zeros(&mut s.buf.slice_mut(s.rows * d..rows * d))
                .map_err(|e| cuda_err("memset", e))?;
        }
        s.rows = rows;
        Ok(())
    }

    /// The sums of every partition in `s`, `rows × dim`.
    pub fn download_sums(&self, s: &DeviceSums) -> Result<Vec<f64>> {
        self.download_view(&s.buf.slice(0..s.rows * s.dim))
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
        self.reserve_rows(g, host.len() / d)?;
        if !host.is_empty() {
            self.count_h2d::<f32>(host.len());
            self.stream
                .memcpy_htod(host, &mut g.buf.slice_mut(g.rows * d..need * d))
                .map_err(|e| cuda_err("host → device copy", e))?;
        }
        g.rows = need;
        Ok(())
    }
}
