//! `explain` (Wu et al.'s MI explanations, the logit-lens and top-members baselines, their
//! Diversity / Lexical / Dominate) against numpy (scripts/analysis_checks.py `mi`) on a small
//! dictionary of a fixture model; `explain-labels` and `steer --region-set`; the bad inputs.
#![cfg(feature = "torch")]

mod common;

use common::{assert_no_outputs, build_small_text_dictionary, exemplar, gemma_fixtures, python};
use serde_json::Value;
use std::path::Path;

fn setup(dir: &Path, model: &str) {
    build_small_text_dictionary(dir, model, "blocks.3.hook_resid_post", "d.safetensors");
}

/// A frequency-ranked word list the fixture tokenizer encodes (300 made-up words from its
/// letters after some real ones, so that there are non-superficial words), with three words
/// it cannot encode (`P`, `x`, `j` are not in its vocabulary) and a repeat.
fn word_list() -> (String, usize) {
    let mut w: Vec<String> = ["the", "and", "river", "Paris", "brown", "dog", "xyz", "cat"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let letters: Vec<char> = "abcdefghiklmnoprstuvwy".chars().collect();
    let mut i = 0usize;
    while w.len() < 320 {
        let (n, mut x) = (4 + i % 3, 12_345 + i * 7_919);
        let word: String = (0..n)
            .map(|_| {
                let c = letters[x % letters.len()];
                x /= letters.len();
                c
            })
            .collect();
        if !w.contains(&word) {
            w.push(word);
        }
        i += 1;
    }
    w.push("jump".into());
    w.push("river 12".into()); // the frequency column is ignored: a repeat of line 3
    (w.join("\n") + "\n", w.len())
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn mi_explanations_equal_numpy_and_labels_come_back_as_region_sets() {
    let Some(fx) = gemma_fixtures() else { return };
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let m = fx.join("gemma3");
    let m = m.to_str().unwrap();
    setup(dir, m);
    let (words, n) = word_list();
    std::fs::write(dir.join("words.txt"), words).unwrap();
    for (direction, alpha, beta) in [("exemplar", "1", "1"), ("mean", "0.5", "2")] {
        let run = exemplar(
            dir,
            &[
                "explain",
                "-d",
                "d.safetensors",
                "--model",
                m,
                "--words",
                "words.txt",
                "--direction",
                direction,
                "--alpha",
                alpha,
                "--beta",
                beta,
                "--top-words",
                "20",
                "--labeller",
                "lab.jsonl",
                "--report",
                "rep.json",
                "-o",
                "ex.jsonl",
                "--force",
            ],
        )
        .ok();
        assert!(run.stdout.contains("diversity"), "{}", run.stdout);
        // The skipped words are reported with their lines and counted.
        assert!(run.stderr.contains("4 words skipped"), "{}", run.stderr);
        assert!(run.stderr.contains("line 4: \"Paris\""), "{}", run.stderr);
        let rep: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("rep.json")).unwrap()).unwrap();
        let skipped = rep["vocabulary"]["skipped"].as_array().unwrap();
        let sk: Vec<(&str, u64)> = skipped
            .iter()
            .map(|s| (s["word"].as_str().unwrap(), s["line"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            sk,
            [
                ("Paris", 4),
                ("xyz", 7),
                ("jump", n as u64 - 1),
                ("river", n as u64)
            ]
        );
        assert_eq!(rep["vocabulary"]["words"].as_array().unwrap().len(), n - 4);
        // Every number against numpy.
        let out = common::run_python_check(
            &py,
            "analysis_checks.py",
            dir,
            &["mi", m, "d.safetensors", "ex.jsonl", "rep.json"],
        );
        assert!(out.contains("ok mi"), "{out}");
        let q = &rep["quality"];
        for method in ["mi", "logit_lens", "top_members"] {
            assert!(q[method]["lexical"].is_number(), "{q}");
        }
        // The softmax over regions reorders the words: MI is not the lens.
        let ex = lines(&dir.join("ex.jsonl"));
        let words = |e: &Value, k: &str| -> Vec<String> {
            e[k].as_array()
                .unwrap()
                .iter()
                .map(|w| w["word"].as_str().unwrap().to_string())
                .collect()
        };
        assert!(ex.iter().any(|e| words(e, "mi") != words(e, "lens")));
    }
    // The labeller's file: one line per region with its MI words and snippets.
    let lab = lines(&dir.join("lab.jsonl"));
    let ex = lines(&dir.join("ex.jsonl"));
    assert_eq!(lab.len(), ex.len());
    assert_eq!(lab[0]["words"].as_array().unwrap().len(), 20);
    assert_eq!(lab[0]["lens_words"][0], ex[0]["lens"][0]["word"]);
    assert!(lab
        .iter()
        .any(|l| l["snippets"][0].as_str().is_some_and(|s| s.contains("[["))));
    // Labels back: two sets; a region may have two labels or none.
    let k = ex.len();
    let labels = format!(
        "{}\n{}\n{}\n\n{}\n",
        r#"{"region": 0, "label": "water"}"#,
        r#"{"region": 1, "label": ["water", "animals"]}"#,
        r#"{"region": 2, "label": null}"#,
        serde_json::json!({"region": k - 1, "label": "animals"})
    );
    std::fs::write(dir.join("labels.jsonl"), labels).unwrap();
    exemplar(
        dir,
        &[
            "explain-labels",
            "-d",
            "d.safetensors",
            "--labels",
            "labels.jsonl",
            "-o",
            "sets.json",
        ],
    )
    .ok();
    let sets: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sets.json")).unwrap()).unwrap();
    assert_eq!(sets["sets"]["water"], serde_json::json!([0, 1]));
    assert_eq!(sets["sets"]["animals"], serde_json::json!([1, k - 1]));
    // A set steers: one edit per region of the set.
    std::fs::write(dir.join("p.txt"), "the river and\n").unwrap();
    exemplar(
        dir,
        &[
            "steer",
            "-d",
            "d.safetensors",
            "--model",
            m,
            "--prompts",
            "p.txt",
            "--region-set",
            "sets.json:animals",
            "--edit",
            "raise",
            "--value",
            "2.5",
            "--keep-norm",
            "--new-tokens",
            "3",
            "-o",
            "s.jsonl",
        ],
    )
    .ok();
    let s = lines(&dir.join("s.jsonl"));
    assert_eq!(s.len(), 2);
    // Explanation-guided steering: each region raised (norm kept) against a random other
    // region, the next-token mass on its words equal to HF transformers with the same edits.
    std::fs::write(
        dir.join("p2.txt"),
        "the river and\nShe tells the cat about\n",
    )
    .unwrap();
    for gate in [None, Some("--gated")] {
        let mut args = vec![
            "explain-steer",
            "-d",
            "d.safetensors",
            "--model",
            m,
            "--explanations",
            "ex.jsonl",
            "--prompts",
            "p2.txt",
            "-r",
            "0,1,2",
            "--words",
            "5",
            "--value",
            "6",
            "--control-seed",
            "3",
            "-o",
            "shift.jsonl",
            "--summary",
            "shift.json",
            "--force",
        ];
        args.extend(gate);
        let run = exemplar(dir, &args).ok();
        assert!(run.stdout.contains("mean shift"), "{}", run.stdout);
        let recs = lines(&dir.join("shift.jsonl"));
        assert_eq!(recs.len(), 6);
        let sum: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("shift.json")).unwrap())
                .unwrap();
        assert_eq!(sum["regions"].as_array().unwrap().len(), 3);
        let out = common::run_python_check(
            &py,
            "analysis_checks.py",
            dir,
            &["hf-shift", m, "d.safetensors", "shift.jsonl"],
        );
        assert!(out.contains("ok hf-shift"), "{out}");
        if gate.is_none() {
            // Ungated, the edit moves the mass.
            assert!(recs.iter().all(|r| r["steered"] != r["base"]));
        }
    }
    let e = exemplar(
        dir,
        &[
            "steer",
            "-d",
            "d.safetensors",
            "--model",
            m,
            "--prompts",
            "p.txt",
            "--region-set",
            "sets.json:plants",
            "-o",
            "s2.jsonl",
        ],
    )
    .err();
    assert!(
        e.contains("sets.json has no set `plants`") && e.contains("animals, water"),
        "{e}"
    );
}

