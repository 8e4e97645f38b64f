//! Interoperability with Python: the files `exemplar` writes are read by a real Python with
//! `numpy`, `scipy`, `safetensors` and `safetensors.torch`; calibration, assignment and every
//! `encode` readout are checked against independent numpy/scipy computations of the reference's
//! formulas; and the hook names are checked against the installed TransformerLens (names,
//! shapes and values on the same checkpoint).
//!
//! The packages are the project's pins (`PY_PACKAGES` in scripts/venv.sh; the clients:
//! `sae-lens==6.54.12 transformer-lens==3.9.0`).
//!
//! The interpreter comes from `EXEMPLAR_PYTHON` (`scripts/test.sh` sets it to the project's
//! `.venv`). Without it these tests skip with a message — unless `EXEMPLAR_REQUIRE_PYTHON=1`,
//! which turns the skip into a failure, so CI can never skip them silently.

mod common;

use common::*;
use exemplar::calibrate::{Calibration, PercentileMethod};
use std::path::Path;
use tempfile::TempDir;

/// The first fenced ```python block of `docs/format.md`.
fn format_doc_python_block() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/format.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| l.trim_start().starts_with("```python"))
        .unwrap_or_else(|| panic!("{} has no ```python block", path.display()));
    let mut block = String::new();
    for l in lines {
        if l.trim_start().starts_with("```") {
            return block;
        }
        block.push_str(l);
        block.push('\n');
    }
    panic!("the ```python block of {} is not closed", path.display());
}

const D: usize = 24;

/// A temporary directory holding `acts.npy` (clustered, with a provenance sidecar) and a
/// dictionary `d.safetensors` built from it.
fn built_dictionary(n: usize, seed: u64) -> (TempDir, exemplar::Dictionary, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let x = clustered(n, D, 6, 0.08, seed);
    write_npy(&dir.path().join("acts.npy"), &x, D);
    write_sidecar(&dir.path().join("acts.npy"), n, 16, 0);
    exemplar(
        dir.path(),
        &[
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
            "-o",
            "d.safetensors",
        ],
    )
    .ok();
    let dict = load_dict(&dir.path().join("d.safetensors"));
    (dir, dict, x)
}

#[test]
fn dictionary_reads_in_python_with_the_documented_snippet() {
    let Some(py) = python() else { return };
    let block = format_doc_python_block();
    assert!(
        block.contains("sys.argv[1]"),
        "the docs/format.md block reads the dictionary path from sys.argv[1]"
    );
    let (dir, dict, _) = built_dictionary(700, 1);
    let out = run_python(&py, dir.path(), &block, &["d.safetensors"]);
    let k_printed: usize = out
        .split(|c: char| c.is_whitespace())
        .find_map(|w| w.strip_prefix("K="))
        .unwrap_or_else(|| panic!("the snippet prints K=...:\n{out}"))
        .parse()
        .unwrap();
    assert_eq!(
        k_printed,
        dict.len(),
        "K printed by the docs snippet\n{out}"
    );
    // With provenance, it shows the text of the largest region's examples.
    assert!(
        out.contains("[["),
        "the snippet shows example tokens:\n{out}"
    );
}

/// The reference's calibration in float64 numpy/scipy; prints a JSON object.
const CALIBRATION_REFERENCE: &str = r#"
import json, sys
import numpy as np
from scipy.spatial.distance import pdist

batch, percentiles = int(sys.argv[1]), sys.argv[2].split(",")
x = np.concatenate([np.load(f) for f in sys.argv[3:]]).astype(np.float64)
# Center: direction of the mean unit row, times the mean row's projection on it.
m = (x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)).mean(axis=0)
direction = m / np.linalg.norm(m)
center = direction * (x.mean(axis=0) @ direction)
out = {"center": center.tolist(), "linear": {}, "nearest": {}}
for key in percentiles:
    p = float(key)
    lin, near = [], []
    for s in range(0, len(x), batch):
        b = x[s:s + batch] - center
        u = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-12)
        d = pdist(u, "cosine")
        lin.append(float(np.percentile(d, p)))
        # torch.kthvalue rule: the sorted value at round_half_even(q (P - 1)).
        k = int(np.round(p / 100.0 * (len(d) - 1)))
        near.append(float(np.sort(d)[k]))
    out["linear"][key] = lin
    out["nearest"][key] = near
print(json.dumps(out))
"#;

