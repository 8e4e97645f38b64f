//! Calibration's threshold: [`pairwise_distance_percentile`], the exact p-th percentile of the
//! n(n−1)/2 pairwise cosine distances of n unit rows (two GEMM passes over the upper triangle:
//! a histogram, then the f64 re-check of the pairs near the target rank).
//!
//! n ∈ {4096, 16384} rows of width D = 2304, p ∈ {1, 10}, linear interpolation. One criterion
//! group per n (`calibrate/n=<n>`), one function per p (`p=<p>`). Criterion's throughput is the
//! pair count, so its "elem/s" reads as pairs/s. After each function the bench prints one line
//! with the best run's time, its pair rate and its effective GEMM rate, counted as 2 passes ×
//! n²·D FLOP (each pass multiplies the upper triangle: n²/2 pairs × 2·D FLOP; the diagonal
//! tiles add a few percent that are not counted) over the whole call.
//!
//! The rows are mildly clustered, like centered activations: 256 random centers with
//! Zipf-distributed sizes (≈ 4% of pairs fall inside a cluster) and per-cluster spreads from
//! tight (cosine ≈ 0.8 to members) to loose (≈ 0.2), so p = 1 lands among within-cluster
//! distances and p = 10 in the dense bulk near distance 1, where the f64 re-check window holds
//! the most pairs.
//!
//! Sizes come from the environment: `EXEMPLAR_BENCH_CAL_N` (comma-separated n values),
//! `EXEMPLAR_BENCH_DIM` (D), `EXEMPLAR_BENCH_PERCENTILES` (comma-separated integers). Without
//! `--bench` (`cargo test --benches`) the defaults shrink to a few-second smoke test.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use exemplar::backend::cpu::pairwise_distance_percentile;
use exemplar::PercentileMethod;
use rayon::prelude::*;
use std::cell::{Cell, OnceCell};
use std::hint::black_box;
use std::time::{Duration, Instant};

mod common;
use common::*;

const SEED: u64 = 0x6361_6c69_6272_6174;
/// Number of cluster centers.
const CLUSTERS: usize = 256;

struct Sizes {
    ns: Vec<usize>,
    dim: usize,
    percentiles: Vec<usize>,
}

impl Sizes {
    fn from_env() -> Self {
        let full = benchmarking();
        Sizes {
            // Smoke sizes cover both code paths: 300 rows (44,850 pairs) are selected
            // directly, 800 rows (319,600 pairs) go through the two screened passes.
            ns: env_list(
                "EXEMPLAR_BENCH_CAL_N",
                if full { &[4096, 16_384] } else { &[300, 800] },
            ),
            dim: env_usize("EXEMPLAR_BENCH_DIM", if full { 2304 } else { 128 }),
            percentiles: env_list("EXEMPLAR_BENCH_PERCENTILES", &[1, 10]),
        }
    }
}

/// `n` unit rows from [`CLUSTERS`] clusters (see the module docs).
fn clustered_rows(n: usize, d: usize) -> Vec<f32> {
    let centers = random_unit_rows(CLUSTERS, d, SEED);
    // Zipf sizes: cluster j is drawn with weight 1/(j+1).
    let mut cumulative = Vec::with_capacity(CLUSTERS);
    let mut total = 0.0;
    for j in 0..CLUSTERS {
        total += 1.0 / (j + 1) as f64;
        cumulative.push(total);
    }
    // Spread s_j = σ_j²·D, log-uniform in [1/4, 4]: a row is center + σ_j·g with g standard
    // normal, so two members have cosine ≈ 1/(1 + s_j), from 0.8 down to 0.2.
    let spread: Vec<f64> = (0..CLUSTERS)
        .map(|j| 0.25 * 16f64.powf(Rng::new(SEED ^ 1, j as u64).uniform()))
        .collect();
    let mut v = vec![0.0f32; n * d];
    v.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
        let mut rng = Rng::new(SEED ^ 2, i as u64);
        let u = rng.uniform() * total;
        let j = cumulative.partition_point(|&c| c < u).min(CLUSTERS - 1);
        rng.fill_gaussian(row);
        let sigma = (spread[j] / d as f64).sqrt();
        for (x, &c) in row.iter_mut().zip(&centers[j * d..(j + 1) * d]) {
            *x = (c as f64 + sigma * *x as f64) as f32;
        }
        normalize(row);
    });
    v
}

fn bench_calibrate(c: &mut Criterion) {
    let sizes = Sizes::from_env();
    let d = sizes.dim;
    print_machine("calibrate");
    // The smaller n use a prefix of the largest sample (the rows are independent draws).
    let n_max = sizes.ns.iter().copied().max().unwrap_or(0);
    let data_cell: OnceCell<Vec<f32>> = OnceCell::new();
    let data = || data_cell.get_or_init(|| clustered_rows(n_max, d));
    for &n in &sizes.ns {
        let pairs = (n * n.saturating_sub(1) / 2) as u64;
        let mut group = c.benchmark_group(format!("calibrate/n={n}"));
        group
            .throughput(Throughput::Elements(pairs))
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        for &p in &sizes.percentiles {
            // Best time per call and the percentile found, over every run criterion makes.
            let best: Cell<Option<(f64, f64)>> = Cell::new(None);
            group.bench_function(format!("p={p}"), |bench| {
                let u = &data()[..n * d];
                bench.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let theta =
                            pairwise_distance_percentile(u, d, p as f64, PercentileMethod::Linear)
                                .expect("valid percentile and at least 2 rows");
                        let t = start.elapsed();
                        total += t;
                        black_box(theta);
                        let s = t.as_secs_f64();
                        if best.get().is_none_or(|(b, _)| s < b) {
                            best.set(Some((s, theta)));
                        }
                    }
                    total
                });
            });
            if let Some((s, theta)) = best.get() {
                let nominal_flop = 2.0 * (n as f64) * (n as f64) * d as f64;
                eprintln!(
                    "[calibrate] n={n} D={d} p={p}: percentile = {theta:.6} | best {s:.4} s | \
                     {:.2} Mpairs/s | 2 GEMM passes ({:.1} GFLOP nominal) at {:.1} GFLOP/s \
                     effective",
                    pairs as f64 / s / 1e6,
                    nominal_flop / 1e9,
                    nominal_flop / s / 1e9,
                );
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_calibrate);
criterion_main!(benches);
