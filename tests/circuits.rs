//! `exemplar circuits` and `exemplar::analysis::circuits`: node and edge scores by hand on a
//! small case; MIB's faithfulness, CPR and CMD against numpy; exact per-head patching, the
//! empty circuit and one circuit against HF transformers with forward pre-hooks doing the same
//! patch on the real Gemma 3 270M, with the report's node and edge scores against Python sets
//! and its ROC-AUC against scikit-learn (scripts/circuits_checks.py); bad task files and heads.

mod common;

use common::{exemplar, python, real_gemma3};
use exemplar::analysis::circuits::faithfulness::{Curve, MIB_FRACTIONS};
use exemplar::analysis::circuits::score::{edge_scores, node_scores, roc_auc};
use serde_json::{json, Value};
use std::path::Path;

fn run_check(py: &Path, dir: &Path, args: &[&str]) -> String {
    common::run_python_check(py, "circuits_checks.py", dir, args)
}

#[test]
fn node_and_edge_scores_by_hand() {
    // 3 heads, 3 prompt pairs; rows are prompts, columns heads.
    #[rustfmt::skip]
    let pos = [
        0, 5, 7,
        1, 5, 8,
        2, 5, 7,
    ];
    #[rustfmt::skip]
    let neg = [
        0, 6, 7,
        0, 6, 7,
        1, 5, 7,
    ];
    // Head 0: P = {0, 1, 2}, N = {0, 1}: only {2}, distinct 3.
    // Head 1: P = {5}, N = {5, 6}: none, distinct 2.
    // Head 2: P = {7, 8}, N = {7}: only {8}, distinct 2.
    let n = node_scores(&pos, &neg, 3, false).unwrap();
    let got: Vec<(usize, usize, f64)> = n
        .iter()
        .map(|s| (s.positive_only, s.distinct, s.score))
        .collect();
    assert_eq!(got, vec![(1, 3, 1.0), (0, 2, 0.0), (1, 2, 1.0)]);
    let nn = node_scores(&pos, &neg, 3, true).unwrap();
    assert_eq!(
        nn.iter().map(|s| s.score).collect::<Vec<_>>(),
        vec![1.0 / 3.0, 0.0, 0.5]
    );
    // Pairs (0, 1): P = {(0,5), (1,5), (2,5)}, N = {(0,6), (1,5)}: only 2, distinct 4.
    // Pairs (0, 2): P = {(0,7), (1,8), (2,7)}, N = {(0,7), (1,7)}: only 2, distinct 4.
    // Pairs (1, 2): P = {(5,7), (5,8)}, N = {(6,7), (5,7)}: only 1, distinct 3.
    let e = edge_scores(&pos, &neg, 3, false, None).unwrap();
    let got: Vec<(usize, usize, usize, usize)> = e
        .iter()
        .map(|s| (s.a, s.b, s.positive_only, s.distinct))
        .collect();
    assert_eq!(got, vec![(0, 1, 2, 4), (0, 2, 2, 4), (1, 2, 1, 3)]);
    let en = edge_scores(&pos, &neg, 3, true, Some(2)).unwrap();
    assert_eq!(en.len(), 2);
    assert_eq!((en[0].a, en[0].b, en[0].score), (0, 1, 0.5));
    // A head pair with no positive-only pair is left out.
    let same = edge_scores(&[1, 2], &[1, 2], 2, false, None).unwrap();
    assert!(same.is_empty());
    // Mismatched tables are an error.
    assert!(node_scores(&[1, 2, 3], &[1, 2], 2, false).is_err());
    // ROC-AUC by hand: positives {3, 1}, negatives {2, 1}: 1 + 1 + 0 + 0.5 over 4.
    assert_eq!(
        roc_auc(&[3.0, 1.0, 2.0, 1.0], &[true, true, false, false]),
        Some(0.625)
    );
}

#[test]
fn cpr_and_cmd_equal_numpy() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let n = 72;
    let (m_full, m_empty) = (4.0, -3.0);
    // Three curves: rising, overshooting, and non-monotone.
    let shapes: [&dyn Fn(f64) -> f64; 3] = [
        &|k: f64| k.sqrt(),
        &|k: f64| 1.4 * k.powf(0.3),
        &|k: f64| (k * 9.0).sin() * 0.5 + k,
    ];
    let curves: Vec<Curve> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let metric: Vec<f64> = MIB_FRACTIONS
                .iter()
                .map(|&k| match k {
                    0.0 => m_empty,
                    1.0 => m_full,
                    _ => m_empty + s(k) * (m_full - m_empty),
                })
                .collect();
            Curve::new(&format!("c{i}"), &MIB_FRACTIONS, n, metric, m_full, m_empty).unwrap()
        })
        .collect();
    let rep = json!({
        "layers": 18,
        "heads_per_layer": 4,
        "faithfulness": {"m_full": m_full, "m_empty": m_empty, "curves": curves},
    });
    std::fs::write(tmp.path().join("r.json"), rep.to_string()).unwrap();
    let out = run_check(&py, tmp.path(), &["metrics", "r.json"]);
    assert!(out.contains("ok metrics: 3 curves"), "{out}");
}