#[test]
fn calibration_matches_numpy_scipy_reference() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // 4 batches of 30 rows, D = 8, non-zero mean, in two files (batches do not care).
    let x = clustered(120, 8, 3, 0.35, 11);
    write_npy(&root.join("x1.npy"), &x[..60 * 8], 8);
    write_npy(&root.join("x2.npy"), &x[60 * 8..], 8);
    let mean: f64 = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
    assert!(mean.abs() > 0.1, "non-zero mean");
    // p = 25 puts q (P − 1) = 0.25 · 434 = 108.5 exactly half-way: half-even picks 108.
    let ps = ["20", "25"];
    let reference = run_python(
        &py,
        root,
        CALIBRATION_REFERENCE,
        &["30", &ps.join(","), "x1.npy", "x2.npy"],
    );
    let r: serde_json::Value = serde_json::from_str(reference.trim()).unwrap();
    let ref_center: Vec<f64> = r["center"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for p in ps {
        for (method, key) in [("linear", "linear"), ("nearest-rank", "nearest")] {
            let out = format!("cal-{p}-{method}.safetensors");
            exemplar(
                root,
                &[
                    "calibrate",
                    "-a",
                    "x1.npy",
                    "x2.npy",
                    "--batch-size",
                    "30",
                    "--percentile",
                    p,
                    "--percentile-method",
                    method,
                    "-o",
                    &out,
                ],
            )
            .ok();
            let cal = Calibration::load(&root.join(&out)).unwrap();
            assert_eq!(
                cal.method,
                PercentileMethod::parse(method).unwrap(),
                "{method}"
            );
            assert_eq!(cal.n_activations, 120);
            assert_eq!(cal.center.len(), 8);
            for (j, (&a, &b)) in cal.center.iter().zip(&ref_center).enumerate() {
                assert!(
                    (a as f64 - b).abs() <= 1e-6,
                    "center[{j}]: exemplar {a}, numpy {b}"
                );
            }
            let want: Vec<f64> = r[key][p]
                .as_array()
                .unwrap_or_else(|| panic!("no reference for p = {p}: {r}"))
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(cal.batch_percentiles.len(), 4);
            for (b, (&a, &w)) in cal.batch_percentiles.iter().zip(&want).enumerate() {
                assert!(
                    (a - w).abs() <= 1e-6,
                    "p{p} {method}, batch {b}: exemplar {a}, numpy/scipy {w}"
                );
            }
            let theta = want.iter().sum::<f64>() / 4.0;
            assert!(
                (cal.theta - theta).abs() <= 1e-6,
                "θ p{p} {method}: exemplar {}, numpy/scipy {theta}",
                cal.theta
            );
        }
    }
    // The two methods differ here, so the comparison tells them apart.
    let lin = Calibration::load(&root.join("cal-20-linear.safetensors")).unwrap();
    let near = Calibration::load(&root.join("cal-20-nearest-rank.safetensors")).unwrap();
    assert!((lin.theta - near.theta).abs() > 1e-9);
}

#[test]
fn assign_npz_and_assignments_npy_load_with_numpy() {
    let Some(py) = python() else { return };
    let (dir, dict, _) = built_dictionary(500, 2);
    exemplar(
        dir.path(),
        &[
            "assign",
            "-d",
            "d.safetensors",
            "-a",
            "acts.npy",
            "-o",
            "r.npz",
        ],
    )
    .ok();
    let script = r#"
import sys
import numpy as np
z = np.load(sys.argv[1])  # allow_pickle=False: plain arrays only
assert sorted(z.files) == ["distances", "ids", "within_threshold"], z.files
ids, dist, within = z["ids"], z["distances"], z["within_threshold"]
assert ids.dtype == np.int64, ids.dtype
assert dist.dtype == np.float32, dist.dtype
assert within.dtype == np.bool_, within.dtype
n = int(sys.argv[3])
assert ids.shape == dist.shape == within.shape == (n,), (ids.shape, dist.shape, within.shape)
theta = float(sys.argv[4])
assert (within == (dist.astype(np.float64) <= theta)).all()
a = np.load(sys.argv[2])
assert a.dtype == np.int64 and a.shape == (n,), (a.dtype, a.shape)
print("ok", ids.min(), ids.max(), a.max())
"#;
    let out = run_python(
        &py,
        dir.path(),
        script,
        &["r.npz", "ids.npy", "500", &format!("{:.17e}", dict.theta())],
    );
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words[0], "ok", "{out}");
    assert_eq!(words[1], "0");
    assert_eq!(words[2].parse::<usize>().unwrap(), dict.len() - 1);
}

