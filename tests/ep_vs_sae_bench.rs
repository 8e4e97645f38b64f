//! The EP-vs-SAE benchmark's pieces (issue 16): the decision-tree probe against scikit-learn's
//! `DecisionTreeClassifier`, the SAE trainer's epochs and convergence, the bad inputs (a budget
//! larger than the harvest, a concept without positives in a split, an SAE of the wrong width),
//! and the whole benchmark (docs/benchmarks/2026-12-06-ep-vs-sae-gemma-3-270m) on a small random
//! Gemma 3 with every report number recomputed by an independent numpy script.
#![cfg(feature = "torch")]

mod common;

use common::{assert_mentions, exemplar, gemma_fixtures, python, run_python, write_npy, Rng};
use exemplar::eval::tree::{fit_tree, Node, TreeConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks/2026-12-06-ep-vs-sae-gemma-3-270m")
}

/// Our tree and scikit-learn's, walked side by side from the root: at every node both hold the
/// same training rows (class counts), both split or both stop, and the split's weighted child
/// Gini is the same (the minimum). Where two different splits tie exactly, scikit-learn's
/// random feature order may pick the other one: the walk stops below such a node and counts it.
const SKLEARN_TREE_CHECK: &str = r#"
import json, sys
import numpy as np
from sklearn.tree import DecisionTreeClassifier
x = np.load(sys.argv[1]).astype(np.float64); y = np.load(sys.argv[2]).reshape(-1).astype(np.int64)
xt = np.load(sys.argv[3]).astype(np.float64)
ours = json.load(open(sys.argv[4]))
clf = DecisionTreeClassifier(max_depth=5, min_samples_split=2, min_samples_leaf=1,
                             random_state=0).fit(x, y)
t = clf.tree_
k = len(ours["counts"][0]) if ours["counts"] else 0
def gini(c):
    n = c.sum(); return 0.0 if n == 0 else 1.0 - ((c / n) ** 2).sum()
def counts_of(rows): return np.bincount(y[rows], minlength=clf.n_classes_)
ties, nodes = 0, 0
stack = [(0, 0, np.arange(len(y)))]
while stack:
    a, b, rows = stack.pop()
    nodes += 1
    c = counts_of(rows)
    node = ours["nodes"][a]
    sk_leaf = t.children_left[b] == -1
    assert (np.round(t.value[b][0] * t.weighted_n_node_samples[b]) == c).all(), (a, b)
    if "Leaf" in node:
        assert sk_leaf, f"node {a}: ours is a leaf, scikit-learn splits"
        assert node["Leaf"]["counts"] == c.tolist()
        continue
    assert not sk_leaf, f"node {a}: ours splits, scikit-learn's is a leaf"
    s = node["Split"]
    lo = rows[x[rows, s["feature"]].astype(np.float32) <= s["threshold"]]
    hi = np.setdiff1d(rows, lo)
    f, th = t.feature[b], t.threshold[b]
    slo = rows[x[rows, f].astype(np.float32) <= th]
    shi = np.setdiff1d(rows, slo)
    w_ours = len(lo) * gini(counts_of(lo)) + len(hi) * gini(counts_of(hi))
    w_sk = len(slo) * gini(counts_of(slo)) + len(shi) * gini(counts_of(shi))
    assert abs(w_ours - w_sk) < 1e-9, f"node {a}: weighted Gini {w_ours} vs scikit-learn {w_sk}"
    if set(lo.tolist()) != set(slo.tolist()):
        ties += 1
        continue
    # The same rows each side; another feature (or threshold) may cut them identically.
    if not (s["feature"] == f and abs(s["threshold"] - th) < 1e-12):
        ties += 1
    stack.append((s["left"], t.children_left[b], lo))
    stack.append((s["right"], t.children_right[b], hi))
print(json.dumps({"nodes": nodes, "ties": ties, "sk_nodes": int(t.node_count),
                  "pred": clf.predict(xt).tolist(), "depth": int(clf.get_depth())}))
