//! Build script: with the `cuda` feature and an `nvcc` (env `NVCC`, else on `PATH`), compiles
//! `kernels/*.cu` to PTX for each virtual architecture of `EXEMPLAR_CUDA_ARCHS` (default
//! `80,90`) into `OUT_DIR`, and writes `OUT_DIR/prebuilt_kernels.rs`, the table
//! `src/backend/cuda/compile.rs` embeds. Without nvcc (or without the feature) the table is
//! empty and the kernels compile with NVRTC when a device opens. A failing nvcc is a warning,
//! never a build failure: NVRTC remains the fallback.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const MODULES: &[&str] = &["prepare", "nearest", "leaders", "calibrate", "stats"];

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("nvcc"))
        .find(|p| p.is_file())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for m in MODULES {
        println!("cargo:rerun-if-changed=kernels/{m}.cu");
    }
    println!("cargo:rerun-if-changed=kernels/common.cuh");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=EXEMPLAR_CUDA_ARCHS");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut table = String::from(
        "/// Prebuilt PTX: (module, virtual architecture as 10·major + minor, PTX text).\n\
         pub const PREBUILT: &[(&str, u32, &str)] = &[\n",
    );
    let mut used = String::from("none");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        if let Some(nvcc) = find_nvcc() {
            let archs: Vec<u32> = std::env::var("EXEMPLAR_CUDA_ARCHS")
                .unwrap_or_else(|_| "80,90".into())
                .split(',')
                .filter_map(|a| a.trim().parse().ok())
                .collect();
            match prebuild(&nvcc, &archs, &out) {
                Ok(entries) => {
                    for (m, arch, file) in &entries {
                        writeln!(
                            table,
                            "    ({m:?}, {arch}, include_str!(concat!(env!(\"OUT_DIR\"), \"/{file}\"))),"
                        )
                        .unwrap();
                    }
                    used = format!("{} (compute_{archs:?})", nvcc.display());
                }
                Err(e) => println!(
                    "cargo:warning=nvcc could not prebuild the CUDA kernels ({e}); they will compile with NVRTC at run time"
                ),
            }
        }
    }
    table.push_str("];\n");
    writeln!(
        table,
        "/// The nvcc that built [`PREBUILT`], or \"none\".\npub const PREBUILT_WITH: &str = {used:?};"
    )
    .unwrap();
    std::fs::write(out.join("prebuilt_kernels.rs"), table).expect("write prebuilt_kernels.rs");
}

/// Compiles every module for every architecture; all or nothing.
fn prebuild(nvcc: &Path, archs: &[u32], out: &Path) -> Result<Vec<(String, u32, String)>, String> {
    if archs.is_empty() {
        return Err("EXEMPLAR_CUDA_ARCHS lists no architecture".into());
    }
    let mut entries = Vec::new();
    for m in MODULES {
        for &arch in archs {
            let file = format!("{m}.compute_{arch}.ptx");
            // `#include "common.cuh"` is found next to the .cu file (nvcc searches the including
            // file's directory for quoted includes); `-I kernels` says so explicitly.
            let status = Command::new(nvcc)
                .args(["-ptx", "-std=c++17", "-O3", "-I", "kernels"])
                .arg(format!("-arch=compute_{arch}"))
                .arg(format!("kernels/{m}.cu"))
                .arg("-o")
                .arg(out.join(&file))
                .status()
                .map_err(|e| format!("running {}: {e}", nvcc.display()))?;
            if !status.success() {
                return Err(format!("kernels/{m}.cu for compute_{arch}: {status}"));
            }
            entries.push((m.to_string(), arch, file));
        }
    }
    Ok(entries)
}