#[test]
fn assign_ids_match_numpy_nearest_exemplar() {
    let Some(py) = python() else { return };
    let (dir, dict, _) = built_dictionary(600, 3);
    // Rows the dictionary has not seen: the same clusters resampled, and others.
    let mut x = Clusters::new(D, 6, 3).sample(300, 0.08, 77);
    x.extend(clustered(100, D, 4, 0.3, 78));
    write_npy(&dir.path().join("new.npy"), &x, D);
    exemplar(
        dir.path(),
        &[
            "assign",
            "-d",
            "d.safetensors",
            "-a",
            "new.npy",
            "-o",
            "r.npz",
        ],
    )
    .ok();
    let script = r#"
import sys
import numpy as np
from safetensors.numpy import load_file
t = load_file(sys.argv[1])
c = t["center"].astype(np.float64)
E = t["exemplars"].astype(np.float64)
x = np.load(sys.argv[2]).astype(np.float64)
z = np.load(sys.argv[3])
xc = x - c
u = xc / (np.linalg.norm(xc, axis=1, keepdims=True) + 1e-12)
s = u @ E.T
ids = s.argmax(axis=1)
top2 = np.sort(s, axis=1)[:, -2:] if E.shape[0] > 1 else np.concatenate([s, s], axis=1)
gap = top2[:, 1] - top2[:, 0]
diff = ids != z["ids"]
# A different choice is only acceptable between exemplars tied to float precision.
bad = np.flatnonzero(diff & (gap > 1e-6))
assert len(bad) == 0, ("ids differ", bad[:10], ids[bad[:10]], z["ids"][bad[:10]], gap[bad[:10]])
d = np.clip(1.0 - s[np.arange(len(u)), z["ids"]], 0.0, 2.0)
err = np.abs(d - z["distances"].astype(np.float64)).max()
assert err < 1e-5, err
print("ok", len(ids), int(diff.sum()), err)
"#;
    let out = run_python(
        &py,
        dir.path(),
        script,
        &["d.safetensors", "new.npy", "r.npz"],
    );
    assert!(out.starts_with("ok 400 "), "{out}");
    assert!(dict.len() > 1);
}

/// The dictionary through `safetensors.torch` (argv: the dictionary, the activations, the
/// `assign` output): every tensor with its dtype and the values numpy reads, the metadata, and
/// the nearest exemplar computed in torch. Prints a JSON object.
const TORCH_READS_DICTIONARY: &str = r#"
import json, sys
import numpy as np, torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

t = load_file(sys.argv[1])
n = load_numpy(sys.argv[1])
assert sorted(t) == sorted(n), (sorted(t), sorted(n))
for name, v in t.items():
    assert isinstance(v, torch.Tensor), name
    assert np.array_equal(v.numpy(), n[name], equal_nan=True), name
with safe_open(sys.argv[1], framework="pt") as f:
    meta = f.metadata()
    reservoir = f.get_slice("reservoir")
    shape = reservoir.get_shape()
    first = reservoir[0:1]
assert meta["format"] == "exemplar-dictionary"
info = json.loads(meta["exemplar"])
K, D = info["partitions"], info["dim"]
assert first.shape == (1, shape[1], D) and torch.equal(first, t["reservoir"][:1])
x = torch.from_numpy(np.load(sys.argv[2])).double()
c, E = t["center"].double(), t["exemplars"].double()
u = torch.nn.functional.normalize(x - c, dim=1, eps=0.0)
s = u @ E.T
ids = s.argmax(1)
z = np.load(sys.argv[3])
top2 = s.topk(2, dim=1).values
gap = (top2[:, 0] - top2[:, 1]).numpy()
differ = ids.numpy() != z["ids"]
assert not (differ & (gap > 1e-6)).any(), np.flatnonzero(differ)[:10]
dist = (1 - s.gather(1, torch.from_numpy(z["ids"])[:, None])[:, 0]).clamp(0, 2)
err = float((dist - torch.from_numpy(z["distances"]).double()).abs().max())
print(json.dumps({"K": K, "D": D, "dtypes": {k: str(v.dtype) for k, v in t.items()},
                  "shapes": {k: list(v.shape) for k, v in t.items()},
                  "theta": info["theta"], "distance_err": err, "rows": len(ids)}))
"#;

#[test]
fn dictionary_reads_with_safetensors_torch() {
    let Some(py) = python() else { return };
    let (dir, dict, _) = built_dictionary(600, 4);
    exemplar(
        dir.path(),
        &[
            "assign",
            "-d",
            "d.safetensors",
            "-a",
            "acts.npy",
            "-o",
            "r.npz",
        ],
    )
    .ok();
    let out: serde_json::Value = serde_json::from_str(
        run_python(
            &py,
            dir.path(),
            TORCH_READS_DICTIONARY,
            &["d.safetensors", "acts.npy", "r.npz"],
        )
        .trim(),
    )
    .unwrap();
    let (k, d) = (dict.len(), D);
    let n_ex = dict.info().examples_per_partition as usize;
    assert_eq!(out["K"], k);
    assert_eq!(out["D"], d);
    assert_eq!(out["theta"].as_f64().unwrap(), dict.theta());
    assert_eq!(out["rows"], 600);
    assert!(out["distance_err"].as_f64().unwrap() < 1e-5, "{out}");
    // docs/format.md's dtypes, as torch sees them.
    for (name, dtype, shape) in [
        ("center", "torch.float32", vec![d]),
        ("exemplars", "torch.float32", vec![k, d]),
        ("mean_directions", "torch.float32", vec![k, d]),
        ("direction_sums", "torch.float64", vec![k, d]),
        ("member_counts", "torch.int64", vec![k]),
        ("coherence", "torch.float32", vec![k]),
        ("closest_distances", "torch.float32", vec![k, n_ex]),
        ("closest_doc_ids", "torch.int64", vec![k, n_ex]),
        ("document_tokens", "torch.uint8", vec![]),
    ] {
        assert_eq!(out["dtypes"][name], dtype, "{name}: {out}");
        if !shape.is_empty() {
            assert_eq!(out["shapes"][name], serde_json::json!(shape), "{name}");
        }
    }
}

