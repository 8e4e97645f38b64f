//! GPU benchmarks of the CUDA backend (issue 3), run by `scripts/gpu-run.sh run` on a GPU
//! machine (without a CUDA device it says so and exits):
//!
//! * nearest at B = 16,384 rows, D = 2304, K ∈ {1,000; 5,000; 20,000}: the screens alone
//!   (fused bf16 tensor cores; fused FP32; cuBLAS bf16 GEMM + top-2 pass) and the whole exact
//!   search with each (screen + f64 resolution + re-check,
//!   ids and similarities back on the host), against cuBLAS GEMM + a separate row argmax
//!   (SGEMM and bf16 GEMM) and the plain cuBLAS bf16 GEMM rate of that shape;
//! * one batch end to end at K = 20,000: prepare → nearest → leaders → stats;
//! * the exact calibration percentile at 16,384 rows;
//! * a whole build (phase A on the GPU) of 8 batches of 16,384 rows of clustered data.
//!
//! Sizes: EXEMPLAR_GPU_BENCH_K ("1000,5000,20000"), EXEMPLAR_GPU_BENCH_ROWS (16384),
//! EXEMPLAR_GPU_BENCH_DIM (2304).

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use exemplar::backend::cuda::{driver_available, CudaDevice, ScreenKind};
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

