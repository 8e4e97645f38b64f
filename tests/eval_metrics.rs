//! Probes, concept detection and the OOD signal: every metric against scikit-learn / numpy run
//! from the project's venv (`EXEMPLAR_PYTHON`; skipped with a message without it, a failure with
//! `EXEMPLAR_REQUIRE_PYTHON=1`), hand-computed cases, end-to-end runs of `exemplar probe`,
//! `detect` and `ood` on the embedded demo data (and, with feature `torch`, on the small random
//! Gemma-2 fixture in text mode), and clear errors for bad inputs.

mod common;

use common::*;
use exemplar::build::{BuildConfig, Builder};
use exemplar::data::ActivationBatch;
use exemplar::dictionary::Basis;
use exemplar::eval::detect::{self, Category, ConceptRow, TextField};
use exemplar::eval::documents::{read_labeled_jsonl, DocumentActivations};
use exemplar::eval::metrics::{
    classification_report, hard_negative_accuracy, roc_auc, youden_threshold,
};
use exemplar::eval::probe::{
    self, fit_logistic, fit_logistic_sparse, stratified_folds, stratified_split, SparseRows,
    Standardizer,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

/// Runs `script` with `input` as JSON in `sys.argv[1]`; returns its stdout parsed as JSON.
fn run_python_json(py: &Path, script: &str, input: &Value) -> Value {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("input.json");
    std::fs::write(&path, serde_json::to_vec(input).unwrap()).unwrap();
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("python output is not JSON ({e}): {stdout}"))
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const DEMO: &str = "data/demo/minilm-l6-layer3.safetensors";

#[test]
fn auroc_and_f1_match_sklearn_on_inputs_with_ties() {
    let Some(py) = python() else { return };
    let mut rng = Rng::new(11);
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for case in 0..25 {
        let n = 5 + rng.below(60);
        // Scores on a coarse grid (many ties), labels with at least one of each class.
        let scores: Vec<f64> = (0..n).map(|_| rng.below(7) as f64 / 2.0 - 1.0).collect();
        let mut labels: Vec<bool> = (0..n).map(|_| rng.uniform() < 0.4).collect();
        labels[0] = true;
        labels[1] = false;
        // Multiclass: 4 classes; class 3 only ever predicted (zero-division case) in odd cases.
        let truth: Vec<usize> = (0..n).map(|_| rng.below(3)).collect();
        let pred: Vec<usize> = (0..n)
            .map(|i| {
                if case % 2 == 1 && i % 7 == 0 {
                    3
                } else if rng.uniform() < 0.6 {
                    truth[i]
                } else {
                    rng.below(3)
                }
            })
            .collect();
        let r = classification_report(&truth, &pred).unwrap();
        ours.push((
            roc_auc(&scores, &labels).unwrap(),
            r.accuracy,
            r.macro_f1,
            r.per_class
                .iter()
                .map(|m| (m.precision, m.recall, m.f1))
                .collect::<Vec<_>>(),
        ));
        cases.push(json!({"scores": scores, "labels": labels, "truth": truth, "pred": pred}));
    }
    let script = r#"
import json, sys
from sklearn.metrics import roc_auc_score, accuracy_score, f1_score, precision_recall_fscore_support
out = []
for c in json.load(open(sys.argv[1])):
    p, r, f, _ = precision_recall_fscore_support(c["truth"], c["pred"], zero_division=0)
    out.append({"auc": roc_auc_score(c["labels"], c["scores"]),
                "acc": accuracy_score(c["truth"], c["pred"]),
                "macro_f1": f1_score(c["truth"], c["pred"], average="macro", zero_division=0),
                "p": p.tolist(), "r": r.tolist(), "f": f.tolist()})
print(json.dumps(out))
"#;
    let theirs = run_python_json(&py, script, &json!(cases));
    for (i, (o, t)) in ours.iter().zip(theirs.as_array().unwrap()).enumerate() {
        assert!(
            (o.0 - t["auc"].as_f64().unwrap()).abs() < 1e-12,
            "case {i}: auc {} vs {}",
            o.0,
            t["auc"]
        );
        assert!((o.1 - t["acc"].as_f64().unwrap()).abs() < 1e-12, "case {i}");
        assert!(
            (o.2 - t["macro_f1"].as_f64().unwrap()).abs() < 1e-12,
            "case {i}: macro-F1 {} vs {}",
            o.2,
            t["macro_f1"]
        );
        let (p, r, f) = (f64s(&t["p"]), f64s(&t["r"]), f64s(&t["f"]));
        assert_eq!(o.3.len(), p.len(), "case {i}: classes");
        for (j, m) in o.3.iter().enumerate() {
            assert!(
                (m.0 - p[j]).abs() < 1e-12
                    && (m.1 - r[j]).abs() < 1e-12
                    && (m.2 - f[j]).abs() < 1e-12,
                "case {i} class {j}"
            );
        }
    }
}

#[test]
fn youden_and_hard_negative_accuracy_match_sklearn_roc_curve() {
    let Some(py) = python() else { return };
    let mut rng = Rng::new(21);
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..25 {
        let grid = |rng: &mut Rng, n: usize, shift: f64| -> Vec<f64> {
            (0..n)
                .map(|_| (rng.below(9) as f64 + shift).round() / 4.0)
                .collect()
        };
        let n = 3 + rng.below(20);
        let pos = grid(&mut rng, n, 2.0);
        let n = 3 + rng.below(20);
        let neg = grid(&mut rng, n, 0.0);
        let n = 1 + rng.below(10);
        let hard = grid(&mut rng, n, 1.0);
        let scores: Vec<f64> = pos.iter().chain(&neg).copied().collect();
        let labels: Vec<bool> = (0..scores.len()).map(|i| i < pos.len()).collect();
        let (t, j) = youden_threshold(&scores, &labels).unwrap();
        ours.push((t, j, hard_negative_accuracy(&pos, &neg, &hard).unwrap()));
        cases.push(json!({"pos": pos, "neg": neg, "hard": hard}));
    }
    // AxBench's HardNegativeEvaluator, written out with scikit-learn's roc_curve.
    let script = r#"
import json, sys
import numpy as np
from sklearn.metrics import roc_curve
out = []
for c in json.load(open(sys.argv[1])):
    pos, neg, hard = map(np.array, (c["pos"], c["neg"], c["hard"]))
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    fpr, tpr, thr = roc_curve(y, np.r_[pos, neg], drop_intermediate=False)
    i = int(np.argmax(tpr - fpr))
    t = thr[i]
    out.append({"t": float(t), "j": float(tpr[i] - fpr[i]),
                "hn": float(((pos >= t).mean() + (hard < t).mean()) / 2)})
print(json.dumps(out))
"#;
    let theirs = run_python_json(&py, script, &json!(cases));
    for (i, (o, t)) in ours.iter().zip(theirs.as_array().unwrap()).enumerate() {
        assert!(
            (o.1 - t["j"].as_f64().unwrap()).abs() < 1e-12,
            "case {i}: J"
        );
        if o.1 > 0.0 {
            assert_eq!(o.0, t["t"].as_f64().unwrap(), "case {i}: threshold");
            assert!(
                (o.2 - t["hn"].as_f64().unwrap()).abs() < 1e-12,
                "case {i}: hard-negative accuracy"
            );
        }
    }
}

/// Gaussian blobs around `classes` random means; features (n × d) and labels.
fn blobs(n: usize, d: usize, classes: usize, spread: f64, seed: u64) -> (Vec<f64>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let means: Vec<f64> = (0..classes * d).map(|_| rng.normal()).collect();
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..n {
        let c = i % classes;
        y.push(c);
        for j in 0..d {
            x.push(means[c * d + j] + spread * rng.normal() + 0.5 * j as f64);
        }
    }
    (x, y)
}

#[test]
fn logistic_regression_matches_sklearn() {
    let Some(py) = python() else { return };
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for (classes, c, seed) in [
        (2, 0.1, 1),
        (2, 10.0, 2),
        (3, 1.0, 3),
        (4, 0.05, 4),
        (3, 100.0, 5),
    ] {
        let (n, d) = (60, 5);
        let (x, y) = blobs(n, d, classes, 1.2, seed);
        let m = fit_logistic(&x, d, &y, classes, c).unwrap();
        assert!(m.converged, "C = {c}: {} iterations", m.iterations);
        ours.push((m.predict(&x), m.coef.clone(), m.intercept.clone()));
        cases.push(json!({"x": x, "y": y, "d": d, "C": c}));
    }
    let script = r#"
import json, sys
import numpy as np
from sklearn.linear_model import LogisticRegression
out = []
for c in json.load(open(sys.argv[1])):
    x = np.array(c["x"]).reshape(-1, c["d"])
    m = LogisticRegression(C=c["C"], tol=1e-12, max_iter=100000).fit(x, c["y"])
    out.append({"pred": m.predict(x).tolist(), "coef": m.coef_.ravel().tolist(),
                "intercept": m.intercept_.tolist()})
print(json.dumps(out))
"#;
    let theirs = run_python_json(&py, script, &json!(cases));
    for (i, (o, t)) in ours.iter().zip(theirs.as_array().unwrap()).enumerate() {
        let pred: Vec<usize> = t["pred"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(o.0, pred, "case {i}: predicted classes");
        let (coef, icpt) = (f64s(&t["coef"]), f64s(&t["intercept"]));
        let scale = coef.iter().chain(&icpt).fold(0.0f64, |a, v| a.max(v.abs()));
        let worst =
            o.1.iter()
                .zip(&coef)
                .chain(o.2.iter().zip(&icpt))
                .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
        eprintln!(
            "case {i}: max |coef − sklearn| / max |coef| = {:.2e}",
            worst / scale
        );
        for (a, b) in o.1.iter().zip(&coef).chain(o.2.iter().zip(&icpt)) {
            assert!(
                (a - b).abs() <= 1e-5 * scale,
                "case {i}: coefficient {a} vs sklearn {b} (scale {scale})"
            );
        }
        assert_eq!(o.1.len(), coef.len(), "case {i}: coefficient shape");
    }
}

/// scikit-learn's standardise-then-logistic-regression pipeline with C chosen by grid search
/// over the given folds: the best C, each C's mean CV accuracy, test accuracy and macro-F1.
const SKLEARN_GRID_SEARCH: &str = r#"
import json, sys
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.metrics import accuracy_score, f1_score
c = json.load(open(sys.argv[1]))
d = c["d"]
x = np.array(c["x"]).reshape(-1, d); y = np.array(c["y"])
tr, te = c["train"], c["test"]
pipe = make_pipeline(StandardScaler(), LogisticRegression(tol=1e-12, max_iter=100000))
g = GridSearchCV(pipe, {"logisticregression__C": c["grid"]}, cv=PredefinedSplit(c["fold"]),
                 scoring="accuracy").fit(x[tr], y[tr])
pred = g.best_estimator_.predict(x[te])
print(json.dumps({"best": g.best_params_["logisticregression__C"],
                  "scores": g.cv_results_["mean_test_score"].tolist(),
                  "acc": accuracy_score(y[te], pred),
                  "f1": f1_score(y[te], pred, average="macro", zero_division=0)}))
"#;

#[test]
fn cross_validated_c_and_probe_match_sklearn() {
    let Some(py) = python() else { return };
    let (d, classes) = (6, 3);
    let (x, y) = blobs(90, d, classes, 2.5, 9);
    let grid = [0.01, 0.1, 1.0, 10.0, 100.0];
    let (train, test) = stratified_split(&y, classes, 0.2, 7).unwrap();
    // Every class keeps its share in the test split: 30 per class → 6 in test.
    for c in 0..classes {
        assert_eq!(test.iter().filter(|&&i| y[i] == c).count(), 6);
    }
    let take = |idx: &[usize]| -> Vec<f64> {
        idx.iter()
            .flat_map(|&i| x[i * d..(i + 1) * d].to_vec())
            .collect()
    };
    let (xtr, ytr): (Vec<f64>, Vec<usize>) = (take(&train), train.iter().map(|&i| y[i]).collect());
    let fold = stratified_folds(&ytr, classes, 5, 7).unwrap();
    let (best, scores) = probe::cross_validate(&xtr, d, &ytr, classes, &fold, &grid).unwrap();
    let result = probe::run_probe(
        &x,
        d,
        &y,
        classes,
        &probe::ProbeOptions {
            seed: 7,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        result.chosen_c, best,
        "run_probe uses the same split and folds"
    );
    let t = run_python_json(
        &py,
        SKLEARN_GRID_SEARCH,
        &json!({"x": x, "y": y, "d": d, "train": train, "test": test, "fold": fold, "grid": grid}),
    );
    for (s, theirs) in scores.iter().zip(f64s(&t["scores"])) {
        assert!(
            (s.mean_accuracy - theirs).abs() < 1e-12,
            "C = {}: CV accuracy {} vs {theirs}",
            s.c,
            s.mean_accuracy
        );
    }
    assert_eq!(best, t["best"].as_f64().unwrap(), "chosen C");
    assert!((result.test.accuracy - t["acc"].as_f64().unwrap()).abs() < 1e-12);
    assert!((result.test.macro_f1 - t["f1"].as_f64().unwrap()).abs() < 1e-12);
    // The standardiser is fitted on the training rows only.
    let st = Standardizer::fit(&xtr, d);
    let z = st.apply(&xtr);
    for j in 0..d {
        let col: Vec<f64> = z.chunks(d).map(|r| r[j]).collect();
        let mean = col.iter().sum::<f64>() / col.len() as f64;
        let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / col.len() as f64;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-9);
    }
}

/// Binary document-like features (`n × d`): a few columns per row, drawn more often for a
/// class's own block of columns; columns from `d / 2` on are never set, and the last is always
/// set (constant columns, as pooled codes have).
fn sparse_binary(n: usize, d: usize, classes: usize, seed: u64) -> (Vec<f64>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let live = d / 2;
    let mut x = vec![0.0; n * d];
    let mut y = Vec::new();
    for i in 0..n {
        let c = i % classes;
        y.push(c);
        for _ in 0..6 {
            let j = if rng.uniform() < 0.6 {
                c * (live / classes) + rng.below(live / classes)
            } else {
                rng.below(live)
            };
            x[i * d + j] = 1.0;
        }
        x[i * d + d - 1] = 1.0;
    }
    (x, y)
}

#[test]
fn sparse_fit_equals_dense_fit() {
    for (classes, c, seed) in [(2, 0.1, 11), (2, 10.0, 12), (3, 1.0, 13), (4, 100.0, 14)] {
        let (n, d) = (160, 120);
        let (x, y) = sparse_binary(n, d, classes, seed);
        let (xtr, ytr, xte) = (&x[..120 * d], &y[..120], &x[120 * d..]);
        let st = Standardizer::fit(xtr, d);
        let dense = fit_logistic(&st.apply(xtr), d, ytr, classes, c).unwrap();
        let rows = SparseRows::from_dense(xtr, d);
        assert_eq!(rows.n_rows(), 120);
        assert!(rows.nnz() <= 120 * 7, "{} nonzeros", rows.nnz());
        let st_sparse = Standardizer::fit_sparse(&rows);
        for j in 0..d {
            assert!((st.mean[j] - st_sparse.mean[j]).abs() <= 1e-15, "mean {j}");
            assert!(
                (st.scale[j] - st_sparse.scale[j]).abs() <= 1e-12 * st.scale[j],
                "scale {j}: {} vs {}",
                st.scale[j],
                st_sparse.scale[j]
            );
        }
        let sparse = fit_logistic_sparse(&rows, &st_sparse, ytr, classes, c).unwrap();
        assert!(dense.converged && sparse.converged, "C = {c}");
        let scale = dense
            .coef
            .iter()
            .chain(&dense.intercept)
            .fold(0.0f64, |a, v| a.max(v.abs()));
        let worst = dense
            .coef
            .iter()
            .zip(&sparse.coef)
            .chain(dense.intercept.iter().zip(&sparse.intercept))
            .fold(0.0f64, |a, (p, q)| a.max((p - q).abs()));
        eprintln!(
            "{classes} classes, C = {c}: max |sparse − dense| / max |coef| = {:.1e}",
            worst / scale
        );
        assert!(
            worst <= 1e-6 * scale,
            "coefficients differ by {worst} (scale {scale})"
        );
        // Never-set and always-set columns get exactly zero weight in the sparse fit.
        for k in 0..dense.coef.len() / d {
            assert_eq!(sparse.coef[k * d + d - 1], 0.0);
            assert!(sparse.coef[k * d + d / 2..k * d + d - 1]
                .iter()
                .all(|w| *w == 0.0));
        }
        let pred_dense = dense.predict(&st.apply(xte));
        let pred_sparse = sparse
            .predict_sparse(&SparseRows::from_dense(xte, d), &st_sparse)
            .unwrap();
        assert_eq!(pred_dense, pred_sparse, "{classes} classes, C = {c}");
        assert_eq!(pred_dense.len(), 40);
    }
    // Mismatched shapes are errors, not panics.
    let (x, y) = sparse_binary(20, 10, 2, 1);
    let rows = SparseRows::from_dense(&x, 10);
    let st = Standardizer::fit_sparse(&rows);
    assert!(fit_logistic_sparse(&rows, &st, &y[..19], 2, 1.0).is_err());
    let narrow = Standardizer::fit(&x[..9], 9);
    assert!(fit_logistic_sparse(&rows, &narrow, &y, 2, 1.0).is_err());
    // No features at all is an error, not a panic.
    let empty = SparseRows::from_dense(&[], 0);
    assert!(fit_logistic_sparse(&empty, &Standardizer::fit(&[], 0), &[], 2, 1.0).is_err());
    assert!(fit_logistic(&[], 0, &[0, 1], 2, 1.0).is_err());
    // A label outside the classes is an error, not a panic.
    let mut bad = y.clone();
    bad[3] = 2;
    assert!(fit_logistic_sparse(&rows, &st, &bad, 2, 1.0).is_err());
    assert!(probe::run_probe(&x, 10, &bad, 2, &probe::ProbeOptions::default()).is_err());
    let m = fit_logistic_sparse(&rows, &st, &y, 2, 1.0).unwrap();
    assert!(m
        .predict_sparse(&SparseRows::from_dense(&x[..18], 9), &st)
        .is_err());
}

#[test]
fn sparse_probe_matches_sklearn() {
    let Some(py) = python() else { return };
    let (d, classes) = (90, 3);
    let (x, y) = sparse_binary(150, d, classes, 21);
    let grid = [0.01, 0.1, 1.0, 10.0];
    let options = probe::ProbeOptions {
        seed: 3,
        c_grid: grid.to_vec(),
        folds: 4,
        ..Default::default()
    };
    let result = probe::run_probe(&x, d, &y, classes, &options).unwrap();
    assert!(
        result.sparse,
        "{} nonzero values of {}",
        x.iter().filter(|v| **v != 0.0).count(),
        x.len()
    );
    let (train, test) = stratified_split(&y, classes, 0.2, 3).unwrap();
    let ytr: Vec<usize> = train.iter().map(|&i| y[i]).collect();
    let fold = stratified_folds(&ytr, classes, 4, 3).unwrap();
    let t = run_python_json(
        &py,
        SKLEARN_GRID_SEARCH,
        &json!({"x": x, "y": y, "d": d, "train": train, "test": test, "fold": fold, "grid": grid}),
    );
    for (s, theirs) in result.cv.iter().zip(f64s(&t["scores"])) {
        assert!(
            (s.mean_accuracy - theirs).abs() < 1e-12,
            "C = {}: CV accuracy {} vs scikit-learn {theirs}",
            s.c,
            s.mean_accuracy
        );
    }
    assert_eq!(result.chosen_c, t["best"].as_f64().unwrap(), "chosen C");
    assert!((result.test.accuracy - t["acc"].as_f64().unwrap()).abs() < 1e-12);
    assert!((result.test.macro_f1 - t["f1"].as_f64().unwrap()).abs() < 1e-12);
    // Raw-activation-like dense features take the dense path.
    let (xd, yd) = blobs(60, 4, 2, 1.0, 5);
    assert!(!probe::run_probe(&xd, 4, &yd, 2, &options).unwrap().sparse);
}

/// A dictionary whose exemplars are e0, e1, e2 (D = 3) around `center`.
fn axis_dictionary(center: [f32; 3]) -> exemplar::Dictionary {
    let mut b = Builder::new(
        center.to_vec(),
        0.5,
        BuildConfig {
            saturation_window: None,
            ..BuildConfig::default()
        },
    )
    .unwrap();
    let mut rows = Vec::new();
    for k in 0..3 {
        let mut r = center;
        r[k] += 1.0;
        rows.extend(r);
    }
    b.add_batch(&ActivationBatch::from_rows(rows, 3, 0))
        .unwrap();
    let dict = b.finish(1).dictionary;
    assert_eq!(dict.len(), 3);
    for k in 0..3 {
        assert!((dict.exemplar(k)[k] - 1.0).abs() < 1e-6);
    }
    dict
}

fn row(concept_id: i64, category: Category, doc_id: i64, eval: bool) -> ConceptRow {
    ConceptRow {
        line: doc_id as usize + 1,
        concept_id,
        concept: Some("axis zero".into()),
        category,
        text: None,
        doc_id,
        eval: Some(eval),
    }
}

#[test]
fn detection_contrast_and_both_scorings_by_hand() {
    let c = [1.0f32, 0.0, 0.0];
    let dict = axis_dictionary(c);
    let at = |v: [f32; 3]| -> Vec<f32> { v.iter().zip(c).map(|(a, b)| a + b).collect() };
    let mut docs = std::collections::BTreeMap::new();
    // Train positive: two tokens, directions (2,1,0)/√5 and (1,0,0); train negative (0,1,1)/√2.
    docs.insert(0, [at([2.0, 1.0, 0.0]), at([1.0, 0.0, 0.0])].concat());
    docs.insert(1, at([0.0, 1.0, 1.0]));
    // Eval: a short positive aligned with e0, a long negative at 45°, a hard negative mostly e2,
    // and a shared negative (concept_id −1).
    docs.insert(2, at([0.5, 0.05, 0.0]));
    docs.insert(3, at([10.0, 10.0, 0.0]));
    docs.insert(4, at([0.2, 0.0, 1.0]));
    docs.insert(5, [at([0.0, 0.0, 3.0]), at([0.0, -1.0, 0.0])].concat());
    let docs = DocumentActivations { dim: 3, docs };
    let rows = vec![
        row(0, Category::Positive, 0, false),
        row(0, Category::Negative, 1, false),
        row(0, Category::Positive, 2, true),
        row(0, Category::Negative, 3, true),
        row(0, Category::HardNegative, 4, true),
        row(-1, Category::Negative, 5, true),
    ];
    let r = detect::detect_concepts(&dict, &rows, &docs, Basis::Exemplar).unwrap();
    let cr = &r.concepts[0];
    // contrast_0 = mean(2/√5, 1) − 0 = 0.9472; contrast_1 = (1/√5)/2 − 1/√2 < 0; contrast_2 < 0.
    assert_eq!(cr.region, 0);
    let expected = (2.0 / 5f64.sqrt() + 1.0) / 2.0;
    assert!((cr.contrast - expected).abs() < 1e-6, "{}", cr.contrast);
    assert_eq!(
        (
            cr.train_positive,
            cr.train_negative,
            cr.eval_positive,
            cr.eval_negative,
            cr.eval_hard_negative
        ),
        (1, 1, 1, 2, 1)
    );
    // Reference scores ⟨x, e0⟩ (uncentered): pos 1.5, neg 11 and max(1, 1) = 1, hard 1.2 →
    // the positive beats 2 of 3 → AUROC 2/3. Cosine: pos ≈ 0.995, neg 0.707 and 0, hard 0.196 → 1.
    assert!(
        (cr.auroc_reference - 2.0 / 3.0).abs() < 1e-12,
        "{}",
        cr.auroc_reference
    );
    assert!((cr.auroc_cosine - 1.0).abs() < 1e-12);
    // Hard-negative accuracy. Reference: Youden on pos {1.5} vs neg {11, 1}: t = 1.5 (J = 0.5),
    // positive right, hard 1.2 < 1.5 right → 1. Cosine: t = 0.995 → 1.
    assert_eq!(cr.hard_negative_accuracy_reference, Some(1.0));
    assert_eq!(cr.hard_negative_accuracy_cosine, Some(1.0));
    assert!((r.mean_auroc_reference - 2.0 / 3.0).abs() < 1e-12);
    // A concept without eval positives is an error naming it.
    let e = detect::detect_concepts(&dict, &rows[..2], &docs, Basis::Exemplar)
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["concept 0", "positive eval"]);
}

#[test]
fn seeded_split_per_concept_and_category() {
    let mut rows: Vec<ConceptRow> = (0..20)
        .map(|i| ConceptRow {
            eval: None,
            ..row(
                i % 2,
                if i % 4 < 2 {
                    Category::Positive
                } else {
                    Category::Negative
                },
                i,
                false,
            )
        })
        .collect();
    detect::assign_split(&mut rows, 0.4, 3).unwrap();
    // Each (concept, category) group has 5 rows → round(5 · 0.4) = 2 eval rows.
    for cid in 0..2 {
        for cat in [Category::Positive, Category::Negative] {
            let g: Vec<_> = rows
                .iter()
                .filter(|r| r.concept_id == cid && r.category == cat)
                .collect();
            assert_eq!(g.iter().filter(|r| r.eval == Some(true)).count(), 2);
        }
    }
}

/// Builds a dictionary on the demo data into `dir/dict.safetensors`.
fn demo_dictionary(dir: &Path) -> PathBuf {
    let demo = repo().join(DEMO);
    exemplar(
        dir,
        &[
            "build",
            "--device",
            "cpu",
            "-a",
            demo.to_str().unwrap(),
            "-p",
            "5",
            "--batch-size",
            "512",
            "-o",
            "dict.safetensors",
        ],
    )
    .ok();
    dir.join("dict.safetensors")
}

#[test]
fn demo_end_to_end_probe_detect_ood() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    demo_dictionary(d);
    let demo = repo().join(DEMO);
    let demo = demo.to_str().unwrap();
    let labels = repo().join("data/demo/labels.jsonl");
    let concepts = repo().join("data/demo/concepts.jsonl");
    // probe: a table, then JSON to a file.
    let run = exemplar(
        d,
        &[
            "probe",
            "-a",
            demo,
            "--labels",
            labels.to_str().unwrap(),
            "-d",
            "dict.safetensors",
        ],
    )
    .ok();
    assert_mentions(
        &run.stdout,
        &[
            "raw",
            "ep-onehot",
            "ep-topk",
            "macro-f1",
            "ep one-hot accuracy / raw accuracy",
        ],
    );
    exemplar(
        d,
        &[
            "probe",
            "-a",
            demo,
            "--labels",
            labels.to_str().unwrap(),
            "-d",
            "dict.safetensors",
            "-o",
            "probe.json",
        ],
    )
    .ok();
    let p: Value = serde_json::from_slice(&std::fs::read(d.join("probe.json")).unwrap()).unwrap();
    let res = p["results"].as_array().unwrap();
    assert_eq!(res.len(), 3);
    assert_eq!(p["classes"], json!(["docstring", "reference"]));
    for r in res {
        let acc = r["accuracy"].as_f64().unwrap();
        assert!(acc > 0.5 && acc <= 1.0, "{r}");
        assert_eq!(
            r["n_train"].as_u64().unwrap() + r["n_test"].as_u64().unwrap(),
            79
        );
        assert!([0.01, 0.1, 1.0, 10.0, 100.0].contains(&r["chosen_c"].as_f64().unwrap()));
        assert_eq!(r["converged"], true, "{r}");
    }
    let ratio = p["ep_onehot_over_raw_accuracy"].as_f64().unwrap();
    assert!(
        (ratio - res[1]["accuracy"].as_f64().unwrap() / res[0]["accuracy"].as_f64().unwrap()).abs()
            < 1e-12
    );
    // The report is not overwritten without --force.
    let e = exemplar(
        d,
        &[
            "probe",
            "-a",
            demo,
            "--labels",
            labels.to_str().unwrap(),
            "-d",
            "dict.safetensors",
            "-o",
            "probe.json",
        ],
    )
    .err();
    assert_mentions(&e, &["probe.json", "--force"]);
    // SAE features: the dictionary's own SAE view (top-8, exemplar basis) saved as SAELens.
    let dict = load_dict(&d.join("dict.safetensors"));
    exemplar::sae::Sae::from_dictionary(&dict, Basis::Exemplar, 8)
        .unwrap()
        .save_saelens(&d.join("sae"), false)
        .unwrap();
    let run = exemplar(
        d,
        &[
            "probe",
            "-a",
            demo,
            "--labels",
            labels.to_str().unwrap(),
            "-d",
            "dict.safetensors",
            "--sae",
            "sae",
            "--features",
            "ep-topk,sae",
            "--json",
        ],
    )
    .ok();
    let s: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(s["results"][1]["features"], "sae");
    assert_eq!(
        s["results"][1]["width"].as_u64().unwrap() as usize,
        dict.len()
    );
    assert!(s["ep_onehot_over_raw_accuracy"].is_null());
    // detect.
    let run = exemplar(
        d,
        &[
            "detect",
            "-a",
            demo,
            "--concepts",
            concepts.to_str().unwrap(),
            "-d",
            "dict.safetensors",
            "--json",
        ],
    )
    .ok();
    let r: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(r["concepts"].as_array().unwrap().len(), 3);
    for c in r["concepts"].as_array().unwrap() {
        for key in ["auroc_reference", "auroc_cosine"] {
            let v = c[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{c}");
        }
        assert!(c["hard_negative_accuracy_cosine"].as_f64().is_some());
    }
    let table = exemplar(
        d,
        &[
            "detect",
            "-a",
            demo,
            "--concepts",
            concepts.to_str().unwrap(),
            "-d",
            "dict.safetensors",
            "--basis",
            "exemplar",
        ],
    )
    .ok()
    .stdout;
    assert_mentions(
        &table,
        &[
            "reference scoring",
            "cosine scoring",
            "uncentered",
            "mean auroc",
        ],
    );
    // ood: in-distribution demo vs Gaussian noise.
    let mut rng = Rng::new(5);
    let noise: Vec<f32> = (0..300 * 384).map(|_| rng.normal() as f32).collect();
    write_npy(&d.join("noise.npy"), &noise, 384);
    let run = exemplar(
        d,
        &[
            "ood",
            "-d",
            "dict.safetensors",
            "-a",
            demo,
            "--ood",
            "noise.npy",
            "--json",
        ],
    )
    .ok();
    let o: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(o["in_distribution"]["rows"], 4548);
    assert_eq!(o["out_of_distribution"][0]["rows"], 300);
    assert!(exemplar(
        d,
        &[
            "ood",
            "-d",
            "dict.safetensors",
            "-a",
            demo,
            "--ood",
            "noise.npy"
        ]
    )
    .ok()
    .stdout
    .contains("noise.npy"));
}

#[test]
fn document_features_pool_the_demo_tokens() {
    use exemplar::eval::documents::read_documents;
    use exemplar::eval::probe::{document_features, FeatureKind, Pooling};
    let dir = TempDir::new().unwrap();
    let dict = load_dict(&demo_dictionary(dir.path()));
    let docs = read_documents(&[repo().join(DEMO)], Default::default()).unwrap();
    assert_eq!(docs.docs.len(), 80);
    assert_eq!(
        docs.docs.values().map(|v| v.len() / 384).sum::<usize>(),
        4548
    );
    let ids: Vec<i64> = (0..80).collect();
    let k = dict.len();
    // Count pooling of the one-hot codes is the histogram of each document's nearest exemplars.
    let (x, w) = document_features(
        &docs,
        &ids,
        FeatureKind::EpOneHot,
        Pooling::Count(1),
        false,
        Some(&dict),
        None,
    )
    .unwrap();
    assert_eq!(w, k);
    let (xb, _) = document_features(
        &docs,
        &ids,
        FeatureKind::EpOneHot,
        Pooling::Count(1),
        true,
        Some(&dict),
        None,
    )
    .unwrap();
    for (i, &id) in ids.iter().enumerate() {
        let (nearest, _) = dict.assign(docs.get(id).unwrap()).unwrap();
        let hist = bincount(&nearest, k);
        let row = &x[i * k..(i + 1) * k];
        assert!(
            row.iter().zip(&hist).all(|(a, &b)| *a == b as f64),
            "document {id}"
        );
        let brow = &xb[i * k..(i + 1) * k];
        assert!(brow
            .iter()
            .zip(&hist)
            .all(|(a, &b)| *a == f64::from(u8::from(b > 0))));
    }
    // Last-token pooling of raw features is the document's last row.
    let (x, w) = document_features(
        &docs,
        &ids,
        FeatureKind::Raw,
        Pooling::Last,
        false,
        None,
        None,
    )
    .unwrap();
    assert_eq!(w, 384);
    let last = docs.get(79).unwrap();
    assert!(x[79 * 384..]
        .iter()
        .zip(&last[last.len() - 384..])
        .all(|(a, &b)| *a == b as f64));
}

#[test]
fn ood_distances_and_auroc_match_numpy_and_sklearn() {
    let Some(py) = python() else { return };
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    demo_dictionary(d);
    let demo = repo().join(DEMO);
    // OOD sets: Gaussian noise, and the demo rows with their sign flipped around the center.
    let mut rng = Rng::new(8);
    let noise: Vec<f32> = (0..200 * 384)
        .map(|_| (3.0 * rng.normal()) as f32)
        .collect();
    write_npy(&d.join("noise.npy"), &noise, 384);
    let run = exemplar(
        d,
        &[
            "ood",
            "-d",
            "dict.safetensors",
            "-a",
            demo.to_str().unwrap(),
            "--ood",
            "noise.npy",
            "-o",
            "ood.json",
        ],
    )
    .ok();
    assert!(run.stdout.contains("within"));
    let ours: Value = serde_json::from_slice(&std::fs::read(d.join("ood.json")).unwrap()).unwrap();
    let script = r#"
import json, sys
import numpy as np
from safetensors.numpy import load_file
from sklearn.metrics import roc_auc_score
c = json.load(open(sys.argv[1]))
t = load_file(c["dict"]); center, E = t["center"], t["exemplars"].astype(np.float64)
def dist(x):
    u = x.astype(np.float64) - center
    u /= np.linalg.norm(u, axis=1, keepdims=True) + 1e-12
    return np.clip(1.0 - (u @ E.T).max(axis=1), 0.0, 2.0)
x_in = load_file(c["demo"])["activations"].astype(np.float32)
x_out = np.load(c["noise"])
a, b = dist(x_in), dist(x_out)
theta = float(t["theta"]) if "theta" in t else None
def stats(v):
    return {"mean": v.mean(), "median": np.median(v), "p90": np.percentile(v, 90),
            "p99": np.percentile(v, 99), "min": v.min(), "max": v.max()}
print(json.dumps({"in": stats(a), "out": stats(b),
                  "auc": roc_auc_score(np.r_[np.ones(len(b)), np.zeros(len(a))], np.r_[b, a])}))
"#;
    let t = run_python_json(
        &py,
        script,
        &json!({"dict": d.join("dict.safetensors"), "demo": demo, "noise": d.join("noise.npy")}),
    );
    for (ours, theirs) in [
        (&ours["in_distribution"], &t["in"]),
        (&ours["out_of_distribution"][0], &t["out"]),
    ] {
        for key in ["mean", "median", "p90", "p99", "min", "max"] {
            let (a, b) = (ours[key].as_f64().unwrap(), theirs[key].as_f64().unwrap());
            assert!((a - b).abs() < 1e-4, "{key}: {a} vs numpy {b}");
        }
    }
    let auc = ours["out_of_distribution"][0]["auroc_vs_in_distribution"]
        .as_f64()
        .unwrap();
    assert!(
        (auc - t["auc"].as_f64().unwrap()).abs() < 1e-4,
        "AUROC {auc} vs sklearn {}",
        t["auc"]
    );
    // The within-θ rate is the fraction of distances ≤ θ (θ from the dictionary).
    let dict = load_dict(&d.join("dict.safetensors"));
    let rate = ours["in_distribution"]["within_threshold_rate"]
        .as_f64()
        .unwrap();
    assert!(
        rate > 0.99,
        "the dictionary covers its own training rows: {rate}"
    );
    assert!((ours["theta"].as_f64().unwrap() - dict.theta()).abs() < 1e-12);
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let w = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
    w(
        "bad_json.jsonl",
        "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \n",
    );
    let e = read_labeled_jsonl(&d.join("bad_json.jsonl"), true)
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["bad_json.jsonl", "line 2", "invalid json"]);
    w("no_label.jsonl", "{\"text\": \"a\"}\n");
    assert_mentions(
        &read_labeled_jsonl(&d.join("no_label.jsonl"), true)
            .unwrap_err()
            .to_string(),
        &["no_label.jsonl", "line 1", "missing \"label\""],
    );
    w(
        "empty_text.jsonl",
        "{\"text\": \"a\", \"label\": \"x\"}\n\n{\"text\": \"  \", \"label\": \"y\"}\n",
    );
    assert_mentions(
        &read_labeled_jsonl(&d.join("empty_text.jsonl"), true)
            .unwrap_err()
            .to_string(),
        &["line 3", "empty \"text\""],
    );
    // Integer labels and explicit doc_ids are read; a repeated doc_id is an error.
    w(
        "ok.jsonl",
        "{\"label\": 3, \"doc_id\": 7}\n{\"label\": \"b\"}\n",
    );
    let l = read_labeled_jsonl(&d.join("ok.jsonl"), false).unwrap();
    assert_eq!((l[0].label.as_str(), l[0].doc_id, l[1].doc_id), ("3", 7, 1));
    w(
        "dup.jsonl",
        "{\"label\": 3, \"doc_id\": 1}\n{\"label\": \"b\"}\n",
    );
    assert_mentions(
        &read_labeled_jsonl(&d.join("dup.jsonl"), false)
            .unwrap_err()
            .to_string(),
        &["line 2", "doc_id 1"],
    );
    w("concepts.jsonl", "{\"concept_id\": 0, \"concept\": \"x\", \"category\": \"positive\", \"output\": \"a\"}\n{\"concept_id\": 0, \"category\": \"sideways\", \"output\": \"b\"}\n");
    assert_mentions(
        &detect::read_concepts(&d.join("concepts.jsonl"), TextField::Output, true)
            .unwrap_err()
            .to_string(),
        &["concepts.jsonl", "line 2", "sideways"],
    );
    w(
        "concepts2.jsonl",
        "{\"concept_id\": 0, \"concept\": \"x\", \"category\": \"positive\", \"input\": \"q\"}\n",
    );
    assert_mentions(
        &detect::read_concepts(&d.join("concepts2.jsonl"), TextField::InputOutput, true)
            .unwrap_err()
            .to_string(),
        &["line 1", "missing \"output\""],
    );
    // CLI: a labels line naming a document the activations lack; a missing dictionary; one class.
    demo_dictionary(d);
    let demo = repo().join(DEMO);
    let demo = demo.to_str().unwrap();
    w(
        "far.jsonl",
        "{\"label\": \"a\"}\n{\"label\": \"b\", \"doc_id\": 500}\n",
    );
    let e = exemplar(
        d,
        &[
            "probe",
            "-a",
            demo,
            "--labels",
            "far.jsonl",
            "-d",
            "dict.safetensors",
        ],
    )
    .err();
    assert_mentions(&e, &["far.jsonl:2", "document 500"]);
    w(
        "one.jsonl",
        &(0..10)
            .map(|i| format!("{{\"label\": \"a\", \"doc_id\": {i}}}\n"))
            .collect::<String>(),
    );
    let e = exemplar(
        d,
        &[
            "probe",
            "-a",
            demo,
            "--labels",
            "one.jsonl",
            "-d",
            "dict.safetensors",
            "-o",
            "r.json",
        ],
    )
    .err();
    assert_mentions(&e, &["at least 2 classes"]);
    assert_no_outputs(d, &["r.json"]);
    let e = exemplar(d, &["ood", "-d", "dict.safetensors", "-a", demo]).err();
    assert_mentions(&e, &["--ood"]);
    let e = exemplar(
        d,
        &[
            "detect",
            "-a",
            demo,
            "--concepts",
            "concepts.jsonl",
            "-d",
            "missing.safetensors",
        ],
    )
    .err();
    assert_mentions(&e, &["missing.safetensors"]);
    let e = exemplar(
        d,
        &["probe", "--labels", "ok.jsonl", "-d", "dict.safetensors"],
    )
    .err();
    assert_mentions(&e, &["--activations"]);
    let labels = repo().join("data/demo/labels.jsonl");
    let labels = labels.to_str().unwrap();
    let probe = |extra: &[&str]| {
        let mut args = vec![
            "probe",
            "-a",
            demo,
            "--labels",
            labels,
            "-d",
            "dict.safetensors",
        ];
        args.extend_from_slice(extra);
        exemplar(d, &args).err()
    };
    assert_mentions(&probe(&["--features", "sae"]), &["--sae"]);
    assert_mentions(
        &probe(&["--features", "ep-topk", "-k", "100000"]),
        &["ep-topk", "1 ≤ k ≤ K"],
    );
    assert_mentions(
        &probe(&["--test-fraction", "1.5"]),
        &["test-fraction", "(0, 1)"],
    );
    assert_mentions(&probe(&["--folds", "1"]), &["folds", "at least 2"]);
}

