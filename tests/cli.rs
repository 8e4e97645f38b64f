//! End-to-end tests of the `exemplar` command line: the real binary, run in temporary
//! directories on small synthetic activation files written here.
//!
//! The first half checks the contract of each subcommand (what it writes, and that the ways of
//! getting a dictionary that should agree do agree); the second half feeds every kind of bad
//! input and checks for a non-zero exit, a message naming the culprit (file, row, field), and
//! that no output file and no temporary file (`.exemplar-*.tmp`) was left behind.

mod common;

use common::*;
use exemplar::calibrate::{Calibration, PercentileMethod};
use exemplar::data::npy;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// Width of most test data.
const D: usize = 24;

/// A temporary working directory for one test.
struct Env {
    dir: TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Run {
        exemplar(self.root(), args)
    }

    /// Writes `data` (`· × d`) as `name` (.npy) and returns the rows.
    fn npy(&self, name: &str, data: &[f32], d: usize) -> Vec<f32> {
        write_npy(&self.path(name), data, d);
        data.to_vec()
    }

    /// Clustered data, `n × D`, written as `name`.
    fn acts(&self, name: &str, n: usize, seed: u64) -> Vec<f32> {
        self.npy(name, &clustered(n, D, 6, 0.08, seed), D)
    }

    fn dict(&self, name: &str) -> exemplar::Dictionary {
        load_dict(&self.path(name))
    }

    fn ids(&self, name: &str) -> Vec<i64> {
        let a = read_npy(&self.path(name));
        assert_eq!(a.shape().len(), 1, "{name} must be 1-D");
        i64_data(&a).to_vec()
    }

    /// Asserts that a failed command left none of `outputs` and no temporary file.
    #[track_caller]
    fn assert_no_outputs(&self, outputs: &[&str]) {
        assert_no_outputs(self.root(), outputs);
    }

    /// A calibration file written through the library.
    fn calibration(&self, name: &str, center: Vec<f32>, theta: f64) {
        Calibration {
            center,
            theta,
            percentile: 10.0,
            method: PercentileMethod::Linear,
            n_activations: 100,
            batch_size: 100,
            batch_percentiles: vec![theta],
            scaling: None,
        }
        .save(&self.path(name), &[], None, true)
        .unwrap();
    }
}

fn row(data: &[f32], d: usize, i: usize) -> Vec<f32> {
    data[i * d..(i + 1) * d].to_vec()
}

// =============================================================================================
// The contract

#[test]
fn dictionary_file_round_trips() {
    let env = Env::new();
    env.acts("acts.npy", 500, 40);
    env.run(&["build", "-a", "acts.npy", "-p", "10", "-o", "d.safetensors"])
        .ok();
    let dict = exemplar::Dictionary::load(&env.path("d.safetensors"))
        .unwrap_or_else(|e| panic!("a dictionary written by `build` loads: {e}"));
    assert!(dict.len() > 1);
    assert_eq!(dict.dim(), D);
    assert_eq!(dict.info().examples_per_partition, 10);
    assert_eq!(dict.info().reservoir_size, 30);
    let k = dict.len();
    for j in 0..k {
        assert!(dict.closest_examples(j).len() <= 10);
        assert_eq!(dict.reservoir(j).len() % D, 0);
        assert!(dict.reservoir(j).len() / D <= 30);
    }
}

#[test]
fn help_of_every_subcommand() {
    let env = Env::new();
    let top = env.run(&["--help"]).ok();
    for sub in [
        "calibrate",
        "build",
        "assign",
        "encode",
        "inspect",
        "eval",
        "demo",
        "probe",
        "detect",
        "ood",
        "synth",
    ] {
        assert!(top.stdout.contains(sub), "top-level help lists {sub}");
        let h = env.run(&[sub, "--help"]).ok();
        assert_mentions(&h.stdout, &["usage", &format!("exemplar {sub}")]);
        assert!(h.stderr.is_empty(), "{sub} --help writes nothing to stderr");
    }
    // The documented options are there.
    let b = env.run(&["build", "--help"]).ok().stdout;
    for opt in [
        "--activations",
        "--calibration",
        "--percentile",
        "--calibration-activations",
        "--batch-size",
        "--saturation-window",
        "--max-activations",
        "--strict-order",
        "--seed",
        "--assignments",
        "--out",
        "--force",
        "--skip-nonfinite",
    ] {
        assert!(b.contains(opt), "build --help lists {opt}");
    }
    let c = env.run(&["calibrate", "--help"]).ok().stdout;
    for opt in [
        "--activations",
        "--percentile",
        "--batch-size",
        "--calibration-activations",
        "--out",
    ] {
        assert!(c.contains(opt), "calibrate --help lists {opt}");
    }
    let v = env.run(&["--version"]).ok().stdout;
    assert!(v.contains(env!("CARGO_PKG_VERSION")), "{v}");
    // No subcommand: usage error, non-zero.
    env.run(&[]).err();
}

#[test]
fn calibrate_then_build_equals_inline_calibration() {
    let env = Env::new();
    env.acts("acts.npy", 1200, 1);
    let r = env
        .run(&[
            "calibrate",
            "--activations",
            "acts.npy",
            "--percentile",
            "10",
            "--batch-size",
            "200",
            "--calibration-activations",
            "500",
            "--out",
            "cal.safetensors",
        ])
        .ok();
    assert_mentions(&r.stdout, &["θ =", "wrote cal.safetensors"]);
    let cal = Calibration::load(&env.path("cal.safetensors")).unwrap();
    assert_eq!(cal.dim(), D);
    assert_eq!(cal.percentile, 10.0);
    assert_eq!(cal.batch_size, 200);
    // Whole batches until at least 500 rows: 3 batches of 200.
    assert_eq!(cal.n_activations, 600);
    assert_eq!(cal.batch_percentiles.len(), 3);
    let mean = cal.batch_percentiles.iter().sum::<f64>() / 3.0;
    assert!(
        (cal.theta - mean).abs() < 1e-12,
        "θ is the mean of the batch percentiles"
    );
    assert!(cal.theta > 0.0 && cal.theta < 2.0);

    env.run(&[
        "build",
        "--activations",
        "acts.npy",
        "--calibration",
        "cal.safetensors",
        "--batch-size",
        "200",
        "--out",
        "two-step.safetensors",
    ])
    .ok();
    let r = env
        .run(&[
            "build",
            "--activations",
            "acts.npy",
            "--percentile",
            "10",
            "--calibration-activations",
            "500",
            "--batch-size",
            "200",
            "--out",
            "inline.safetensors",
        ])
        .ok();
    assert_mentions(&r.stdout, &["K =", "wrote inline.safetensors"]);
    let a = env.dict("two-step.safetensors");
    let b = env.dict("inline.safetensors");
    assert!(a.len() > 1, "a non-trivial dictionary (K = {})", a.len());
    assert_eq!(a.theta(), cal.theta);
    assert_eq!(a.center(), &cal.center[..]);
    assert_same_dictionary(&a, &b, true);
    let info = a.info();
    assert_eq!(info.percentile, Some(10.0));
    assert_eq!(info.calibration_activations, Some(600));
    assert_eq!(info.calibration_batch_size, Some(200));
    assert_eq!(info.batch_size, 200);
    assert_eq!(info.inputs, vec!["acts.npy".to_string()]);
}