/// `exemplar encode`'s readouts recomputed in numpy from the dictionary file (argv: the
/// dictionary, the activations, k, then `readout:basis:codes.npy` triples). Prints, per triple,
/// the largest absolute difference and what the codes look like.
const ENCODE_REFERENCE: &str = r#"
import json, sys
import numpy as np
from safetensors.numpy import load_file

t = load_file(sys.argv[1])
x = np.load(sys.argv[2]).astype(np.float64)
k = int(sys.argv[3])
c = t["center"].astype(np.float64)
xc = x - c
u = xc / (np.linalg.norm(xc, axis=1, keepdims=True) + 1e-12)

def keep_top(s, k):
    # The k largest (ties to the lowest index: a stable sort), ReLU'd; zeros elsewhere.
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    out = np.zeros_like(s)
    np.put_along_axis(out, idx, np.maximum(np.take_along_axis(s, idx, 1), 0.0), 1)
    return out

out = {}
for spec in sys.argv[4:]:
    readout, basis, path = spec.split(":")
    w = t["exemplars" if basis == "exemplar" else "mean_directions"].astype(np.float64)
    want = {
        "signed": lambda: xc @ w.T,
        "cosine": lambda: u @ w.T,
        "topk": lambda: keep_top(xc @ w.T, k),
        "topk-cosine": lambda: keep_top(u @ w.T, k),
        "one-hot": lambda: np.eye(len(w))[(u @ w.T).argmax(1)],
    }[readout]()
    got = np.load(path)
    assert got.dtype == np.float32 and got.shape == want.shape, (spec, got.dtype, got.shape, want.shape)
    out[spec] = {"max_abs_err": float(np.abs(got - want).max()),
                 "scale": float(np.abs(want).max()),
                 "nonzero_per_row_max": int((got != 0).sum(1).max()),
                 "negative": int((got < 0).sum())}
print(json.dumps(out))
"#;

#[test]
fn encode_readouts_equal_numpy() {
    let Some(py) = python() else { return };
    let (dir, dict, _) = built_dictionary(500, 6);
    // Rows the dictionary has not seen, some far from every exemplar (negative codes).
    let mut x = Clusters::new(D, 6, 6).sample(200, 0.08, 91);
    x.extend(clustered(100, D, 3, 0.5, 92));
    write_npy(&dir.path().join("new.npy"), &x, D);
    let k = 3;
    assert!(dict.len() > 2 * k, "K = {}", dict.len());
    let mut specs = Vec::new();
    for readout in ["signed", "cosine", "topk", "topk-cosine", "one-hot"] {
        for basis in ["exemplar", "mean"] {
            let out = format!("{readout}-{basis}.npy");
            exemplar(
                dir.path(),
                &[
                    "encode",
                    "-d",
                    "d.safetensors",
                    "-a",
                    "new.npy",
                    "--readout",
                    readout,
                    "--basis",
                    basis,
                    "-k",
                    &k.to_string(),
                    "-o",
                    &out,
                ],
            )
            .ok();
            specs.push(format!("{readout}:{basis}:{out}"));
        }
    }
    let mut args = vec!["d.safetensors", "new.npy", "3"];
    args.extend(specs.iter().map(String::as_str));
    let out: serde_json::Value =
        serde_json::from_str(run_python(&py, dir.path(), ENCODE_REFERENCE, &args).trim()).unwrap();
    for spec in &specs {
        let r = &out[spec.as_str()];
        let (err, scale) = (
            r["max_abs_err"].as_f64().unwrap(),
            r["scale"].as_f64().unwrap(),
        );
        assert!(err <= 1e-5 * scale.max(1.0), "{spec}: {r}");
        let nonzero = r["nonzero_per_row_max"].as_u64().unwrap();
        let negative = r["negative"].as_u64().unwrap();
        let readout = spec.split(':').next().unwrap();
        match readout {
            // Dense and signed: rows far from the dictionary project negatively.
            "signed" | "cosine" => assert!(
                negative > 0 && nonzero as usize == dict.len(),
                "{spec}: {r}"
            ),
            "topk" | "topk-cosine" => {
                assert!(negative == 0 && nonzero as usize == k, "{spec}: {r}")
            }
            _ => assert!(negative == 0 && nonzero == 1, "{spec}: {r}"),
        }
    }
}

