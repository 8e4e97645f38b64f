//! GPU benchmarks of the CUDA backend (issue 3), run by `scripts/gpu-run.sh run` on a GPU
//! machine (without a CUDA device it says so and exits):
//!
//! * nearest (screen + exact resolution, ids and similarities back on the host) at
//!   B = 16,384 rows, D = 2304, K ∈ {1,000; 5,000; 20,000}, against cuBLAS SGEMM of the same
//!   shape (a lower bound of "GEMM + argmax": the argmax only adds) and the device's bf16 GEMM
//!   rate on that shape;
//! * the exact calibration percentile at 16,384 rows;
//! * a whole build (phase A on the GPU) of 8 batches of 16,384 rows of clustered data.
//!
//! Sizes: EXEMPLAR_GPU_BENCH_K ("1000,5000,20000"), EXEMPLAR_GPU_BENCH_ROWS (16384).

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use exemplar::backend::cuda::{driver_available, CudaDevice};
use exemplar::backend::Backend;
use exemplar::build::{BuildConfig, Builder};
use exemplar::calibrate::PercentileMethod;
use exemplar::data::ActivationBatch;
use std::sync::Arc;
use std::time::Instant;

mod common;
use common::*;

fn best_of(reps: usize, dev: &CudaDevice, mut f: impl FnMut()) -> f64 {
    f();
    dev.stream().synchronize().unwrap();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            dev.stream().synchronize().unwrap();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// cuBLAS: row-major C (b × k) = U (b × d) · Eᵀ, as column-major Cᵀ = E · Uᵀ.
fn gemm_config<T>(b: usize, k: usize, d: usize, one: T, zero: T) -> GemmConfig<T> {
    GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: k as i32,
        n: b as i32,
        k: d as i32,
        alpha: one,
        lda: d as i32,
        ldb: d as i32,
        beta: zero,
        ldc: k as i32,
    }
}

fn main() {
    if !driver_available() {
        println!("no CUDA driver on this machine: nothing to measure (run on a GPU via scripts/gpu-run.sh)");
        return;
    }
    let dev = CudaDevice::open(0).expect("device 0");
    println!(
        "device: {} (sm_{}{})",
        dev.name(),
        dev.compute_capability().0,
        dev.compute_capability().1
    );
    let d = env_usize("EXEMPLAR_GPU_BENCH_DIM", 2304);
    let b = env_usize("EXEMPLAR_GPU_BENCH_ROWS", 16384);
    let ks = env_list("EXEMPLAR_GPU_BENCH_K", &[1000, 5000, 20000]);
    let blas =
        CudaBlas::new(dev.stream().clone()).expect("cuBLAS (libcublas.so.13 on LD_LIBRARY_PATH)");
    let u = random_unit_rows(b, d, 1);
    let du = dev.upload(&u).unwrap();
    let du16 = dev
        .upload(
            &u.iter()
                .map(|&x| half::bf16::from_f32(x))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    for &k in &ks {
        let e = random_unit_rows(k, d, 2);
        let de = dev.upload(&e).unwrap();
        let de16 = dev
            .upload(
                &e.iter()
                    .map(|&x| half::bf16::from_f32(x))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let flop = 2.0 * (b * k * d) as f64;
        let mut c32 = dev.stream().alloc_zeros::<f32>(b * k).unwrap();
        let t_sgemm = best_of(10, &dev, || {
            // SAFETY: the shapes in the config match the buffers: du b·d, de k·d, c32 b·k.
            unsafe { blas.gemm(gemm_config(b, k, d, 1.0f32, 0.0f32), &de, &du, &mut c32) }.unwrap();
        });
        drop(c32);
        let mut c16 = dev.stream().alloc_zeros::<half::bf16>(b * k).unwrap();
        let one = half::bf16::from_f32(1.0);
        let t_bf16 = best_of(10, &dev, || {
            // SAFETY: as above, in bf16.
            unsafe {
                blas.gemm(
                    gemm_config(b, k, d, one, half::bf16::ZERO),
                    &de16,
                    &du16,
                    &mut c16,
                )
            }
            .unwrap();
        });
        drop(c16);
        let t_nearest = best_of(5, &dev, || {
            dev.nearest(&du, b, &de.slice(..), k, d).unwrap();
        });
        println!(
            "nearest B={b} D={d} K={k}: {:.3} ms ({:.1} TFLOP/s) | cuBLAS SGEMM alone {:.3} ms ({:.1} TFLOP/s) | bf16 GEMM {:.3} ms ({:.1} TFLOP/s) | nearest / bf16-GEMM rate = {:.3}, vs SGEMM = {:.3}",
            t_nearest * 1e3,
            flop / t_nearest / 1e12,
            t_sgemm * 1e3,
            flop / t_sgemm / 1e12,
            t_bf16 * 1e3,
            flop / t_bf16 / 1e12,
            t_bf16 / t_nearest,
            t_sgemm / t_nearest,
        );
    }
    // Calibration percentile at 16,384 rows (134M pairs), p = 1.
    let n = b.min(16384);
    let t = best_of(3, &dev, || {
        dev.pairwise_percentile(&du, n, d, 1.0, PercentileMethod::Linear)
            .unwrap();
    });
    println!(
        "calibration percentile n={n} D={d} p=1: {:.1} ms ({:.0} Mpairs/s)",
        t * 1e3,
        (n * (n - 1) / 2) as f64 / t / 1e6
    );
    // A whole build, phase A on the GPU, clustered data.
    let clusters = 20000;
    let centers = random_unit_rows(clusters, d, 3);
    let rows: Vec<f32> = (0..8 * b)
        .flat_map(|i| {
            let c = &centers[(i * 7919 % clusters) * d..(i * 7919 % clusters + 1) * d];
            let noise = random_unit_rows(1, d, 1000 + i as u64);
            c.iter()
                .zip(&noise)
                .map(|(x, z)| x + 0.2 * z)
                .collect::<Vec<_>>()
        })
        .collect();
    let backend = Backend::Cuda(Arc::new(dev));
    let cfg = BuildConfig {
        saturation_window: None,
        ..BuildConfig::default()
    };
    let mut builder = Builder::new(vec![0.0; d], 0.3, cfg)
        .unwrap()
        .with_backend(backend);
    for (s, chunk) in rows.chunks(b * d).enumerate() {
        let batch = ActivationBatch::from_rows(chunk.to_vec(), d, (s * b) as u64);
        let t = Instant::now();
        let out = builder.add_batch(&batch).unwrap();
        println!(
            "build batch {s}: {} rows, K = {}, {:.1} ms",
            out.rows,
            out.partitions,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
}