#[test]
fn assignments_cover_every_row_and_match_member_counts() {
    let env = Env::new();
    let n = 1000;
    env.acts("acts.npy", n, 2);
    // Everything streamed: every row has a partition.
    env.run(&[
        "build",
        "-a",
        "acts.npy",
        "-p",
        "10",
        "--batch-size",
        "128",
        "--no-saturation",
        "--assignments",
        "ids.npy",
        "--out",
        "d.safetensors",
    ])
    .ok();
    let dict = env.dict("d.safetensors");
    let ids = env.ids("ids.npy");
    assert_eq!(ids.len(), n, "one id per input row");
    assert!(ids.iter().all(|&i| i >= 0 && (i as usize) < dict.len()));
    assert_eq!(bincount(&ids, dict.len()), dict.member_counts());
    assert_eq!(dict.info().activations_streamed, n as u64);
    // The row that created a partition is its member.
    for k in 0..dict.len() {
        let (r, _) = dict.exemplar_source(k);
        assert_eq!(ids[r as usize], k as i64, "exemplar row of partition {k}");
    }

    // Stopped on saturation: the rows not streamed get −1, the others an id.
    env.npy("tight.npy", &clustered(n, D, 6, 0.05, 2), D);
    env.run(&[
        "build",
        "-a",
        "tight.npy",
        "-p",
        "15",
        "--batch-size",
        "100",
        "--saturation-window",
        "1",
        "--assignments",
        "ids-sat.npy",
        "--out",
        "sat.safetensors",
    ])
    .ok();
    let dict = env.dict("sat.safetensors");
    let ids = env.ids("ids-sat.npy");
    let streamed = dict.info().activations_streamed as usize;
    assert_eq!(ids.len(), n);
    assert!(
        dict.info().saturated,
        "clustered data saturates before {n} rows"
    );
    assert!(streamed < n && streamed % 100 == 0, "streamed {streamed}");
    assert!(ids[..streamed].iter().all(|&i| i >= 0));
    assert!(ids[streamed..].iter().all(|&i| i == -1));
    assert_eq!(bincount(&ids, dict.len()), dict.member_counts());
}

#[test]
fn max_activations_streams_exactly_n_rows() {
    let env = Env::new();
    env.acts("acts.npy", 800, 3);
    env.run(&[
        "build",
        "-a",
        "acts.npy",
        "-p",
        "10",
        "--batch-size",
        "100",
        "--no-saturation",
        "--max-activations",
        "333",
        "--assignments",
        "ids.npy",
        "--out",
        "d.safetensors",
    ])
    .ok();
    let dict = env.dict("d.safetensors");
    let ids = env.ids("ids.npy");
    assert_eq!(dict.info().activations_streamed, 333);
    assert_eq!(dict.info().max_activations, Some(333));
    assert_eq!(dict.member_counts().iter().sum::<u64>(), 333);
    assert!(ids[..333].iter().all(|&i| i >= 0));
    assert!(ids[333..].iter().all(|&i| i == -1));
    assert_eq!(bincount(&ids, dict.len()), dict.member_counts());
    // Zero is no budget.
    let e = env
        .run(&[
            "build",
            "-a",
            "acts.npy",
            "-p",
            "10",
            "--max-activations",
            "0",
            "--out",
            "zero.safetensors",
        ])
        .err();
    assert_mentions(&e, &["budget"]);
    env.assert_no_outputs(&["zero.safetensors"]);
}

#[test]
fn several_files_stream_like_one_concatenated_file() {
    let env = Env::new();
    let all = clustered(900, D, 6, 0.08, 4);
    env.npy("all.npy", &all, D);
    env.npy("p1.npy", &all[..300 * D], D);
    env.npy("p2.npy", &all[300 * D..550 * D], D);
    env.npy("p3.npy", &all[550 * D..], D);
    let common = [
        "-p",
        "10",
        "--calibration-activations",
        "400",
        "--batch-size",
        "128",
        "--no-saturation",
    ];
    let mut one = vec!["build", "-a", "all.npy"];
    one.extend(common);
    one.extend(["--assignments", "ids-one.npy", "-o", "one.safetensors"]);
    env.run(&one).ok();
    let mut three = vec!["build", "-a", "p1.npy", "p2.npy", "p3.npy"];
    three.extend(common);
    three.extend(["--assignments", "ids-three.npy", "-o", "three.safetensors"]);
    env.run(&three).ok();
    let a = env.dict("one.safetensors");
    let b = env.dict("three.safetensors");
    assert_same_dictionary(&a, &b, false);
    assert_eq!(b.info().inputs, ["p1.npy", "p2.npy", "p3.npy"]);
    assert_eq!(env.ids("ids-one.npy"), env.ids("ids-three.npy"));
    assert_eq!(env.ids("ids-three.npy").len(), 900);

    // The same for calibration alone.
    for (args, out) in [
        (vec!["-a", "all.npy"], "c1.safetensors"),
        (vec!["-a", "p1.npy", "p2.npy", "p3.npy"], "c3.safetensors"),
    ] {
        let mut v = vec!["calibrate"];
        v.extend(args);
        v.extend(["-p", "10", "--batch-size", "128", "-o", out]);
        env.run(&v).ok();
    }
    let c1 = Calibration::load(&env.path("c1.safetensors")).unwrap();
    let c3 = Calibration::load(&env.path("c3.safetensors")).unwrap();
    assert_eq!(c1, c3);
}