#[test]
fn bad_inputs_are_refused_with_errors_naming_them() {
    let Some(fx) = gemma_fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let m = fx.join("gemma3");
    let ms = m.to_str().unwrap();
    setup(dir, ms);
    std::fs::write(dir.join("words.txt"), "the\nriver\n").unwrap();
    let explain = |model: &str, words: &str, out: &str| {
        exemplar(
            dir,
            &[
                "explain",
                "-d",
                "d.safetensors",
                "--model",
                model,
                "--words",
                words,
                "-o",
                out,
            ],
        )
    };
    // A dictionary of another model's width: a model whose config says 32 wide.
    let other = dir.join("narrow");
    std::fs::create_dir(&other).unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(m.join("config.json")).unwrap()).unwrap();
    cfg["hidden_size"] = 32.into();
    std::fs::write(other.join("config.json"), cfg.to_string()).unwrap();
    let e = explain(other.to_str().unwrap(), "words.txt", "a.jsonl").err();
    assert!(
        e.contains("d.safetensors") && e.contains("64") && e.contains("32"),
        "{e}"
    );
    assert_no_outputs(dir, &["a.jsonl"]);
    // Only words the tokenizer cannot encode.
    std::fs::write(dir.join("bad.txt"), "Paris\nxyz\n").unwrap();
    let e = explain(ms, "bad.txt", "b.jsonl").err();
    assert!(
        e.contains("bad.txt: no word of it can be encoded") && e.contains("2 words skipped"),
        "{e}"
    );
    assert_no_outputs(dir, &["b.jsonl"]);
    // An empty word list.
    std::fs::write(dir.join("empty.txt"), "\n\n").unwrap();
    let e = explain(ms, "empty.txt", "e.jsonl").err();
    assert!(e.contains("empty.txt: no word in it"), "{e}");
    // An existing output without --force.
    std::fs::write(dir.join("exists.jsonl"), "x").unwrap();
    let e = explain(ms, "words.txt", "exists.jsonl").err();
    assert!(e.contains("exists.jsonl") && e.contains("--force"), "{e}");
    // Labels: out of range, missing label, not JSON; each names the file and line.
    for (text, want) in [
        (
            r#"{"region": 100000, "label": "a"}"#,
            "line 1: region 100000 is out of range",
        ),
        (
            "{\"region\": 0, \"label\": \"a\"}\n{\"region\": 1}",
            "line 2: no `label`",
        ),
        (
            "{\"region\": 0, \"label\": \"a\"}\nnope",
            "line 2: not JSON",
        ),
        (r#"{"region": 0, "label": 3}"#, "line 1: `label` is 3"),
    ] {
        std::fs::write(dir.join("l.jsonl"), text).unwrap();
        let e = exemplar(
            dir,
            &[
                "explain-labels",
                "-d",
                "d.safetensors",
                "--labels",
                "l.jsonl",
                "-o",
                "sets.json",
            ],
        )
        .err();
        assert!(e.contains("l.jsonl") && e.contains(want), "{e}");
        assert_no_outputs(dir, &["sets.json"]);
    }
}
