//! Clustering semantics: hand-computed cases of the two-phase rule and strict order, batch-size
//! (in)variance, an independent sequential-leader-clustering oracle, statistics, examples,
//! reservoirs, saturation, merging and finalisation, and whole builds with checkpoints and
//! resume that equal the CPU build bit for bit.
//!
//! Every test is one body over every backend (`test_device!`, tests/devices): `name_cpu` runs it
//! on the CPU, `name_cuda` on the CUDA device where there is one (and says why it skips where
//! there is none).

mod devices;

use devices::{assert_same_but_backend, rows_around};
use exemplar::backend::cpu::pairwise_distance_percentile;
use exemplar::backend::Backend;
use exemplar::build::{BuildConfig, BuildOutput, Builder, Semantics};
use exemplar::calibrate::PercentileMethod;
use exemplar::data::ActivationBatch;
use exemplar::geometry::directions;
use exemplar::Dictionary;

/// A unit vector at `deg` degrees in the plane.
fn at(deg: f64) -> [f32; 2] {
    let r = deg.to_radians();
    [r.cos() as f32, r.sin() as f32]
}

fn rows(angles: &[f64]) -> Vec<f32> {
    angles.iter().flat_map(|&a| at(a)).collect()
}

/// Cosine distance between two angles, computed from the same f32 vectors the builder sees.
fn dist(a: f64, b: f64) -> f64 {
    let (x, y) = (at(a), at(b));
    let s = x[0] as f64 * y[0] as f64 + x[1] as f64 * y[1] as f64;
    let n = |v: [f32; 2]| ((v[0] as f64).powi(2) + (v[1] as f64).powi(2)).sqrt();
    1.0 - s / (n(x) * n(y))
}

fn config(semantics: Semantics) -> BuildConfig {
    BuildConfig {
        semantics,
        saturation_window: None,
        record_assignments: Some(1 << 16),
        ..BuildConfig::default()
    }
}

/// A builder on `backend`.
fn builder(backend: &Backend, center: Vec<f32>, theta: f64, cfg: BuildConfig) -> Builder {
    Builder::new(center, theta, cfg)
        .unwrap()
        .with_backend(backend.clone())
}

/// Builds from `data` (n × d) on `backend` in batches of `batch`, with a zero center.
fn build(
    backend: &Backend,
    data: &[f32],
    d: usize,
    theta: f64,
    batch: usize,
    cfg: BuildConfig,
) -> BuildOutput {
    let mut b = builder(backend, vec![0.0; d], theta, cfg);
    let n = data.len() / d;
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let batch = ActivationBatch::from_rows(data[start * d..end * d].to_vec(), d, start as u64);
        b.add_batch(&batch).unwrap();
        start = end;
    }
    b.finish(1)
}

fn assignments(out: &BuildOutput, n: usize) -> Vec<i64> {
    out.assignments.as_ref().unwrap()[..n].to_vec()
}

fn two_phase_rule_by_hand(backend: &Backend) {
    // θ = 0.1 ⇔ within ~25.8°.
    // Batch 1: 0° founds P0; 10° joins P0 (phase A). Phase B over [40, 45, 90, 30]: 40 leads P1,
    // 45 follows P1, 90 leads P2 (50° from P1), 30 follows P1 (10° away; 60° from P2).
    // Batch 2: 18° joins P0 (18° vs 22° to P1); 130° leads P3 (40° from P2); 115° is within θ of
    // P2 (25°) so two-phase puts it in P2 although P3, created earlier in the batch, is nearer
    // (15°).
    let angles = [0.0, 10.0, 40.0, 45.0, 90.0, 30.0, 18.0, 130.0, 115.0];
    let data = rows(&angles);
    let out = build(backend, &data, 2, 0.1, 6, config(Semantics::TwoPhase));
    let dict = &out.dictionary;
    assert_eq!(dict.len(), 4);
    for (k, &a) in [0.0, 40.0, 90.0, 130.0].iter().enumerate() {
        let e = dict.exemplar(k);
        let want = at(a);
        assert!(
            (e[0] - want[0]).abs() < 1e-6 && (e[1] - want[1]).abs() < 1e-6,
            "exemplar {k}"
        );
    }
    assert_eq!(assignments(&out, 9), vec![0, 0, 1, 1, 2, 1, 0, 3, 2]);
    assert_eq!(dict.member_counts(), &[3, 3, 2, 1]);
    // Σd and Σd² from the hand-computed member distances.
    let expect = [
        vec![dist(0.0, 0.0), dist(10.0, 0.0), dist(18.0, 0.0)],
        vec![0.0, dist(45.0, 40.0), dist(30.0, 40.0)],
        vec![0.0, dist(115.0, 90.0)],
        vec![0.0],
    ];
    for (k, ds) in expect.iter().enumerate() {
        let (s, s2) = dict.distance_sums(k);
        assert!((s - ds.iter().sum::<f64>()).abs() < 1e-6, "Σd of {k}");
        assert!(
            (s2 - ds.iter().map(|d| d * d).sum::<f64>()).abs() < 1e-6,
            "Σd² of {k}"
        );
    }
    // Mean direction and coherence of P1 = {40°, 45°, 30°}.
    let sum = [40.0, 45.0, 30.0]
        .iter()
        .map(|&a| at(a))
        .fold([0.0f64; 2], |acc, v| {
            [acc[0] + v[0] as f64, acc[1] + v[1] as f64]
        });
    let norm = (sum[0] * sum[0] + sum[1] * sum[1]).sqrt();
    let m = dict.mean_direction(1);
    assert!(
        (m[0] as f64 - sum[0] / norm).abs() < 1e-6 && (m[1] as f64 - sum[1] / norm).abs() < 1e-6
    );
    assert!((dict.coherence(1) - norm / 3.0).abs() < 1e-9);

    // Strict order: 115° joins the nearer P3 instead; K and exemplars are the same.
    let strict = build(backend, &data, 2, 0.1, 6, config(Semantics::StrictOrder));
    assert_eq!(assignments(&strict, 9), vec![0, 0, 1, 1, 2, 1, 0, 3, 3]);
    assert_eq!(strict.dictionary.exemplars(), dict.exemplars());
    // Batch size 1 is sequential leader clustering: both rules agree with strict order.
    for sem in [Semantics::TwoPhase, Semantics::StrictOrder] {
        let one = build(backend, &data, 2, 0.1, 1, config(sem));
        assert_eq!(
            assignments(&one, 9),
            vec![0, 0, 1, 1, 2, 1, 0, 3, 3],
            "{sem:?}"
        );
    }
}
test_device!(
    two_phase_rule_by_hand,
    two_phase_rule_by_hand_cpu,
    two_phase_rule_by_hand_cuda
);