/// A small IOI task from data/circuits/ioi.jsonl (its first `n` lines).
fn small_task(dir: &Path, n: usize) -> std::path::PathBuf {
    let all = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/circuits/ioi.jsonl"
    ))
    .unwrap();
    let lines: Vec<&str> = all.lines().take(n).collect();
    let p = dir.join("task.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

#[test]
fn patching_equals_hf_forward_hooks_on_the_real_270m() {
    let Some((m, _)) = real_gemma3() else { return };
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let task = small_task(dir, 6);
    let model = m.to_str().unwrap();
    let run = exemplar(
        dir,
        &[
            "circuits",
            "--model",
            model,
            "--task",
            task.to_str().unwrap(),
            "--build-prompts",
            "3",
            "--random-trials",
            "20",
            "--circuit",
            "a0.h0,17.3",
            "-o",
            "report.json",
            "--mib",
            "mib.json",
        ],
    )
    .ok();
    assert!(
        run.stdout.contains("faithfulness (MIB, heads)"),
        "{}",
        run.stdout
    );
    let rep: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(rep["task"]["prompts"], 6);
    assert!(rep["task"]["clean_ld_mean"].as_f64().unwrap() > 0.0);
    assert_eq!(rep["codes"].as_array().unwrap().len(), 2);
    assert_eq!(rep["patching"]["effects"].as_array().unwrap().len(), 72);
    // The top two heads by effect and the last one, against HF.
    let ranking: Vec<String> = rep["patching"]["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let heads = [&ranking[0], &ranking[1], &ranking[71]];
    let mut args = vec!["hf-patch", model, "task.jsonl", "report.json"];
    args.extend(heads.iter().map(|s| s.as_str()));
    let out = run_check(&py, dir, &args);
    assert!(out.contains("ok hf-patch"), "{out}");
    eprintln!("{out}");
    let out = run_check(&py, dir, &["metrics", "report.json"]);
    assert!(out.contains("ok metrics: 4 curves"), "{out}");
    let out = run_check(&py, dir, &["scores", "report.json"]);
    assert!(out.contains("ok scores: 2 code reports"), "{out}");
    // The given circuit, and the MIB importance file: the whole graph, head scores as reported.
    assert_eq!(
        rep["faithfulness"]["circuit"]["heads"],
        json!(["a0.h0", "a17.h3"])
    );
    let mib: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("mib.json")).unwrap()).unwrap();
    assert_eq!(mib["cfg"]["n_layers"], 18);
    assert_eq!(mib["nodes"].as_object().unwrap().len(), 1 + 18 * 5 + 1);
    let s5 = rep["codes"][0]["node_scores"][5].as_f64().unwrap();
    assert_eq!(mib["nodes"]["a1.h1"]["score"].as_f64().unwrap(), s5);
    if let Some(e) = rep["codes"][0]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            let l = |k: &str| {
                e[k].as_str().unwrap()[1..]
                    .split(".h")
                    .next()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            };
            l("from") < l("to")
        })
    {
        let key = format!(
            "{}->{}<v>",
            e["from"].as_str().unwrap(),
            e["to"].as_str().unwrap()
        );
        assert_eq!(mib["edges"][&key]["score"], e["score"], "{key}");
    }
}

#[test]
fn bad_task_files_and_heads_give_clear_errors() {
    let Some((m, _)) = real_gemma3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = m.to_str().unwrap();
    let ok = r#"{"prompt":"When Mary and John went to the store, John gave a drink to","answer":" Mary","corrupted_prompt":"When Mary and John went to the store, Mary gave a drink to","wrong_answer":" John"}"#;
    let cases = [
        (
            r#"{"prompt":"a","answer":" b","corrupted_prompt":"c"}"#.to_string(),
            vec!["task.jsonl", "line 2", "`wrong_answer` is missing"],
        ),
        (
            ok.replace("\" Mary\"", "\" Mary Ann Smithers\""),
            vec!["line 2", "field `answer`", "it must be exactly one token"],
        ),
        (
            ok.replace("Mary gave a drink", "Mary Ann gave a drink"),
            vec![
                "line 2",
                "`prompt` is",
                "`corrupted_prompt` is",
                "same length",
            ],
        ),
        (
            r#"{"prompt":"x","answer":1,"corrupted_prompt":"y","wrong_answer":" z"}"#.to_string(),
            vec!["line 2", "`answer` must be a string"],
        ),
        ("not json".to_string(), vec!["line 2", "not a JSON object"]),
    ];
    for (second, needles) in cases {
        std::fs::write(dir.join("task.jsonl"), format!("{ok}\n{second}\n")).unwrap();
        let err = exemplar(
            dir,
            &[
                "circuits",
                "--model",
                model,
                "--task",
                "task.jsonl",
                "-o",
                "r.json",
            ],
        )
        .err();
        for n in needles {
            assert!(err.contains(n), "{n:?} not in: {err}");
        }
        assert!(!dir.join("r.json").exists());
    }
    std::fs::write(dir.join("task.jsonl"), format!("{ok}\n")).unwrap();
    let err = exemplar(
        dir,
        &[
            "circuits",
            "--model",
            model,
            "--task",
            "task.jsonl",
            "--circuit",
            "a3.h4",
        ],
    )
    .err();
    assert!(
        err.contains("a3.h4") && err.contains("head 4 is out of range") && err.contains("4 heads"),
        "{err}"
    );
    let err = exemplar(
        dir,
        &[
            "circuits",
            "--model",
            model,
            "--task",
            "task.jsonl",
            "--circuit",
            "18.0",
        ],
    )
    .err();
    assert!(err.contains("layer 18 is out of range"), "{err}");
    std::fs::write(dir.join("task.jsonl"), "\n").unwrap();
    let err = exemplar(dir, &["circuits", "--model", model, "--task", "task.jsonl"]).err();
    assert!(err.contains("no task line"), "{err}");
}
