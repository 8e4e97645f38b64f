//! CUDA kernels against their CPU twins (the oracle). Each test skips, saying why, where no
//! CUDA driver is present; on a GPU machine they run via scripts/gpu-run.sh.
#![cfg(feature = "cuda")]

use exemplar::backend::cuda::{driver_available, CudaDevice};
use exemplar::calibrate::{pairwise_distance_percentile, PercentileMethod};
use exemplar::geometry::directions;
use exemplar::linalg::screen_rows;

fn device() -> Option<CudaDevice> {
    if !driver_available() {
        eprintln!(
            "skipping: no CUDA driver on this machine (GPU parity runs via scripts/gpu-run.sh)"
        );
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

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}

/// `n` rows around `c` cluster centers (c = 0: uniform noise), plus an offset so centering matters.
fn data(n: usize, d: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
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

#[test]
fn prepare_is_bit_identical_to_the_cpu_for_f32_and_bf16() {
    let Some(dev) = device() else { return };
    for (n, d) in [(1000, 2304), (77, 33), (5, 1)] {
        let x = data(n, d, 8, 1);
        let center: Vec<f32> = (0..d).map(|j| x[j] * 0.5).collect();
        let gpu = dev
            .download(
                &dev.prepare_f32(
                    &dev.upload(&x).unwrap(),
                    n,
                    d,
                    &dev.upload(&center).unwrap(),
                    None,
                )
                .unwrap(),
            )
            .unwrap();
        let cpu = directions(&x, &center).unwrap();
        assert!(
            gpu.iter()
                .zip(&cpu)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "n={n} d={d}"
        );
    }
    // bf16 input: the kernel up-casts exactly, so it equals the CPU on the up-cast rows.
    let (n, d) = (500, 2304);
    let x = data(n, d, 8, 6);
    let bits: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
    let up: Vec<f32> = bits
        .iter()
        .map(|&b| f32::from_bits((b as u32) << 16))
        .collect();
    let center: Vec<f32> = (0..d).map(|j| up[j] * 0.25).collect();
    let gpu = dev
        .download(
            &dev.prepare_bf16(
                &dev.upload(&bits).unwrap(),
                n,
                d,
                &dev.upload(&center).unwrap(),
                None,
            )
            .unwrap(),
        )
        .unwrap();
    let cpu = directions(&up, &center).unwrap();
    assert!(
        gpu.iter()
            .zip(&cpu)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "bf16"
    );
    // Gathered rows (BOS/padding dropped): output row r is input row rows[r].
    let keep: Vec<i64> = vec![4, 0, 9];
    let gpu = dev
        .download(
            &dev.prepare_bf16(
                &dev.upload(&bits).unwrap(),
                3,
                d,
                &dev.upload(&center).unwrap(),
                Some(&dev.upload(&keep).unwrap()),
            )
            .unwrap(),
        )
        .unwrap();
    for (r, &src) in keep.iter().enumerate() {
        assert_eq!(
            &gpu[r * d..(r + 1) * d],
            &cpu[src as usize * d..(src as usize + 1) * d]
        );
    }
    // A gather index outside the input is an error, not an out-of-bounds read.
    let err = dev
        .prepare_bf16(
            &dev.upload(&bits).unwrap(),
            2,
            d,
            &dev.upload(&center).unwrap(),
            Some(&dev.upload(&[1i64, n as i64]).unwrap()),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("output row 1") && err.contains("outside"),
        "{err}"
    );
    // A row equal to the center is reported by index.
    let d = 16;
    let mut x = data(10, d, 2, 2);
    let center = x[3 * d..4 * d].to_vec();
    x[7 * d..8 * d].copy_from_slice(&center);
    let err = dev
        .prepare_f32(
            &dev.upload(&x).unwrap(),
            10,
            d,
            &dev.upload(&center).unwrap(),
            None,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("row 3"), "{err}");
}

#[test]
fn nearest_gives_the_cpu_ids_and_exact_similarities() {
    let Some(dev) = device() else { return };
    for (n, k, d, clusters) in [
        (4096, 1000, 2304, 50),
        (3000, 300, 256, 0),
        (513, 65, 100, 3),
        (64, 1, 8, 1),
    ] {
        let u = directions(&data(n, d, clusters, 3), &vec![0.0; d]).unwrap();
        let e = directions(&data(k, d, clusters, 4), &vec![0.0; d]).unwrap();
        let (ids, sims) = dev
            .nearest(
                &dev.upload(&u).unwrap(),
                n,
                &dev.upload(&e).unwrap().slice(..),
                k,
                d,
            )
            .unwrap();
        let screens = screen_rows(&u, &e, d);
        for i in 0..n {
            let (want, s) = screens[i].resolve(&u[i * d..(i + 1) * d], &e, d);
            assert_eq!(ids[i] as u32, want, "row {i} (n={n} k={k} d={d})");
            assert_eq!(sims[i].to_bits(), s.to_bits(), "row {i}: exact similarity");
        }
    }
}

#[test]
fn the_calibration_percentile_equals_the_cpu() {
    let Some(dev) = device() else { return };
    for (n, d) in [(300, 64), (3000, 256), (16384, 2304)] {
        let u = directions(&data(n, d, 40, 5), &vec![0.0; d]).unwrap();
        let du = dev.upload(&u).unwrap();
        for p in [1.0, 10.0] {
            for m in [PercentileMethod::Linear, PercentileMethod::NearestRank] {
                let gpu = dev.pairwise_percentile(&du, n, d, p, m).unwrap();
                let cpu = pairwise_distance_percentile(&u, d, p, m).unwrap();
                assert_eq!(
                    gpu.to_bits(),
                    cpu.to_bits(),
                    "n={n} p={p} {m:?}: {gpu} vs {cpu}"
                );
            }
        }
    }
}

#[test]
fn statistics_sums_are_bit_identical_to_the_cpu_order() {
    let Some(dev) = device() else { return };
    let (n, d, k) = (5000, 384, 37);
    let u = directions(&data(n, d, 12, 7), &vec![0.0; d]).unwrap();
    // Memberships in stream order, with uneven partition sizes; two batches.
    let memberships: Vec<(u32, u32, f64)> = (0..n as u32)
        .map(|r| ((r * r + 3 * r) % k as u32, r, (r as f64 * 0.37).sin().abs()))
        .collect();
    let du = dev.upload(&u).unwrap();
    let mut sums = dev.upload(&vec![0.0f64; k * d]).unwrap();
    let mut counts = dev.upload(&vec![0i64; k]).unwrap();
    let mut sd = dev.upload(&vec![0.0f64; k]).unwrap();
    let mut sd2 = dev.upload(&vec![0.0f64; k]).unwrap();
    for half in memberships.chunks(n / 2) {
        dev.stats_update(&du, d, half, &mut sums, &mut counts, &mut sd, &mut sd2)
            .unwrap();
    }
    // The CPU twin: Builder::record_member's arithmetic, row by row in stream order.
    let (mut cs, mut cc, mut cd, mut cd2) = (
        vec![0.0f64; k * d],
        vec![0i64; k],
        vec![0.0f64; k],
        vec![0.0f64; k],
    );
    for &(p, r, dist) in &memberships {
        let p = p as usize;
        for j in 0..d {
            cs[p * d + j] += u[r as usize * d + j] as f64;
        }
        cc[p] += 1;
        cd[p] += dist;
        cd2[p] += dist * dist;
    }
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&dev.download(&sums).unwrap()), bits(&cs));
    assert_eq!(dev.download(&counts).unwrap(), cc);
    assert_eq!(bits(&dev.download(&sd).unwrap()), bits(&cd));
    assert_eq!(bits(&dev.download(&sd2).unwrap()), bits(&cd2));
    // A membership outside the tables is an error before any launch.
    let err = dev
        .stats_update(
            &du,
            d,
            &[(k as u32, 0, 0.0)],
            &mut sums,
            &mut counts,
            &mut sd,
            &mut sd2,
        )
        .err()
        .unwrap();
    assert!(err.to_string().contains("outside"), "{err}");
}