fn followers_take_the_best_fit_leader_not_the_first(backend: &Backend) {
    // After a first batch founding P0 at 0°, a batch of rows all far from P0 goes to phase B:
    // two leaders 30° apart (farther than θ = 0.1), then a row 18° from the first and 12° from
    // the second follows the second.
    let data = rows(&[0.0, 200.0, 230.0, 218.0]);
    let mut b = builder(backend, vec![0.0, 0.0], 0.1, config(Semantics::TwoPhase));
    b.add_batch(&ActivationBatch::from_rows(data[..2].to_vec(), 2, 0))
        .unwrap();
    b.add_batch(&ActivationBatch::from_rows(data[2..].to_vec(), 2, 1))
        .unwrap();
    assert_eq!(assignments(&b.finish(1), 4), vec![0, 1, 2, 2]);
    // In a fresh dictionary the first row founds P0 and phase A compares the rest with it
    // first: 218° is within θ of the founder 200°, so it joins P0 (the reference's rule).
    let fresh = build(backend, &data[2..], 2, 0.1, 3, config(Semantics::TwoPhase));
    assert_eq!(assignments(&fresh, 3), vec![0, 1, 0]);
}
test_device!(
    followers_take_the_best_fit_leader_not_the_first,
    followers_take_the_best_fit_leader_not_the_first_cpu,
    followers_take_the_best_fit_leader_not_the_first_cuda
);

fn ties_go_to_the_lowest_id(backend: &Backend) {
    // Exemplars at 0° and 90°; 45° is at exactly the same (f32-symmetric) distance from both.
    let data = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
    let out = build(backend, &data, 2, 0.5, 3, config(Semantics::StrictOrder));
    assert_eq!(out.dictionary.len(), 2);
    assert_eq!(assignments(&out, 3), vec![0, 1, 0]);
    let (ids, _) = out.dictionary.assign(&[1.0, 1.0, 2.0, 2.0]).unwrap();
    assert_eq!(ids, vec![0, 0]);
}
test_device!(
    ties_go_to_the_lowest_id,
    ties_go_to_the_lowest_id_cpu,
    ties_go_to_the_lowest_id_cuda
);

