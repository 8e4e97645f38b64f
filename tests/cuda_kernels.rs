//! Every CUDA kernel compiles with NVRTC, on any machine where libnvrtc loads (no GPU needed:
//! the torch 2.11 wheel ships libnvrtc.so.13, and scripts/test.sh puts it on the library path
//! and sets EXEMPLAR_REQUIRE_NVRTC=1 so this test cannot skip silently in CI).
#![cfg(feature = "cuda")]

use exemplar::backend::cuda::{
    compile, driver_available, nvrtc_available, with_common_header, CudaError, ENTRY_POINTS,
    KERNELS,
};

#[test]
fn every_kernel_compiles_with_nvrtc_for_ampere_and_hopper() {
    if !nvrtc_available() {
        if std::env::var_os("EXEMPLAR_REQUIRE_NVRTC").is_some() {
            panic!("EXEMPLAR_REQUIRE_NVRTC is set but libnvrtc.so.13 cannot be loaded");
        }
        eprintln!("skipping: libnvrtc.so.13 cannot be loaded (scripts/test.sh sets LD_LIBRARY_PATH to the torch wheel's nvidia/cu13/lib)");
        return;
    }
    for ((name, src), (_, entries)) in KERNELS.iter().zip(ENTRY_POINTS) {
        for arch in ["compute_80", "compute_90"] {
            let ptx = compile(name, src, arch).unwrap_or_else(|e| panic!("{name} for {arch}: {e}"));
            let text = ptx.to_src();
            for e in entries.iter() {
                assert!(
                    text.contains(&format!(".entry {e}(")),
                    "{name}.cu for {arch}: no entry point {e} in the PTX"
                );
            }
        }
    }
}

#[test]
fn opening_a_device_without_a_driver_is_a_typed_error_not_a_panic() {
    if driver_available() {
        eprintln!(
            "skipping: a CUDA driver is present here (the GPU parity tests cover this machine)"
        );
        return;
    }
    match exemplar::backend::cuda::CudaDevice::open(0) {
        Err(exemplar::Error::CudaUnavailable(msg)) => assert!(msg.contains("driver"), "{msg}"),
        Err(e) => panic!("expected CudaUnavailable, got {e}"),
        Ok(_) => panic!("no driver, yet a device opened"),
    }
}

#[test]
fn the_tensor_core_screen_really_uses_mma_and_the_ptx_cache_returns_the_same_text() {
    if !nvrtc_available() {
        if std::env::var_os("EXEMPLAR_REQUIRE_NVRTC").is_some() {
            panic!("EXEMPLAR_REQUIRE_NVRTC is set but libnvrtc.so.13 cannot be loaded");
        }
        eprintln!("skipping: libnvrtc.so.13 cannot be loaded");
        return;
    }
    let src = KERNELS.iter().find(|(m, _)| *m == "nearest").unwrap().1;
    let ptx = compile("nearest", src, "compute_80").unwrap().to_src();
    // The bf16 screen's entry contains the tensor-core instruction.
    let entry = ptx
        .split(".entry ")
        .find(|s| s.starts_with("nearest_top2_bf16_mma("))
        .expect("entry point");
    assert!(
        entry.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"),
        "no bf16 mma in nearest_top2_bf16_mma"
    );
    // A second compile is served from the process cache: the identical PTX.
    assert_eq!(compile("nearest", src, "compute_80").unwrap().to_src(), ptx);
}

#[test]
fn prebuilt_ptx_is_chosen_for_the_highest_architecture_the_device_can_run() {
    use exemplar::backend::cuda::{pick_ptx, prebuilt, prebuilt_ptx};
    let table = [
        ("nearest", 80, "A"),
        ("nearest", 90, "B"),
        ("leaders", 80, "C"),
    ];
    assert_eq!(pick_ptx(&table, "nearest", 86), Some((80, "A")));
    assert_eq!(pick_ptx(&table, "nearest", 90), Some((90, "B")));
    assert_eq!(pick_ptx(&table, "nearest", 100), Some((90, "B")));
    assert_eq!(
        pick_ptx(&table, "nearest", 75),
        None,
        "no PTX for an older GPU"
    );
    assert_eq!(pick_ptx(&table, "stats", 90), None);
    // What build.rs embedded: nothing without nvcc; with nvcc, every module, each PTX holding
    // all of its entry points.
    if prebuilt::PREBUILT_WITH == "none" {
        assert!(prebuilt::PREBUILT.is_empty());
        assert_eq!(prebuilt_ptx("nearest", 90), None);
        eprintln!("no nvcc at build time: kernels compile with NVRTC when a device opens");
    } else {
        for (module, entries) in ENTRY_POINTS {
            let (_, ptx) = prebuilt_ptx(module, 90).expect("every module is prebuilt");
            for e in entries.iter() {
                assert!(ptx.contains(&format!(".entry {e}(")), "{module}: {e}");
            }
        }
    }
}

