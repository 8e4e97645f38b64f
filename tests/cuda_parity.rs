//! CUDA kernels against their CPU twins (the oracle). Each test skips, saying why, where no
//! CUDA driver is present; on a GPU machine they run via scripts/gpu-run.sh. Whole builds on
//! every backend (two-phase, strict order, growth, merges, resume) are in tests/clustering.rs,
//! one body per backend.
#![cfg(feature = "cuda")]

mod devices;

use devices::rows_around as data;
use exemplar::backend::cpu::{
    leaders_cpu, nearest_prefix_cpu, nearest_rows, pairwise_distance_percentile, screen_rows,
    LeaderDecision,
};
use exemplar::backend::cuda::{bf16_screen_margin, CudaDevice, ScreenKind};
use exemplar::backend::Backend;
use exemplar::calibrate::PercentileMethod;
use exemplar::geometry::directions;

fn device() -> Option<CudaDevice> {
    devices::cuda_device()
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

/// The raw-address prepare (what the Python package runs on a DLPack CUDA tensor) reads device
/// memory it does not own in place, and equals the copy path bit for bit (f32 and bf16).
#[test]
fn prepare_raw_reads_foreign_device_memory_like_the_copy_path() {
    use cudarc::driver::DevicePtr;
    let Some(dev) = device() else { return };
    let (n, d) = (300, 384);
    let x = data(n, d, 8, 3);
    let center: Vec<f32> = (0..d).map(|j| x[j] * 0.5).collect();
    let dc = dev.upload(&center).unwrap();
    let xs = dev.upload(&x).unwrap();
    let bits: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
    let bs = dev.upload(&bits).unwrap();
    let (xp, _x_sync) = xs.device_ptr(dev.stream());
    let (bp, _b_sync) = bs.device_ptr(dev.stream());
    assert_eq!(
        exemplar::backend::cuda::pointer_context(xp).unwrap(),
        dev.context().cu_ctx()
    );
    let bits_of = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    // SAFETY: xs and bs hold n·d f32 / bf16 values of this device and outlive the calls.
    let raw = unsafe { dev.prepare_raw(xp, false, n, d, &dc) }.unwrap();
    let copy = dev.prepare_f32(&xs, n, d, &dc, None).unwrap();
    assert_eq!(
        bits_of(dev.download(&raw).unwrap()),
        bits_of(dev.download(&copy).unwrap())
    );
    let raw = unsafe { dev.prepare_raw(bp, true, n, d, &dc) }.unwrap();
    let copy = dev.prepare_bf16(&bs, n, d, &dc, None).unwrap();
    assert_eq!(
        bits_of(dev.download(&raw).unwrap()),
        bits_of(dev.download(&copy).unwrap())
    );
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

/// Unit directions of clustered rows, centered on their mean (so they spread over the sphere).
fn unit_rows(n: usize, d: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let x = data(n, d, clusters, seed);
    let center: Vec<f32> = (0..d)
        .map(|j| (0..n).map(|i| x[i * d + j] as f64).sum::<f64>() as f32 / n as f32)
        .collect();
    directions(&x, &center).unwrap()
}

#[test]
fn both_screens_give_the_cpu_ids_and_exact_similarities() {
    let Some(dev) = device() else { return };
    eprintln!("kernels: {:?}", dev.kernel_origin());
    let mut cases: Vec<(String, usize, Vec<f32>, Vec<f32>)> = Vec::new();
    for (n, k, d, clusters) in [
        (4096, 1000, 2304, 50),
        (3000, 300, 256, 0),
        (513, 65, 100, 3),
        (130, 129, 33, 7),
        (64, 1, 8, 1),
    ] {
        let u = unit_rows(n, d, clusters, 3);
        let e = unit_rows(k.max(2), d, clusters, 4)[..k * d].to_vec();
        cases.push((format!("n={n} k={k} d={d} clusters={clusters}"), d, u, e));
    }
    // Exact ties: every candidate twice (ids must be the lower copy), and rows that are
    // candidates themselves (similarity at the top of the range).
    let d = 384;
    let base = unit_rows(700, d, 20, 9);
    let mut e = base.clone();
    e.extend_from_slice(&base);
    let mut u = unit_rows(2000, d, 20, 10);
    u.extend_from_slice(&base[..100 * d]);
    cases.push(("duplicated candidates".into(), d, u, e));
    // Hundreds of near-identical candidates: more contenders than the tensor-core path lists,
    // so its rows fall back to the re-check over all candidates.
    let d = 128;
    let one = unit_rows(2, d, 0, 13);
    let jitter = unit_rows(300, d, 0, 14);
    let e: Vec<f32> = (0..300 * d)
        .map(|i| one[i % d] + 1e-3 * jitter[i])
        .collect();
    let e = directions(&e, &vec![0.0; d]).unwrap();
    let u: Vec<f32> = (0..500 * d)
        .map(|i| one[i % d] + 0.05 * jitter[(i * 7) % (300 * d)])
        .collect();
    let u = directions(&u, &vec![0.0; d]).unwrap();
    cases.push(("near-identical candidates".into(), d, u, e));
    for (what, d, u, e) in &cases {
        let (n, k) = (u.len() / d, e.len() / d);
        let (want_ids, want_sims) = nearest_rows(u, e, *d);
        let (du, de) = (dev.upload(u).unwrap(), dev.upload(e).unwrap());
        for screen in [
            ScreenKind::F32,
            ScreenKind::Bf16TensorCores,
            ScreenKind::CublasBf16,
        ] {
            let (ids, sims) = dev
                .nearest_with(screen, &du, n, &de.slice(..), k, *d, None)
                .unwrap();
            for i in 0..n {
                assert_eq!(ids[i] as u32, want_ids[i], "{what} {screen:?}: row {i}");
                assert_eq!(
                    sims[i].to_bits(),
                    want_sims[i].to_bits(),
                    "{what} {screen:?}: row {i} similarity"
                );
            }
            let (amb, full) = (dev.last_ambiguous_rows(), dev.last_rechecked_rows());
            eprintln!("{what} {screen:?}: {amb} rows ambiguous, {full} re-checked over all K");
            let bf16 = screen != ScreenKind::F32;
            if bf16 && what.starts_with("duplicated") {
                assert!(
                    amb >= 100 && full < amb,
                    "the contender path must settle them"
                );
            }
            if bf16 && what.starts_with("near-identical") {
                assert!(full > 0, "overflowing contender lists must fall back");
            }
        }
    }
    assert!(bf16_screen_margin(2304) > 0.0175 && bf16_screen_margin(2304) < 0.018);
}

#[test]
fn candidate_limits_give_the_cpu_prefix_search() {
    let Some(dev) = device() else { return };
    let gpu = Backend::Cuda(std::sync::Arc::new(dev));
    for (n, l, d) in [(3000, 700, 256), (200, 40, 24)] {
        let rows = unit_rows(n, d, 12, 21);
        let leaders = unit_rows(l, d, 12, 22);
        // Limits 0 (no candidate), inside, and beyond l.
        let limits: Vec<u32> = (0..n as u32).map(|i| (i * 37) % (l as u32 + 50)).collect();
        let want = nearest_prefix_cpu(&rows, &limits, &leaders, d);
        let got = gpu.nearest_prefix(&rows, &limits, &leaders, d).unwrap();
        for i in 0..n {
            assert_eq!(
                got[i].map(|(j, s)| (j, s.to_bits())),
                want[i].map(|(j, s)| (j, s.to_bits())),
                "n={n} l={l}: row {i}, limit {}",
                limits[i]
            );
        }
        // Every screen with limits (the backend picks one).
        let Backend::Cuda(dev) = &gpu else {
            unreachable!()
        };
        let lim: Vec<i32> = limits.iter().map(|&x| x.min(l as u32) as i32).collect();
        let (du, de, dl) = (
            dev.upload(&rows).unwrap(),
            dev.upload(&leaders).unwrap(),
            dev.upload(&lim).unwrap(),
        );
        for screen in [
            ScreenKind::F32,
            ScreenKind::Bf16TensorCores,
            ScreenKind::CublasBf16,
        ] {
            let (ids, sims) = dev
                .nearest_with(screen, &du, n, &de.slice(..), l, d, Some(&dl))
                .unwrap();
            for i in 0..n {
                let got = (ids[i] >= 0).then(|| (ids[i] as u32, sims[i].to_bits()));
                assert_eq!(
                    got,
                    want[i].map(|(j, s)| (j, s.to_bits())),
                    "{screen:?} n={n} l={l}: row {i}, limit {}",
                    limits[i]
                );
            }
        }
    }
}

#[test]
fn leaders_on_the_device_equal_the_cpu_twin_across_batches_and_growth() {
    let Some(dev) = device() else { return };
    for (d, clusters, percentile) in [(256, 40, 3.0), (2304, 0, 1.0), (64, 6, 20.0)] {
        let all = unit_rows(12_000, d, clusters, 31 + d as u64);
        let theta = Backend::Cpu
            .pairwise_percentile(&all[..2000 * d], d, percentile, PercentileMethod::Linear)
            .unwrap();
        // The buffer already holds pre-batch exemplars; leaders go after them, batch by batch.
        let mut g = dev.growable_rows(d).unwrap();
        let old = unit_rows(5, d, clusters, 99);
        dev.append_rows(&mut g, &old).unwrap();
        let mut expect_rows = old.clone();
        let mut start = 0;
        let mut followers = 0;
        for m in [1usize, 7, 1500, 513, 512, 2, 4000] {
            let batch = &all[start * d..(start + m) * d];
            start += m;
            let want = leaders_cpu(batch, d, theta);
            let got = dev
                .leaders(&dev.upload(batch).unwrap().slice(..), m, d, theta, &mut g)
                .unwrap();
            assert_eq!(got.len(), m);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                match (a, b) {
                    (
                        LeaderDecision::Follow { ordinal: x, sim: s },
                        LeaderDecision::Follow { ordinal: y, sim: t },
                    ) => {
                        assert_eq!(x, y, "d={d} m={m}: row {i} follows");
                        assert_eq!(s.to_bits(), t.to_bits(), "d={d} m={m}: row {i} similarity");
                        followers += 1;
                    }
                    _ => assert_eq!(a, b, "d={d} m={m}: row {i}"),
                }
            }
            // The buffer: the earlier rows, then this batch's leaders in ordinal order.
            for (i, dcs) in want.iter().enumerate() {
                if matches!(dcs, LeaderDecision::Leader { .. }) {
                    expect_rows.extend_from_slice(&batch[i * d..(i + 1) * d]);
                }
            }
            assert_eq!(g.rows(), expect_rows.len() / d, "d={d} m={m}: rows held");
            let held = dev.stream().clone_dtoh(&g.view()).unwrap();
            assert!(
                held.iter()
                    .zip(&expect_rows)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "d={d} m={m}: buffer contents"
            );
        }
        let k = expect_rows.len() / d - 5;
        eprintln!("d={d}: θ={theta:.4}, {k} leaders, {followers} followers");
        assert!(k > 10 && followers > 10, "both outcomes must occur");
    }
    // Through the backend, and a width mismatch is an error.
    let gpu = Backend::Cuda(std::sync::Arc::new(dev));
    let rows = unit_rows(900, 48, 5, 3);
    assert_eq!(
        gpu.leaders(&rows, 48, 0.4).unwrap(),
        leaders_cpu(&rows, 48, 0.4)
    );
    assert!(gpu.leaders(&rows[..47], 48, 0.4).is_err());
}

/// Whether libtorch sees a CUDA device; says why not (or panics under EXEMPLAR_REQUIRE_CUDA).
#[cfg(feature = "torch")]
fn torch_sees_cuda() -> bool {
    if tch::Cuda::is_available() {
        return true;
    }
    if std::env::var_os("EXEMPLAR_REQUIRE_CUDA").is_some() {
        panic!("EXEMPLAR_REQUIRE_CUDA is set but this libtorch sees no CUDA device");
    }
    eprintln!("skipping: this libtorch has no CUDA (the GPU bundle uses the GPU machine's torch)");
    false
}

/// Zero-copy torch input: the prepare kernel reads a CUDA tensor in place.
#[cfg(feature = "torch")]
#[test]
fn torch_tensors_are_read_in_place_in_order_and_equal_the_copy_path() {
    use exemplar::backend::cuda::torch::{pointer_context, TorchDtype, TorchRows};
    use tch::{Device, Kind, Tensor};
    let Some(dev) = device() else { return };
    if !torch_sees_cuda() {
        return;
    }
    let (n, d) = (8192, 2304);
    let x = data(n, d, 16, 41);
    let center: Vec<f32> = (0..d).map(|j| x[j] * 0.5).collect();
    let dc = dev.upload(&center).unwrap();
    // The legacy default stream, which orders with torch's default stream.
    assert!(
        dev.stream().cu_stream().is_null(),
        "launches must use the legacy default stream"
    );
    let xt = Tensor::from_slice(&x)
        .reshape([n as i64, d as i64])
        .to_device(Device::Cuda(0));
    // Ordering: y is the last of 200 exact torch kernels (·1.0, 75 MB each, milliseconds in
    // all) queued just before our launch, with no synchronisation in between; a launch on
    // another stream would read y before it is written.
    let mut y = &xt * 1.0;
    for _ in 0..199 {
        y = &y * 1.0;
    }
    let view = TorchRows::new(&dev, &y).unwrap();
    assert_eq!(view.dtype(), TorchDtype::F32);
    assert_eq!((view.rows(), view.dim()), (n, d));
    // Context identity: the tensor's memory lives in the device's (primary) context.
    assert_eq!(
        pointer_context(view.device_ptr()).unwrap(),
        dev.context().cu_ctx()
    );
    let got = dev
        .download(&dev.prepare_torch(&view, &dc, None).unwrap())
        .unwrap();
    let copy = dev
        .download(
            &dev.prepare_f32(&dev.upload(&x).unwrap(), n, d, &dc, None)
                .unwrap(),
        )
        .unwrap();
    let cpu = directions(&x, &center).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&copy), "f32: zero-copy vs copy path");
    assert_eq!(bits(&got), bits(&cpu), "f32: zero-copy vs CPU");
    // bf16, with a gather of kept rows.
    let yb = y.to_kind(Kind::BFloat16);
    let up: Vec<f32> =
        Vec::<f32>::try_from(yb.to_kind(Kind::Float).flatten(0, 1).to_device(Device::Cpu)).unwrap();
    let keep: Vec<i64> = vec![5, 0, 8191, 77];
    let vb = TorchRows::new(&dev, &yb).unwrap();
    assert_eq!(vb.dtype(), TorchDtype::Bf16);
    let got = dev
        .download(
            &dev.prepare_torch(&vb, &dc, Some(&dev.upload(&keep).unwrap()))
                .unwrap(),
        )
        .unwrap();
    let cpu = directions(&up, &center).unwrap();
    for (r, &src) in keep.iter().enumerate() {
        assert_eq!(
            bits(&got[r * d..(r + 1) * d]),
            bits(&cpu[src as usize * d..(src as usize + 1) * d]),
            "bf16 gathered row {r}"
        );
    }
    // What cannot be viewed is an error, not a silent copy.
    let t = y.transpose(0, 1);
    assert!(TorchRows::new(&dev, &t)
        .err()
        .unwrap()
        .to_string()
        .contains("contiguous"));
    let h = y.to_kind(Kind::Half);
    assert!(TorchRows::new(&dev, &h)
        .err()
        .unwrap()
        .to_string()
        .contains("dtype"));
    let c = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu));
    assert!(TorchRows::new(&dev, &c)
        .err()
        .unwrap()
        .to_string()
        .contains("not CUDA"));
    let v = Tensor::zeros([16], (Kind::Float, Device::Cuda(0)));
    assert!(TorchRows::new(&dev, &v)
        .err()
        .unwrap()
        .to_string()
        .contains("shape"));
}

