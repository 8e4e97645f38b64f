//! `iia` (interchange-intervention accuracy) on a small random Gemma 3 fixture: every
//! interchange redone with HF transformers forward hooks and the torch featurizers `mib-export`
//! writes (scripts/iia_checks.py), the feature choices and the counts recounted; the bad inputs.
#![cfg(feature = "torch")]

mod common;

use common::{assert_no_outputs, build_small_text_dictionary, exemplar, gemma_fixtures, python};
use serde_json::{json, Value};
use std::path::Path;

const D1: &str = "dicts/blocks.1.hook_resid_post.p10.safetensors";
const D3: &str = "dicts/blocks.3.hook_resid_post.p10.safetensors";

/// Dictionaries at blocks 1 and 3 (one forward per batch) and a task of 12 pairs whose answers
/// are one token each of the fixture's tokenizer (` the`, ` and`, ` of`).
fn setup(dir: &Path, model: &str) {
    build_small_text_dictionary(
        dir,
        model,
        "blocks.1.hook_resid_post,blocks.3.hook_resid_post",
        "dicts",
    );
    std::fs::write(dir.join("task.jsonl"), task_rows(None)).unwrap();
}

/// The task's lines; `bad` replaces line `.0` (1-based) with `.1`.
fn task_rows(bad: Option<(usize, String)>) -> String {
    let words = [" the", " and", " of"];
    let nouns = ["river", "dog", "cat", "bird", "tree", "hill"];
    let mut s = String::new();
    for i in 0..12usize {
        let (bp, sp) = (i % 3, (i + 1 + i / 3) % 3);
        let sp = if sp == bp { (sp + 1) % 3 } else { sp };
        let prompt = |p: usize, j: usize| {
            format!(
                "the {} and the {} of the {} in{}",
                nouns[j % 6],
                nouns[(j + 1) % 6],
                nouns[(j + 3) % 6],
                words[p]
            )
        };
        let row = json!({
            "id": format!("p{i}"),
            "base": prompt(bp, i),
            "source": prompt(sp, i + 2),
            "base_answer": words[bp],
            "source_answer": words[sp],
            "counterfactual": words[sp],
            "base_variable": bp,
            "source_variable": sp,
            "split": if i % 2 == 0 { "train" } else { "test" },
        });
        let line = match &bad {
            Some((n, l)) if *n == i + 1 => l.clone(),
            _ => row.to_string(),
        };
        s.push_str(&line);
        s.push('\n');
    }
    s
}

#[test]
fn interchanges_equal_hf_hooks_with_the_exported_featurizers_and_counts_recount() {
    let Some(fx) = gemma_fixtures() else { return };
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let m = fx.join("gemma3");
    let m = m.to_str().unwrap();
    setup(dir.path(), m);
    for (n, out) in [("1", "hard"), ("2", "soft")] {
        exemplar(
            dir.path(),
            &[
                "mib-export",
                "--unit",
                &format!("L1={D1}"),
                "--unit",
                &format!("L3={D3}"),
                "--top-n",
                n,
                "-o",
                out,
            ],
        )
        .ok();
    }
    for pos in ["1", "2"] {
        let (rep, recs) = (format!("iia{pos}.json"), format!("iia{pos}.jsonl"));
        let run = exemplar(
            dir.path(),
            &[
                "iia",
                "--model",
                m,
                "--task",
                "task.jsonl",
                "-d",
                &format!("{D1},{D3}"),
                "--neurons",
                "1,4",
                "--soft-top-n",
                "2",
                "--regions",
                "1,2",
                "--keep-all",
                "--position-from-end",
                pos,
                "--records",
                &recs,
                "--markdown",
                "iia.md",
                "--plot",
                "iia.png",
                "-o",
                &rep,
                "--force",
            ],
        )
        .ok();
        assert!(run.stdout.contains("ep-soft2-2"), "{}", run.stdout);
        let r: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(&rep)).unwrap()).unwrap();
        let res = &r["result"];
        // 6 test pairs (all kept) × 2 layers × 9 methods.
        assert_eq!(res["test"]["kept"], 6);
        assert_eq!(res["cells"].as_array().unwrap().len(), 18);
        let n_rec = std::fs::read_to_string(dir.path().join(&recs))
            .unwrap()
            .lines()
            .count();
        assert_eq!(n_rec, 6 * 18);
        let md = std::fs::read_to_string(dir.path().join("iia.md")).unwrap();
        assert!(
            md.starts_with("| layer | full | neurons-1 | neurons-4 | ep-hard |"),
            "{md}"
        );
        assert_eq!(md.lines().count(), 4);
        let png = std::fs::read(dir.path().join("iia.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let out = common::run_python_check(
            &py,
            "iia_checks.py",
            dir.path(),
            &["hf", m, &rep, &recs, "hard", "soft"],
        );
        assert!(
            out.contains("ok iia hf: 12 of 12 pairs run, 108 of 108 interchanges"),
            "{out}"
        );
    }
}