"#;

fn tree_json(t: &exemplar::eval::tree::DecisionTree) -> Value {
    let counts: Vec<Value> = t
        .nodes
        .iter()
        .filter_map(|n| match n {
            Node::Leaf { counts, .. } => Some(serde_json::json!(counts)),
            _ => None,
        })
        .collect();
    serde_json::json!({"nodes": t.nodes, "counts": counts})
}

#[test]
fn decision_tree_matches_scikit_learn() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(7);
    // One continuous feature (both trees scan thresholds in increasing order and keep the first
    // of equal splits, so they must be identical), several continuous features, and binary
    // count features (many exact ties), as the MOSAIC probe sees them, 3 classes with 10 %
    // label noise.
    // "sparse": binary features of which most columns are constant (all zeros or all ones), as
    // pooled codes of documents are; our tree skips those columns and numbers its splits by
    // the full width, as scikit-learn does.
    for (case, n, d, binary) in [
        ("one", 300, 1, false),
        ("cont", 300, 6, false),
        ("bin", 240, 40, true),
        ("sparse", 240, 60, true),
    ] {
        let gen = |rng: &mut Rng, n: usize| -> (Vec<f32>, Vec<usize>) {
            let mut x = Vec::new();
            let mut y = Vec::new();
            for _ in 0..n {
                let row: Vec<f32> = (0..d)
                    .map(|j| {
                        if case == "sparse" && j >= 4 && j % 4 != 0 {
                            f32::from(j % 7 == 0)
                        } else if binary {
                            f32::from(rng.uniform() < 0.3)
                        } else {
                            rng.normal() as f32
                        }
                    })
                    .collect();
                let s = if d == 1 {
                    (3.0 * row[0]).sin()
                } else {
                    row[0] + row[1] * row[2] - 0.5 * row[3]
                };
                let mut c = if s > 0.5 {
                    2
                } else if s > -0.3 {
                    1
                } else {
                    0
                };
                if rng.uniform() < 0.1 {
                    c = rng.below(3);
                }
                x.extend(row);
                y.push(c);
            }
            (x, y)
        };
        let (x, y) = gen(&mut rng, n);
        let (xt, _) = gen(&mut rng, 200);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let tree = fit_tree(&x64, d, &y, 3, &TreeConfig::default()).unwrap();
        assert!(tree.depth() <= 5);
        let yf: Vec<f32> = y.iter().map(|&c| c as f32).collect();
        write_npy(&dir.path().join(format!("{case}-x.npy")), &x, d);
        write_npy(&dir.path().join(format!("{case}-y.npy")), &yf, 1);
        write_npy(&dir.path().join(format!("{case}-xt.npy")), &xt, d);
        std::fs::write(
            dir.path().join(format!("{case}-tree.json")),
            tree_json(&tree).to_string(),
        )
        .unwrap();
        let out = run_python(
            &py,
            dir.path(),
            SKLEARN_TREE_CHECK,
            &[
                &format!("{case}-x.npy"),
                &format!("{case}-y.npy"),
                &format!("{case}-xt.npy"),
                &format!("{case}-tree.json"),
            ],
        );
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert!(v["nodes"].as_u64().unwrap() >= 9, "{case}: {v}");
        if case == "one" {
            // No tie between features: the same tree, so the same predictions on new rows.
            assert_eq!(v["ties"], 0, "{v}");
            assert_eq!(v["sk_nodes"].as_u64().unwrap() as usize, tree.nodes.len());
            let xt64: Vec<f64> = xt.iter().map(|&v| v as f64).collect();
            let ours = tree.predict(&xt64).unwrap();
            let theirs: Vec<usize> = v["pred"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(ours, theirs);
            assert_eq!(v["depth"].as_u64().unwrap() as usize, tree.depth());
        }
    }
}