#[test]
fn a_build_on_the_gpu_equals_the_build_on_the_cpu() {
    let Some(dev) = device() else { return };
    use exemplar::backend::Backend;
    use exemplar::build::{BuildConfig, Builder, Semantics};
    use exemplar::data::ActivationBatch;
    let gpu = Backend::Cuda(std::sync::Arc::new(dev));
    let (n, d) = (20_000, 256);
    let x = data(n, d, 300, 8);
    let center: Vec<f32> = (0..d)
        .map(|j| (0..n).map(|i| x[i * d + j]).sum::<f32>() / n as f32)
        .collect();
    let u = directions(&x, &center).unwrap();
    let theta = Backend::Cpu
        .pairwise_percentile(&u[..2048 * d], d, 2.0, PercentileMethod::Linear)
        .unwrap();
    assert_eq!(
        theta.to_bits(),
        gpu.pairwise_percentile(&u[..2048 * d], d, 2.0, PercentileMethod::Linear)
            .unwrap()
            .to_bits()
    );
    for semantics in [Semantics::TwoPhase, Semantics::StrictOrder] {
        let run = |backend: &Backend| {
            let cfg = BuildConfig {
                semantics,
                saturation_window: None,
                record_assignments: Some(n as u64),
                ..BuildConfig::default()
            };
            let mut b = Builder::new(center.clone(), theta, cfg)
                .unwrap()
                .with_backend(backend.clone());
            for (s, chunk) in x.chunks(4096 * d).enumerate() {
                b.add_batch(&ActivationBatch::from_rows(
                    chunk.to_vec(),
                    d,
                    (s * 4096) as u64,
                ))
                .unwrap();
            }
            b.finish(1)
        };
        let (c, g) = (run(&Backend::Cpu), run(&gpu));
        assert!(c.dictionary.len() > 50, "K = {}", c.dictionary.len());
        assert_eq!(c.assignments, g.assignments, "{semantics:?}: assignments");
        let (mut cd, mut gd) = (c.dictionary, g.dictionary);
        assert!(
            gd.info().backend.starts_with("cuda"),
            "{}",
            gd.info().backend
        );
        // Everything but the recorded backend is identical, bit for bit.
        let info = cd.info().clone();
        gd.set_info(info.clone());
        cd.set_info(info);
        assert_eq!(cd, gd, "{semantics:?}: dictionary");
    }
}

#[test]
fn growable_rows_keep_every_row_across_capacity_growth() {
    let Some(dev) = device() else { return };
    let d = 7;
    let mut g = dev.growable_rows(d).unwrap();
    let mut all = Vec::new();
    for (i, m) in [3usize, 0, 20, 1, 100, 5].iter().enumerate() {
        let rows: Vec<f32> = (0..m * d).map(|j| (i * 1000 + j) as f32).collect();
        dev.append_rows(&mut g, &rows).unwrap();
        all.extend(rows);
        assert_eq!(g.rows(), all.len() / d);
        assert_eq!(dev.stream().clone_dtoh(&g.view()).unwrap(), all);
    }
    assert!(
        dev.append_rows(&mut g, &[1.0; 3]).is_err(),
        "partial rows are an error"
    );
}
