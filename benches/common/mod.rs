//! Helpers shared by the criterion benches: size overrides from the environment, the machine
//! line of the raw output, and a seeded generator for deterministic benchmark data.
#![allow(dead_code)] // each bench uses a subset

use rayon::prelude::*;
use std::time::Instant;

/// Whether criterion will measure (`cargo bench`) rather than smoke-test (`cargo test
/// --benches`, `--test`, `--list`).
pub fn benchmarking() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    has("--bench") && !has("--test") && !has("--list")
}

pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a non-negative integer, got {v:?}")),
        Err(_) => default,
    }
}

pub fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|x| {
                x.trim().parse().unwrap_or_else(|_| {
                    panic!("{name} must be a comma-separated list of integers, got {v:?}")
                })
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

/// Wall-clock seconds of one call.
pub fn seconds(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

/// One line naming the machine, for the raw output.
pub fn print_machine(bench: &str) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!(
        "[{bench}] machine: cpu = {cpu}, logical cpus = {cpus}, rayon threads = {}",
        rayon::current_num_threads()
    );
}

/// SplitMix64: a small seeded generator, plenty for benchmark data.
pub struct Rng(u64);

impl Rng {
    /// An independent stream per `(seed, stream)`: the state is a hash of both, so rows can be
    /// generated in parallel and still be deterministic.
    pub fn new(seed: u64, stream: u64) -> Self {
        Rng(mix(seed ^ mix(stream.wrapping_add(0x632B_E59B_D9B4_E019))))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal values (Box–Muller).
    pub fn fill_gaussian(&mut self, out: &mut [f32]) {
        for pair in out.chunks_mut(2) {
            let r = (-2.0 * self.uniform().ln()).sqrt();
            let t = std::f64::consts::TAU * self.uniform();
            pair[0] = (r * t.cos()) as f32;
            if let Some(x) = pair.get_mut(1) {
                *x = (r * t.sin()) as f32;
            }
        }
    }
}

/// SplitMix64's output function.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Scales a row to unit length (norm in f64).
pub fn normalize(row: &mut [f32]) {
    let inv = 1.0 / exemplar::geometry::norm(row);
    row.iter_mut().for_each(|x| *x = (*x as f64 * inv) as f32);
}

/// `n` rows drawn uniformly from the unit sphere in `d` dimensions.
pub fn random_unit_rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0f32; n * d];
    v.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
        Rng::new(seed, i as u64).fill_gaussian(row);
        normalize(row);
    });
    v
}