/// A small activation file of `n` rows, D = 16, with a sidecar of `per_doc` rows per document.
fn acts(dir: &Path, name: &str, n: usize, d: usize, seed: u64) {
    let x = common::clustered(n, d, 12, 0.3, seed);
    common::write_safetensors(&dir.join(name), "activations", &x, d);
    common::write_sidecar(&dir.join(name), n, 8, 0);
}

#[test]
fn train_sae_epochs_converge_on_held_out_rows_and_refuse_bad_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    acts(p, "train.safetensors", 2000, 16, 1);
    acts(p, "held.safetensors", 400, 16, 2);
    acts(p, "wide.safetensors", 100, 24, 3);
    let out = exemplar(
        p,
        &[
            "train-sae",
            "-a",
            "train.safetensors",
            "--width",
            "32",
            "-k",
            "4",
            "--max-activations",
            "1000",
            "--epochs",
            "400",
            "--sae-batch-size",
            "100",
            "--eval-activations",
            "held.safetensors",
            "--tolerance",
            "0.01",
            "--patience",
            "2",
            "--json",
            "-o",
            "sae",
        ],
    )
    .ok();
    let rec: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rec["stopped"], "converged", "{rec}");
    let curve = rec["curve"].as_array().unwrap();
    assert!(
        curve.len() >= 3 && rec["epochs"].as_u64().unwrap() < 400,
        "{rec}"
    );
    // One check per epoch (1000 rows); each check is after the rows it names.
    for (i, c) in curve.iter().enumerate() {
        assert_eq!(c["rows"].as_u64().unwrap(), 1000 * (i as u64 + 1));
    }
    assert_eq!(rec["rows"].as_u64().unwrap(), 1000 * curve.len() as u64);
    assert_eq!(rec["steps"].as_u64().unwrap(), 10 * curve.len() as u64);
    // Stopped because the last `patience` checks did not beat the best before them by 1%.
    let e: Vec<f64> = curve
        .iter()
        .map(|c| c["eval_fvu"].as_f64().unwrap())
        .collect();
    let n = e.len();
    let best_before = e[..n - 2].iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(
        e[n - 2] >= best_before * 0.99 && e[n - 1] >= best_before * 0.99,
        "{e:?}"
    );
    assert!(e[0] > e[n - 1], "the held-out FVU fell: {e:?}");
    assert_eq!(rec["eval_rows"], 400);
    assert_eq!(rec["eval_fvu"].as_f64().unwrap(), {
        // The end-of-run check equals the last curve point (no step after it).
        e[n - 1]
    });
    // Bad inputs: a budget larger than the input, held-out rows of another width.
    let err = exemplar(
        p,
        &[
            "train-sae",
            "-a",
            "train.safetensors",
            "--width",
            "32",
            "-k",
            "4",
            "--max-activations",
            "5000",
            "--epochs",
            "3",
            "-o",
            "sae2",
        ],
    )
    .err();
    assert_mentions(
        &err,
        &[
            "5000",
            "larger than the input",
            "2000 rows",
            "train.safetensors",
        ],
    );
    assert!(!p.join("sae2").exists());
    let err = exemplar(
        p,
        &[
            "train-sae",
            "-a",
            "train.safetensors",
            "--width",
            "32",
            "-k",
            "4",
            "--epochs",
            "2",
            "--eval-activations",
            "wide.safetensors",
            "-o",
            "sae3",
        ],
    )
    .err();
    assert_mentions(&err, &["wide.safetensors", "16", "24"]);
    assert!(!p.join("sae3").exists());
    // An SAE whose width does not match the activations: detect says so.
    std::fs::write(
        p.join("concepts.jsonl"),
        (0..8)
            .map(|i| {
                serde_json::json!({"concept_id": 0, "concept": "c", "doc_id": i,
                    "category": if i % 2 == 0 { "positive" } else { "negative" },
                    "split": if i < 4 { "train" } else { "eval" }})
                .to_string()
                    + "\n"
            })
            .collect::<String>(),
    )
    .unwrap();
    let err = exemplar(
        p,
        &[
            "detect",
            "-a",
            "wide.safetensors",
            "--concepts",
            "concepts.jsonl",
            "--sae",
            "sae",
        ],
    )
    .err();
    assert_mentions(&err, &["sae", "16", "24"]);
    // SAE detection works on the right width.
    exemplar(
        p,
        &[
            "detect",
            "-a",
            "held.safetensors",
            "--concepts",
            "concepts.jsonl",
            "--sae",
            "sae",
            "-o",
            "det.json",
        ],
    )
    .ok();
    // A concept with no positive in the eval split.
    std::fs::write(
        p.join("bad.jsonl"),
        (0..8)
            .map(|i| {
                serde_json::json!({"concept_id": 3, "concept": "no eval positive", "doc_id": i,
                    "category": if i < 2 { "positive" } else { "negative" },
                    "split": if i < 4 { "train" } else { "eval" }})
                .to_string()
                    + "\n"
            })
            .collect::<String>(),
    )
    .unwrap();
    let err = exemplar(
        p,
        &[
            "detect",
            "-a",
            "held.safetensors",
            "--concepts",
            "bad.jsonl",
            "--sae",
            "sae",
            "-o",
            "bad.json",
        ],
    )
    .err();
    assert_mentions(
        &err,
        &["concept 3", "no eval positive", "no positive eval example"],
    );
    assert!(!p.join("bad.json").exists());
    // The same document twice for one concept is refused; for two concepts it is fine.
    std::fs::write(
        p.join("dup.jsonl"),
        [
            r#"{"concept_id": 0, "concept": "a", "doc_id": 1, "category": "positive"}"#,
            r#"{"concept_id": 1, "concept": "b", "doc_id": 1, "category": "negative"}"#,
            r#"{"concept_id": 0, "concept": "a", "doc_id": 1, "category": "negative"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let err = exemplar(
        p,
        &[
            "detect",
            "-a",
            "held.safetensors",
            "--concepts",
            "dup.jsonl",
            "--sae",
            "sae",
        ],
    )
    .err();
    assert_mentions(
        &err,
        &["dup.jsonl", "line 3", "doc_id 1", "line 1", "same concept"],
    );
}