#[test]
fn concepts_from_parquet_equal_jsonl() {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("c.parquet");
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message s { required int64 concept_id; required binary output_concept (UTF8); required binary category (UTF8); required binary output (UTF8); }",
        )
        .unwrap(),
    );
    let file = std::fs::File::create(&path).unwrap();
    let mut w =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .unwrap();
    let mut rg = w.next_row_group().unwrap();
    let ids = [0i64, 0, -1];
    let strs: [[&str; 3]; 3] = [
        ["dogs", "dogs", "EEEEE"],
        ["positive", "hard negative unseen", "negative"],
        ["a dog", "a wolf", "a table"],
    ];
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<Int64Type>()
        .write_batch(&ids, None, None)
        .unwrap();
    col.close().unwrap();
    for s in strs {
        let mut col = rg.next_column().unwrap().unwrap();
        let v: Vec<ByteArray> = s.iter().map(|t| ByteArray::from(*t)).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&v, None, None)
            .unwrap();
        col.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
    let rows = detect::read_concepts(&path, TextField::Output, true).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (
            rows[0].concept.as_deref(),
            rows[0].category,
            rows[0].text.as_deref()
        ),
        (Some("dogs"), Category::Positive, Some("a dog"))
    );
    assert_eq!(
        (rows[1].category, rows[2].concept_id, rows[2].category),
        (Category::HardNegative, -1, Category::Negative)
    );
    assert_eq!(rows[2].doc_id, 2);
}