#[test]
fn same_seed_gives_the_same_dictionary() {
    let env = Env::new();
    env.acts("acts.npy", 1000, 5);
    let build = |seed: &str, out: &str| {
        env.run(&[
            "build",
            "-a",
            "acts.npy",
            "-p",
            "10",
            "--batch-size",
            "128",
            "--no-saturation",
            "--reservoir",
            "4",
            "--seed",
            seed,
            "--out",
            out,
        ])
        .ok();
        env.dict(out)
    };
    let a = build("7", "a.safetensors");
    let b = build("7", "b.safetensors");
    assert_same_dictionary(&a, &b, true);
    assert_eq!(a.info().seed, 7);
    // The seed drives the reservoirs only: same partitions, different samples.
    let c = build("8", "c.safetensors");
    assert_eq!(a.exemplars(), c.exemplars());
    assert_eq!(a.member_counts(), c.member_counts());
    assert!(
        (0..a.len()).any(|k| a.reservoir(k) != c.reservoir(k)),
        "another seed samples other reservoir members"
    );
}

#[test]
fn strict_order_does_not_depend_on_batch_size() {
    let env = Env::new();
    env.acts("acts.npy", 700, 6);
    env.run(&[
        "calibrate",
        "-a",
        "acts.npy",
        "-p",
        "10",
        "--batch-size",
        "200",
        "-o",
        "cal.safetensors",
    ])
    .ok();
    let build = |bs: &str, out: &str, ids: &str| {
        env.run(&[
            "build",
            "-a",
            "acts.npy",
            "-c",
            "cal.safetensors",
            "--strict-order",
            "--no-saturation",
            "--batch-size",
            bs,
            "--assignments",
            ids,
            "-o",
            out,
        ])
        .ok();
        (env.dict(out), env.ids(ids))
    };
    let (a, ia) = build("50", "a.safetensors", "a.npy");
    let (b, ib) = build("256", "b.safetensors", "b.npy");
    assert_ne!(a.info().semantics, "two-phase", "{}", a.info().semantics);
    assert_eq!(a.info().semantics, b.info().semantics);
    assert_eq!(a.exemplars(), b.exemplars());
    assert_eq!(a.member_counts(), b.member_counts());
    assert_eq!(ia, ib);
    assert_eq!(bincount(&ia, a.len()), a.member_counts());
}

#[test]
fn assign_writes_ids_distances_and_flags() {
    let env = Env::new();
    let clusters = Clusters::new(D, 6, 7);
    env.npy("train.npy", &clusters.sample(800, 0.08, 1), D);
    // Held-out rows from the same clusters, and some from elsewhere.
    let mut test = clusters.sample(200, 0.08, 2);
    test.extend(clustered(100, D, 3, 0.3, 99));
    env.npy("test.npy", &test, D);
    env.run(&[
        "build",
        "-a",
        "train.npy",
        "-p",
        "10",
        "--batch-size",
        "200",
        "-o",
        "d.safetensors",
    ])
    .ok();
    let r = env
        .run(&[
            "assign",
            "-d",
            "d.safetensors",
            "-a",
            "test.npy",
            "--batch-size",
            "64",
            "-o",
            "r.npz",
        ])
        .ok();
    assert_mentions(&r.stdout, &["300 rows assigned", "wrote r.npz"]);
    let dict = env.dict("d.safetensors");
    let arrays = npy::read_npz(&env.path("r.npz")).unwrap();
    let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ids", "distances", "within_threshold"]);
    for (_, a) in &arrays {
        assert_eq!(a.shape(), [300]);
    }
    let ids = i64_data(&arrays[0].1);
    let dists = f32_data(&arrays[1].1);
    let within = bool_data(&arrays[2].1);
    let (want_ids, want_d) = dict.assign(&test).unwrap();
    assert_eq!(ids, &want_ids[..]);
    for (i, (a, b)) in dists.iter().zip(&want_d).enumerate() {
        assert!((a - b).abs() <= 1e-6, "distance of row {i}: {a} vs {b}");
    }
    for i in 0..300 {
        assert_eq!(
            within[i],
            dists[i] as f64 <= dict.theta(),
            "flag of row {i}"
        );
    }
    assert!(within.iter().any(|&w| w) && within.iter().any(|&w| !w));
}

#[test]
fn inspect_and_eval_with_provenance() {
    let env = Env::new();
    let n = 600;
    env.acts("acts.npy", n, 8);
    let docs = write_sidecar(&env.path("acts.npy"), n, 12, 100);
    assert_eq!(docs, 50);
    let r = env
        .run(&[
            "build",
            "-a",
            "acts.npy",
            "-p",
            "10",
            "--batch-size",
            "150",
            "--model-name",
            "test-model",
            "--hook",
            "blocks.3.hook_resid_post",
            "-o",
            "d.safetensors",
        ])
        .ok();
    assert!(r.stdout.contains("K = "), "{}", r.stdout);
    let dict = env.dict("d.safetensors");
    let k = dict.len();
    // Tokens: 13 per document (BOS included) for every document streamed.
    let streamed = dict.info().activations_streamed;
    assert_eq!(dict.info().tokens_streamed, streamed.div_ceil(12) * 13);

    let text = env.run(&["inspect", "d.safetensors"]).ok().stdout;
    assert_mentions(
        &text,
        &[
            "d.safetensors",
            &format!("partitions (K)   {k}"),
            "test-model",
            "blocks.3.hook_resid_post",
            "[[d",
            "largest regions",
        ],
    );

    let json = env
        .run(&["inspect", "d.safetensors", "--json", "--top", "3"])
        .ok()
        .stdout;
    let v: serde_json::Value = serde_json::from_str(&json).expect("inspect --json is JSON");
    assert_eq!(v["partitions"], k);
    assert_eq!(v["theta"].as_f64().unwrap(), dict.theta());
    assert_eq!(v["dim"], D);
    let regions = v["largest_regions"].as_array().unwrap();
    assert_eq!(regions.len(), 3.min(k));
    let ex = &regions[0]["closest_examples"][0];
    let ctx = ex["context"]
        .as_str()
        .expect("examples show their token context");
    assert!(ctx.contains("[[d") && ctx.contains("]]"), "{ctx}");
    let doc = ex["doc_id"].as_i64().unwrap();
    assert!((100..150).contains(&doc), "doc id {doc}");
    assert!(ctx.contains(&format!("d{doc}t")), "{ctx}");

    let text = env.run(&["eval", "d.safetensors"]).ok().stdout;
    assert_mentions(&text, &[&format!("partitions: {k}")]);
    let json = env.run(&["eval", "d.safetensors", "--json"]).ok().stdout;
    let m: serde_json::Value = serde_json::from_str(&json).expect("eval --json is JSON");
    assert_eq!(m["n_partitions"], k);

    // Without a sidecar the examples have no context but inspect still works.
    env.acts("plain.npy", 300, 9);
    env.run(&[
        "build",
        "-a",
        "plain.npy",
        "-p",
        "10",
        "-o",
        "plain.safetensors",
    ])
    .ok();
    let json = env
        .run(&["inspect", "plain.safetensors", "--json"])
        .ok()
        .stdout;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["largest_regions"][0]["closest_examples"][0]["context"].is_null());
}