/// A corpus whose documents cover every concept and class of make_labelled.py.
fn tiny_corpus(path: &Path, n: usize) {
    let langs = ["ru", "fr", "de", "ja", "es", "sv", "uk", "it"];
    let sources = [
        "python_source",
        "man",
        "info",
        "docstring",
        "messages",
        "pydoc_topics",
        "license",
    ];
    let mut rng = Rng::new(3);
    let words = [
        "file", "value", "option", "the", "list", "return", "print", "error", "name", "path",
    ];
    let mut out = String::new();
    for i in 0..n {
        let source = sources[i % sources.len()];
        let lang = if source == "messages" {
            langs[(i / sources.len()) % langs.len()]
        } else if source == "python_source" {
            "python"
        } else {
            "en"
        };
        let mut text = String::new();
        for line in 0..12 {
            let w: Vec<&str> = (0..6).map(|_| words[rng.below(words.len())]).collect();
            let extra = match (i + line) % 9 {
                0 => " in 1999".to_string(),
                1 => " see https://example.org".into(),
                2 => format!(" code {}", 100 + rng.below(900)),
                3 => " use --verbose".into(),
                4 => "\ndef helper(x):".into(),
                _ => String::new(),
            };
            text.push_str(&format!("{} {}{extra}\n", lang, w.join(" ")));
        }
        out.push_str(
            &serde_json::json!({"text": text, "source": source, "lang": lang,
                "name": format!("doc{i}")})
            .to_string(),
        );
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a benchmark script");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed\n--- stdout\n{so}\n--- stderr\n{se}"
    );
    so
}

