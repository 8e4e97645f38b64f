//! One test body over every backend, the way candle's `test_device!` does it: a body
//! `fn name(backend: &Backend)` and `test_device!(name, name_cpu, name_cuda)` give a `_cpu` test
//! and a `_cuda` test. The CUDA one runs where a driver and a device are present; elsewhere it
//! says why it skips (and fails instead under `EXEMPLAR_REQUIRE_CUDA`, as on the GPU machine).
//! Also here: what the tests over several backends share.
#![allow(dead_code)]

use exemplar::backend::Backend;

/// `test_device!(body, body_cpu, body_cuda)`: `body(&Backend::Cpu)` as the test `body_cpu`,
/// and `body` on the CUDA device as `body_cuda` (skipped, saying why, without one).
#[macro_export]
macro_rules! test_device {
    ($body:ident, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() {
            $body(&exemplar::backend::Backend::Cpu)
        }

        #[test]
        fn $cuda() {
            if let Some(backend) = $crate::devices::cuda() {
                $body(&backend)
            }
        }
    };
}

/// What a test says and does where CUDA is missing: skip with the reason, or fail under
/// `EXEMPLAR_REQUIRE_CUDA`.
fn skip(why: &str) {
    if std::env::var_os("EXEMPLAR_REQUIRE_CUDA").is_some() {
        panic!("EXEMPLAR_REQUIRE_CUDA is set but {why}");
    }
    eprintln!("skipping the CUDA run: {why} (GPU tests run via scripts/gpu-run.sh)");
}

/// CUDA device 0, or `None` (having said why) where there is no driver.
#[cfg(feature = "cuda")]
pub fn cuda_device() -> Option<exemplar::backend::cuda::CudaDevice> {
    use exemplar::backend::cuda::{driver_available, CudaDevice};
    if !driver_available() {
        skip("no CUDA driver on this machine");
        return None;
    }
    let dev = CudaDevice::open(0).expect("a driver is present, so device 0 must open");
    eprintln!(
        "device: {} (sm_{}{})",
        dev.name(),
        dev.compute_capability().0,
        dev.compute_capability().1
    );
    Some(dev)
}

/// The CUDA backend on device 0, or `None` (having said why) where there is none.
pub fn cuda() -> Option<Backend> {
    #[cfg(feature = "cuda")]
    {
        cuda_device().map(|dev| Backend::Cuda(std::sync::Arc::new(dev)))
    }
    #[cfg(not(feature = "cuda"))]
    {
        skip("this build has no `cuda` feature");
        None
    }
}

/// A 64-bit LCG for test data (Knuth's MMIX constants).
pub struct Lcg(pub u64);

impl Lcg {
    /// Uniform in [−0.5, 0.5).
    pub fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}

/// `n` rows around `clusters` centers (0: uniform noise), plus an offset so centering matters.
pub fn rows_around(n: usize, d: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut r = Lcg(seed);
    let centers: Vec<f32> = (0..clusters.max(1) * d).map(|_| r.f() * 4.0).collect();
    (0..n)
        .flat_map(|i| {
            let c = if clusters == 0 {
                None
            } else {
                Some(i * 7919 % clusters)
            };
            (0..d)
                .map(|j| 3.0 + c.map_or(0.0, |c| centers[c * d + j]) + r.f())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `got` (built on `backend`) equals `want` (built on the CPU) in everything, bit for bit, but
/// the recorded backend, which is `backend`'s.
#[track_caller]
pub fn assert_same_but_backend(
    want: &exemplar::Dictionary,
    got: &exemplar::Dictionary,
    backend: &Backend,
    what: &str,
) {
    assert_eq!(got.info().backend, backend.describe(), "{what}: backend");
    let mut g = got.clone();
    g.set_info(want.info().clone());
    assert_eq!(want.len(), g.len(), "{what}: K");
    assert_eq!(want.exemplars(), g.exemplars(), "{what}: exemplars");
    assert_eq!(want.member_counts(), g.member_counts(), "{what}: counts");
    for k in 0..want.len() {
        assert_eq!(
            want.direction_sum(k),
            g.direction_sum(k),
            "{what}: Σu of {k}"
        );
        assert_eq!(
            want.distance_sums(k),
            g.distance_sums(k),
            "{what}: Σd of {k}"
        );
        assert_eq!(
            want.reservoir(k),
            g.reservoir(k),
            "{what}: reservoir of {k}"
        );
    }
    assert!(*want == g, "{what}: the dictionaries differ");
}
