//! The nearest-exemplar step against the plain GEMM of the same shape.
//!
//! A batch of B random unit rows (default B = 16,384, one build batch) of width D (default
//! 2304) against K random unit exemplars, K ∈ {100, 1000, 10000}. One criterion group per K
//! (`nearest/K=<K>`), three functions on identical inputs:
//!
//! * `gemm`: [`matmul_abt`] into a preallocated B × K matrix, the rate the library's GEMM
//!   reaches on a plain product of this shape;
//! * `nearest`: [`screen_rows`], the builder's phase-A screen (tiled GEMM with a fused row top-2
//!   scan; the B × K matrix is never held whole);
//! * `assign`: [`Dictionary::assign_directions`], the screen plus the exact f64 similarity of
//!   each row's winner, and an f64 re-check against all K exemplars of every row whose f32 best
//!   and runner-up are within the screen's error margin. Random rows against random exemplars
//!   are the worst case for that re-check (all exemplars are about equally far); the summary
//!   line reports the share of such rows.
//!
//! Criterion's throughput is set to the nominal FLOP count 2·B·K·D, so its "elem/s" reads as
//! FLOP/s. Criterion does not compare functions, so before each group's first measurement the
//! bench also times the three functions itself, interleaved, best of `EXEMPLAR_BENCH_REPS`
//! (default 3) runs each, and prints one line (stderr) with their GFLOP/s and the ratio
//! nearest/gemm (the target is ≥ 0.5).
//!
//! Sizes come from the environment: `EXEMPLAR_BENCH_ROWS` (B), `EXEMPLAR_BENCH_DIM` (D),
//! `EXEMPLAR_BENCH_K` (comma-separated K values), `EXEMPLAR_BENCH_REPS`. Without `--bench`
//! (`cargo test --benches`) the defaults shrink to a few-second smoke test.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use exemplar::backend::cpu::screen_rows;
use exemplar::data::ActivationBatch;
use exemplar::linalg::matmul_abt;
use exemplar::{BuildConfig, Builder, Dictionary};
use std::cell::{OnceCell, RefCell};
use std::hint::black_box;
use std::time::Duration;

mod common;
use common::*;

/// Seed of the batch rows; the exemplars use `SEED + 1`.
const SEED: u64 = 0x006e_6561_7265_7374;

/// The sizes of one run.
struct Sizes {
    /// Rows of the batch (B).
    rows: usize,
    /// Width (D).
    dim: usize,
    /// Exemplar counts, one group each.
    ks: Vec<usize>,
    /// Runs per function of the summary timing loop (0: no summary).
    reps: usize,
}

impl Sizes {
    fn from_env() -> Self {
        let full = benchmarking();
        Sizes {
            rows: env_usize("EXEMPLAR_BENCH_ROWS", if full { 16_384 } else { 256 }),
            dim: env_usize("EXEMPLAR_BENCH_DIM", if full { 2304 } else { 128 }),
            ks: env_list(
                "EXEMPLAR_BENCH_K",
                if full { &[100, 1000, 10_000] } else { &[4, 40] },
            ),
            reps: env_usize("EXEMPLAR_BENCH_REPS", if full { 3 } else { 1 }),
        }
    }
}

/// Everything one group measures, built on its first use so that a criterion filter that
/// skips the group also skips the data and the summary timing.
struct State {
    dict: Dictionary,
    /// The preallocated B × K output of `gemm`.
    out: RefCell<Vec<f32>>,
}

impl State {
    fn new(rows: &[f32], sizes: &Sizes, k: usize) -> Self {
        let d = sizes.dim;
        let dict = dictionary_of(random_unit_rows(k, d, SEED + 1), d);
        let out = RefCell::new(vec![0.0f32; (rows.len() / d) * k]);
        let state = State { dict, out };
        if sizes.reps > 0 {
            state.print_summary(rows, sizes);
        }
        state
    }