/// Row argmax of a row-major b × k similarity matrix (f32, or bf16 bits), warp per row: the
/// "separate argmax" of the cuBLAS baseline.
const ARGMAX: &str = r#"
extern "C" __global__ void argmax_f32(const float* C, int b, int k, int* out) {
    const int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (w >= b) return;
    float best = -1e30f; int arg = -1;
    for (int j = lane; j < k; j += 32) { float v = C[(long long)w * k + j]; if (v > best) { best = v; arg = j; } }
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_down_sync(0xffffffffu, best, o); int oa = __shfl_down_sync(0xffffffffu, arg, o);
        if (ob > best || (ob == best && oa < arg)) { best = ob; arg = oa; }
    }
    if (lane == 0) out[w] = arg;
}
extern "C" __global__ void argmax_bf16(const unsigned short* C, int b, int k, int* out) {
    const int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (w >= b) return;
    float best = -1e30f; int arg = -1;
    for (int j = lane; j < k; j += 32) {
        float v = __uint_as_float(((unsigned int)C[(long long)w * k + j]) << 16);
        if (v > best) { best = v; arg = j; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_down_sync(0xffffffffu, best, o); int oa = __shfl_down_sync(0xffffffffu, arg, o);
        if (ob > best || (ob == best && oa < arg)) { best = ob; arg = oa; }
    }
    if (lane == 0) out[w] = arg;
}
"#;

fn argmax_kernels(dev: &CudaDevice) -> (CudaFunction, CudaFunction) {
    let cc = dev.compute_capability();
    let arch: &'static str = Box::leak(format!("compute_{}{}", cc.0, cc.1).into_boxed_str());
    let ptx = exemplar::backend::cuda::compile("bench_argmax", ARGMAX, arch).unwrap();
    let m = dev.context().load_module(ptx).unwrap();
    (
        m.load_function("argmax_f32").unwrap(),
        m.load_function("argmax_bf16").unwrap(),
    )
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
    let (argmax_f32, argmax_bf16) = argmax_kernels(&dev);
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
        let warp_cfg = LaunchConfig {
            grid_dim: ((b as u32).div_ceil(8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut am = dev.stream().alloc_zeros::<i32>(b).unwrap();
        let (bi, ki) = (b as i32, k as i32);
        let mut c32 = dev.stream().alloc_zeros::<f32>(b * k).unwrap();
        let t_sgemm_argmax = best_of(10, &dev, || {
            // SAFETY: as above.
            unsafe { blas.gemm(gemm_config(b, k, d, 1.0f32, 0.0f32), &de, &du, &mut c32) }.unwrap();
            let mut l = dev.stream().launch_builder(&argmax_f32);
            l.arg(&c32).arg(&bi).arg(&ki).arg(&mut am);
            // SAFETY: c32 holds b·k, am b; one warp per row.
            unsafe { l.launch(warp_cfg) }.unwrap();
        });
        drop(c32);
        let mut c16 = dev.stream().alloc_zeros::<half::bf16>(b * k).unwrap();
        let t_bf16_argmax = best_of(10, &dev, || {
            // SAFETY: as above.
            unsafe {
                blas.gemm(
                    gemm_config(b, k, d, one, half::bf16::ZERO),
                    &de16,
                    &du16,
                    &mut c16,
                )
            }
            .unwrap();
            let mut l = dev.stream().launch_builder(&argmax_bf16);
            l.arg(&c16).arg(&bi).arg(&ki).arg(&mut am);
            // SAFETY: c16 holds b·k bf16, am b; one warp per row.
            unsafe { l.launch(warp_cfg) }.unwrap();
        });
        drop(c16);
        let (uv, ev) = (du.slice(..), de.slice(..));
        let t_screen_tc = best_of(10, &dev, || {
            dev.screen_device(ScreenKind::Bf16TensorCores, &uv, b, &ev, k, d, None)
                .unwrap();
        });
        let t_screen_f32 = best_of(3, &dev, || {
            dev.screen_device(ScreenKind::F32, &uv, b, &ev, k, d, None)
                .unwrap();
        });
        let t_screen_cublas = best_of(10, &dev, || {
            dev.screen_device(ScreenKind::CublasBf16, &uv, b, &ev, k, d, None)
                .unwrap();
        });
        let mut rechecked = [(0usize, 0usize); 3];
        let mut t_exact = [0.0f64; 3];
        for (i, screen) in [
            ScreenKind::Bf16TensorCores,
            ScreenKind::F32,
            ScreenKind::CublasBf16,
        ]
        .into_iter()
        .enumerate()
        {
            t_exact[i] = best_of(5, &dev, || {
                dev.nearest_with(screen, &du, b, &ev, k, d, None).unwrap();
            });
            rechecked[i] = (dev.last_ambiguous_rows(), dev.last_rechecked_rows());
        }
        let rate = |t: f64| flop / t / 1e12;
        println!("nearest B={b} D={d} K={k}:");
        println!(
            "  cuBLAS bf16 GEMM alone        {:8.3} ms {:7.1} TFLOP/s",
            t_bf16 * 1e3,
            rate(t_bf16)
        );
        println!(
            "  cuBLAS bf16 GEMM + argmax     {:8.3} ms {:7.1} TFLOP/s",
            t_bf16_argmax * 1e3,
            rate(t_bf16_argmax)
        );
        println!(
            "  cuBLAS SGEMM alone            {:8.3} ms {:7.1} TFLOP/s",
            t_sgemm * 1e3,
            rate(t_sgemm)
        );
        println!(
            "  cuBLAS SGEMM + argmax         {:8.3} ms {:7.1} TFLOP/s",
            t_sgemm_argmax * 1e3,
            rate(t_sgemm_argmax)
        );
        println!(
            "  screen, bf16 tensor cores     {:8.3} ms {:7.1} TFLOP/s = {:.2} of the bf16 GEMM rate",
            t_screen_tc * 1e3,
            rate(t_screen_tc),
            t_bf16 / t_screen_tc
        );
        println!(
            "  screen, FP32                  {:8.3} ms {:7.1} TFLOP/s",
            t_screen_f32 * 1e3,
            rate(t_screen_f32)
        );
        println!(
            "  screen, cuBLAS bf16 + top-2   {:8.3} ms {:7.1} TFLOP/s = {:.2} of the bf16 GEMM rate",
            t_screen_cublas * 1e3,
            rate(t_screen_cublas),
            t_bf16 / t_screen_cublas
        );
        println!(
            "  exact nearest, tensor cores   {:8.3} ms {:7.1} TFLOP/s = {:.2} of the bf16 GEMM rate; {} rows ambiguous, {} re-checked over all K",
            t_exact[0] * 1e3,
            rate(t_exact[0]),
            t_bf16 / t_exact[0],
            rechecked[0].0,
            rechecked[0].1
        );
        println!(
            "  exact nearest, FP32 screen    {:8.3} ms {:7.1} TFLOP/s; {} rows re-checked over all K",
            t_exact[1] * 1e3,
            rate(t_exact[1]),
            rechecked[1].1
        );
        println!(
            "  exact nearest, cuBLAS screen  {:8.3} ms {:7.1} TFLOP/s = {:.2} of the bf16 GEMM rate; {} rows ambiguous, {} re-checked over all K",
            t_exact[2] * 1e3,
            rate(t_exact[2]),
            t_bf16 / t_exact[2],
            rechecked[2].0,
            rechecked[2].1
        );
        // Clustered rows (noisy copies of candidates): what activations near a dictionary look
        // like; random unit rows above are the worst case (near-ties everywhere).
        let noise = random_unit_rows(b, d, 5);
        let mut uc = Vec::with_capacity(b * d);
        for i in 0..b {
            let j = (i * 7919) % k;
            let mut row: Vec<f32> = (0..d)
                .map(|c| e[j * d + c] + 0.3 * noise[i * d + c])
                .collect();
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
            uc.extend(row);
        }
        let duc = dev.upload(&uc).unwrap();
        for (name, screen) in [
            ("tensor cores", ScreenKind::Bf16TensorCores),
            ("cuBLAS screen", ScreenKind::CublasBf16),
        ] {
            let t_clustered = best_of(5, &dev, || {
                dev.nearest_with(screen, &duc, b, &ev, k, d, None).unwrap();
            });
            println!(
                "  exact nearest, {name}, clustered rows {:8.3} ms {:7.1} TFLOP/s = {:.2} of the bf16 GEMM rate; {} rows ambiguous, {} re-checked over all K",
                t_clustered * 1e3,
                rate(t_clustered),
                t_bf16 / t_clustered,
                dev.last_ambiguous_rows(),
                dev.last_rechecked_rows()
            );
        }
    }
    end_to_end(&dev, b, d, 20_000);
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

/// One batch of `b` rows against `k` exemplars, end to end on the device from raw activations:
/// prepare → nearest (phase A) → gather + leaders (phase B) → stats. 10% of the rows are new
/// directions (they become leaders), the rest are noisy copies of exemplars.
fn end_to_end(dev: &CudaDevice, b: usize, d: usize, k: usize) {
    let theta = 0.3;
    let ex = random_unit_rows(k, d, 7);
    let fresh = random_unit_rows(b, d, 8);
    let noise = random_unit_rows(b, d, 9);
    let mut x = Vec::with_capacity(b * d);
    for i in 0..b {
        if i % 10 == 9 {
            x.extend_from_slice(&fresh[i * d..(i + 1) * d]);
        } else {
            let j = (i * 7919) % k;
            for c in 0..d {
                x.push(ex[j * d + c] + 0.3 * noise[i * d + c]);
            }
        }
    }
    let dx = dev.upload(&x).unwrap();
    let center = dev.upload(&vec![0.0f32; d]).unwrap();
    let mut times = [0.0f64; 5];
    let mut counts = (0usize, 0usize);
    for rep in 0..4 {
        // Fresh state each repetition: K exemplars resident, statistics tables with room.
        let mut g = dev.growable_rows(d).unwrap();
        dev.append_rows(&mut g, &ex).unwrap();
        let cap = k + b;
        let mut sums = dev.stream().alloc_zeros::<f64>(cap * d).unwrap();
        let mut cnt = dev.stream().alloc_zeros::<i64>(cap).unwrap();
        let mut sd = dev.stream().alloc_zeros::<f64>(cap).unwrap();
        let mut sd2 = dev.stream().alloc_zeros::<f64>(cap).unwrap();
        dev.stream().synchronize().unwrap();
        let t0 = Instant::now();
        let u = dev.prepare_f32(&dx, b, d, &center, None).unwrap();
        dev.stream().synchronize().unwrap();
        let t1 = Instant::now();
        let (ids, sims) = dev.nearest(&u, b, &g.view(), k, d).unwrap();
        let t2 = Instant::now();
        let unmatched: Vec<u32> = (0..b as u32)
            .filter(|&i| 1.0 - sims[i as usize] > theta)
            .collect();
        let decisions = if unmatched.is_empty() {
            Vec::new()
        } else {
            let w = dev.gather_rows(&u.slice(..), d, &unmatched).unwrap();
            dev.leaders(&w.slice(..), unmatched.len(), d, theta, &mut g)
                .unwrap()
        };
        let t3 = Instant::now();
        let mut member = vec![(0u32, 0u32, 0.0f64); b];
        for i in 0..b {
            member[i] = (ids[i] as u32, i as u32, (1.0 - sims[i]).clamp(0.0, 2.0));
        }
        for (&row, dcs) in unmatched.iter().zip(&decisions) {
            member[row as usize] = match *dcs {
                exemplar::backend::LeaderDecision::Leader { ordinal } => {
                    ((k as u32) + ordinal, row, 0.0)
                }
                exemplar::backend::LeaderDecision::Follow { ordinal, sim } => {
                    ((k as u32) + ordinal, row, (1.0 - sim).clamp(0.0, 2.0))
                }
            };
        }
        dev.stats_update(&u, d, &member, &mut sums, &mut cnt, &mut sd, &mut sd2)
            .unwrap();
        dev.stream().synchronize().unwrap();
        let t4 = Instant::now();
        if rep > 0 {
            let step = [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0];
            for (acc, s) in times.iter_mut().zip(step) {
                *acc += s.as_secs_f64() / 3.0;
            }
        }
        counts = (unmatched.len(), g.rows() - k);
    }
    println!(
        "end to end, one batch B={b} D={d} K={k} (θ={theta}; {} unmatched, {} new leaders), mean of 3 after a warm-up:",
        counts.0, counts.1
    );
    for (name, t) in ["prepare", "nearest", "leaders", "stats", "total"]
        .iter()
        .zip(times)
    {
        println!("  {name:8} {:8.3} ms", t * 1e3);
    }
}