#[test]
fn encode_gives_n_by_k_codes() {
    let env = Env::new();
    let x = env.acts("acts.npy", 400, 10);
    env.run(&[
        "build",
        "-a",
        "acts.npy",
        "-p",
        "10",
        "--batch-size",
        "100",
        "-o",
        "d.safetensors",
    ])
    .ok();
    let dict = env.dict("d.safetensors");
    let k = dict.len();
    env.run(&[
        "encode",
        "-d",
        "d.safetensors",
        "-a",
        "acts.npy",
        "-o",
        "onehot.npy",
    ])
    .ok();
    let codes = read_npy(&env.path("onehot.npy"));
    assert_eq!(codes.shape(), [400, k]);
    let c = f32_data(&codes);
    let (ids, _) = dict.assign(&x).unwrap();
    for i in 0..400 {
        let row = &c[i * k..(i + 1) * k];
        let nz: Vec<usize> = (0..k).filter(|&j| row[j] != 0.0).collect();
        assert_eq!(nz, [ids[i] as usize], "one-hot row {i}");
    }
    for readout in ["topk", "topk-cosine", "signed", "cosine"] {
        let out = format!("{readout}.npy");
        env.run(&[
            "encode",
            "-d",
            "d.safetensors",
            "-a",
            "acts.npy",
            "--readout",
            readout,
            "-k",
            "2",
            "--basis",
            "mean",
            "-o",
            &out,
        ])
        .ok();
        assert_eq!(read_npy(&env.path(&out)).shape(), [400, k], "{readout}");
    }
}

#[test]
fn demo_runs_and_shows_regions() {
    let env = Env::new();
    let r = env.run(&["demo", "--top", "3"]).ok();
    assert_mentions(
        &r.stdout,
        &["exemplar demo", "θ =", "regions", "rank", "[["],
    );
    env.run(&["demo", "--top", "2", "--out", "demo.safetensors"])
        .ok();
    let dict = env.dict("demo.safetensors");
    assert!(dict.len() > 10);
    env.run(&["inspect", "demo.safetensors"]).ok();
    let e = env.run(&["demo", "--percentile", "0"]).err();
    assert_mentions(&e, &["percentile"]);
}

// =============================================================================================
// Bad inputs: non-zero exit, a clear message, nothing left behind

#[test]
fn missing_input_file() {
    let env = Env::new();
    let e = env
        .run(&[
            "calibrate",
            "-a",
            "nope.npy",
            "-p",
            "10",
            "-o",
            "c.safetensors",
        ])
        .err();
    assert_mentions(&e, &["nope.npy"]);
    env.assert_no_outputs(&["c.safetensors"]);
}

#[test]
fn dimension_mismatch_between_files() {
    let env = Env::new();
    env.acts("a.npy", 200, 11);
    env.npy("b.npy", &clustered(50, 16, 3, 0.1, 12), 16);
    env.run(&["build", "-a", "a.npy", "-p", "10", "-o", "d.safetensors"])
        .ok();
    for args in [
        vec![
            "calibrate",
            "-a",
            "a.npy",
            "b.npy",
            "-p",
            "10",
            "-o",
            "out.safetensors",
        ],
        vec![
            "build",
            "-a",
            "a.npy",
            "b.npy",
            "-p",
            "10",
            "-o",
            "out.safetensors",
        ],
        vec![
            "assign",
            "-d",
            "d.safetensors",
            "-a",
            "a.npy",
            "b.npy",
            "-o",
            "out.npz",
        ],
        vec![
            "encode",
            "-d",
            "d.safetensors",
            "-a",
            "a.npy",
            "b.npy",
            "-o",
            "out.npy",
        ],
    ] {
        let e = env.run(&args).err();
        assert_mentions(&e, &["dimension", "b.npy", "16", "24"]);
        env.assert_no_outputs(&["out.safetensors", "out.npz", "out.npy"]);
    }
}

#[test]
fn dimension_mismatch_with_calibration_file() {
    let env = Env::new();
    env.acts("a.npy", 200, 13);
    env.npy("narrow.npy", &clustered(100, 16, 3, 0.1, 14), 16);
    env.run(&[
        "calibrate",
        "-a",
        "a.npy",
        "-p",
        "10",
        "-o",
        "cal.safetensors",
    ])
    .ok();
    let e = env
        .run(&[
            "build",
            "-a",
            "narrow.npy",
            "-c",
            "cal.safetensors",
            "--assignments",
            "ids.npy",
            "-o",
            "d.safetensors",
        ])
        .err();
    assert_mentions(
        &e,
        &["dimension", "narrow.npy", "cal.safetensors", "16", "24"],
    );
    env.assert_no_outputs(&["d.safetensors", "ids.npy"]);
}

#[test]
fn dimension_mismatch_with_dictionary() {
    let env = Env::new();
    env.acts("a.npy", 200, 15);
    env.npy("narrow.npy", &clustered(100, 16, 3, 0.1, 16), 16);
    env.run(&["build", "-a", "a.npy", "-p", "10", "-o", "d.safetensors"])
        .ok();
    for args in [
        vec![
            "assign",
            "-d",
            "d.safetensors",
            "-a",
            "narrow.npy",
            "-o",
            "r.npz",
        ],
        vec![
            "encode",
            "-d",
            "d.safetensors",
            "-a",
            "narrow.npy",
            "-o",
            "r.npy",
        ],
    ] {
        let e = env.run(&args).err();
        assert_mentions(&e, &["dimension", "narrow.npy", "16", "24"]);
        env.assert_no_outputs(&["r.npz", "r.npy"]);
    }
}