/// A build from text on the GPU reads the hooked tensor in place after the calibration (no
/// activation bytes cross to the host for those batches) and gives the dictionary the CPU
/// backend builds from the same model's rows copied to the host.
#[cfg(feature = "torch")]
#[test]
fn a_text_build_on_the_gpu_reads_the_hooked_tensor_in_place_and_equals_the_cpu_build() {
    use exemplar::build::BuildConfig;
    use exemplar::calibrate::PercentileMethod;
    use exemplar::data::corpus::{CorpusOptions, CorpusReader};
    use exemplar::model::{Gemma, HookPoint, Tokenizer};
    use exemplar::pipeline::text::{TextOptions, TextSource};
    use exemplar::pipeline::{self, BuildPlan, CalibrationSpec};
    use std::sync::Arc;
    use tch::{Device, Kind};
    let Some(dev) = device() else { return };
    if !torch_sees_cuda() {
        return;
    }
    let Some(fixtures) = std::env::var_os("EXEMPLAR_GEMMA_FIXTURES") else {
        if std::env::var_os("EXEMPLAR_REQUIRE_CUDA").is_some() {
            panic!("EXEMPLAR_GEMMA_FIXTURES is not set");
        }
        eprintln!("skipping: EXEMPLAR_GEMMA_FIXTURES not set");
        return;
    };
    let dir = std::path::PathBuf::from(fixtures).join("gqa");
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "far",
    ];
    let mut rng = devices::Lcg(17);
    let text: String = (0..200)
        .map(|_| {
            let n = 4 + (rng.f().abs() * 20.0) as usize;
            let w: Vec<&str> = (0..n)
                .map(|_| words[(rng.f().abs() * 97.0) as usize % words.len()])
                .collect();
            w.join(" ") + "\n"
        })
        .collect();
    std::fs::write(&corpus, text).unwrap();
    let gpu = Backend::Cuda(Arc::new(dev));
    for kind in [Kind::BFloat16, Kind::Float] {
        let model = Gemma::load(&dir, kind, Device::Cuda(0)).unwrap();
        let tok =
            Tokenizer::from_file(&dir.join("tokenizer.json"), model.config.bos_token_id).unwrap();
        let hook = HookPoint::parse("blocks.2.hook_resid_post").unwrap();
        let run = |backend: &Backend| {
            let reader =
                CorpusReader::open(std::slice::from_ref(&corpus), CorpusOptions::default())
                    .unwrap();
            let text = TextOptions {
                ctx: 16,
                batch_documents: 8,
                min_tokens: 1,
                final_position: false,
                pack: false,
            };
            let mut src = TextSource::new(reader, &tok, &model, hook, text).unwrap();
            let plan = BuildPlan {
                hook: Some(hook.name()),
                ..BuildPlan::new(BuildConfig {
                    reservoir_size: 3,
                    saturation_window: None,
                    ..BuildConfig::default()
                })
            };
            let cal = CalibrationSpec::Inline {
                percentile: 10.0,
                method: PercentileMethod::Linear,
                activations: 200,
                standardize: false,
            };
            let out = pipeline::run_build(backend, &mut src, cal, &plan, None).unwrap();
            (out.dictionary, src.transfer(), src.transfer_at_switch())
        };
        let (cpu, (cpu_d2h, batches), cpu_switch) = run(&Backend::Cpu);
        assert!(cpu_switch.is_none(), "the CPU backend copies every batch");
        assert!(
            cpu_d2h > 0 && batches > 10,
            "{cpu_d2h} bytes, {batches} batches"
        );
        let in_place0 = gpu.rows_read_in_place().unwrap();
        let (g, (d2h, gb), switch) = run(&gpu);
        let in_place = gpu.rows_read_in_place().unwrap() - in_place0;
        let (at_d2h, at_batches) = switch.expect("a GPU build leaves the rows in the tensors");
        // Every row after the calibration's batches (at most 8 documents × 16 rows each) was
        // prepared from the hooked tensor itself, not from a copy.
        let rows = g.info().activations_streamed;
        assert!(
            in_place > 0 && in_place <= rows && rows - in_place <= at_batches * 8 * 16,
            "{kind:?}: {in_place} of {rows} rows read in place"
        );
        assert_eq!(gb, batches);
        assert!(at_batches >= 1 && at_batches < batches);
        assert_eq!(
            d2h, at_d2h,
            "{kind:?}: activation bytes copied after the calibration"
        );
        assert_eq!(g.info().timings.activation_d2h_bytes, Some(d2h));
        assert!(g.len() > 5, "K = {}", g.len());
        devices::assert_same_but_backend(&cpu, &g, &gpu, &format!("text build, {kind:?}"));
    }
}