#[cfg(feature = "torch")]
#[test]
fn gemma2_text_mode_end_to_end() {
    let Some(fixtures) = gemma_fixtures() else {
        return;
    };
    let model = fixtures.join("gqa");
    let model = model.to_str().unwrap();
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    // Two kinds of text (numbers vs words), 8 of each.
    let words = [
        "the cat sat on the mat",
        "a dog ran in the park",
        "birds sing in the morning",
        "we walked along the river",
        "she reads a book at night",
        "rain fell on the old roof",
        "the children play outside",
        "he cooked soup for dinner",
    ];
    let texts: Vec<(String, &str)> = (0..16)
        .map(|i| {
            if i % 2 == 0 {
                (
                    format!("{} {} {} {}", i, i * 7, i * 13 + 2, i * 31),
                    "numbers",
                )
            } else {
                (words[i / 2].to_string(), "words")
            }
        })
        .collect();
    let lines: String = texts.iter().map(|(t, _)| format!("{t}\n")).collect();
    std::fs::write(d.join("texts.txt"), &lines).unwrap();
    let hook = "blocks.1.hook_resid_post";
    exemplar(
        d,
        &[
            "activations",
            "--model",
            model,
            "--hook",
            hook,
            "--text",
            "texts.txt",
            "-o",
            "acts.safetensors",
        ],
    )
    .ok();
    exemplar(
        d,
        &[
            "build",
            "--device",
            "cpu",
            "-a",
            "acts.safetensors",
            "-p",
            "10",
            "--batch-size",
            "64",
            "-o",
            "dict.safetensors",
        ],
    )
    .ok();
    let labels: String = texts
        .iter()
        .map(|(t, l)| json!({"text": t, "label": l}).to_string() + "\n")
        .collect();
    std::fs::write(d.join("labels.jsonl"), labels).unwrap();
    let run = exemplar(
        d,
        &[
            "probe",
            "--model",
            model,
            "--hook",
            hook,
            "--labels",
            "labels.jsonl",
            "-d",
            "dict.safetensors",
            "--folds",
            "3",
            "--json",
        ],
    )
    .ok();
    let p: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(p["results"].as_array().unwrap().len(), 3);
    // Text mode and file mode see the same activations: the same report.
    let lab_files: String = texts
        .iter()
        .enumerate()
        .map(|(i, (_, l))| json!({"doc_id": i, "label": l}).to_string() + "\n")
        .collect();
    std::fs::write(d.join("labels_files.jsonl"), lab_files).unwrap();
    let f: Value = serde_json::from_str(
        &exemplar(
            d,
            &[
                "probe",
                "-a",
                "acts.safetensors",
                "--labels",
                "labels_files.jsonl",
                "-d",
                "dict.safetensors",
                "--folds",
                "3",
                "--json",
            ],
        )
        .ok()
        .stdout,
    )
    .unwrap();
    assert_eq!(p["results"], f["results"]);
    let concepts: String = texts
        .iter()
        .map(|(t, l)| {
            let cat = if *l == "numbers" { "positive" } else { "negative" };
            json!({"concept_id": if *l == "numbers" { 0 } else { -1 }, "concept": "numbers", "category": cat, "output": t}).to_string() + "\n"
        })
        .collect();
    std::fs::write(d.join("concepts.jsonl"), concepts).unwrap();
    let run = exemplar(
        d,
        &[
            "detect",
            "--model",
            model,
            "--hook",
            hook,
            "--concepts",
            "concepts.jsonl",
            "-d",
            "dict.safetensors",
            "--json",
        ],
    )
    .ok();
    let r: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(r["concepts"][0]["eval_positive"], 4);
    std::fs::write(d.join("ood.txt"), "zzq xqv vvk\nqqq jjj kkk\n").unwrap();
    let run = exemplar(
        d,
        &[
            "ood",
            "--model",
            model,
            "--hook",
            hook,
            "-d",
            "dict.safetensors",
            "--text",
            "texts.txt",
            "--ood-text",
            "ood.txt",
            "--json",
        ],
    )
    .ok();
    let o: Value = serde_json::from_str(&run.stdout).unwrap();
    let in_rows = o["in_distribution"]["rows"].as_u64().unwrap();
    assert_eq!(
        in_rows,
        load_dict(&d.join("dict.safetensors"))
            .info()
            .activations_streamed
    );
    assert!(o["out_of_distribution"][0]["auroc_vs_in_distribution"]
        .as_f64()
        .is_some());
}