/// The installed TransformerLens on fixture checkpoints (argv: pairs of a checkpoint directory
/// and a safetensors file holding `input_ids` and exemplar's activation at each of its hook
/// names). Runs the tokens through every TransformerLens model class the installed version has
/// for Gemma, built with no hub access: `HookedTransformer` (TL < 4; what SAELens'
/// `HookedSAETransformer` is) from TransformerLens' own Gemma-2 / Gemma 3 config with the
/// checkpoint's sizes and weights, and `TransformerBridge.boot_transformers` on the directory.
/// Prints, per checkpoint, model class and hook name of ours: whether TransformerLens has that
/// hook, the shape of its activation there, and the relative difference of the values
/// (attention maps: the hidden entries, where a query may not look, must be the same ones;
/// values are compared where visible); and the names TransformerLens has in block 0 that we do
/// not.
#[cfg(feature = "torch")]
const TRANSFORMER_LENS_HOOKS: &str = r#"
import json, math, sys, warnings
warnings.simplefilter("ignore")
from importlib.metadata import version
import torch
from safetensors.torch import load_file

tl_version = version("transformer-lens")

def hooked_transformer(fixture, hf):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights
    from transformers import AutoModelForCausalLM
    # TransformerLens' own architecture settings for the family (a name-based config: no hub),
    # with this checkpoint's sizes.
    official = {"gemma2": "google/gemma-2-2b", "gemma3_text": "google/gemma-3-270m"}[hf["model_type"]]
    cfg = convert_hf_model_config(official)
    cfg.update(d_model=hf["hidden_size"], d_head=hf["head_dim"], n_heads=hf["num_attention_heads"],
               n_key_value_heads=hf["num_key_value_heads"], d_mlp=hf["intermediate_size"],
               n_layers=hf["num_hidden_layers"], n_ctx=hf["max_position_embeddings"],
               d_vocab=hf["vocab_size"], eps=hf["rms_norm_eps"], window_size=hf["sliding_window"],
               attn_types=["local" if t == "sliding_attention" else "global" for t in hf["layer_types"]],
               attn_scale=math.sqrt(hf["query_pre_attn_scalar"]), rotary_dim=hf["head_dim"],
               tokenizer_name=None)
    rope = hf.get("rope_parameters") or {}
    if "full_attention" in rope:
        cfg["rotary_base"] = rope["full_attention"]["rope_theta"]
        cfg["rotary_base_local"] = rope["sliding_attention"]["rope_theta"]
        if rope["full_attention"].get("rope_type") == "linear":
            cfg["rotary_scaling_factor"] = rope["full_attention"]["factor"]
    else:
        cfg["rotary_base"] = rope["rope_theta"]
    if hf.get("attn_logit_softcapping"):
        cfg["attn_scores_soft_cap"] = hf["attn_logit_softcapping"]
    if hf.get("final_logit_softcapping"):
        cfg["output_logits_soft_cap"] = hf["final_logit_softcapping"]
    tcfg = HookedTransformerConfig(**cfg)
    model = HookedTransformer(tcfg)
    weights = convert_gemma_weights(AutoModelForCausalLM.from_pretrained(fixture, dtype=torch.float32), tcfg)
    model.load_and_process_state_dict(weights, fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False,
                                      refactor_factored_attn_matrices=False)
    return model

def bridge(fixture, hf):
    from transformer_lens.model_bridge import TransformerBridge
    return TransformerBridge.boot_transformers(fixture, device="cpu", dtype=torch.float32)

def compare(model, ids, ours):
    with torch.no_grad():
        _, cache = model.run_with_cache(ids)
    res = {}
    for name, mine in ours.items():
        r = {"present": name in model.hook_dict, "in_cache": name in cache.cache_dict}
        if r["in_cache"]:
            theirs = cache[name].float()
            r["shape"] = list(theirs.shape)
            if theirs.shape == mine.shape:
                if name.endswith(("hook_attn_scores", "hook_pattern")):
                    # Hidden keys: a score of -inf or f32::MIN, a probability of exactly 0.
                    if name.endswith("hook_pattern"):
                        hidden_t, hidden_m = theirs == 0, mine == 0
                    else:
                        hidden_t = ~torch.isfinite(theirs) | (theirs < -1e30)
                        hidden_m = mine < -1e30
                    r["hidden_agree"] = bool(torch.equal(hidden_t, hidden_m))
                    r["hidden"] = int(hidden_m.sum())
                    keep = ~hidden_m
                    theirs, mine = theirs[keep], mine[keep]
                r["rel_err"] = float((theirs - mine).abs().max() / theirs.abs().max())
        res[name] = r
    prefix = "blocks.0."
    only = sorted(n[len(prefix):] for n in model.hook_dict if n.startswith(prefix) and n not in ours)
    return {"hooks": res, "theirs_only_block0": only}

builders = {"TransformerBridge": bridge}
if int(tl_version.split(".")[0]) < 4:
    builders["HookedTransformer"] = hooked_transformer
out = {"transformer_lens": tl_version, "checkpoints": {}}
args = sys.argv[1:]
for fixture, ours_path in zip(args[::2], args[1::2]):
    hf = json.load(open(f"{fixture}/config.json"))
    ours = load_file(ours_path)
    ids = ours.pop("input_ids")
    out["checkpoints"][fixture] = {cls: compare(build(fixture, hf), ids, ours)
                                   for cls, build in builders.items()}
print(json.dumps(out))
"#;

