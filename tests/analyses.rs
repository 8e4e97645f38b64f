//! The analyses (`steer`, `ablate`, `label`, `hierarchy`, `stability`, `saturation`,
//! `ood-baseline`) end to end, each against an independent implementation
//! (scripts/analysis_checks.py): numpy / scipy / scikit-learn for the dictionary-only ones and
//! the logit lens, HF transformers with PyTorch forward hooks on the real Gemma 3 270M for the
//! steered and ablated forwards and generations; the saturation record against builds stopped
//! after each batch; and every bad input.

mod common;

use common::{clustered, exemplar, python, write_npy, write_sidecar};
use serde_json::Value;
use std::path::Path;

fn run_check(py: &Path, dir: &Path, args: &[&str]) -> String {
    common::run_python_check(py, "analysis_checks.py", dir, args)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn meta(p: &Path) -> Value {
    let bytes = std::fs::read(p).unwrap();
    let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    serde_json::from_str(&m.metadata().as_ref().unwrap()["exemplar"]).unwrap()
}

/// Three dictionaries of one activation file at three percentiles (shared calibration rows,
/// so one center), with reservoirs and provenance.
fn three_resolutions(dir: &Path) {
    let d = 16;
    let x = clustered(1500, d, 12, 0.35, 5);
    write_npy(&dir.join("a.npy"), &x, d);
    write_sidecar(&dir.join("a.npy"), 1500, 30, 0);
    for p in ["1", "5", "20"] {
        exemplar(
            dir,
            &[
                "build",
                "-a",
                "a.npy",
                "-p",
                p,
                "--batch-size",
                "300",
                "--calibration-activations",
                "600",
                "--no-saturation",
                "--reservoir",
                "8",
                "--device",
                "cpu",
                "-o",
                &format!("p{p}.safetensors"),
            ],
        )
        .ok();
    }
}

#[test]
fn hierarchy_equals_numpy() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    three_resolutions(dir);
    let run = exemplar(
        dir,
        &[
            "hierarchy",
            "p5.safetensors",
            "p1.safetensors",
            "p20.safetensors",
            "--path",
            "0,1",
            "--path",
            "2,3",
            "--knn",
            "2",
            "-o",
            "tree.json",
        ],
    )
    .ok();
    assert!(run.stdout.contains("tree:"), "{}", run.stdout);
    let tree = read_json(&dir.join("tree.json"));
    // Coarsest first: p20, p5, p1; sizes grow.
    let k: Vec<u64> = tree["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["regions"].as_u64().unwrap())
        .collect();
    assert!(k[0] < k[1] && k[1] < k[2], "{k:?}");
    assert_eq!(tree["center_max_abs_diff"], 0.0);
    let out = run_check(
        &py,
        dir,
        &[
            "hierarchy",
            "tree.json",
            "p5.safetensors",
            "p1.safetensors",
            "p20.safetensors",
        ],
    );
    assert!(out.contains("ok hierarchy"), "{out}");
    // Bad input: one dictionary, a region out of range, different widths.
    exemplar(dir, &["hierarchy", "p5.safetensors"]).err();
    let e = exemplar(
        dir,
        &[
            "hierarchy",
            "p5.safetensors",
            "p1.safetensors",
            "--path",
            "0,100000",
        ],
    )
    .err();
    assert!(e.contains("region 100000 is out of range"), "{e}");
    write_npy(&dir.join("w.npy"), &clustered(300, 8, 3, 0.3, 1), 8);
    exemplar(
        dir,
        &[
            "build",
            "-a",
            "w.npy",
            "-p",
            "5",
            "--device",
            "cpu",
            "-o",
            "w.safetensors",
        ],
    )
    .ok();
    let e = exemplar(dir, &["hierarchy", "p5.safetensors", "w.safetensors"]).err();
    assert!(e.contains("D = 8"), "{e}");
}

#[test]
fn stability_equals_scipy_and_sklearn() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The same rows in three orders (as document-order seeds give).
    let d = 12;
    let n = 900;
    let x = clustered(n, d, 10, 0.45, 9);
    let mut paths = vec![];
    for s in 0..3u64 {
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = common::Rng::new(100 + s);
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let y: Vec<f32> = order
            .iter()
            .flat_map(|&i| x[i * d..(i + 1) * d].to_vec())
            .collect();
        let a = format!("s{s}.npy");
        write_npy(&dir.join(&a), &y, d);
        let o = format!("s{s}.safetensors");
        exemplar(
            dir,
            &[
                "build",
                "-a",
                &a,
                "-p",
                "4",
                "--batch-size",
                "300",
                "--no-saturation",
                "--device",
                "cpu",
                "-o",
                &o,
            ],
        )
        .ok();
        paths.push(o);
    }
    let mut args = vec!["stability"];
    args.extend(paths.iter().map(String::as_str));
    args.extend([
        "--cutoff",
        "0.9",
        "-o",
        "st.json",
        "--regions-csv",
        "st.csv",
    ]);
    let run = exemplar(dir, &args).ok();
    assert!(run.stdout.contains("AUROC"), "{}", run.stdout);
    let rep = read_json(&dir.join("st.json"));
    let frac = rep["persisted_fraction"].as_f64().unwrap();
    assert!(
        frac > 0.0 && frac < 1.0,
        "the test needs both classes: {frac}"
    );
    let csv = std::fs::read_to_string(dir.join("st.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + rep["regions_total"].as_u64().unwrap() as usize
    );
    let mut check = vec!["stability", "st.json", "0.9", "mean"];
    check.extend(paths.iter().map(String::as_str));
    let out = run_check(&py, dir, &check);
    assert!(out.contains("ok stability"), "{out}");
    // The exemplar basis too.
    let mut args = vec!["stability"];
    args.extend(paths.iter().map(String::as_str));
    args.extend(["--basis", "exemplar", "--cutoff", "0.8", "-o", "se.json"]);
    exemplar(dir, &args).ok();
    let mut check = vec!["stability", "se.json", "0.8", "exemplar"];
    check.extend(paths.iter().map(String::as_str));
    run_check(&py, dir, &check);
    exemplar(dir, &["stability", "s0.safetensors"]).err();
}

/// The curve a build records equals, after each batch, the K (and activations) of the same
/// build stopped after that batch.
#[test]
fn the_saturation_record_equals_k_after_each_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = 10;
    let x = clustered(1200, d, 40, 0.4, 3);
    write_npy(&dir.join("a.npy"), &x, d);
    write_sidecar(&dir.join("a.npy"), 1200, 40, 0);
    exemplar(
        dir,
        &[
            "calibrate",
            "-a",
            "a.npy",
            "-p",
            "3",
            "--batch-size",
            "200",
            "-o",
            "cal.safetensors",
        ],
    )
    .ok();
    // Merging exemplars closer than 1.1 θ after each batch, so K also falls within a batch.
    let bytes = std::fs::read(dir.join("cal.safetensors")).unwrap();
    let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let cal: Value = serde_json::from_str(&m.metadata().as_ref().unwrap()["exemplar"]).unwrap();
    let merge = (1.1 * cal["theta"].as_f64().unwrap()).to_string();
    let flags = [
        "-a",
        "a.npy",
        "-c",
        "cal.safetensors",
        "--batch-size",
        "200",
        "--device",
        "cpu",
        "--no-saturation",
        "--merge-close",
        "--merge-threshold",
        &merge,
    ];
    let mut args = vec!["build"];
    args.extend(flags);
    args.extend(["-o", "full.safetensors"]);
    exemplar(dir, &args).ok();
    let mut args = vec!["build"];
    args.extend(&flags[..8]);
    args.extend(["--no-saturation", "-o", "unmerged.safetensors"]);
    exemplar(dir, &args).ok();
    let unmerged = meta(&dir.join("unmerged.safetensors"))["partitions"]
        .as_u64()
        .unwrap();
    let curve = meta(&dir.join("full.safetensors"))["saturation_curve"].clone();
    let curve = curve.as_array().unwrap();
    assert_eq!(curve.len(), 6);
    let mut last_k = 0;
    for (i, p) in curve.iter().enumerate() {
        let n = (i + 1) * 200;
        let out = format!("prefix{n}.safetensors");
        let mut args = vec!["build"];
        args.extend(flags);
        let ns = n.to_string();
        args.extend(["--max-activations", &ns, "-o", &out]);
        exemplar(dir, &args).ok();
        let m = meta(&dir.join(&out));
        assert_eq!(p["partitions"], m["partitions"], "batch {i}");
        assert_eq!(p["activations"].as_u64().unwrap(), n as u64);
        assert_eq!(p["tokens"], m["tokens_streamed"], "batch {i}");
        // The prefix build's own record is the curve's prefix.
        assert_eq!(m["saturation_curve"].as_array().unwrap()[..], curve[..=i]);
        last_k = p["partitions"].as_u64().unwrap();
    }
    assert_eq!(
        last_k,
        meta(&dir.join("full.safetensors"))["partitions"]
            .as_u64()
            .unwrap()
    );
    assert!(
        last_k < unmerged,
        "no merge happened ({last_k} vs {unmerged}): the test needs some"
    );
    assert!(curve[0]["partitions"].as_u64() < curve[5]["partitions"].as_u64());
    // Several builds on one plot.
    let run = exemplar(
        dir,
        &[
            "saturation",
            "full.safetensors",
            "prefix600.safetensors",
            "--name",
            "full,prefix",
            "--png",
            "sat.png",
            "-o",
            "sat.json",
        ],
    )
    .ok();
    assert!(run.stdout.contains("plot written"), "{}", run.stdout);
    let png = std::fs::read(dir.join("sat.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let sat = read_json(&dir.join("sat.json"));
    assert_eq!(sat["curves"][0]["points"], Value::Array(curve.clone()));
    assert_eq!(sat["curves"][1]["name"], "prefix");
    let e = exemplar(dir, &["saturation", "full.safetensors", "--name", "a,b"]).err();
    assert!(e.contains("--name"), "{e}");
}

#[test]
fn ood_against_the_knn_baseline_equals_sklearn() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = 12;
    let c = common::Clusters::new(d, 15, 21);
    write_npy(&dir.join("ref.npy"), &c.sample(1500, 0.3, 1), d);
    write_npy(&dir.join("in.npy"), &c.sample(300, 0.3, 2), d);
    write_npy(&dir.join("wide.npy"), &c.sample(300, 0.9, 3), d);
    write_npy(&dir.join("other.npy"), &clustered(300, d, 15, 0.3, 77), d);
    exemplar(
        dir,
        &[
            "build",
            "-a",
            "ref.npy",
            "-p",
            "3",
            "--batch-size",
            "500",
            "--device",
            "cpu",
            "-o",
            "d.safetensors",
        ],
    )
    .ok();
    let run = exemplar(
        dir,
        &[
            "ood-baseline",
            "-d",
            "d.safetensors",
            "--reference",
            "ref.npy",
            "-a",
            "in.npy",
            "--ood",
            "wide.npy",
            "--ood",
            "other.npy",
            "-k",
            "1,3",
            "--seed",
            "4",
            "-o",
            "o.json",
        ],
    )
    .ok();
    assert!(run.stdout.contains("best k-NN AUROC"), "{}", run.stdout);
    let out = run_check(
        &py,
        dir,
        &[
            "ood",
            "o.json",
            "d.safetensors",
            "ref.npy",
            "in.npy",
            "wide.npy",
            "other.npy",
        ],
    );
    assert!(out.contains("ok ood"), "{out}");
    let r = read_json(&dir.join("o.json"));
    assert_eq!(
        r["sample_size"],
        meta(&dir.join("d.safetensors"))["partitions"]
    );
    let e = exemplar(
        dir,
        &[
            "ood-baseline",
            "-d",
            "d.safetensors",
            "--reference",
            "ref.npy",
            "-a",
            "in.npy",
            "--ood",
            "wide.npy",
            "--sample-size",
            "100000",
        ],
    )
    .err();
    assert!(e.contains("cannot be sampled"), "{e}");
    let e = exemplar(
        dir,
        &[
            "ood-baseline",
            "-d",
            "d.safetensors",
            "--reference",
            "ref.npy",
            "-a",
            "in.npy",
            "--ood",
            "wide.npy",
            "-k",
            "0",
        ],
    )
    .err();
    assert!(e.contains("k = 0"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Model-backed analyses (feature torch)

#[cfg(feature = "torch")]
mod model {
    use super::*;
    use common::{
        assert_no_outputs, build_text_dictionary, gemma_fixtures, real_gemma3, write_text_corpus,
    };

    const TEXTS: &[&str] = &[
        "The capital of France is Paris, and the capital of Germany is Berlin.",
        "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
        "Le chat est sur la table et le chien dort dans le jardin.",
        "In 1969, astronauts landed on the Moon for the first time.",
        "import numpy as np\nx = np.zeros((3, 4))\nprint(x.shape)",
        "Der Hund spielt im Garten mit einem roten Ball.",
        "Water boils at one hundred degrees Celsius at sea level.",
        "for i in range(10):\n    if i % 2 == 0:\n        print(i)",
        "The quick brown fox jumps over the lazy dog near the river.",
        "La ciudad de Madrid es la capital de España.",
        "Photosynthesis converts light energy into chemical energy in plants.",
        "SELECT name, age FROM users WHERE age > 30 ORDER BY name;",
    ];

    fn corpus(dir: &Path) {
        write_text_corpus(dir, TEXTS);
        std::fs::write(
            dir.join("prompts.txt"),
            "The capital of Italy is\ndef multiply(a, b):\n",
        )
        .unwrap();
    }

    fn lines(p: &Path) -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Steered and ablated generations and forwards on the real 270M equal HF transformers with
    /// the same edits done by PyTorch forward hooks: the same tokens, log-probs within 1e-4.
    #[test]
    fn steer_and_ablate_equal_hf_forward_hooks_on_the_real_270m() {
        let Some((m, _)) = real_gemma3() else { return };
        let Some(py) = python() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        corpus(dir);
        let m = m.to_str().unwrap();
        let hook = "blocks.6.hook_resid_post";
        build_text_dictionary(dir, m, hook, "d.safetensors");
        let k = meta(&dir.join("d.safetensors"))["partitions"]
            .as_u64()
            .unwrap();
        assert!(k >= 6, "K = {k}");
        // A gate on the even regions: open at some positions, shut at others.
        let even: Vec<String> = (0..k).step_by(2).map(|r| r.to_string()).collect();
        let even = even.join(",");
        // Held-out texts (not in the build): the gated steering's prompts and the ablation's texts.
        std::fs::write(
            dir.join("held.txt"),
            "My grandmother bakes bread every Sunday morning with fresh butter.\n\
             while True:    line = input()\n\
             Il pleut beaucoup en automne dans le nord de la France.\n",
        )
        .unwrap();
        let base = [
            "steer",
            "-d",
            "d.safetensors",
            "--model",
            m,
            "--new-tokens",
            "6",
        ];
        let runs: Vec<(&str, Vec<&str>)> = vec![
            (
                "add.jsonl",
                vec![
                    "--prompts",
                    "prompts.txt",
                    "--edit",
                    "add",
                    "-r",
                    "0,1",
                    "--alpha",
                    "900",
                    "--baseline",
                ],
            ),
            (
                "raise.jsonl",
                vec![
                    "--prompts",
                    "prompts.txt",
                    "--edit",
                    "raise",
                    "-r",
                    "2",
                    "--value",
                    "1500",
                    "--keep-norm",
                    "--temperature",
                    "0.8",
                    "--top-k",
                    "40",
                    "--seed",
                    "5",
                    "--samples",
                    "2",
                ],
            ),
            (
                "clamp.jsonl",
                vec![
                    "--edit",
                    "clamp",
                    "-r",
                    "3",
                    "--value",
                    "-300",
                    "--gate-region",
                    &even,
                    "--prompts",
                    "held.txt",
                ],
            ),
            (
                "ablate.jsonl",
                vec![
                    "--prompts",
                    "prompts.txt",
                    "--edit",
                    "ablate",
                    "-r",
                    "0,1,2",
                    "--together",
                    "--basis",
                    "mean",
                ],
            ),
        ];
        let mut files = vec![];
        for (out, extra) in &runs {
            let mut args = base.to_vec();
            args.extend(extra.iter().copied());
            args.extend(["-o", out]);
            exemplar(dir, &args).ok();
            files.push(*out);
        }
        // The edits change the continuations (or the check would prove nothing).
        let add = lines(&dir.join("add.jsonl"));
        assert_eq!(add.len(), 2 * 3);
        assert!(add
            .iter()
            .all(|r| r["other_hook"] == false && r["hook"] == hook));
        assert_ne!(add[0]["ids"], add[1]["ids"], "α·e changed nothing");
        assert_eq!(lines(&dir.join("raise.jsonl")).len(), 4);
        let mut args = vec!["hf-steer", m, "d.safetensors"];
        args.extend(&files);
        let out = run_check(&py, dir, &args);
        eprint!("{out}");
        assert!(out.contains("ok hf-steer"), "{out}");
        // Ablation: per-position losses and target log-probs.
        // The first half of the regions: some positions have their nearest exemplar in the set
        // but lie outside θ.
        let half: Vec<String> = (0..k / 2).map(|r| r.to_string()).collect();
        let half = half.join(",");
        exemplar(
            dir,
            &[
                "ablate",
                "-d",
                "d.safetensors",
                "--model",
                m,
                "-r",
                &half,
                "--top",
                "2",
                "--text",
                "held.txt",
                "--prompts",
                "prompts.txt",
                "--target",
                " Rome",
                "--target",
                " the",
                "--per-position",
                "pp.jsonl",
                "--random-control",
                "-o",
                "ab.json",
            ],
        )
        .ok();
        let ab = read_json(&dir.join("ab.json"));
        assert!(ab["selectivity"]["inside"]["positions"].as_u64().unwrap() > 0);
        let out = run_check(
            &py,
            dir,
            &[
                "hf-ablate",
                m,
                "d.safetensors",
                "ab.json",
                "pp.jsonl",
                "prompts.txt",
                " Rome",
                " the",
            ],
        );
        eprint!("{out}");
        assert!(out.contains("ok hf-ablate"), "{out}");
    }

    /// The dictionary must match the model and hook before any weight is read: the checks run
    /// on a checkpoint directory that has a config and a tokenizer but no weights.
    #[test]
    fn bad_inputs_are_refused_before_any_model_work() {
        let Some(fx) = gemma_fixtures() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        corpus(dir);
        let gqa = fx.join("gqa");
        let g3 = fx.join("gemma3");
        build_text_dictionary(
            dir,
            gqa.to_str().unwrap(),
            "blocks.2.hook_resid_post",
            "d.safetensors",
        );
        // A copy of the model with no weights: any model work would fail on them.
        let bare = dir.join("gqa");
        std::fs::create_dir(&bare).unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(gqa.join(f), bare.join(f)).unwrap();
        }
        let b = bare.to_str().unwrap();
        let steer = |extra: &[&str]| {
            let mut a = vec![
                "steer",
                "-d",
                "d.safetensors",
                "--prompts",
                "prompts.txt",
                "-o",
                "s.jsonl",
            ];
            a.extend(extra);
            exemplar(dir, &a)
        };
        // A standardised dictionary: its exemplars are not directions of the activations.
        {
            let mut d = exemplar::Dictionary::load(&dir.join("d.safetensors")).unwrap();
            let dim = d.dim();
            d.set_scaling(Some(exemplar::geometry::Scaling {
                mean: vec![0.5; dim],
                inv_std: vec![2.0; dim],
            }))
            .unwrap();
            d.save(&dir.join("std.safetensors"), false).unwrap();
            let e = exemplar(
                dir,
                &[
                    "steer",
                    "-d",
                    "std.safetensors",
                    "--prompts",
                    "prompts.txt",
                    "-o",
                    "s.jsonl",
                    "--model",
                    b,
                    "-r",
                    "0",
                    "--alpha",
                    "1",
                ],
            )
            .err();
            assert!(
                e.contains("std.safetensors") && e.contains("standardised"),
                "{e}"
            );
        }
        // Another model (same width 64, another config).
        let e = steer(&["--model", g3.to_str().unwrap(), "-r", "0", "--alpha", "1"]).err();
        assert!(
            e.contains("was built on") && e.contains("config.json SHA-256"),
            "{e}"
        );
        // Another hook: refused without --other-hook.
        let e = steer(&[
            "--model",
            b,
            "--hook",
            "blocks.1.hook_resid_post",
            "-r",
            "0",
            "--alpha",
            "1",
        ])
        .err();
        assert!(
            e.contains("blocks.2.hook_resid_post") && e.contains("--other-hook"),
            "{e}"
        );
        // A hook the model does not have, a per-head hook.
        let e = steer(&[
            "--model",
            b,
            "--hook",
            "blocks.9.hook_resid_post",
            "--other-hook",
            "-r",
            "0",
            "--alpha",
            "1",
        ])
        .err();
        assert!(e.contains("4 blocks"), "{e}");
        let e = steer(&[
            "--model",
            b,
            "--hook",
            "blocks.1.attn.hook_z",
            "--other-hook",
            "-r",
            "0",
            "--alpha",
            "1",
        ])
        .err();
        assert!(e.contains("d_model-wide"), "{e}");
        // Region out of range, non-finite α, empty prompt file, missing α.
        let e = steer(&["--model", b, "-r", "100000", "--alpha", "1"]).err();
        assert!(e.contains("region 100000 is out of range"), "{e}");
        for bad in ["nan", "inf"] {
            let e = steer(&["--model", b, "-r", "0", "--alpha", bad]).err();
            assert!(e.contains("not a finite number"), "{e}");
        }
        let e = steer(&["--model", b, "-r", "0", "--edit", "add"]).err();
        assert!(e.contains("--alpha"), "{e}");
        let e = steer(&[
            "--model",
            b,
            "-r",
            "0",
            "--alpha",
            "1",
            "--gate-region",
            "100000",
        ])
        .err();
        assert!(e.contains("gate region 100000"), "{e}");
        std::fs::write(dir.join("empty.txt"), "\n  \n").unwrap();
        let e = exemplar(
            dir,
            &[
                "steer",
                "-d",
                "d.safetensors",
                "--model",
                b,
                "--prompts",
                "empty.txt",
                "-r",
                "0",
                "--alpha",
                "1",
                "-o",
                "s.jsonl",
            ],
        )
        .err();
        assert!(
            e.contains("empty.txt") && (e.contains("no text") || e.contains("no documents")),
            "{e}"
        );
        // A dictionary of another width (the sharded fixture is 48 wide).
        let sh = fx.join("sharded");
        build_text_dictionary(
            dir,
            sh.to_str().unwrap(),
            "blocks.1.hook_resid_post",
            "w.safetensors",
        );
        let e = exemplar(
            dir,
            &[
                "steer",
                "-d",
                "w.safetensors",
                "--model",
                b,
                "--hook",
                "blocks.1.hook_resid_post",
                "--other-hook",
                "--prompts",
                "prompts.txt",
                "-r",
                "0",
                "--alpha",
                "1",
                "-o",
                "s.jsonl",
            ],
        )
        .err();
        assert!(e.contains("D = 48") && e.contains("D = 64"), "{e}");
        // ablate and label refuse the same way.
        let e = exemplar(
            dir,
            &[
                "ablate",
                "-d",
                "d.safetensors",
                "--model",
                b,
                "-r",
                "7",
                "--hook",
                "blocks.3.hook_resid_post",
                "--text",
                "prompts.txt",
            ],
        )
        .err();
        assert!(e.contains("--other-hook"), "{e}");
        let e = exemplar(
            dir,
            &[
                "ablate",
                "-d",
                "d.safetensors",
                "--model",
                b,
                "-r",
                "100000",
                "--text",
                "prompts.txt",
            ],
        )
        .err();
        assert!(e.contains("out of range"), "{e}");
        let e = exemplar(
            dir,
            &[
                "label",
                "-d",
                "w.safetensors",
                "--model",
                b,
                "-o",
                "l.jsonl",
            ],
        )
        .err();
        assert!(e.contains("D = 48"), "{e}");
        let e = exemplar(
            dir,
            &[
                "label",
                "-d",
                "d.safetensors",
                "--model",
                b,
                "-r",
                "100000",
                "-o",
                "l.jsonl",
            ],
        )
        .err();
        assert!(e.contains("out of range"), "{e}");
        assert_no_outputs(dir, &["s.jsonl", "l.jsonl"]);
        // Applied at another hook with --other-hook: it runs, and every record says so.
        let g = gqa.to_str().unwrap();
        exemplar(
            dir,
            &[
                "steer",
                "-d",
                "d.safetensors",
                "--model",
                g,
                "--hook",
                "blocks.1.hook_resid_post",
                "--other-hook",
                "--prompts",
                "prompts.txt",
                "-r",
                "0",
                "--alpha",
                "2",
                "--new-tokens",
                "3",
                "-o",
                "s.jsonl",
            ],
        )
        .ok();
        for r in lines(&dir.join("s.jsonl")) {
            assert_eq!(r["other_hook"], true);
            assert_eq!(r["hook"], "blocks.1.hook_resid_post");
            assert_eq!(r["dictionary_hook"], "blocks.2.hook_resid_post");
        }
    }

    /// `label`'s logit lens equals numpy's final norm + unembedding; `steer --measure` on a random
    /// fixture gives a summary with every part.
    #[test]
    fn label_lens_equals_numpy_and_measured_steering_summarises() {
        let Some(fx) = gemma_fixtures() else { return };
        let Some(py) = python() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        corpus(dir);
        for (name, hook) in [
            ("gqa", "blocks.2.hook_resid_post"),
            ("gemma3", "blocks.3.hook_resid_post"),
        ] {
            let m = fx.join(name);
            let m = m.to_str().unwrap();
            let d = format!("{name}.safetensors");
            build_text_dictionary(dir, m, hook, &d);
            let l = format!("{name}.labels.jsonl");
            exemplar(
                dir,
                &[
                    "label",
                    "-d",
                    &d,
                    "--model",
                    m,
                    "--top",
                    "6",
                    "--lens-tokens",
                    "5",
                    "-o",
                    &l,
                    "--markdown",
                    "l.md",
                    "--force",
                ],
            )
            .ok();
            let recs = lines(&dir.join(&l));
            assert_eq!(recs.len(), 6);
            assert!(recs[0]["examples"][0]["context"]
                .as_str()
                .unwrap()
                .contains("[["));
            let out = run_check(&py, dir, &["lens", m, &d, &l]);
            assert!(out.contains("ok lens"), "{out}");
        }
        let md = std::fs::read_to_string(dir.join("l.md")).unwrap();
        assert!(
            md.contains("## Region") && md.contains("exemplar lens"),
            "{md}"
        );
        let m = fx.join("gqa");
        let run = exemplar(
            dir,
            &[
                "steer",
                "-d",
                "gqa.safetensors",
                "--model",
                m.to_str().unwrap(),
                "--prompts",
                "prompts.txt",
                "-r",
                "0,1,2",
                "--alpha",
                "20",
                "--random-control",
                "--baseline",
                "--measure",
                "--lens-tokens",
                "4",
                "--new-tokens",
                "5",
                "-o",
                "m.jsonl",
                "--summary",
                "sum.json",
            ],
        )
        .ok();
        assert!(run.stdout.contains("mean in-region rate"), "{}", run.stdout);
        let sum = read_json(&dir.join("sum.json"));
        let s = &sum["settings"][0];
        assert_eq!(s["regions"], 3);
        for w in ["steered", "random", "baseline"] {
            assert!(s["mean_in_region_rate"][w].is_number(), "{s}");
            assert!(s["mean_lens_logprob"][w].as_f64().unwrap() < 0.0, "{s}");
        }
        // 2 prompts × (baseline + 3 regions × (edit + control)).
        let recs = lines(&dir.join("m.jsonl"));
        assert_eq!(recs.len(), 14);
        assert_eq!(recs[0]["measures"].as_array().unwrap().len(), 3);
        assert_eq!(recs[1]["measures"].as_array().unwrap().len(), 1);
    }
}
