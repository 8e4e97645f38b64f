//! Every CUDA kernel compiles with NVRTC, on any machine where libnvrtc loads (no GPU needed:
//! the torch 2.11 wheel ships libnvrtc.so.13, and scripts/test.sh puts it on the library path
//! and sets EXEMPLAR_REQUIRE_NVRTC=1 so this test cannot skip silently in CI).
#![cfg(feature = "cuda")]

use exemplar::backend::cuda::{compile, driver_available, nvrtc_available, ENTRY_POINTS, KERNELS};

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