/// Every hook name exemplar accepts (`HookKind::ALL`) is a name the installed TransformerLens
/// gives a Gemma-2 and a Gemma 3 checkpoint, with the same shape and, on the same weights and
/// tokens, the same activation.
#[cfg(feature = "torch")]
#[test]
fn hook_names_are_transformer_lens_names_with_its_shapes_and_values() {
    use exemplar::model::{Gemma, HookKind, HookPoint};
    use tch::{Device, Kind, Tensor};
    let Some(py) = python() else { return };
    let Some(fixtures) = gemma_fixtures() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    let mut runs = Vec::new();
    for name in ["gqa", "gemma3"] {
        let dir = fixtures.join(name);
        let model = Gemma::load(&dir, Kind::Float, Device::Cpu).unwrap();
        let layers = model.config.num_hidden_layers;
        let hooks: Vec<HookPoint> = (0..layers)
            .flat_map(|layer| {
                HookKind::ALL
                    .iter()
                    .map(move |&kind| HookPoint { layer, kind })
            })
            .collect();
        // 14 tokens, BOS first: longer than both fixtures' sliding windows.
        let ids: Vec<i64> = [2, 17, 5, 99, 64, 3, 120, 41, 8, 77, 23, 56, 90, 11].to_vec();
        let t = ids.len() as i64;
        let input = Tensor::from_slice(&ids).view([1, t]);
        let mask = Tensor::ones([1, t], (Kind::Int64, Device::Cpu));
        let out = model.forward(&input, &mask, &hooks, &[], false).unwrap();
        assert_eq!(out.hooks.len(), hooks.len());
        let mut named: Vec<(String, Tensor)> = out
            .hooks
            .iter()
            .map(|(hp, x)| (hp.name(), x.to_kind(Kind::Float).contiguous()))
            .collect();
        named.push(("input_ids".into(), input.shallow_clone()));
        let file = tmp.path().join(format!("{name}.safetensors"));
        Tensor::write_safetensors(&named, &file).unwrap();
        let shapes: Vec<Vec<i64>> = hooks.iter().map(|hp| out.hooks[hp].size()).collect();
        args.push(dir.to_str().unwrap().to_string());
        args.push(file.to_str().unwrap().to_string());
        runs.push((name, dir, hooks, shapes));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report: serde_json::Value =
        serde_json::from_str(run_python(&py, tmp.path(), TRANSFORMER_LENS_HOOKS, &args).trim())
            .unwrap();
    for (name, dir, hooks, shapes) in &runs {
        let models = report["checkpoints"][dir.to_str().unwrap()]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: no report: {report}"));
        assert!(!models.is_empty());
        for (cls, m) in models {
            eprintln!(
                "{name}: TransformerLens {} {cls} has these block hooks we do not: {}",
                report["transformer_lens"], m["theirs_only_block0"]
            );
            for (hp, shape) in hooks.iter().zip(shapes) {
                let hook = hp.name();
                let r = &m["hooks"][&hook];
                let what = format!("{name} {cls} {hook}: {r}");
                assert_eq!(
                    r["present"], true,
                    "not a TransformerLens hook name: {what}"
                );
                assert_eq!(r["in_cache"], true, "{what}");
                assert_eq!(r["shape"], serde_json::json!(shape), "shape: {what}");
                if hp.kind.is_attention_map() {
                    assert_eq!(r["hidden_agree"], true, "masked entries: {what}");
                    assert!(r["hidden"].as_u64().unwrap() > 0, "{what}");
                }
                let e = r["rel_err"].as_f64().unwrap();
                assert!(e < 1e-4, "values: {what}");
            }
        }
    }
}

/// `--standardize` is exactly "standardise every dimension with μ and σ of the calibration rows,
/// then EP": numpy recomputes μ and σ, standardises the rows with the stored f32 μ and 1/σ, and a
/// plain build of those rows is the standardised build, bit for bit (exemplars, center, θ,
/// counts, assignments); `assign` and `encode` of raw rows on the standardised dictionary equal
/// those of numpy's rows on the plain one; a calibration file carries the scaling to a build.
#[test]
fn a_standardized_build_is_a_plain_build_of_rows_numpy_standardised() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Clustered rows with one "massive" dimension (offset 5,000, scale 300), as Gemma 3 has.
    let mut x = clustered(3000, 16, 40, 0.3, 3);
    for r in x.chunks_mut(16) {
        r[0] = 5000.0 + 300.0 * r[0];
    }
    write_npy(&root.join("x.npy"), &x, 16);
    let flags = [
        "-p",
        "5",
        "--batch-size",
        "500",
        "--calibration-activations",
        "1000",
    ];
    let build = |input: &str, out: &str, ids: &str, extra: &[&str]| {
        let mut args = vec![
            "build",
            "-a",
            input,
            "--no-saturation",
            "--assignments",
            ids,
            "-o",
            out,
        ];
        args.extend(flags);
        args.extend(extra);
        exemplar(root, &args).ok();
    };
    build(
        "x.npy",
        "std.safetensors",
        "ids_std.npy",
        &["--standardize"],
    );
    let script = r#"
import numpy as np
from safetensors.numpy import load_file
x = np.load("x.npy")
d = load_file("std.safetensors")
mu, s = d["scale_mean"], d["scale_inv_std"]
cal = x[:1000].astype(np.float64)  # the calibration rows: the first two batches of 500
m64, sd64 = cal.mean(axis=0), cal.std(axis=0)
assert np.allclose(mu, m64, rtol=1e-6, atol=1e-3), (mu, m64)
assert np.allclose(s, 1 / np.maximum(sd64, 1e-6 * sd64.max()), rtol=1e-6), (s, 1 / sd64)
z = ((x - mu) * s).astype(np.float32)  # f32: the subtraction, then the multiplication
np.save("z.npy", z)
print("center norm", float(np.linalg.norm(d["center"])))
"#;
    let out = run_python(&py, root, script, &[]);
    build("z.npy", "z.safetensors", "ids_z.npy", &[]);
    let (a, b) = (
        load_dict(&root.join("std.safetensors")),
        load_dict(&root.join("z.safetensors")),
    );
    assert!(a.scaling().is_some() && b.scaling().is_none());
    assert_eq!(a.len(), b.len());
    assert_eq!(a.exemplars(), b.exemplars());
    assert_eq!(a.center(), b.center());
    assert_eq!(a.theta(), b.theta());
    assert_eq!(a.member_counts(), b.member_counts());
    assert_eq!(
        std::fs::read(root.join("ids_std.npy")).unwrap(),
        std::fs::read(root.join("ids_z.npy")).unwrap()
    );
    assert!(out.contains("center norm"), "{out}");
    // Readers standardise raw rows themselves.
    exemplar(
        root,
        &[
            "assign",
            "-d",
            "std.safetensors",
            "-a",
            "x.npy",
            "-o",
            "a.npz",
        ],
    )
    .ok();
    exemplar(
        root,
        &[
            "assign",
            "-d",
            "z.safetensors",
            "-a",
            "z.npy",
            "-o",
            "b.npz",
        ],
    )
    .ok();
    exemplar(
        root,
        &[
            "encode",
            "-d",
            "std.safetensors",
            "-a",
            "x.npy",
            "--readout",
            "topk",
            "-k",
            "3",
            "-o",
            "a.npy",
        ],
    )
    .ok();
    exemplar(
        root,
        &[
            "encode",
            "-d",
            "z.safetensors",
            "-a",
            "z.npy",
            "--readout",
            "topk",
            "-k",
            "3",
            "-o",
            "b.npy",
        ],
    )
    .ok();
    run_python(
        &py,
        root,
        r#"
import numpy as np
a, b = np.load("a.npz"), np.load("b.npz")
for k in a.files:
    assert np.array_equal(a[k], b[k]), k
assert np.array_equal(np.load("a.npy"), np.load("b.npy"))
"#,
        &[],
    );
    // Without standardising, the massive dimension sets the geometry: another dictionary.
    build("x.npy", "raw.safetensors", "ids_raw.npy", &[]);
    assert_ne!(load_dict(&root.join("raw.safetensors")).len(), a.len());
    // A calibration file made with --standardize gives the same build.
    let mut args = vec![
        "calibrate",
        "-a",
        "x.npy",
        "--standardize",
        "-o",
        "cal.safetensors",
    ];
    args.extend(flags);
    exemplar(root, &args).ok();
    exemplar(
        root,
        &[
            "build",
            "-a",
            "x.npy",
            "-c",
            "cal.safetensors",
            "--batch-size",
            "500",
            "--no-saturation",
            "-o",
            "fromcal.safetensors",
        ],
    )
    .ok();
    let c = load_dict(&root.join("fromcal.safetensors"));
    assert_eq!(c.exemplars(), a.exemplars());
    assert_eq!(c.scaling(), a.scaling());
}