#[test]
fn nonfinite_rows_are_errors_naming_file_and_row_unless_skipped() {
    let env = Env::new();
    env.acts("a.npy", 300, 17);
    let mut b = clustered(300, D, 6, 0.08, 17 + 1);
    b[37 * D + 5] = f32::NAN;
    b[120 * D] = f32::INFINITY;
    env.npy("b.npy", &b, D);
    env.run(&["build", "-a", "a.npy", "-p", "10", "-o", "d.safetensors"])
        .ok();
    for args in [
        vec![
            "calibrate",
            "-a",
            "a.npy",
            "b.npy",
            "-p",
            "10",
            "--batch-size",
            "100",
            "-o",
            "out.safetensors",
        ],
        vec![
            "build",
            "-a",
            "a.npy",
            "b.npy",
            "-p",
            "10",
            "--batch-size",
            "100",
            "--no-saturation",
            "-o",
            "out.safetensors",
        ],
        vec![
            "assign",
            "-d",
            "d.safetensors",
            "-a",
            "a.npy",
            "b.npy",
            "-o",
            "out.npz",
        ],
        vec![
            "encode",
            "-d",
            "d.safetensors",
            "-a",
            "a.npy",
            "b.npy",
            "-o",
            "out.npy",
        ],
    ] {
        let e = env.run(&args).err();
        assert_mentions(&e, &["b.npy", "row 37", "nan", "--skip-nonfinite"]);
        env.assert_no_outputs(&["out.safetensors", "out.npz", "out.npy"]);
    }

    // −Inf alone, in a single file.
    let mut c = clustered(50, D, 6, 0.08, 17 + 2);
    c[5 * D + 3] = f32::NEG_INFINITY;
    env.npy("inf.npy", &c, D);
    let e = env
        .run(&[
            "calibrate",
            "-a",
            "inf.npy",
            "-p",
            "10",
            "-o",
            "out.safetensors",
        ])
        .err();
    assert_mentions(&e, &["inf.npy", "row 5", "inf"]);
    env.assert_no_outputs(&["out.safetensors"]);

    // Skipped: the build succeeds, says how many rows it dropped, and those rows get −1.
    let r = env
        .run(&[
            "build",
            "-a",
            "a.npy",
            "b.npy",
            "-p",
            "10",
            "--batch-size",
            "100",
            "--no-saturation",
            "--skip-nonfinite",
            "--assignments",
            "ids.npy",
            "-o",
            "skip.safetensors",
        ])
        .ok();
    assert_mentions(&r.stderr, &["skipped 2 row"]);
    let dict = env.dict("skip.safetensors");
    let ids = env.ids("ids.npy");
    assert_eq!(ids.len(), 600);
    assert_eq!(ids[337], -1);
    assert_eq!(ids[420], -1);
    assert_eq!(ids.iter().filter(|&&i| i == -1).count(), 2);
    assert_eq!(bincount(&ids, dict.len()), dict.member_counts());
    assert_eq!(dict.info().activations_streamed, 598);
    assert_eq!(dict.info().skipped_nonfinite, 2);

    let r = env
        .run(&[
            "assign",
            "-d",
            "d.safetensors",
            "-a",
            "a.npy",
            "b.npy",
            "--skip-nonfinite",
            "-o",
            "r.npz",
        ])
        .ok();
    assert_mentions(&r.stderr, &["skipped 2 row"]);
    let arrays = npy::read_npz(&env.path("r.npz")).unwrap();
    let ids = i64_data(&arrays[0].1);
    let dists = f32_data(&arrays[1].1);
    let within = bool_data(&arrays[2].1);
    for r in [337, 420] {
        assert_eq!(ids[r], -1);
        assert!(dists[r].is_nan());
        assert!(!within[r]);
    }
    assert_eq!(ids.iter().filter(|&&i| i == -1).count(), 2);

    env.run(&[
        "encode",
        "-d",
        "d.safetensors",
        "-a",
        "a.npy",
        "b.npy",
        "--skip-nonfinite",
        "-o",
        "codes.npy",
    ])
    .ok();
    let codes = read_npy(&env.path("codes.npy"));
    let k = codes.shape()[1];
    assert_eq!(codes.shape()[0], 600);
    assert!(f32_data(&codes)[337 * k..338 * k].iter().all(|&v| v == 0.0));
}

#[test]
fn empty_input_file() {
    let env = Env::new();
    env.npy("empty.npy", &[], D);
    env.acts("a.npy", 200, 19);
    env.run(&["build", "-a", "a.npy", "-p", "10", "-o", "d.safetensors"])
        .ok();
    for args in [
        vec![
            "calibrate",
            "-a",
            "empty.npy",
            "-p",
            "10",
            "-o",
            "out.safetensors",
        ],
        vec![
            "build",
            "-a",
            "empty.npy",
            "-p",
            "10",
            "-o",
            "out.safetensors",
        ],
        vec![
            "assign",
            "-d",
            "d.safetensors",
            "-a",
            "empty.npy",
            "-o",
            "out.npz",
        ],
        vec![
            "encode",
            "-d",
            "d.safetensors",
            "-a",
            "empty.npy",
            "-o",
            "out.npy",
        ],
    ] {
        let e = env.run(&args).err();
        assert_mentions(&e, &["empty", "empty.npy"]);
        env.assert_no_outputs(&["out.safetensors", "out.npz", "out.npy"]);
    }
}

#[test]
fn row_equal_to_the_center_is_an_error_naming_file_and_row() {
    let env = Env::new();
    env.acts("a.npy", 200, 21);
    let b = env.acts("b.npy", 100, 22);
    let v = row(&b, D, 7);
    env.calibration("cal.safetensors", v, 0.3);
    let e = env
        .run(&[
            "build",
            "-a",
            "a.npy",
            "b.npy",
            "-c",
            "cal.safetensors",
            "--batch-size",
            "64",
            "--no-saturation",
            "--assignments",
            "ids.npy",
            "-o",
            "d.safetensors",
        ])
        .err();
    assert_mentions(&e, &["b.npy", "row 7", "center"]);
    env.assert_no_outputs(&["d.safetensors", "ids.npy"]);

    // The same center in a dictionary: assign and encode name the row too.
    env.run(&[
        "build",
        "-a",
        "a.npy",
        "-c",
        "cal.safetensors",
        "-o",
        "d.safetensors",
    ])
    .ok();
    for args in [
        vec![
            "assign",
            "-d",
            "d.safetensors",
            "-a",
            "a.npy",
            "b.npy",
            "-o",
            "out.npz",
        ],
        vec![
            "encode",
            "-d",
            "d.safetensors",
            "-a",
            "a.npy",
            "b.npy",
            "-o",
            "out.npy",
        ],
    ] {
        let e = env.run(&args).err();
        assert_mentions(&e, &["b.npy", "row 7"]);
        env.assert_no_outputs(&["out.npz", "out.npy"]);
    }
}

