//! A whole build: N = 65,536 rows of width D = 2304 streamed in batches of 16,384 through
//! [`Builder`] (two-phase semantics, no saturation stop, default examples and reservoirs),
//! then `finish(1)`.
//!
//! The rows are synthetic and clustered so that the final K lands on a chosen target,
//! K ∈ {100, 1000, 10000}: K_true = target random unit centers (≈ 1 apart in cosine distance at
//! this D), each row drawn from a uniformly chosen cluster as normalize(center + σ·g) with g
//! standard normal and σ²·D = 1/9, so two members of a cluster are ≈ 0.1 apart. With θ = 0.3
//! between the two scales, every cluster that receives a row becomes exactly one partition
//! (at full size ≈ 0.15% of the 10,000 clusters get no row). The bench asserts that K is within
//! ±20% of the clusters that occur and of the target, so it measures what it claims.
//!
//! One criterion group per target (`build/K=<K>`, function `build`). Criterion's throughput is
//! the row count, so its "elem/s" reads as rows/s. Cloning the input batches happens outside
//! the timed region. After each group the bench prints one line with the best run's time, its
//! rows/s, the final K and K and seconds after each batch.
//!
//! Sizes come from the environment: `EXEMPLAR_BENCH_ROWS` (N), `EXEMPLAR_BENCH_BATCH`,
//! `EXEMPLAR_BENCH_DIM` (D), `EXEMPLAR_BENCH_K` (comma-separated targets). Without `--bench`
//! (`cargo test --benches`) the defaults shrink to a few-second smoke test.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use exemplar::build::BuildOutput;
use exemplar::data::ActivationBatch;
use exemplar::{BuildConfig, Builder};
use rayon::prelude::*;
use std::cell::{OnceCell, RefCell};
use std::time::{Duration, Instant};

mod common;
use common::*;

const SEED: u64 = 0x0062_7569_6c64;
/// The build threshold: between the within-cluster (≈ 0.1) and between-cluster (≈ 1)
/// distances of the synthetic data.
const THETA: f64 = 0.3;

struct Sizes {
    rows: usize,
    batch: usize,
    dim: usize,
    ks: Vec<usize>,
}

impl Sizes {
    fn from_env() -> Self {
        let full = benchmarking();
        let sizes = Sizes {
            rows: env_usize("EXEMPLAR_BENCH_ROWS", if full { 65_536 } else { 2048 }),
            batch: env_usize("EXEMPLAR_BENCH_BATCH", if full { 16_384 } else { 512 }),
            dim: env_usize("EXEMPLAR_BENCH_DIM", if full { 2304 } else { 128 }),
            ks: env_list(
                "EXEMPLAR_BENCH_K",
                if full { &[100, 1000, 10_000] } else { &[8, 64] },
            ),
        };
        assert!(
            sizes.rows > 0 && sizes.batch > 0 && sizes.dim > 0,
            "sizes must be positive"
        );
        sizes
    }
}

/// The synthetic stream for one target K.
struct Stream {
    /// N × D rows, in stream order.
    rows: Vec<f32>,
    /// Clusters that received at least one row: the K the build should find.
    occupied: usize,
}

/// `n` rows from `clusters` well-separated clusters (see the module docs).
fn clustered_stream(n: usize, d: usize, clusters: usize) -> Stream {
    let centers = random_unit_rows(clusters, d, SEED);
    let mut pick = Rng::new(SEED ^ 1, 0);
    // Modulo bias is below 2⁻⁵⁰ for these cluster counts.
    let cluster: Vec<usize> = (0..n)
        .map(|_| (pick.next_u64() % clusters as u64) as usize)
        .collect();
    let mut seen = vec![false; clusters];
    cluster.iter().for_each(|&j| seen[j] = true);
    let occupied = seen.iter().filter(|&&s| s).count();
    // σ²·D = 1/9: ‖σ·g‖² ≈ 1/9, so two members have cosine ≈ 1/(1 + 1/9) = 0.9.
    let sigma = (1.0 / (9.0 * d as f64)).sqrt();
    let mut rows = vec![0.0f32; n * d];
    rows.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
        Rng::new(SEED ^ 2, i as u64).fill_gaussian(row);
        let c = &centers[cluster[i] * d..(cluster[i] + 1) * d];
        for (x, &ci) in row.iter_mut().zip(c) {
            *x = (ci as f64 + sigma * *x as f64) as f32;
        }
        normalize(row);
    });
    Stream { rows, occupied }
}