/// `exemplar quality` against numpy: the same scored rows, agreements, chance levels and κ,
/// recomputed from `exemplar assign`'s ids and distances, the sidecar's tokens and the
/// dictionary's stored exemplar text.
#[test]
fn quality_agreements_and_chance_levels_equal_numpy() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let d = 8;
    let x = clustered(2400, d, 30, 0.25, 11);
    // Tokens that follow the geometry loosely (signs of two coordinates), plus noise, so κ is
    // neither 0 nor 1; documents of 16 rows.
    let mut lines = String::new();
    for (doc, rows) in x.chunks(16 * d).enumerate() {
        let mut tokens = vec!["<bos>".to_string()];
        for (j, r) in rows.chunks(d).enumerate() {
            let noise = (doc * 16 + j) % 5 == 0;
            tokens.push(if noise {
                format!("n{}", (doc + j) % 3)
            } else {
                format!("s{}{}", (r[0] > 0.0) as u8, (r[1] > 0.0) as u8)
            });
        }
        let positions: Vec<usize> = (1..=rows.len() / d).collect();
        lines.push_str(
            &serde_json::json!({"doc_id": doc, "tokens": tokens, "positions": positions})
                .to_string(),
        );
        lines.push('\n');
    }
    for name in ["train", "held"] {
        let (a, b) = if name == "train" {
            (0, 1600)
        } else {
            (1600, 2400)
        };
        write_npy(&root.join(format!("{name}.npy")), &x[a * d..b * d], d);
        let docs: Vec<&str> = lines.lines().collect();
        std::fs::write(
            root.join(format!("{name}.npy.provenance.jsonl")),
            docs[a / 16..b / 16]
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        )
        .unwrap();
    }
    exemplar(
        root,
        &[
            "build",
            "-a",
            "train.npy",
            "-p",
            "20",
            "--batch-size",
            "400",
            "--no-saturation",
            "-o",
            "d.safetensors",
        ],
    )
    .ok();
    for name in ["train", "held"] {
        exemplar(
            root,
            &[
                "quality",
                "-d",
                "d.safetensors",
                "-a",
                &format!("{name}.npy"),
                "--json",
                "-o",
                &format!("q_{name}.json"),
            ],
        )
        .ok();
        exemplar(
            root,
            &[
                "assign",
                "-d",
                "d.safetensors",
                "-a",
                &format!("{name}.npy"),
                "-o",
                &format!("a_{name}.npz"),
            ],
        )
        .ok();
    }
    let script = r#"