/// A seeded generator for test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn gauss(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-300), self.next());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// `clusters` random centers in D dims plus gaussian noise, rows shuffled by the generator.
fn clustered(n: usize, d: usize, clusters: usize, noise: f64, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    let centers: Vec<Vec<f64>> = (0..clusters)
        .map(|_| (0..d).map(|_| r.gauss()).collect())
        .collect();
    (0..n)
        .flat_map(|_| {
            let c = &centers[(r.next() * clusters as f64) as usize % clusters];
            let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt();
            c.iter()
                .map(|v| (v / norm + noise * r.gauss() / (d as f64).sqrt() * 3.0 + 0.5) as f32)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Independent oracle: strict sequential leader clustering, one row at a time, in f64 on the
/// same f32 directions, ties to the lowest id.
fn naive_slc(u: &[f32], d: usize, theta: f64) -> (Vec<usize>, Vec<i64>) {
    let mut ex: Vec<usize> = Vec::new();
    let mut assign = Vec::new();
    for i in 0..u.len() / d {
        let row = &u[i * d..(i + 1) * d];
        let mut best: Option<(usize, f64)> = None;
        for (k, &e) in ex.iter().enumerate() {
            let s: f64 = row
                .iter()
                .zip(&u[e * d..(e + 1) * d])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((k, s));
            }
        }
        match best {
            Some((k, s)) if (1.0 - s).clamp(0.0, 2.0) <= theta => assign.push(k as i64),
            _ => {
                ex.push(i);
                assign.push(ex.len() as i64 - 1);
            }
        }
    }
    (ex, assign)
}

fn strict_order_equals_an_independent_sequential_leader_clustering(backend: &Backend) {
    let (n, d) = (1500, 24);
    let data = clustered(n, d, 40, 0.2, 1);
    let center: Vec<f32> = (0..d)
        .map(|j| (0..n).map(|i| data[i * d + j]).sum::<f32>() / n as f32)
        .collect();
    let u = exemplar::geometry::directions(&data, &center).unwrap();
    let theta = 0.25;
    let (oracle_ex, oracle_assign) = naive_slc(&u, d, theta);
    assert!(
        oracle_ex.len() > 20 && oracle_ex.len() < 600,
        "test data gives K = {}",
        oracle_ex.len()
    );
    let mut b = builder(
        backend,
        center.clone(),
        theta,
        config(Semantics::StrictOrder),
    );
    for (s, chunk) in data.chunks(300 * d).enumerate() {
        b.add_batch(&ActivationBatch::from_rows(
            chunk.to_vec(),
            d,
            (s * 300) as u64,
        ))
        .unwrap();
    }
    let out = b.finish(1);
    let dict = &out.dictionary;
    assert_eq!(dict.len(), oracle_ex.len());
    eprintln!("oracle K = {}", dict.len());
    for (k, &row) in oracle_ex.iter().enumerate() {
        assert_eq!(dict.exemplar(k), &u[row * d..(row + 1) * d], "exemplar {k}");
        assert_eq!(dict.exemplar_source(k).0, row as i64);
    }
    assert_eq!(assignments(&out, n), oracle_assign);
}
test_device!(
    strict_order_equals_an_independent_sequential_leader_clustering,
    strict_order_equals_an_independent_sequential_leader_clustering_cpu,
    strict_order_equals_an_independent_sequential_leader_clustering_cuda
);

fn k_and_exemplars_do_not_depend_on_batch_size_and_strict_order_outputs_do_not_either(
    backend: &Backend,
) {
    let (n, d) = (2000, 16);
    let data = clustered(n, d, 30, 0.4, 2);
    let theta = 0.3;
    let runs: Vec<(usize, BuildOutput, BuildOutput)> = [1usize, 7, 64, 333, 2000]
        .iter()
        .map(|&bs| {
            (
                bs,
                build(backend, &data, d, theta, bs, config(Semantics::TwoPhase)),
                build(backend, &data, d, theta, bs, config(Semantics::StrictOrder)),
            )
        })
        .collect();
    let (_, two_ref, strict_ref) = &runs[0];
    assert!(two_ref.dictionary.len() > 10);
    eprintln!("invariance K = {}", two_ref.dictionary.len());
    for (bs, two, strict) in &runs[1..] {
        // Two-phase: K, exemplars and their order are those of sequential leader clustering.
        assert_eq!(
            two.dictionary.len(),
            two_ref.dictionary.len(),
            "K at batch size {bs}"
        );
        assert_eq!(
            two.dictionary.exemplars(),
            two_ref.dictionary.exemplars(),
            "batch size {bs}"
        );
        // Strict order: every output is identical (bit for bit), except the batch counter.
        let (a, b) = (&strict.dictionary, &strict_ref.dictionary);
        assert_eq!(a.exemplars(), b.exemplars());
        assert_eq!(a.member_counts(), b.member_counts(), "batch size {bs}");
        assert_eq!(
            strict.assignments, strict_ref.assignments,
            "batch size {bs}"
        );
        for k in 0..a.len() {
            assert_eq!(
                a.direction_sum(k),
                b.direction_sum(k),
                "sums of {k} at batch size {bs}"
            );
            assert_eq!(a.distance_sums(k), b.distance_sums(k));
            assert_eq!(a.closest_examples(k), b.closest_examples(k));
            assert_eq!(a.farthest_examples(k), b.farthest_examples(k));
            assert_eq!(a.reservoir(k), b.reservoir(k));
        }
    }
    // Two-phase assignment does depend on batch size on this data (that is the rule).
    let (_, two_big, _) = &runs[4];
    assert_ne!(
        two_big.assignments, two_ref.assignments,
        "expected the two-phase rule to differ from SLC here"
    );
}
test_device!(
    k_and_exemplars_do_not_depend_on_batch_size_and_strict_order_outputs_do_not_either,
    k_and_exemplars_do_not_depend_on_batch_size_and_strict_order_outputs_do_not_either_cpu,
    k_and_exemplars_do_not_depend_on_batch_size_and_strict_order_outputs_do_not_either_cuda
);

fn identical_input_and_seed_give_an_identical_dictionary_and_the_seed_moves_the_reservoir(
    backend: &Backend,
) {
    let (n, d) = (3000, 8);
    let data = clustered(n, d, 3, 0.3, 3);
    let cfg = |seed| BuildConfig {
        seed,
        reservoir_size: 5,
        ..config(Semantics::TwoPhase)
    };
    let a = build(backend, &data, d, 0.6, 500, cfg(7));
    let b = build(backend, &data, d, 0.6, 500, cfg(7));
    assert_eq!(a.dictionary, b.dictionary);
    assert_eq!(a.assignments, b.assignments);
    let c = build(backend, &data, d, 0.6, 500, cfg(8));
    let big = (0..a.dictionary.len())
        .find(|&k| a.dictionary.member_count(k) > 100)
        .unwrap();
    assert_ne!(a.dictionary.reservoir(big), c.dictionary.reservoir(big));
}
test_device!(
    identical_input_and_seed_give_an_identical_dictionary_and_the_seed_moves_the_reservoir,
    identical_input_and_seed_give_an_identical_dictionary_and_the_seed_moves_the_reservoir_cpu,
    identical_input_and_seed_give_an_identical_dictionary_and_the_seed_moves_the_reservoir_cuda
);

fn statistics_examples_and_reservoirs_are_consistent_with_the_assignments(backend: &Backend) {
    let (n, d) = (4000, 12);
    let data = clustered(n, d, 12, 0.5, 4);
    let theta = 0.35;
    let cfg = BuildConfig {
        examples_per_partition: 4,
        reservoir_size: 6,
        ..config(Semantics::TwoPhase)
    };
    let out = build(backend, &data, d, theta, 1000, cfg);
    let dict = &out.dictionary;
    let asg = assignments(&out, n);
    let u = exemplar::geometry::directions(&data, &vec![0.0; d]).unwrap();
    assert_eq!(dict.member_counts().iter().sum::<u64>(), n as u64);
    for k in 0..dict.len() {
        let members: Vec<usize> = (0..n).filter(|&i| asg[i] == k as i64).collect();
        assert_eq!(members.len() as u64, dict.member_count(k));
        // Running sum of member directions.
        for j in 0..d {
            let s: f64 = members.iter().map(|&i| u[i * d + j] as f64).sum();
            assert!((s - dict.direction_sum(k)[j]).abs() < 1e-9);
        }
        // Units and ranges.
        let e = dict.exemplar(k);
        let m = dict.mean_direction(k);
        let unit = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((unit(e) - 1.0).abs() < 1e-5 && (unit(&m) - 1.0).abs() < 1e-5);
        let c = dict.coherence(k);
        assert!((0.0..=1.0 + 1e-6).contains(&c));
        // Examples: closest are the smallest distances among members, farthest the largest.
        // Exact member→exemplar distances, recomputed here (the exemplar's own is 0).
        let mut member_d: Vec<f32> = members
            .iter()
            .map(|&i| {
                if i as i64 == dict.exemplar_source(k).0 {
                    return 0.0;
                }
                let s: f64 = u[i * d..(i + 1) * d]
                    .iter()
                    .zip(e)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                (1.0 - s).clamp(0.0, 2.0) as f32
            })
            .collect();
        member_d.sort_by(f32::total_cmp);
        let kept: Vec<f32> = dict
            .closest_examples(k)
            .iter()
            .map(|e| e.distance)
            .collect();
        assert_eq!(kept, member_d[..members.len().min(4)], "closest of {k}");
        let far: Vec<f32> = dict
            .farthest_examples(k)
            .iter()
            .map(|e| e.distance)
            .collect();
        let want_far: Vec<f32> = member_d.iter().rev().take(4).copied().collect();
        assert_eq!(far, want_far, "farthest of {k}");
        assert_eq!(
            dict.closest_examples(k)[0].distance,
            0.0,
            "the exemplar is its own closest example"
        );
        assert_eq!(
            dict.closest_examples(k)[0].stream_row,
            dict.exemplar_source(k).0
        );
        for ex in dict
            .closest_examples(k)
            .iter()
            .chain(dict.farthest_examples(k))
        {
            assert_eq!(
                asg[ex.stream_row as usize], k as i64,
                "examples are members"
            );
        }
        let far = dict.farthest_examples(k);
        assert!(far.windows(2).all(|w| w[0].distance >= w[1].distance));
        let close = dict.closest_examples(k);
        assert!(close.windows(2).all(|w| w[0].distance <= w[1].distance));
        if let (Some(c_last), Some(f_last)) = (close.last(), far.last()) {
            assert!(c_last.distance <= f_last.distance || members.len() < 8);
        }
        // Reservoir: min(count, cap) member directions.
        let res = dict.reservoir(k);
        assert_eq!(res.len() / d, members.len().min(6));
        for r in res.chunks(d) {
            assert!(
                members.iter().any(|&i| &u[i * d..(i + 1) * d] == r),
                "reservoir rows are members"
            );
        }
    }
}
test_device!(
    statistics_examples_and_reservoirs_are_consistent_with_the_assignments,
    statistics_examples_and_reservoirs_are_consistent_with_the_assignments_cpu,
    statistics_examples_and_reservoirs_are_consistent_with_the_assignments_cuda
);

fn reference_properties_of_spec_section_9(backend: &Backend) {
    // Four well-separated clusters, D = 32, 50 each, noise 0.02, center = mean, θ = 0.05.
    let d = 32;
    let mut r = Rng(9);
    let centers: Vec<Vec<f64>> = (0..4)
        .map(|_| (0..d).map(|_| r.gauss() * 3.0).collect())
        .collect();
    let data: Vec<f32> = (0..200)
        .flat_map(|i| {
            centers[i / 50]
                .iter()
                .map(|c| (c + 0.02 * r.gauss()) as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let center: Vec<f32> = (0..d)
        .map(|j| (0..200).map(|i| data[i * d + j]).sum::<f32>() / 200.0)
        .collect();
    let go = |theta: f64, batch: usize, cfg: BuildConfig| {
        let mut b = builder(backend, center.clone(), theta, cfg);
        for (s, c) in data.chunks(batch * d).enumerate() {
            b.add_batch(&ActivationBatch::from_rows(
                c.to_vec(),
                d,
                (s * batch) as u64,
            ))
            .unwrap();
        }
        b.finish(1).dictionary
    };
    let dict = go(0.05, 200, config(Semantics::TwoPhase));
    assert!((2..=60).contains(&dict.len()), "K = {}", dict.len());
    let u0 = exemplar::geometry::directions(&data[..d], &center).unwrap();
    assert!(dict
        .exemplar(0)
        .iter()
        .zip(&u0)
        .all(|(a, b)| (a - b).abs() < 1e-6));
    assert!(
        go(0.001, 200, config(Semantics::TwoPhase)).len()
            >= go(0.5, 200, config(Semantics::TwoPhase)).len()
    );
    assert_eq!(dict.member_counts().iter().sum::<u64>(), 200);
    let one = go(10.0, 200, config(Semantics::TwoPhase));
    assert_eq!(one.len(), 1);
    assert!(one.reservoir(0).len() / d <= 30);
    // assign / distances.
    let (ids, dists) = dict.assign(&data).unwrap();
    assert!(ids.iter().all(|&i| i >= 0 && (i as usize) < dict.len()));
    let all = dict.distances(&data).unwrap();
    assert_eq!(all.len(), 200 * dict.len());
    for i in 0..200 {
        let row = &all[i * dict.len()..(i + 1) * dict.len()];
        let argmin = (0..row.len()).fold(0, |b, j| if row[j] < row[b] { j } else { b });
        assert_eq!(argmin as i64, ids[i]);
        assert!((row[argmin] - dists[i]).abs() < 1e-5);
    }
    let empty = Dictionary::new(center.clone(), 0.1).unwrap();
    let (ids, dists) = empty.assign(&data[..2 * d]).unwrap();
    assert_eq!(ids, vec![-1, -1]);
    assert!(dists.iter().all(|d| d.is_infinite()));
    assert!(Dictionary::new(center.clone(), 0.0).is_err());
    assert!(Dictionary::new(center.clone(), -1.0).is_err());
    assert!(format!("{dict}").contains("Dictionary(") && format!("{dict}").contains("partitions"));
    // finalize(min_members = 10).
    let mut fin = go(0.05, 200, config(Semantics::TwoPhase));
    fin.finalize(10);
    assert!(fin.member_counts().iter().all(|&c| c >= 10));
    // Spherical mean across 3 batches of different sizes equals the hand calculation.
    let mut b = builder(backend, center.clone(), 10.0, config(Semantics::TwoPhase));
    let mut start = 0;
    for size in [17usize, 101, 82] {
        b.add_batch(&ActivationBatch::from_rows(
            data[start * d..(start + size) * d].to_vec(),
            d,
            start as u64,
        ))
        .unwrap();
        start += size;
    }
    let dict = b.finish(1).dictionary;
    let u = exemplar::geometry::directions(&data, &center).unwrap();
    let sum: Vec<f64> = (0..d)
        .map(|j| (0..200).map(|i| u[i * d + j] as f64).sum())
        .collect();
    let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
    let m = dict.mean_direction(0);
    assert!(m
        .iter()
        .zip(&sum)
        .all(|(a, s)| (*a as f64 - s / norm).abs() < 1e-5));
    assert!((dict.coherence(0) - norm / 200.0).abs() < 1e-5);
}
test_device!(
    reference_properties_of_spec_section_9,
    reference_properties_of_spec_section_9_cpu,
    reference_properties_of_spec_section_9_cuda
);

fn merge_close_collapses_close_partitions_into_the_largest(backend: &Backend) {
    // Two tight clusters (5 and 3 points) 60° apart with θ = 0.05: two partitions; merging at
    // threshold 2.0 collapses them into the larger one, whose exemplar (its first point) stays.
    let a: Vec<f64> = (0..5).map(|i| i as f64 * 0.5).collect();
    let b: Vec<f64> = (0..3).map(|i| 60.0 + i as f64 * 0.5).collect();
    let cfg = BuildConfig {
        merge_threshold: Some(2.0),
        examples_per_partition: 10,
        ..config(Semantics::TwoPhase)
    };
    let mut bl = builder(backend, vec![0.0, 0.0], 0.05, cfg);
    bl.add_batch(&ActivationBatch::from_rows(rows(&b), 2, 0))
        .unwrap();
    let out = bl
        .add_batch(&ActivationBatch::from_rows(rows(&a), 2, 3))
        .unwrap();
    assert_eq!((out.new_partitions, out.merged, out.partitions), (1, 1, 1));
    let built = bl.finish(1);
    let dict = &built.dictionary;
    assert_eq!(dict.len(), 1);
    assert_eq!(dict.member_count(0), 8);
    assert_eq!(
        dict.exemplar(0),
        &at(0.0),
        "the larger cluster's first point"
    );
    assert_eq!(assignments(&built, 8), vec![0; 8]);
    // The merged partition keeps the closest and farthest examples of both.
    assert_eq!(dict.closest_examples(0).len(), 8);
    assert_eq!(dict.farthest_examples(0).len(), 8);
    assert_eq!(dict.closest_examples(0)[0].distance, 0.0);
    // Without merging: two partitions.
    let sep = build(
        backend,
        &[rows(&b), rows(&a)].concat(),
        2,
        0.05,
        3,
        config(Semantics::TwoPhase),
    );
    assert_eq!(sep.dictionary.len(), 2);
}
test_device!(
    merge_close_collapses_close_partitions_into_the_largest,
    merge_close_collapses_close_partitions_into_the_largest_cpu,
    merge_close_collapses_close_partitions_into_the_largest_cuda
);

fn saturation_stops_after_w_batches_without_a_new_partition(backend: &Backend) {
    // Batch 0 creates partitions; batches 1.. repeat the same directions and create none.
    let base = rows(&[0.0, 90.0, 180.0]);
    let run = |w: u64| {
        let cfg = BuildConfig {
            saturation_window: Some(w),
            ..config(Semantics::TwoPhase)
        };
        let mut b = builder(backend, vec![0.0, 0.0], 0.1, cfg);
        let mut batches = 0;
        for i in 0..10u64 {
            let o = b
                .add_batch(&ActivationBatch::from_rows(base.clone(), 2, i * 3))
                .unwrap();
            batches += 1;
            if o.saturated {
                break;
            }
        }
        (batches, b.finish(1).dictionary.info().saturated)
    };
    assert_eq!(run(1), (2, true));
    assert_eq!(run(3), (4, true));
}
test_device!(
    saturation_stops_after_w_batches_without_a_new_partition,
    saturation_stops_after_w_batches_without_a_new_partition_cpu,
    saturation_stops_after_w_batches_without_a_new_partition_cuda
);

fn finish_with_min_members_drops_small_partitions_and_remaps_assignments(backend: &Backend) {
    let data = rows(&[0.0, 1.0, 2.0, 90.0, 3.0, 180.0, 181.0]);
    let mut b = builder(backend, vec![0.0, 0.0], 0.1, config(Semantics::TwoPhase));
    b.add_batch(&ActivationBatch::from_rows(data, 2, 0))
        .unwrap();
    let out = b.finish(2);
    assert_eq!(out.dictionary.member_counts(), &[4, 2]);
    assert_eq!(assignments(&out, 7), vec![0, 0, 0, -1, 0, 1, 1]);
}
test_device!(
    finish_with_min_members_drops_small_partitions_and_remaps_assignments,
    finish_with_min_members_drops_small_partitions_and_remaps_assignments_cpu,
    finish_with_min_members_drops_small_partitions_and_remaps_assignments_cuda
);

fn with_merges_over_many_batches_assignments_still_match_member_counts(backend: &Backend) {
    // Merge threshold well above θ, so partitions merge (also in chains) after many batches;
    // every row's final id must point at the partition that holds it.
    let (n, d) = (3000, 12);
    let data = clustered(n, d, 60, 0.25, 11);
    let cfg = BuildConfig {
        merge_threshold: Some(0.45),
        ..config(Semantics::TwoPhase)
    };
    let mut b = builder(backend, vec![0.0; d], 0.2, cfg);
    let mut merged = 0;
    for (s, chunk) in data.chunks(150 * d).enumerate() {
        merged += b
            .add_batch(&ActivationBatch::from_rows(
                chunk.to_vec(),
                d,
                (s * 150) as u64,
            ))
            .unwrap()
            .merged;
    }
    assert!(
        merged > 5,
        "the data must exercise merging ({merged} merges)"
    );
    let out = b.finish(1);
    let asg = assignments(&out, n);
    let k = out.dictionary.len();
    let mut counts = vec![0u64; k];
    for &a in &asg {
        assert!(a >= 0 && (a as usize) < k);
        counts[a as usize] += 1;
    }
    assert_eq!(counts, out.dictionary.member_counts());
    // Exemplars stay more than the merge threshold apart after the last merge pass.
    for i in 0..k {
        for j in i + 1..k {
            let s: f64 = out
                .dictionary
                .exemplar(i)
                .iter()
                .zip(out.dictionary.exemplar(j))
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            assert!(
                1.0 - s > 0.45 - 1e-9,
                "partitions {i} and {j} should have merged"
            );
        }
    }
}
test_device!(
    with_merges_over_many_batches_assignments_still_match_member_counts,
    with_merges_over_many_batches_assignments_still_match_member_counts_cpu,
    with_merges_over_many_batches_assignments_still_match_member_counts_cuda
);

/// A build on `backend` equals the CPU build bit for bit (all but the recorded backend) at a
/// realistic width: D = 256, 300 clusters, 20,000 rows in batches of 4,096, θ the 2nd
/// percentile of 2,048 rows (itself equal on both backends), both semantics. On the CPU this
/// says the build is deterministic.
fn a_build_equals_the_cpu_build(backend: &Backend) {
    let (n, d) = (20_000, 256);
    let x = rows_around(n, d, 300, 8);
    let center: Vec<f32> = (0..d)
        .map(|j| (0..n).map(|i| x[i * d + j]).sum::<f32>() / n as f32)
        .collect();
    let u = directions(&x, &center).unwrap();
    let theta = Backend::Cpu
        .pairwise_percentile(&u[..2048 * d], d, 2.0, PercentileMethod::Linear)
        .unwrap();
    assert_eq!(
        theta.to_bits(),
        backend
            .pairwise_percentile(&u[..2048 * d], d, 2.0, PercentileMethod::Linear)
            .unwrap()
            .to_bits()
    );
    for semantics in [Semantics::TwoPhase, Semantics::StrictOrder] {
        let cfg = BuildConfig {
            semantics,
            saturation_window: None,
            record_assignments: Some(n as u64),
            ..BuildConfig::default()
        };
        let want = build_centered(&Backend::Cpu, &x, d, &center, theta, 4096, cfg.clone());
        let got = build_centered(backend, &x, d, &center, theta, 4096, cfg);
        assert!(want.dictionary.len() > 50, "K = {}", want.dictionary.len());
        assert_eq!(
            want.assignments, got.assignments,
            "{semantics:?}: assignments"
        );
        assert_same_but_backend(
            &want.dictionary,
            &got.dictionary,
            backend,
            &format!("{semantics:?}"),
        );
    }
}
test_device!(
    a_build_equals_the_cpu_build,
    a_build_equals_the_cpu_build_cpu,
    a_build_equals_the_cpu_build_cuda
);

/// Builds `x` (n × d) on `backend` around `center`, in batches of `batch`.
fn build_centered(
    backend: &Backend,
    x: &[f32],
    d: usize,
    center: &[f32],
    theta: f64,
    batch: usize,
    cfg: BuildConfig,
) -> BuildOutput {
    let mut b = builder(backend, center.to_vec(), theta, cfg);
    for (s, chunk) in x.chunks(batch * d).enumerate() {
        b.add_batch(&ActivationBatch::from_rows(
            chunk.to_vec(),
            d,
            (s * batch) as u64,
        ))
        .unwrap();
    }
    b.finish(1)
}

/// One build of `x` in batches of the sizes `sizes` (cycled), with the dictionary taken after
/// batch `checkpoint_at` (what a checkpoint saves); with `resume`, the build then continues from
/// `Builder::restore` of that checkpoint. Returns the output, each batch's outcome, and the
/// checkpoint's dictionary.
struct Run {
    out: BuildOutput,
    outcomes: Vec<exemplar::build::BatchOutcome>,
    checkpoint: Dictionary,
}

#[allow(clippy::too_many_arguments)]
fn staged_build(
    backend: &Backend,
    x: &[f32],
    d: usize,
    center: &[f32],
    theta: f64,
    cfg: &BuildConfig,
    sizes: &[usize],
    checkpoint_at: usize,
    resume: bool,
) -> Run {
    let n = x.len() / d;
    let mut b = builder(backend, center.to_vec(), theta, cfg.clone());
    let (mut outcomes, mut checkpoint) = (Vec::new(), None);
    let (mut r0, mut s) = (0usize, 0usize);
    while r0 < n {
        let m = sizes[s % sizes.len()].min(n - r0);
        let batch = ActivationBatch::from_rows(x[r0 * d..(r0 + m) * d].to_vec(), d, r0 as u64);
        outcomes.push(b.add_batch(&batch).unwrap());
        r0 += m;
        s += 1;
        if s == checkpoint_at {
            let dict = b.dictionary().clone();
            if resume {
                let state = b.state();
                let assignments = b.recorded_assignments().map(|a| a.to_vec());
                b = Builder::restore(dict.clone(), state, assignments, cfg.clone())
                    .unwrap()
                    .with_backend(backend.clone());
            }
            checkpoint = Some(dict);
        }
    }
    Run {
        out: b.finish(1),
        outcomes,
        checkpoint: checkpoint.expect("checkpoint_at is within the build"),
    }
}

/// Whole builds on `backend`, checkpointed and resumed from `Builder::restore` midway, equal
/// the uninterrupted CPU build bit for bit (all but the recorded backend): per-batch outcomes,
/// the checkpoint, assignments and the final dictionary. Random rows at θ = 0.72 (cosine ≥ 0.28
/// is about 4.5 standard deviations at D = 256, so most rows become exemplars and a few follow:
/// K > 4,096, the device buffer grows many times, and phase A switches to the tensor-core
/// screen on sm_80+), and clustered rows at θ = the 2nd percentile with merges (threshold
/// 1.8 θ, so merges fire); both semantics; batch sizes from 1 to 2,049 (a one-row first batch,
/// the founder alone, then sizes across the leaders kernel's 512-row chunk and the CPU's
/// 256-row chunk). On the CPU this checks that resuming from a checkpoint changes nothing.
fn whole_builds_with_growth_merges_and_resume_equal_the_cpu_build(backend: &Backend) {
    let sizes = [1, 333, 64, 1000, 7, 512, 2049, 300];
    let cases = [
        ("random", 256, 0usize, 8000usize, None, None),
        ("clustered", 64, 40, 9000, Some(2.0f64), Some(1.8)),
    ];
    for (name, d, clusters, n, pct, merge) in cases {
        let x = rows_around(n, d, clusters, 21 + clusters as u64);
        let center: Vec<f32> = (0..d)
            .map(|j| (0..n).map(|i| x[i * d + j]).sum::<f32>() / n as f32)
            .collect();
        let u = directions(&x, &center).unwrap();
        let theta = pct.map_or(0.72, |pct| {
            pairwise_distance_percentile(&u[..1500 * d], d, pct, PercentileMethod::Linear).unwrap()
        });
        let mut two_phase = None;
        for semantics in [Semantics::TwoPhase, Semantics::StrictOrder] {
            let what = format!("{name} {semantics:?}");
            let cfg = BuildConfig {
                semantics,
                saturation_window: None,
                record_assignments: Some(n as u64),
                merge_threshold: merge.map(|f| f * theta),
                reservoir_size: 5,
                ..BuildConfig::default()
            };
            let stage = |backend: &Backend, resume: bool| {
                staged_build(backend, &x, d, &center, theta, &cfg, &sizes, 6, resume)
            };
            let want = stage(&Backend::Cpu, false);
            // The workload exercises what it claims.
            let k = want.out.dictionary.len();
            let merged: usize = want.outcomes.iter().map(|o| o.merged).sum();
            let new: usize = want.outcomes.iter().map(|o| o.new_partitions).sum();
            eprintln!(
                "{what}: K = {k}, {new} created, {merged} merged, {} batches",
                want.outcomes.len()
            );
            assert!(
                want.outcomes.len() > 10,
                "{what}: {} batches",
                want.outcomes.len()
            );
            if merge.is_some() {
                assert!(merged > 0 && k > 20, "{what}: K = {k}, merged {merged}");
            } else {
                assert!(k > 4096, "{what}: K = {k}");
            }
            assert!(new > k / 2, "{what}: {new} created, K = {k}");
            match semantics {
                Semantics::TwoPhase => two_phase = Some(want.out.assignments.clone()),
                // The strict-order pass moves rows here (so the prefix search is used).
                Semantics::StrictOrder if merge.is_some() => {
                    assert_ne!(two_phase.take().unwrap(), want.out.assignments, "{name}")
                }
                Semantics::StrictOrder => {}
            }
            let got = stage(backend, true);
            assert_eq!(want.outcomes, got.outcomes, "{what}: per-batch outcomes");
            assert_same_but_backend(
                &want.checkpoint,
                &got.checkpoint,
                backend,
                &format!("{what}, checkpoint"),
            );
            assert_eq!(
                want.out.assignments, got.out.assignments,
                "{what}: assignments"
            );
            assert_same_but_backend(&want.out.dictionary, &got.out.dictionary, backend, &what);
        }
    }
}
test_device!(
    whole_builds_with_growth_merges_and_resume_equal_the_cpu_build,
    whole_builds_with_growth_merges_and_resume_equal_the_cpu_build_cpu,
    whole_builds_with_growth_merges_and_resume_equal_the_cpu_build_cuda
);