/// What one build did.
struct Run {
    seconds: f64,
    /// K and seconds after each batch.
    k_after: Vec<usize>,
    batch_seconds: Vec<f64>,
}

/// The measured region: a builder over all batches, then `finish`. The output is returned so
/// that freeing it happens outside the timing.
fn timed_build(batches: &[ActivationBatch], d: usize) -> (Run, BuildOutput) {
    let start = Instant::now();
    let config = BuildConfig {
        saturation_window: None,
        ..Default::default()
    };
    // A zero center: the rows are used as they are (they are already unit vectors).
    let mut builder = Builder::new(vec![0.0; d], THETA, config).expect("valid build settings");
    let mut k_after = Vec::with_capacity(batches.len());
    let mut batch_seconds = Vec::with_capacity(batches.len());
    for b in batches {
        let t = Instant::now();
        let outcome = builder.add_batch(b).expect("synthetic rows are not zero");
        batch_seconds.push(t.elapsed().as_secs_f64());
        k_after.push(outcome.partitions);
    }
    let out = builder.finish(1);
    let run = Run {
        seconds: start.elapsed().as_secs_f64(),
        k_after,
        batch_seconds,
    };
    (run, out)
}

/// The stream cut into builder batches (a copy: [`ActivationBatch`] owns its rows).
fn batches_of(rows: &[f32], d: usize, batch: usize) -> Vec<ActivationBatch> {
    rows.chunks(batch * d)
        .enumerate()
        .map(|(i, c)| ActivationBatch::from_rows(c.to_vec(), d, (i * batch) as u64))
        .collect()
}

/// Panics unless K is within ±20% of the occupied clusters, and of the target whenever the
/// stream is long enough to occupy 80% of the target's clusters.
fn check_k(k: usize, occupied: usize, target: usize) {
    let near = |want: usize| (k as f64 - want as f64).abs() <= 0.2 * want as f64;
    assert!(
        near(occupied),
        "build found K = {k}, but the data hold {occupied} clusters"
    );
    if occupied as f64 >= 0.8 * target as f64 {
        assert!(near(target), "build found K = {k}, target {target}");
    }
}

fn bench_build(c: &mut Criterion) {
    let sizes = Sizes::from_env();
    let (n, d) = (sizes.rows, sizes.dim);
    print_machine("build");
    for &target in &sizes.ks {
        let stream_cell: OnceCell<Stream> = OnceCell::new();
        let best: RefCell<Option<Run>> = RefCell::new(None);
        let mut group = c.benchmark_group(format!("build/K={target}"));
        group
            .throughput(Throughput::Elements(n as u64))
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(10));
        group.bench_function("build", |bench| {
            let stream = stream_cell.get_or_init(|| clustered_stream(n, d, target));
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batches = batches_of(&stream.rows, d, sizes.batch);
                    let (run, out) = timed_build(&batches, d);
                    total += Duration::from_secs_f64(run.seconds);
                    check_k(out.dictionary.len(), stream.occupied, target);
                    drop((out, batches));
                    let mut best = best.borrow_mut();
                    if best.as_ref().is_none_or(|b| run.seconds < b.seconds) {
                        *best = Some(run);
                    }
                }
                total
            });
        });
        group.finish();
        if let (Some(run), Some(stream)) = (best.take(), stream_cell.get()) {
            let k = run.k_after.last().copied().unwrap_or(0);
            let secs: Vec<String> = run
                .batch_seconds
                .iter()
                .map(|s| format!("{s:.3}"))
                .collect();
            eprintln!(
                "[build] N={n} D={d} batch={} θ={THETA} target K={target} (clusters hit: {}): \
                 K = {k} | best {:.3} s | {:.0} rows/s | K after each batch {:?} | seconds per \
                 batch [{}]",
                sizes.batch,
                stream.occupied,
                run.seconds,
                n as f64 / run.seconds,
                run.k_after,
                secs.join(", "),
            );
            if (stream.occupied as f64) < 0.8 * target as f64 {
                eprintln!(
                    "[build] note: N = {n} rows occupy only {} of {target} clusters; K was \
                     checked against the occupied clusters only",
                    stream.occupied
                );
            }
        }
    }
}

criterion_group!(benches, bench_build);
criterion_main!(benches);