    /// Times the three functions interleaved (so that load from other processes hits them
    /// alike), keeps the best run of each, prints GFLOP/s and nearest/gemm.
    fn print_summary(&self, rows: &[f32], sizes: &Sizes) {
        let d = sizes.dim;
        let (b, k) = (rows.len() / d, self.dict.len());
        let ex = self.dict.exemplars();
        let mut best = [f64::INFINITY; 3];
        let mut screen = Vec::new();
        for _ in 0..sizes.reps {
            let t = [
                seconds(|| matmul_abt(rows, ex, d, &mut self.out.borrow_mut())),
                seconds(|| screen = black_box(screen_rows(rows, ex, d))),
                seconds(|| {
                    black_box(self.dict.assign_directions(rows));
                }),
            ];
            for (bt, t) in best.iter_mut().zip(t) {
                *bt = bt.min(t);
            }
        }
        // Rows whose f32 best and runner-up are too close to order: `assign` re-checks each of
        // them in f64 against its contenders (the exemplars within the screen margin).
        let ambiguous = screen.iter().filter(|s| !s.contenders.is_empty()).count();
        let contenders: usize = screen.iter().map(|s| s.contenders.len()).sum();
        let gflops = |s: f64| flop(b, k, d) as f64 / s / 1e9;
        eprintln!(
            "[nearest] B={b} D={d} K={k}: gemm {:.1} GFLOP/s ({:.4} s) | nearest {:.1} GFLOP/s \
             ({:.4} s) | assign {:.1} GFLOP/s ({:.4} s) | nearest/gemm = {:.3} | \
             assign/gemm = {:.3} | ambiguous rows {:.2}% ({} contenders) (best of {})",
            gflops(best[0]),
            best[0],
            gflops(best[1]),
            best[1],
            gflops(best[2]),
            best[2],
            best[0] / best[1],
            best[0] / best[2],
            100.0 * ambiguous as f64 / b.max(1) as f64,
            contenders,
            sizes.reps,
        );
    }
}

/// Nominal FLOP of a B × D by D × K product: one multiply and one add per term.
fn flop(b: usize, k: usize, d: usize) -> u64 {
    2 * b as u64 * k as u64 * d as u64
}

/// A dictionary whose exemplars are exactly the given unit rows: one build over them with a
/// zero center and a θ far below the distance of two random unit vectors (≈ 1 ± 1/√D), so
/// every row founds its own partition.
fn dictionary_of(exemplars: Vec<f32>, d: usize) -> Dictionary {
    let k = exemplars.len() / d;
    let config = BuildConfig {
        saturation_window: None,
        ..Default::default()
    };
    let mut builder = Builder::new(vec![0.0; d], 0.2, config).expect("valid build settings");
    builder
        .add_batch(&ActivationBatch::from_rows(exemplars, d, 0))
        .expect("random rows are not zero");
    let dict = builder.finish(1).dictionary;
    assert_eq!(dict.len(), k, "random exemplars must not merge at θ = 0.2");
    dict
}

fn bench_nearest(c: &mut Criterion) {
    let sizes = Sizes::from_env();
    let d = sizes.dim;
    print_machine("nearest");
    let rows_cell: OnceCell<Vec<f32>> = OnceCell::new();
    let rows = || rows_cell.get_or_init(|| random_unit_rows(sizes.rows, d, SEED));
    for &k in &sizes.ks {
        let state_cell: OnceCell<State> = OnceCell::new();
        let state = || state_cell.get_or_init(|| State::new(rows(), &sizes, k));
        let mut group = c.benchmark_group(format!("nearest/K={k}"));
        group
            .throughput(Throughput::Elements(flop(sizes.rows, k, d)))
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        group.bench_function("gemm", |bench| {
            let (rows, s) = (rows(), state());
            let mut out = s.out.borrow_mut();
            bench.iter(|| matmul_abt(rows, s.dict.exemplars(), d, &mut out));
        });
        group.bench_function("nearest", |bench| {
            let (rows, s) = (rows(), state());
            bench.iter(|| screen_rows(rows, s.dict.exemplars(), d));
        });
        group.bench_function("assign", |bench| {
            let (rows, s) = (rows(), state());
            bench.iter(|| s.dict.assign_directions(rows));
        });
        group.finish();
    }
}

criterion_group!(benches, bench_nearest);
criterion_main!(benches);