#[test]
fn truncated_npy() {
    let env = Env::new();
    env.acts("whole.npy", 100, 23);
    let bytes = std::fs::read(env.path("whole.npy")).unwrap();
    std::fs::write(env.path("short.npy"), &bytes[..bytes.len() - 10]).unwrap();
    std::fs::write(env.path("header.npy"), &bytes[..40]).unwrap();
    std::fs::write(env.path("garbage.npy"), b"this is not an npy file at all").unwrap();
    for f in ["short.npy", "header.npy", "garbage.npy"] {
        for cmd in ["calibrate", "build"] {
            let e = env
                .run(&[
                    cmd,
                    "-a",
                    "whole.npy",
                    f,
                    "-p",
                    "10",
                    "-o",
                    "out.safetensors",
                ])
                .err();
            assert_mentions(&e, &[f]);
            env.assert_no_outputs(&["out.safetensors"]);
        }
    }
    let e = env
        .run(&[
            "build",
            "-a",
            "short.npy",
            "-p",
            "10",
            "-o",
            "out.safetensors",
        ])
        .err();
    assert_mentions(&e, &["short.npy", "truncated"]);
}

#[test]
fn truncated_or_corrupt_safetensors() {
    let env = Env::new();
    let x = clustered(100, D, 4, 0.1, 25);
    write_safetensors(&env.path("good.safetensors"), "activations", &x, D);
    // Sanity: the hand-written file is read.
    env.run(&[
        "calibrate",
        "-a",
        "good.safetensors",
        "-p",
        "10",
        "-o",
        "c.safetensors",
    ])
    .ok();
    let bytes = std::fs::read(env.path("good.safetensors")).unwrap();
    std::fs::write(env.path("short.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    std::fs::write(env.path("tiny.safetensors"), &bytes[..5]).unwrap();
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(env.path("huge-header.safetensors"), &huge).unwrap();
    let mut bad_json = bytes.clone();
    bad_json[8..20].copy_from_slice(b"#!garbage!#$");
    std::fs::write(env.path("bad-json.safetensors"), &bad_json).unwrap();
    write_safetensors(&env.path("other-name.safetensors"), "hidden", &x, D);
    let mut two = Vec::new();
    two.extend_from_slice(&x);
    // Two 2-D tensors and none named `activations`: ambiguous.
    {
        let n = 100;
        let nb = n * D * 4;
        let mut header = format!(
            "{{\"a\":{{\"dtype\":\"F32\",\"shape\":[{n},{D}],\"data_offsets\":[0,{nb}]}},\"b\":{{\"dtype\":\"F32\",\"shape\":[{n},{D}],\"data_offsets\":[{nb},{}]}}}}",
            2 * nb
        )
        .into_bytes();
        while header.len() % 8 != 0 {
            header.push(b' ');
        }
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        for _ in 0..2 {
            for v in &x {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        std::fs::write(env.path("two.safetensors"), out).unwrap();
    }
    for f in [
        "short.safetensors",
        "tiny.safetensors",
        "huge-header.safetensors",
        "bad-json.safetensors",
        "two.safetensors",
    ] {
        let e = env
            .run(&["build", "-a", f, "-p", "10", "-o", "out.safetensors"])
            .err();
        assert_mentions(&e, &[f]);
        env.assert_no_outputs(&["out.safetensors"]);
    }
    // The only 2-D tensor is taken whatever its name; --tensor names another one.
    env.run(&[
        "build",
        "-a",
        "other-name.safetensors",
        "-p",
        "10",
        "-o",
        "o.safetensors",
    ])
    .ok();
    env.run(&[
        "build",
        "-a",
        "two.safetensors",
        "--tensor",
        "b",
        "-p",
        "10",
        "-o",
        "t.safetensors",
    ])
    .ok();
    let e = env
        .run(&[
            "build",
            "-a",
            "good.safetensors",
            "--tensor",
            "missing",
            "-p",
            "10",
            "-o",
            "out.safetensors",
        ])
        .err();
    assert_mentions(&e, &["good.safetensors", "missing"]);
    env.assert_no_outputs(&["out.safetensors"]);
    // A dictionary that is not one.
    let e = env.run(&["inspect", "bad-json.safetensors"]).err();
    assert_mentions(&e, &["bad-json.safetensors"]);
}

#[test]
fn unsupported_dtype() {
    let env = Env::new();
    write_npy_f64(&env.path("f64.npy"), &clustered(100, D, 4, 0.1, 27), D);
    for cmd in ["calibrate", "build"] {
        let e = env
            .run(&[cmd, "-a", "f64.npy", "-p", "10", "-o", "out.safetensors"])
            .err();
        assert_mentions(&e, &["f64.npy", "dtype", "<f8"]);
        env.assert_no_outputs(&["out.safetensors"]);
    }
}

#[test]
fn percentile_outside_0_100() {
    let env = Env::new();
    env.acts("a.npy", 200, 29);
    for p in ["0", "100", "-5", "150", "NaN"] {
        let joined = format!("--percentile={p}");
        for cmd in ["calibrate", "build"] {
            for pa in [
                vec![joined.as_str()],
                vec!["--percentile", p],
                vec!["-p", p],
            ] {
                let mut args = vec![cmd, "-a", "a.npy", "-o", "out.safetensors"];
                args.extend(pa);
                let e = env.run(&args).err();
                assert_mentions(&e, &["percentile", "between 0 and 100", p]);
                env.assert_no_outputs(&["out.safetensors"]);
            }
        }
    }
    // Not a number: a usage error.
    let e = env
        .run(&[
            "calibrate",
            "-a",
            "a.npy",
            "-p",
            "ten",
            "-o",
            "out.safetensors",
        ])
        .err();
    assert_mentions(&e, &["percentile"]);
    env.assert_no_outputs(&["out.safetensors"]);
}

#[test]
fn calibration_file_with_nonpositive_theta() {
    let env = Env::new();
    let a = env.acts("a.npy", 200, 31);
    let mean: Vec<f32> = (0..D)
        .map(|j| (0..200).map(|i| a[i * D + j]).sum::<f32>() / 200.0)
        .collect();
    for (name, theta) in [("zero.safetensors", 0.0), ("negative.safetensors", -0.25)] {
        env.calibration(name, mean.clone(), theta);
        let e = env
            .run(&["build", "-a", "a.npy", "-c", name, "-o", "out.safetensors"])
            .err();
        assert_mentions(&e, &[name, "θ", "> 0"]);
        env.assert_no_outputs(&["out.safetensors"]);
    }
    // A file that is not a calibration.
    env.run(&["build", "-a", "a.npy", "-p", "10", "-o", "d.safetensors"])
        .ok();
    let e = env
        .run(&[
            "build",
            "-a",
            "a.npy",
            "-c",
            "d.safetensors",
            "-o",
            "out.safetensors",
        ])
        .err();
    assert_mentions(&e, &["d.safetensors", "calibration"]);
    let e = env.run(&["inspect", "zero.safetensors"]).err();
    assert_mentions(&e, &["zero.safetensors", "not an exemplar dictionary"]);
    env.assert_no_outputs(&["out.safetensors"]);
}

#[test]
fn identical_rows_give_theta_zero() {
    let env = Env::new();
    let v: Vec<f32> = (0..D).map(|j| 0.25 + j as f32 * 0.01).collect();
    let w: Vec<f32> = (0..D).map(|j| 0.5 - j as f32 * 0.02).collect();
    // Every row the same: every row is the center, so no row has a direction.
    let same: Vec<f32> = (0..300).flat_map(|_| v.clone()).collect();
    env.npy("same.npy", &same, D);
    for cmd in ["calibrate", "build"] {
        let e = env
            .run(&[cmd, "-a", "same.npy", "-p", "10", "-o", "out.safetensors"])
            .err();
        assert_mentions(&e, &["same.npy", "row 0", "center"]);
        env.assert_no_outputs(&["out.safetensors"]);
    }
    // Two distinct rows, alternating: the 10th percentile of the distances is 0.
    let two: Vec<f32> = (0..300)
        .flat_map(|i| if i % 2 == 0 { v.clone() } else { w.clone() })
        .collect();
    env.npy("two.npy", &two, D);
    // Rows on one ray (multiples of one vector, most of them equal): after centering every row
    // has one of two directions, most the same one, so θ is 0 as well.
    let ray: Vec<f32> = (0..300)
        .flat_map(|i| {
            let a = if i % 30 == 0 { 3.0 } else { 1.0 };
            v.iter().map(move |x| x * a)
        })
        .collect();
    env.npy("ray.npy", &ray, D);
    for file in ["two.npy", "ray.npy"] {
        for cmd in ["calibrate", "build"] {
            let e = env
                .run(&[cmd, "-a", file, "-p", "10", "-o", "out.safetensors"])
                .err();
            // Bitwise-equal directions give distances of f64 rounding size (θ ≈ ±1e-8).
            assert_mentions(&e, &["θ", "identical", "higher percentile"]);
            env.assert_no_outputs(&["out.safetensors"]);
        }
    }
}

#[test]
fn existing_outputs_are_kept_unless_force() {
    let env = Env::new();
    env.acts("a.npy", 300, 33);
    env.run(&["build", "-a", "a.npy", "-p", "10", "-o", "d.safetensors"])
        .ok();
    let precious = b"precious".as_slice();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "calibrate",
                "-a",
                "a.npy",
                "-p",
                "10",
                "-o",
                "x.safetensors",
            ],
            "x.safetensors",
        ),
        (
            vec!["build", "-a", "a.npy", "-p", "10", "-o", "x.safetensors"],
            "x.safetensors",
        ),
        (
            vec![
                "build",
                "-a",
                "a.npy",
                "-p",
                "10",
                "--assignments",
                "x.npy",
                "-o",
                "new.safetensors",
            ],
            "x.npy",
        ),
        (
            vec![
                "assign",
                "-d",
                "d.safetensors",
                "-a",
                "a.npy",
                "-o",
                "x.npz",
            ],
            "x.npz",
        ),
        (
            vec![
                "encode",
                "-d",
                "d.safetensors",
                "-a",
                "a.npy",
                "-o",
                "x.npy",
            ],
            "x.npy",
        ),
        (vec!["demo", "-o", "x.safetensors"], "x.safetensors"),
    ];
    for (args, existing) in cases {
        std::fs::write(env.path(existing), precious).unwrap();
        let e = env.run(&args).err();
        assert_mentions(&e, &[existing, "already exists", "--force"]);
        assert_eq!(std::fs::read(env.path(existing)).unwrap(), precious);
        env.assert_no_outputs(&["new.safetensors"]);
        let mut forced = args.clone();
        forced.push("--force");
        env.run(&forced).ok();
        assert_ne!(std::fs::read(env.path(existing)).unwrap(), precious);
        assert_no_temp_files(env.root());
        for f in [existing, "new.safetensors"] {
            let _ = std::fs::remove_file(env.path(f));
        }
    }
}

#[test]
fn assignments_must_not_be_the_dictionary() {
    let env = Env::new();
    env.acts("a.npy", 300, 35);
    for (out, ids) in [
        ("d.safetensors", "d.safetensors"),
        ("d.safetensors", "./d.safetensors"),
        ("./sub/../d.safetensors", "d.safetensors"),
    ] {
        std::fs::create_dir_all(env.path("sub")).unwrap();
        let e = env
            .run(&[
                "build",
                "-a",
                "a.npy",
                "-p",
                "10",
                "--assignments",
                ids,
                "-o",
                out,
            ])
            .err();
        assert_mentions(&e, &["--assignments", "same file"]);
        env.assert_no_outputs(&["d.safetensors"]);
        // Not even with --force.
        let e = env
            .run(&[
                "build",
                "-a",
                "a.npy",
                "-p",
                "10",
                "--assignments",
                ids,
                "-o",
                out,
                "--force",
            ])
            .err();
        assert_mentions(&e, &["--assignments", "same file"]);
        env.assert_no_outputs(&["d.safetensors"]);
    }
}

#[test]
fn missing_output_directory_fails_before_any_work() {
    let env = Env::new();
    env.acts("a.npy", 300, 37);
    let e = env
        .run(&[
            "build",
            "-a",
            "a.npy",
            "-p",
            "10",
            "-o",
            "nodir/d.safetensors",
        ])
        .err();
    assert_mentions(&e, &["nodir"]);
    // A bad --assignments path must not leave the dictionary behind.
    let e = env
        .run(&[
            "build",
            "-a",
            "a.npy",
            "-p",
            "10",
            "--assignments",
            "nodir/ids.npy",
            "-o",
            "d.safetensors",
        ])
        .err();
    assert_mentions(&e, &["nodir"]);
    env.assert_no_outputs(&["d.safetensors"]);
    for args in [
        vec![
            "calibrate",
            "-a",
            "a.npy",
            "-p",
            "10",
            "-o",
            "nodir/c.safetensors",
        ],
        vec!["demo", "-o", "nodir/x.safetensors"],
    ] {
        let e = env.run(&args).err();
        assert_mentions(&e, &["nodir"]);
    }
    assert_eq!(listing(env.root()), ["a.npy"]);
}

/// Every command that writes checks its output before any work: with the output in a directory
/// that does not exist and inputs that do not exist either (which only the work would find),
/// each fails with a message naming the output and its missing directory, and writes nothing.
/// (`probe`, `detect`, `ood`, `quality`, `synth`, `plot-sweep`, `bench`, `train-sae`,
/// `budget-sweep`, `export-sae`, `match` and the analyses once checked only that the output did not exist, so
/// they ran their work and then failed, or made the directories.)
#[test]
fn every_output_is_checked_before_any_work() {
    let env = Env::new();
    std::fs::write(
        env.path("labels.jsonl"),
        "{\"text\": \"a\", \"label\": \"x\"}\n",
    )
    .unwrap();
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["calibrate", "-a", "absent.npy", "-p", "10"],
            "nodir/c.safetensors",
        ),
        (
            vec!["build", "-a", "absent.npy", "-p", "10"],
            "nodir/d.safetensors",
        ),
        (
            vec!["assign", "-d", "absent.safetensors", "-a", "absent.npy"],
            "nodir/a.npz",
        ),
        (
            vec!["encode", "-d", "absent.safetensors", "-a", "absent.npy"],
            "nodir/c.npy",
        ),
        (vec!["demo"], "nodir/d.safetensors"),
        (vec!["synth", "--rows", "100000"], "nodir/s.safetensors"),
        (
            vec![
                "probe",
                "-d",
                "absent.safetensors",
                "--labels",
                "labels.jsonl",
                "-a",
                "absent.npy",
            ],
            "nodir/probe.json",
        ),
        (
            vec![
                "detect",
                "-d",
                "absent.safetensors",
                "--concepts",
                "absent.jsonl",
                "-a",
                "absent.npy",
            ],
            "nodir/detect.json",
        ),
        (
            vec![
                "ood",
                "-d",
                "absent.safetensors",
                "-a",
                "absent.npy",
                "--ood",
                "absent2.npy",
            ],
            "nodir/ood.json",
        ),
        (vec!["export-sae", "-d", "absent.safetensors"], "nodir/sae"),
        (
            vec!["sae-encode", "--sae", "absent_sae", "-a", "absent.npy"],
            "nodir/codes.npy",
        ),
        (
            vec![
                "compare-sae",
                "-d",
                "absent.safetensors",
                "--sae",
                "absent_sae",
                "-a",
                "absent.npy",
            ],
            "nodir/compare.json",
        ),
        (
            vec!["match", "absent.safetensors", "absent2.safetensors"],
            "nodir/match",
        ),
        (
            vec!["quality", "-d", "absent.safetensors", "-a", "absent.npy"],
            "nodir/quality.json",
        ),
        (
            vec!["hierarchy", "absent.safetensors", "absent2.safetensors"],
            "nodir/tree.json",
        ),
        (
            vec!["stability", "absent.safetensors", "absent2.safetensors"],
            "nodir/stability.json",
        ),
        (vec!["saturation", "absent.safetensors"], "nodir/sat.json"),
        (
            vec![
                "ood-baseline",
                "-d",
                "absent.safetensors",
                "--reference",
                "absent.npy",
                "-a",
                "absent2.npy",
                "--ood",
                "absent3.npy",
            ],
            "nodir/oodb.json",
        ),
    ];
    if cfg!(feature = "torch") {
        cases.extend([
            (
                vec![
                    "activations",
                    "--model",
                    "absent",
                    "--hook",
                    "blocks.0.hook_resid_post",
                    "--corpus",
                    "absent.txt",
                ],
                "nodir/acts.safetensors",
            ),
            (
                vec!["train-sae", "-a", "absent.npy", "--width", "8", "-k", "2"],
                "nodir/sae",
            ),
            (
                vec![
                    "budget-sweep",
                    "-a",
                    "absent.npy",
                    "--eval-activations",
                    "absent.npy",
                    "--budgets",
                    "100",
                    "-p",
                    "5",
                ],
                "nodir/sweep",
            ),
            (vec!["plot-sweep", "absent.json"], "nodir/sweep.png"),
            (vec!["bench", "--documents", "4000"], "nodir/bench.json"),
            (
                vec![
                    "steer",
                    "-d",
                    "absent.safetensors",
                    "--model",
                    "absent",
                    "--prompts",
                    "absent.txt",
                    "-r",
                    "0",
                    "--alpha",
                    "4",
                ],
                "nodir/steer.jsonl",
            ),
            (
                vec![
                    "ablate",
                    "-d",
                    "absent.safetensors",
                    "--model",
                    "absent",
                    "-r",
                    "0",
                    "--text",
                    "absent.txt",
                ],
                "nodir/ablate.json",
            ),
            (
                vec!["label", "-d", "absent.safetensors", "--model", "absent"],
                "nodir/labels.jsonl",
            ),
        ]);
    }
    for (mut args, out) in cases {
        args.extend(["-o", out]);
        let e = env.run(&args).err();
        assert_mentions(&e, &[out, "the directory nodir does not exist"]);
        assert!(
            !e.contains("absent"),
            "`{}` did work before checking its output:\n{e}",
            args.join(" ")
        );
    }
    assert_eq!(listing(env.root()), ["labels.jsonl"]);
}

