//! The CUDA backend (feature `cuda`), one file per kernel module the way candle splits its
//! `cuda_backend/`:
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | probing that never panics, [`CudaDevice`] (open, transfers, counters) |
//! | `compile.rs` | the embedded kernel sources and entry points, prebuilt PTX from `build.rs`, NVRTC and its per-process cache |
//! | `launch.rs` | shape checks, grid shapes and errors shared by every launcher |
//! | `buffers.rs` | [`GrowableRows`] (the exemplar matrix), [`DeviceSums`] (per-partition direction sums) |
//! | `prepare.rs`, `nearest.rs`, `leaders.rs`, `calibrate.rs`, `stats.rs` | the launchers of `kernels/<name>.cu`, the crate's only kernel launch sites |
//! | `torch.rs` | (feature `torch`) a borrowed view of a CUDA tch tensor for the prepare kernel ([`CudaDevice::prepare_raw`] reads any device address, e.g. a DLPack tensor's) |
//!
//! Every launcher checks lengths and shapes before its `unsafe` launch. Kernels and their CPU
//! twins:
//!
//! | kernel (`kernels/`) | CPU twin |
//! |---|---|
//! | `prepare_f32`, `prepare_bf16` | `geometry::directions` (bit-identical) |
//! | `nearest_top2_f32` + `resolve_f64` + `recheck_f64` | `cpu::screen_rows` + `Screen::resolve` (identical ids and f64 similarities) |
//! | `pair_sims_f64` + `leaders_scan` + `append_leaders` | `cpu::leaders_cpu` (identical decisions) |
//! | `pairs_histogram` + `pairs_window` + `pairs_exact_f64` | `cpu::pairwise_distance_percentile` (identical value) |
//! | `stats_direction_sums`, `stats_counts_and_distances` | `Builder::record_member`'s sums (bit-identical) |

mod buffers;
mod calibrate;
mod compile;
mod launch;
mod leaders;
mod nearest;
mod prepare;
mod stats;
#[cfg(feature = "torch")]
pub mod torch;

pub use buffers::{DeviceSums, GrowableRows};
pub use compile::{
    compile, pick_ptx, prebuilt, prebuilt_ptx, with_common_header, KernelOrigin, COMMON_HEADER,
    ENTRY_POINTS, KERNELS,
};
pub use nearest::{bf16_screen_margin, ScreenKind};

pub use crate::error::CudaError;

use crate::error::{Error, Result};
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, ValidAsZeroBits,
};
use launch::driver;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

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

/// The CUDA context that owns device address `ptr`. This only asks the driver about the
/// address (nothing is read or written there), which is defined for any value: an address the
/// driver does not know is an error. Without a CUDA driver it is [`Error::CudaUnavailable`].
pub fn pointer_context(ptr: u64) -> Result<sys::CUcontext> {
    if !driver_available() {
        return Err(Error::CudaUnavailable(
            "the CUDA driver (libcuda.so) cannot be loaded".into(),
        ));
    }
    let mut ctx: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: the driver library is loaded (probed above, so cudarc's loader cannot panic); the
    // attribute CONTEXT writes one CUcontext to `data`, which points at `ctx`; `ptr` is only
    // looked up, never dereferenced.
    let r = unsafe {
        sys::cuPointerGetAttribute(
            &mut ctx as *mut sys::CUcontext as *mut std::ffi::c_void,
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_CONTEXT,
            ptr,
        )
    };
    r.result().map_err(driver("pointer context query"))?;
    Ok(ctx)
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
    /// not be: `None` when libcublas cannot be loaded).
    blas: std::sync::OnceLock<
        std::result::Result<cudarc::cublas::CudaBlas, Option<cudarc::cublas::result::CublasError>>,
    >,
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
        let name = ctx.name().map_err(driver("device name query"))?;
        let cc = ctx
            .compute_capability()
            .map_err(driver("compute capability query"))?;
        let screen_override = match std::env::var("EXEMPLAR_NEAREST_SCREEN") {
            Ok(v) => ScreenKind::parse(v.trim())?,
            Err(std::env::VarError::NotPresent) => None,
            Err(e) => return Err(Error::param("EXEMPLAR_NEAREST_SCREEN", e.to_string())),
        };
        let stream = ctx.default_stream();
        let (functions, origin) = compile::load_kernels(&ctx, &name, cc)?;
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

    /// cuBLAS on this device's stream (created once; probed first, since cudarc panics on a
    /// missing library).
    fn blas(&self) -> Result<&cudarc::cublas::CudaBlas> {
        self.blas
            .get_or_init(|| {
                // SAFETY: a dlopen probe of libcublas by its candidate names.
                if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                    return Err(None);
                }
                cudarc::cublas::CudaBlas::new(self.stream.clone()).map_err(Some)
            })
            .as_ref()
            .map_err(|e| {
                match *e {
                    None => CudaError::CublasMissing,
                    Some(source) => CudaError::Cublas {
                        op: "handle creation",
                        source,
                    },
                }
                .into()
            })
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

    /// The loaded kernel `name` (every entry point of [`ENTRY_POINTS`] is loaded by `open`).
    fn f(&self, name: &str) -> &CudaFunction {
        &self.functions[name]
    }

    /// `len` zeroed elements on the device.
    fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(len)
            .map_err(driver("allocation"))
    }

    /// Copies a host slice to the device.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.count_h2d::<T>(host.len());
        self.stream
            .clone_htod(host)
            .map_err(driver("host → device copy"))
    }

    /// Copies a device slice to the host.
    pub fn download<T: DeviceRepr + Default + Clone>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        self.count_d2h::<T>(dev.len());
        self.stream
            .clone_dtoh(dev)
            .map_err(driver("device → host copy"))
    }

    /// Copies a device view to the host.
    pub fn download_view<T: DeviceRepr + Default + Clone>(
        &self,
        v: &CudaView<'_, T>,
    ) -> Result<Vec<T>> {
        self.count_d2h::<T>(v.len());
        self.stream
            .clone_dtoh(v)
            .map_err(driver("device → host copy"))
    }
}