#[test]
fn benchmark_on_a_small_random_gemma3_is_recomputed_by_numpy() {
    let (Some(py), Some(fx)) = (python(), gemma_fixtures()) else {
        return;
    };
    let model = fx.join("gemma3");
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path();
    let bench = bench_dir();
    let exe = env!("CARGO_BIN_EXE_exemplar");
    let hook = "blocks.2.hook_resid_post";
    tiny_corpus(&w.join("corpus.jsonl"), 420);
    let script = |name: &str| bench.join(name);
    run_ok(
        Command::new(&py)
            .arg(script("split_corpus.py"))
            .args([
                "corpus.jsonl",
                ".",
                "--heldout",
                "140",
                "--shard-docs",
                "70",
            ])
            .current_dir(w),
    );
    let env = |c: &mut Command| {
        c.env("EXEMPLAR_BIN", exe)
            .env("EXEMPLAR_GEMMA3_270M", &model)
            .env("HOOK", hook)
            .env("CTX", "32")
            .env("CI", "1")
            .current_dir(w);
    };
    // The harvest stops at the shard that reaches the target, and resumes past finished shards.
    let rows_of = |line: &str| -> u64 {
        serde_json::from_str::<Value>(line).unwrap()["rows"]
            .as_u64()
            .unwrap()
    };
    let mut c = Command::new("bash");
    c.arg(script("harvest.sh")).args([".", "1"]);
    env(&mut c);
    run_ok(&mut c);
    let timings = std::fs::read_to_string(w.join("harvest/timings.jsonl")).unwrap();
    assert_eq!(timings.lines().count(), 1, "one shard reaches 1 row");
    let first = rows_of(timings.lines().next().unwrap());
    let mut c = Command::new("bash");
    c.arg(script("harvest.sh"))
        .args([".", &(first + 1).to_string()]);
    env(&mut c);
    let log = c.output().unwrap();
    assert!(
        log.status.success(),
        "{}",
        String::from_utf8_lossy(&log.stderr)
    );
    assert_mentions(
        &String::from_utf8_lossy(&log.stderr),
        &["skip shard-00.safetensors (done)"],
    );
    let timings = std::fs::read_to_string(w.join("harvest/timings.jsonl")).unwrap();
    assert_eq!(
        timings.lines().count(),
        2,
        "the second harvest added one shard"
    );
    let total: u64 = timings.lines().map(rows_of).sum();
    assert!(total >= 4000, "{total} rows harvested");
    let mut c = Command::new(&py);
    c.arg(script("make_labelled.py"))
        .args([".", "--max-tokens", "48", "--segments", "3"])
        .env("EXEMPLAR_GEMMA3_270M", &model)
        .current_dir(w);
    run_ok(&mut c);
    exemplar(
        w,
        &[
            "activations",
            "--model",
            model.to_str().unwrap(),
            "--hook",
            hook,
            "--corpus",
            "segments.jsonl",
            "--ctx",
            "48",
            "-o",
            "heldout.safetensors",
        ],
    )
    .ok();
    let bench_args = [
        "--budgets",
        "2000,4000",
        "--percentiles",
        "5,20",
        "--sae",
        "64:4,128:8",
        "--sae-epochs",
        "50",
        "--eval-rows",
        "1000",
        "--compare-rows",
        "1000",
        "--ep-batch",
        "1024",
        "--sae-batch",
        "256",
        "--folds",
        "2",
        "--c-grid",
        "1",
    ];
    let mut c = Command::new(&py);
    c.arg(script("run_benchmark.py"))
        .arg("run")
        .arg(".")
        .args(bench_args);
    env(&mut c);
    run_ok(&mut c);
    // A budget larger than the harvest: a clear error, nothing written before lost.
    let before = common::listing(&w.join("runs"));
    let mut c = Command::new(&py);
    c.arg(script("run_benchmark.py"))
        .args(["run", ".", "--budgets", "2000,99999999"]);
    env(&mut c);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert_mentions(
        &String::from_utf8_lossy(&out.stderr),
        &["budget 99999999", "larger than the harvest", "harvest.sh"],
    );
    assert_eq!(common::listing(&w.join("runs")), before);
    // No model directory (its config sets the forward FLOPs): a clear error, not a traceback.
    for (s, args) in [
        ("run_benchmark.py", &["report", ".", "out"][..]),
        ("recompute.py", &[".", "report.json"][..]),
    ] {
        let mut c = Command::new(&py);
        c.arg(script(s)).args(args);
        env(&mut c);
        c.env_remove("EXEMPLAR_GEMMA3_270M");
        let out = c.output().unwrap();
        assert!(
            !out.status.success(),
            "{s} without a model directory succeeded"
        );
        assert_mentions(
            &String::from_utf8_lossy(&out.stderr),
            &["model directory", "--model", "EXEMPLAR_GEMMA3_270M"],
        );
    }
    // A rerun finds everything done.
    let mut c = Command::new(&py);
    c.arg(script("run_benchmark.py"))
        .arg("run")
        .arg(".")
        .args(bench_args);
    env(&mut c);
    let t0 = std::time::Instant::now();
    run_ok(&mut c);
    assert!(t0.elapsed().as_secs_f64() < 30.0);
    assert_eq!(common::listing(&w.join("runs")), before);
    let mut c = Command::new(&py);
    c.arg(script("run_benchmark.py")).args([
        "report",
        ".",
        "out",
        "--grid-budgets",
        "2000,4000,8000",
        "--grid-percentiles",
        "5,20",
        "--grid-sae",
        "64:4,128:8",
        "--model",
        model.to_str().unwrap(),
    ]);
    env(&mut c);
    run_ok(&mut c);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(w.join("out/report.json")).unwrap()).unwrap();
    let builds = report["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 8, "2 budgets × (2 EP + 2 SAE)");
    assert_eq!(
        report["not_run"].as_array().unwrap().len(),
        4,
        "8000: not run"
    );
    assert_eq!(report["correspondence"].as_array().unwrap().len(), 8);
    for b in builds {
        assert_eq!(
            b["detection"].as_array().unwrap().len(),
            15,
            "{}",
            b["name"]
        );
        assert!(!b["probes"].as_object().unwrap().is_empty());
        // EP and SAEs both report a held-out FVU, on the same first rows.
        let fvu = b["heldout_fvu"].as_f64().unwrap();
        assert!(fvu > 0.0 && fvu < 1.5, "{}: FVU {fvu}", b["name"]);
        assert_eq!(b["heldout_rows"], 1000, "{}", b["name"]);
    }
    assert!(w.join("out/quality_vs_build_flops.png").exists());
    let out = run_ok(
        Command::new(&py)
            .arg(script("recompute.py"))
            .args([".", "out/report.json", "--model", model.to_str().unwrap()])
            .env("CTX", "32")
            .current_dir(w),
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["checks"].as_u64().unwrap() > 8 * 30, "{v}");
    assert_eq!(v["failures"], serde_json::json!([]));
    // The recomputation can fail: a changed number in the report is caught.
    let mut bad = report.clone();
    bad["builds"][0]["detection"][0]["auroc"] = serde_json::json!(0.123);
    assert_eq!(bad["builds"][0]["kind"], "ep");
    let fvu = bad["builds"][0]["heldout_fvu"].as_f64().unwrap();
    bad["builds"][0]["heldout_fvu"] = serde_json::json!(fvu * 1.05);
    std::fs::write(w.join("bad.json"), bad.to_string()).unwrap();
    let out = Command::new(&py)
        .arg(script("recompute.py"))
        .args([".", "bad.json", "--model", model.to_str().unwrap()])
        .env("CTX", "32")
        .current_dir(w)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_mentions(
        &String::from_utf8_lossy(&out.stdout),
        &["concept 0 AUROC", "held-out FVU (nearest exemplar)"],
    );
}