#[test]
fn bad_inputs_are_refused_with_errors_naming_them() {
    let Some(fx) = gemma_fixtures() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = fx.join("gemma3");
    let m = m.to_str().unwrap();
    setup(d, m);
    let iia = |task: &str, dicts: &str, extra: &[&str]| {
        let mut a = vec![
            "iia",
            "--model",
            m,
            "--task",
            task,
            "-d",
            dicts,
            "--keep-all",
            "--records",
            "r.jsonl",
            "-o",
            "r.json",
        ];
        a.extend_from_slice(extra);
        exemplar(d, &a)
    };
    // A dictionary of another width (32, not the fixture's 64), at a resid_post hook.
    let x = common::clustered(400, 32, 4, 0.1, 3);
    common::write_npy(&d.join("x.npy"), &x, 32);
    exemplar(
        d,
        &[
            "build",
            "-a",
            "x.npy",
            "--hook",
            "blocks.2.hook_resid_post",
            "-p",
            "10",
            "--calibration-activations",
            "200",
            "-o",
            "w.safetensors",
        ],
    )
    .ok();
    let e = iia("task.jsonl", &format!("{D1},w.safetensors"), &[]).err();
    assert!(e.contains("w.safetensors") && e.contains("32 wide"), "{e}");
    // A layer without a dictionary.
    let e = iia("task.jsonl", D1, &["--layers", "1,2"]).err();
    assert!(e.contains("layer 2 has no dictionary"), "{e}");
    // A task row with a missing field, and an answer of several tokens.
    let mut row: Value = serde_json::from_str(task_rows(None).lines().nth(2).unwrap()).unwrap();
    row.as_object_mut().unwrap().remove("counterfactual");
    std::fs::write(d.join("t1.jsonl"), task_rows(Some((3, row.to_string())))).unwrap();
    let e = iia("t1.jsonl", D1, &[]).err();
    assert!(
        e.contains("t1.jsonl") && e.contains("line 3") && e.contains("counterfactual"),
        "{e}"
    );
    let mut row: Value = serde_json::from_str(task_rows(None).lines().nth(4).unwrap()).unwrap();
    row["source_answer"] = json!(" river");
    std::fs::write(d.join("t2.jsonl"), task_rows(Some((5, row.to_string())))).unwrap();
    let e = iia("t2.jsonl", D1, &[]).err();
    assert!(
        e.contains("t2.jsonl")
            && e.contains("pair p4")
            && e.contains("source_answer")
            && e.contains("one token"),
        "{e}"
    );
    assert_no_outputs(d, &["r.jsonl", "r.json"]);
    // An existing output without --force: refused before any work, nothing else written.
    std::fs::write(d.join("r.json"), "{}").unwrap();
    let e = iia("task.jsonl", D1, &[]).err();
    assert!(e.contains("r.json") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read_to_string(d.join("r.json")).unwrap(), "{}");
    assert_no_outputs(d, &["r.jsonl"]);
}
