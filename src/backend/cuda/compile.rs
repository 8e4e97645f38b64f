//! Kernel compilation: the embedded sources of `kernels/*.cu` and their entry points, the PTX
//! that `build.rs` prebuilt with nvcc, NVRTC (with `kernels/common.cuh` put in place of its
//! include) and its per-process cache, and loading a device's modules.

use super::nvrtc_available;
use crate::error::{CudaError, Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The kernel sources, embedded so NVRTC can compile them on any machine.
pub const KERNELS: &[(&str, &str)] = &[
    ("prepare", include_str!("../../../kernels/prepare.cu")),
    ("nearest", include_str!("../../../kernels/nearest.cu")),
    ("leaders", include_str!("../../../kernels/leaders.cu")),
    ("calibrate", include_str!("../../../kernels/calibrate.cu")),
    ("stats", include_str!("../../../kernels/stats.cu")),
];

/// `kernels/common.cuh`: the reduction order and the top-2 type every module shares.
pub const COMMON_HEADER: &str = include_str!("../../../kernels/common.cuh");

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
    // A panic while the lock was held cannot leave a half-written entry (an insert is one
    // call), so a poisoned cache is still good.
    let cache = || PTX_CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(src) = cache().as_ref().and_then(|c| c.get(&key)) {
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
        .map_err(|source| CudaError::Compile {
            module: name.to_string(),
            source,
        })?;
    cache()
        .get_or_insert_with(HashMap::new)
        .insert(key, ptx.to_src());
    Ok(ptx)
}

/// A device's kernels, by entry point.
pub(super) type Functions = HashMap<&'static str, CudaFunction>;

/// `compute_XY` for compute capability (X, Y), as the `'static` string NVRTC's options take
/// (one leaked string per unusual architecture and process).
fn arch_name(cc: (i32, i32)) -> &'static str {
    match cc {
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 7) => "compute_87",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        _ => {
            static OTHERS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
            let want = format!("compute_{}{}", cc.0, cc.1);
            let mut others = OTHERS.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(&a) = others.iter().find(|a| **a == want) {
                return a;
            }
            let a: &'static str = Box::leak(want.into_boxed_str());
            others.push(a);
            a
        }
    }
}

/// Loads one module's PTX on `ctx` and looks up its entry points.
fn load_module(ctx: &Arc<CudaContext>, ptx: Ptx, module: &'static str) -> Result<Functions> {
    let m: Arc<CudaModule> = ctx.load_module(ptx).map_err(|source| CudaError::Load {
        module,
        entry: None,
        source,
    })?;
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
                .map_err(|source| {
                    CudaError::Load {
                        module,
                        entry: Some(entry),
                        source,
                    }
                    .into()
                })
        })
        .collect()
}

/// Every kernel of [`KERNELS`] loaded on `ctx` (device `name` of compute capability `cc`): the
/// prebuilt PTX of the highest architecture not above the device's, for all modules or none;
/// NVRTC when there is none or it will not load (reported once per process on stderr).
pub(super) fn load_kernels(
    ctx: &Arc<CudaContext>,
    name: &str,
    cc: (i32, i32),
) -> Result<(Functions, KernelOrigin)> {
    let cc_num = (cc.0 * 10 + cc.1) as u32;
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
            .map(|((m, _), (_, ptx))| load_module(ctx, Ptx::from_src(*ptx), m))
            .collect();
        match loaded {
            Ok(maps) => {
                maps.into_iter().for_each(|m| functions.extend(m));
                origin = KernelOrigin::Prebuilt(prebuilt.iter().map(|p| p.0).min().unwrap_or(0));
            }
            Err(e) => {
                let e = error_chain(&e);
                if !FALLBACK_REPORTED.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "note: the prebuilt CUDA kernels ({}) will not load on {name} (sm_{}{}): {e}; compiling them with NVRTC instead",
                        prebuilt::PREBUILT_WITH, cc.0, cc.1
                    );
                }
                origin = KernelOrigin::NvrtcAfterPrebuiltFailed(e);
            }
        }
    }
    if functions.is_empty() {
        let arch = arch_name(cc);
        for (module, src) in KERNELS {
            functions.extend(load_module(ctx, compile(module, src, arch)?, module)?);
        }
    }
    Ok((functions, origin))
}

/// `e` and its sources, joined by ": " (what one line of a report says).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Where a device's kernels came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelOrigin {
    /// nvcc PTX from `build.rs`, for this virtual architecture.
    Prebuilt(u32),
    /// NVRTC at device open (no prebuilt PTX for this device).
    Nvrtc,
    /// NVRTC because the prebuilt PTX would not load; the reason (the error and its sources).
    NvrtcAfterPrebuiltFailed(String),
}