import json, sys
import numpy as np
from safetensors.numpy import load_file
from safetensors import safe_open
name = sys.argv[1]
with safe_open("d.safetensors", framework="numpy") as f:
    theta = json.loads(f.metadata()["exemplar"])["theta"]
t = load_file("d.safetensors")
off = t["document_offsets"]
store = {int(i): json.loads(bytes(t["document_tokens"][off[j]:off[j + 1]]).decode()) for j, i in enumerate(t["document_ids"])}
def text(doc, pos):
    toks = store.get(int(doc))
    if toks is None or pos < 0 or pos >= len(toks):
        return None
    return toks[pos]
ex = [(text(dd, p), text(dd, p + 1), int(dd), int(p)) for dd, p in zip(t["exemplar_doc_ids"], t["exemplar_positions"])]
rows = []
for line in open(f"{name}.npy.provenance.jsonl"):
    r = json.loads(line)
    for p in r["positions"]:
        toks = r["tokens"]
        rows.append((toks[p], toks[p + 1] if p + 1 < len(toks) else None, r["doc_id"], p))
a = np.load(f"a_{name}.npz")
ids, dist = a["ids"], a["distances"]
S = []
for (tok, nxt, doc, pos), k, dd in zip(rows, ids, dist):
    if k < 0 or dd > theta:
        continue
    et, en, ed, ep = ex[k]
    if (ed, ep) == (doc, pos) and tok == et:
        continue
    S.append((tok, nxt, doc, et, en, ed))
n = len(S)
def chance(rv, ev):
    from collections import Counter
    p, q = Counter(v for v in rv if v is not None), Counter(v for v in ev if v is not None)
    return sum(c * q.get(v, 0) for v, c in p.items()) / n / n
A_tok = np.mean([s[0] == s[3] for s in S])
A_next = np.mean([s[1] is not None and s[1] == s[4] for s in S])
A_tn = np.mean([(s[0] == s[3]) or (s[1] is not None and s[1] == s[4]) for s in S])
A_doc = np.mean([s[2] == s[5] for s in S])
C_tok = chance([s[0] for s in S], [s[3] for s in S])
C_next = chance([s[1] for s in S], [s[4] for s in S])
pair = lambda a, b: (a, b) if a is not None and b is not None else None
C_both = chance([pair(s[0], s[1]) for s in S], [pair(s[3], s[4]) for s in S])
C_doc = chance([s[2] for s in S], [s[5] for s in S])
q = json.load(open(f"q_{name}.json"))
assert q["scored"] == n, (q["scored"], n)
assert q["within_theta"] == int(((ids >= 0) & (dist <= theta)).sum())
for key, A, C in [("token", A_tok, C_tok), ("next", A_next, C_next), ("token_or_next", A_tn, C_tok + C_next - C_both), ("document", A_doc, C_doc)]:
    g = q[key]
    assert abs(g["observed"] - A) < 1e-12 and abs(g["chance"] - C) < 1e-12, (key, g, A, C)
    assert abs(g["kappa"] - (A - C) / (1 - C)) < 1e-9, (key, g)
print(name, n, round(q["token"]["kappa"], 3), round(q["token_or_next"]["kappa"], 3))
"#;
    for name in ["train", "held"] {
        let out = run_python(&py, root, script, &[name]);
        eprintln!("{}", out.trim());
    }
    // The geometry-following tokens are well above chance on held-out rows.
    let q: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("q_held.json")).unwrap()).unwrap();
    assert!(q["token"]["kappa"].as_f64().unwrap() > 0.1, "{q}");
}