/// `EXEMPLAR_NEAREST_SCREEN` values: each screen by name, `auto`, and a clear error otherwise.
#[test]
fn screen_names_parse_and_a_bad_one_is_named() {
    use exemplar::backend::cuda::ScreenKind;
    assert_eq!(ScreenKind::parse("auto").unwrap(), None);
    assert_eq!(ScreenKind::parse("f32").unwrap(), Some(ScreenKind::F32));
    assert_eq!(
        ScreenKind::parse("bf16-mma").unwrap(),
        Some(ScreenKind::Bf16TensorCores)
    );
    assert_eq!(
        ScreenKind::parse("cublas-bf16").unwrap(),
        Some(ScreenKind::CublasBf16)
    );
    let e = ScreenKind::parse("tf32").unwrap_err().to_string();
    assert!(
        e.contains("EXEMPLAR_NEAREST_SCREEN") && e.contains("tf32"),
        "{e}"
    );
}

/// The reduction order is defined once, in kernels/common.cuh: every module includes it, none
/// repeats the warp sum, and NVRTC gets the header in place of the include line, with `#line`
/// markers so its messages name the right file and line.
#[test]
fn the_reduction_order_is_defined_once_and_reaches_nvrtc_through_the_include_line() {
    for (name, src) in KERNELS {
        assert!(
            src.contains("#include \"common.cuh\""),
            "kernels/{name}.cu does not include common.cuh"
        );
        assert!(
            !src.contains("+= __shfl_down_sync"),
            "kernels/{name}.cu has its own warp sum; use common.cuh's warp_sum_f64 / warp_dot_f64"
        );
    }
    let out = with_common_header("m", "// one\n#include \"common.cuh\"\nint x;\n");
    assert!(
        !out.lines().any(|l| l.trim() == "#include \"common.cuh\""),
        "{out}"
    );
    assert!(out.contains("warp_sum_f64") && out.contains("struct Top2"));
    let (head, tail) = out
        .split_once("#line 3 \"m.cu\"\n")
        .expect("a #line back to m.cu");
    assert!(
        head.starts_with("// one\n#line 1 \"common.cuh\"\n"),
        "{head}"
    );
    assert_eq!(tail, "int x;\n");
    // A source without the include is left as it is.
    assert_eq!(with_common_header("m", "int y;\n"), "int y;\n");
}

/// A kernel that does not compile is a typed error that keeps NVRTC's error, with its log, as
/// the source (not a string).
#[test]
fn a_compile_failure_is_a_typed_error_with_nvrtc_s_error_as_its_source() {
    if !nvrtc_available() {
        if std::env::var_os("EXEMPLAR_REQUIRE_NVRTC").is_some() {
            panic!("EXEMPLAR_REQUIRE_NVRTC is set but libnvrtc.so.13 cannot be loaded");
        }
        eprintln!("skipping: libnvrtc.so.13 cannot be loaded");
        return;
    }
    let src = "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }";
    let err = compile("broken", src, "compute_80").unwrap_err();
    let source = std::error::Error::source(&err).expect("the NVRTC error is kept as the source");
    assert!(
        source.to_string().contains("undefined_name"),
        "the source carries NVRTC's log: {source}"
    );
    match err {
        exemplar::Error::Cuda(CudaError::Compile { module, .. }) => assert_eq!(module, "broken"),
        e => panic!("expected CudaError::Compile, got {e:?}"),
    }
}