#[cfg(feature = "cuda")]
#[test]
fn device_selection_falls_back_to_the_cpu_or_fails_clearly() {
    let env = Env::new();
    env.acts("acts.npy", 400, 40);
    if exemplar::backend::cuda::driver_available() {
        eprintln!("skipping: a CUDA driver is present (the GPU parity tests cover this machine)");
        return;
    }
    // auto: the CPU, with the reason on stderr and "cpu" in the metadata.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_exemplar"))
        .current_dir(env.root())
        .args([
            "build",
            "-a",
            "acts.npy",
            "-p",
            "10",
            "--device",
            "auto",
            "-o",
            "d.safetensors",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("using the CPU"));
    let dict = exemplar::Dictionary::load(&env.path("d.safetensors")).unwrap();
    assert_eq!(dict.info().backend, "cpu");
    // cuda: a clear error, and no output.
    for cmd in [
        vec![
            "build",
            "-a",
            "acts.npy",
            "-p",
            "10",
            "--device",
            "cuda",
            "-o",
            "e.safetensors",
        ],
        vec![
            "calibrate",
            "-a",
            "acts.npy",
            "-p",
            "10",
            "--device",
            "cuda",
            "-o",
            "e.safetensors",
        ],
        vec![
            "assign",
            "-d",
            "d.safetensors",
            "-a",
            "acts.npy",
            "--device",
            "cuda",
            "-o",
            "e.npz",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_exemplar"))
            .current_dir(env.root())
            .args(&cmd)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("CUDA is not available") && err.contains("driver"),
            "{cmd:?}: {err}"
        );
        assert!(!env.path("e.safetensors").exists() && !env.path("e.npz").exists());
    }
}
