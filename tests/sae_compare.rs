//! SAE interop, EP ↔ SAE correspondence and dictionary matching, end to end through the binary,
//! against the released SAELens itself (the export loads there and encodes alike; SAEs it writes
//! encode alike here) and against independent numpy/scipy/torch implementations in
//! `scripts/sae_fixtures.py` (python from `EXEMPLAR_PYTHON`, with the packages pinned in
//! scripts/venv.sh, among them `sae-lens==6.54.12`; without it the Python-backed tests skip with
//! a message, unless `EXEMPLAR_REQUIRE_PYTHON=1`, which makes the skip a failure).

mod common;

use common::*;
use exemplar::data::npy::{write_npz, NpyArray};
use exemplar::dictionary::Basis;
use exemplar::eval::assignment::linear_sum_assignment;
use exemplar::eval::compare::{Accumulator, CompareConfig};
use serde_json::Value;
use std::path::Path;

/// Runs `python scripts/sae_fixtures.py args...` in `dir`; returns stdout (panics on failure).
fn fixtures(py: &Path, dir: &Path, args: &[&str]) -> String {
    run_python_check(py, "sae_fixtures.py", dir, args)
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

fn read_json(path: &Path) -> Value {
    json_of(&std::fs::read_to_string(path).unwrap())
}

#[track_caller]
fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol, "{what}: {a} vs {b}");
}

/// Builds `d.safetensors` (θ at percentile `p`) from clustered `acts.npy` with a sidecar.
fn build(dir: &Path, acts: &str, p: &str, out: &str) {
    exemplar(
        dir,
        &[
            "build",
            "-a",
            acts,
            "-p",
            p,
            "--batch-size",
            "128",
            "--no-saturation",
            "-o",
            out,
        ],
    )
    .ok();
}

const D: usize = 16;

fn clustered_dir(n: usize, seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let x = clustered(n, D, 8, 0.15, seed);
    write_npy(&dir.path().join("acts.npy"), &x, D);
    write_sidecar(&dir.path().join("acts.npy"), n, 20, 0);
    dir
}

// ---------------------------------------------------------------------------------------------
// Assignment

#[test]
fn assignment_reaches_scipys_optimum_on_random_rectangular_matrices() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cases = json_of(&fixtures(&py, tmp.path(), &["lsa", "3"]));
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 30);
    for c in cases {
        let (n, m) = (
            c["n"].as_u64().unwrap() as usize,
            c["m"].as_u64().unwrap() as usize,
        );
        let maximize = c["maximize"].as_bool().unwrap();
        let cost: Vec<f64> = c["cost"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let (r, k) = linear_sum_assignment(&cost, n, m, maximize).unwrap();
        assert_eq!(r.len() as u64, c["pairs"].as_u64().unwrap());
        assert!(r.windows(2).all(|w| w[0] < w[1]), "rows ascending");
        let mut cols = k.clone();
        cols.sort_unstable();
        cols.dedup();
        assert_eq!(cols.len(), k.len(), "each column once");
        let total: f64 = r.iter().zip(&k).map(|(&i, &j)| cost[i * m + j]).sum();
        close(
            total,
            c["total"].as_f64().unwrap(),
            1e-9,
            &format!("{n}×{m} maximize={maximize}"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Correspondence: a hand-computed case

/// 8 samples, SAE F = 3, EP K = 2, top_k = 3, min_activations = 3, fed in two batches.
///
/// SAE: f0 active {0,1,2,6} → T = {0,1,2}; f1 active {2,3,4,5} → T = {3,4,5}; f2 active {3,5}
/// (2 < 3: not eligible, although it overlaps e1). Argmax per sample: f0 f0 f0 f1 f1 f1 f0 f0
/// (s7 is all zero → feature 0).
/// EP: e0 active {0,1,2,3,5,7} → T = {0,1,2} (s0, s1 tie at 2.0); e1 active {1,3,4,5} → codes
/// 1, 2, 2, 1: T = {3,4} + the tie s1/s5 at 1.0 → s1 (lowest sample) = {1,3,4}.
/// Overlaps: f0·e0 = 3, f0·e1 = 1 (s1), f1·e0 = 0, f1·e1 = 2 (s3, s4).
#[test]
fn hand_computed_correspondence() {
    let sae: [[f32; 3]; 8] = [
        [5.0, 0.0, 0.0],
        [4.0, 0.0, 0.0],
        [3.0, 1.0, 0.0],
        [0.0, 2.0, 0.5],
        [0.0, 3.0, 0.0],
        [0.0, 4.0, 1.0],
        [1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
    ];
    let ep: [[f32; 2]; 8] = [
        [2.0, -1.0],
        [2.0, 1.0],
        [1.0, -1.0],
        [0.5, 2.0],
        [-1.0, 2.0],
        [0.2, 1.0],
        [-3.0, 0.0],
        [0.1, 0.0],
    ];
    let config = CompareConfig {
        top_k: 3,
        min_activations: 3,
        bases: vec![Basis::Exemplar],
    };
    let mut acc = Accumulator::new(config, 3, 2).unwrap();
    for (lo, hi) in [(0, 5), (5, 8)] {
        let s: Vec<f32> = sae[lo..hi].iter().flatten().copied().collect();
        let e: Vec<f32> = ep[lo..hi].iter().flatten().copied().collect();
        acc.add(&s, &[e]).unwrap();
    }
    let res = acc.finish(0.25).unwrap();
    let r = &res.results[0];
    assert_eq!((r.n_eligible_sae, r.n_eligible_ep), (2, 2));
    // SAE → EP: f0 → e0 (3 of 3 each way), f1 → e1 (2 of 3, 2 of 3).
    let s2e: Vec<(usize, usize, u64)> = r
        .sae_to_ep
        .iter()
        .map(|m| (m.from, m.to, m.overlap))
        .collect();
    assert_eq!(s2e, vec![(0, 0, 3), (1, 1, 2)]);
    close(r.sae_to_ep[0].f1, 1.0, 1e-12, "f1 f0");
    close(r.sae_to_ep[1].precision, 2.0 / 3.0, 1e-12, "P f1");
    close(r.sae_to_ep[1].recall, 2.0 / 3.0, 1e-12, "R f1");
    close(r.sae_to_ep[1].f1, 2.0 / 3.0, 1e-12, "F1 f1");
    // EP → SAE: e0 → f0, e1 → f1 (overlap 2 beats f0's 1).
    let e2s: Vec<(usize, usize, u64)> = r
        .ep_to_sae
        .iter()
        .map(|m| (m.from, m.to, m.overlap))
        .collect();
    assert_eq!(e2s, vec![(0, 0, 3), (1, 1, 2)]);
    // Hungarian on [[1, 1/3], [0, 2/3]]: the diagonal, total 5/3.
    let h: Vec<(usize, usize)> = r
        .hungarian
        .iter()
        .map(|p| (p.sae_feature, p.ep_feature))
        .collect();
    assert_eq!(h, vec![(0, 0), (1, 1)]);
    // Headline: both EP regions have F1 > 0.5; mean = median = 5/6.
    assert_eq!(r.headline(), 1.0);
    close(r.ep_to_sae_stats().mean, 5.0 / 6.0, 1e-12, "mean F1");
    close(r.ep_to_sae_stats().median, 5.0 / 6.0, 1e-12, "median F1");
    // Coherence: only e0 has ≥ 5 positive codes; its top 5 (s0 s1 s2 s3 s5) have argmaxes
    // f0 f0 f0 f1 f1 → 2 distinct.
    assert_eq!(r.coherence.histogram, [0, 1, 0, 0, 0]);
    assert_eq!(r.coherence.frac_all_same, 0.0);
    assert_eq!(r.coherence.mean_distinct, 2.0);
    let j = res.to_json(Default::default());
    assert_eq!(
        j["results_by_basis"]["exemplar"]["summary"]["headline_frac_ep_f1_gt_0_5"],
        1.0
    );
    assert_eq!(j["config"]["top_k_sae"], 3);
}

// ---------------------------------------------------------------------------------------------
// Export and import

/// The released SAELens on `export-sae`'s (and `train-sae`'s) directories (argv: the directories, then the
/// activations `.npy`): `SAE.load_from_disk` (a strict `load_state_dict`: a tensor SAELens' class
/// does not have is an error), the cfg as SAELens' own config class writes it
/// (`SAE.from_dict`), the metadata SAELens exposes, and SAELens' `encode` of the activations
/// (`<dir>.codes.npy`). Each export is then saved again by SAELens (`save_model`) into
/// `<dir>.saelens`. Prints a JSON object per directory.
const SAELENS_READS_EXPORTS: &str = r#"
import json, sys, warnings
import numpy as np, torch
warnings.simplefilter("ignore")
import sae_lens
from sae_lens import SAE, TopKSAE

*dirs, x_path = sys.argv[1:]
x = torch.from_numpy(np.load(x_path))
out = {"sae_lens_version": sae_lens.__version__}
for d in dirs:
    cfg = json.load(open(f"{d}/cfg.json"))
    sae = SAE.load_from_disk(d)
    assert isinstance(sae, TopKSAE), type(sae)
    # Every field we write is a field of SAELens' config (none is silently dropped), and
    # SAELens builds the same SAE from the dict alone.
    written = sae.cfg.to_dict()
    assert sorted(cfg) == sorted(written), (sorted(cfg), sorted(written))
    rebuilt = SAE.from_dict(cfg).cfg.to_dict()
    assert rebuilt == written, ("SAE.from_dict and load_from_disk disagree", rebuilt, written)
    with torch.no_grad():
        codes = sae.encode(x)
    np.save(f"{d}.codes.npy", codes.numpy())
    sae.save_model(f"{d}.saelens")
    m = sae.cfg.metadata
    out[d] = {"class": type(sae).__name__, "k": sae.cfg.k, "d_in": sae.cfg.d_in,
              "d_sae": sae.cfg.d_sae, "hook_name": m.hook_name, "model_name": m.model_name,
              "exemplar": m.exemplar, "state_dict": sorted(sae.state_dict())}
print(json.dumps(out))
"#;

/// `export-sae` writes what the released SAELens loads (`SAE.load_from_disk`, `SAE.from_dict`),
/// with the build record's model and hook in its metadata, and SAELens' own `encode` equals
/// `exemplar assign` (k = 1) and `exemplar encode --readout topk` (k > 1, both bases).
#[test]
fn saelens_loads_the_export_and_its_encode_equals_assign_and_the_topk_readout() {
    let Some(py) = python() else { return };
    let dir = clustered_dir(900, 5);
    let root = dir.path();
    exemplar(
        root,
        &[
            "build",
            "-a",
            "acts.npy",
            "-p",
            "10",
            "--batch-size",
            "128",
            "--no-saturation",
            "--model-name",
            "gemma-2-2b",
            "--hook",
            "blocks.12.hook_resid_post",
            "-o",
            "d.safetensors",
        ],
    )
    .ok();
    // A standardised dictionary too: its SAE must take raw activations (W_enc = s ⊙ e,
    // b_dec = μ + c ⊘ s), not z-scores.
    exemplar(
        root,
        &[
            "build",
            "-a",
            "acts.npy",
            "-p",
            "10",
            "--batch-size",
            "128",
            "--no-saturation",
            "--standardize",
            "--model-name",
            "gemma-2-2b",
            "--hook",
            "blocks.12.hook_resid_post",
            "-o",
            "ds.safetensors",
        ],
    )
    .ok();
    let dict = load_dict(&root.join("d.safetensors"));
    let k = dict.len();
    assert!(k >= 4, "K = {k}");
    let dict_std = load_dict(&root.join("ds.safetensors"));
    assert!(dict_std.scaling().is_some() && dict_std.len() >= 4);
    let exports: [(&str, &str, &str, usize); 4] = [
        ("sae", "d.safetensors", "exemplar", 1),
        ("sae_k3", "d.safetensors", "exemplar", 3),
        ("sae_mean", "d.safetensors", "mean", 2),
        ("sae_std", "ds.safetensors", "exemplar", 2),
    ];
    for (out, dict_file, basis, kk) in exports {
        exemplar(
            root,
            &[
                "export-sae",
                "-d",
                dict_file,
                "--basis",
                basis,
                "-k",
                &kk.to_string(),
                "-o",
                out,
            ],
        )
        .ok();
        exemplar(
            root,
            &[
                "encode",
                "-d",
                dict_file,
                "-a",
                "acts.npy",
                "--readout",
                "topk",
                "-k",
                &kk.to_string(),
                "--basis",
                basis,
                "-o",
                &format!("{out}.topk.npy"),
            ],
        )
        .ok();
    }
    exemplar(
        root,
        &[
            "assign",
            "-d",
            "d.safetensors",
            "-a",
            "acts.npy",
            "-o",
            "ids.npz",
        ],
    )
    .ok();
    // `train-sae` writes the same layout (feature `torch`): SAELens reads that too.
    // The standardised dictionary's k = 1 export, to compare with its `assign`.
    exemplar(
        root,
        &[
            "export-sae",
            "-d",
            "ds.safetensors",
            "-k",
            "1",
            "-o",
            "sae_std1",
        ],
    )
    .ok();
    exemplar(
        root,
        &[
            "assign",
            "-d",
            "ds.safetensors",
            "-a",
            "acts.npy",
            "-o",
            "ids_std.npz",
        ],
    )
    .ok();
    let mut dirs = vec!["sae", "sae_k3", "sae_mean", "sae_std", "sae_std1"];
    if cfg!(feature = "torch") {
        exemplar(
            root,
            &[
                "train-sae",
                "-a",
                "acts.npy",
                "--width",
                "32",
                "-k",
                "4",
                "--sae-batch-size",
                "128",
                "-o",
                "trained",
            ],
        )
        .ok();
        exemplar(
            root,
            &[
                "sae-encode",
                "--sae",
                "trained",
                "-a",
                "acts.npy",
                "-o",
                "trained.ours.npy",
            ],
        )
        .ok();
        dirs.push("trained");
    }
    let mut args = dirs.clone();
    args.push("acts.npy");
    let report = json_of(&run_python(&py, root, SAELENS_READS_EXPORTS, &args));
    eprintln!("SAELens {}", report["sae_lens_version"]);
    if dirs.contains(&"trained") {
        assert_eq!(report["trained"]["k"], 4);
        assert_eq!(report["trained"]["d_sae"], 32);
        codes_close(
            f32_data(&read_npy(&root.join("trained.ours.npy"))),
            f32_data(&read_npy(&root.join("trained.codes.npy"))),
            "train-sae's SAE: sae-encode vs SAELens encode",
        );
    }
    for (out, dict_file, basis, kk) in exports {
        let dict = if dict_file == "ds.safetensors" {
            &dict_std
        } else {
            &dict
        };
        let k = dict.len();
        let r = &report[out];
        assert_eq!(r["class"], "TopKSAE", "{out}: {r}");
        assert_eq!(r["k"], kk);
        assert_eq!(r["d_in"], D, "d_in is the dictionary's width");
        assert_eq!(r["d_sae"], k);
        assert_eq!(
            r["state_dict"],
            serde_json::json!(["W_dec", "W_enc", "b_dec", "b_enc"])
        );
        // The build record's model and hook, as SAELens reads them.
        assert_eq!(r["hook_name"], "blocks.12.hook_resid_post");
        assert_eq!(r["model_name"], "gemma-2-2b");
        // EP's own data rides in metadata.exemplar, which SAELens keeps.
        let ep = &r["exemplar"];
        assert_eq!(ep["basis"], basis);
        assert_eq!(ep["standardized"], dict.scaling().is_some());
        assert_eq!(ep["n_partitions"], k);
        assert_eq!(ep["threshold_cos"].as_f64().unwrap(), dict.theta());
        let counts: Vec<u64> = ep["region_count"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(counts, dict.member_counts());
        // SAELens' encode equals the top-k readout, value for value.
        let theirs = read_npy(&root.join(format!("{out}.codes.npy")));
        let ours = read_npy(&root.join(format!("{out}.topk.npy")));
        assert_eq!(theirs.shape(), &[900, k]);
        codes_close(
            f32_data(&theirs),
            f32_data(&ours),
            &format!("{out}: SAELens encode vs topk readout"),
        );
        for row in f32_data(&theirs).chunks(k) {
            assert!(row.iter().filter(|&&v| v != 0.0).count() <= kk);
        }
        // What SAELens saves again reads here with the same codes and the same EP record.
        let again = exemplar::sae::Sae::load(&root.join(format!("{out}.saelens"))).unwrap();
        assert_eq!(again.metadata["exemplar"], *ep);
        assert_eq!(again.metadata["hook_name"], "blocks.12.hook_resid_post");
        exemplar(
            root,
            &[
                "sae-encode",
                "--sae",
                &format!("{out}.saelens"),
                "-a",
                "acts.npy",
                "-o",
                &format!("{out}.again.npy"),
            ],
        )
        .ok();
        codes_close(
            f32_data(&read_npy(&root.join(format!("{out}.again.npy")))),
            f32_data(&theirs),
            &format!("{out}: sae-encode of SAELens' save_model"),
        );
    }
    // k = 1 on the exemplars: SAELens' active feature is `exemplar assign`'s region, for the
    // plain and the standardised dictionary.
    for (ids_file, codes_file, k) in [
        ("ids.npz", "sae.codes.npy", k),
        ("ids_std.npz", "sae_std1.codes.npy", dict_std.len()),
    ] {
        let ids = exemplar::data::npy::read_npz(&root.join(ids_file)).unwrap();
        let ids = i64_data(&ids.iter().find(|(n, _)| n == "ids").unwrap().1).to_vec();
        let codes = read_npy(&root.join(codes_file));
        let mut active = 0;
        for (row, &id) in f32_data(&codes).chunks(k).zip(&ids) {
            if let Some(j) = row.iter().position(|&v| v > 0.0) {
                assert_eq!(
                    j as i64, id,
                    "{codes_file}: SAELens' active feature vs exemplar assign"
                );
                active += 1;
            }
        }
        assert_eq!(
            active, 900,
            "{codes_file}: every row has a positive projection on its exemplar"
        );
    }
    // The mean basis and an existing export is kept without --force.
    let before = std::fs::read(root.join("sae/sae_weights.safetensors")).unwrap();
    let e = exemplar(
        root,
        &[
            "export-sae",
            "-d",
            "d.safetensors",
            "--basis",
            "mean",
            "-o",
            "sae",
        ],
    )
    .err();
    assert_mentions(&e, &["exists", "cfg.json"]);
    assert_eq!(
        std::fs::read(root.join("sae/sae_weights.safetensors")).unwrap(),
        before
    );
    assert_no_temp_files(&root.join("sae"));
}

/// SAEs written by the released SAELens itself (`save_model`) from its inference classes, with
/// random weights (argv: the activations `.npy`, `min_activations`): standard (ReLU), JumpReLU
/// (thresholds that bite), TopK, and TopK with `rescale_acts_by_decoder_norm` (decoder rows of
/// unequal norms, so the rescaling changes which features win), with and without
/// `apply_b_dec_to_input`, one in bfloat16. Writes `<name>/` and the codes of SAELens' `encode`
/// after SAELens reads `<name>/` back in f32, `<name>.codes.npy`; prints, per SAE, its architecture and the number of features with at
/// least `min_activations` positive codes.
const SAELENS_WRITES_SAES: &str = r#"
import json, sys, warnings
import numpy as np, torch
warnings.simplefilter("ignore")
from sae_lens import SAE, StandardSAE, StandardSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig

x = torch.from_numpy(np.load(sys.argv[1]))
min_act = int(sys.argv[2])
n, d = x.shape
f = 48
torch.manual_seed(0)
meta = {"model_name": "gemma-2-2b", "hook_name": "blocks.12.hook_resid_post"}
specs = {
    "standard": (StandardSAE, StandardSAEConfig, {}, "float32", True),
    "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}, "float32", False),
    "topk": (TopKSAE, TopKSAEConfig, {"k": 4}, "float32", True),
    "topk_rescale": (TopKSAE, TopKSAEConfig, {"k": 4, "rescale_acts_by_decoder_norm": True}, "float32", True),
    "topk_bf16": (TopKSAE, TopKSAEConfig, {"k": 3}, "bfloat16", False),
}
out = {}
for name, (cls, cfg_cls, extra, dtype, apply_b_dec) in specs.items():
    cfg = cfg_cls(d_in=d, d_sae=f, dtype=dtype, apply_b_dec_to_input=apply_b_dec, **extra)
    for k, v in meta.items():
        cfg.metadata[k] = v
    sae = cls(cfg)
    with torch.no_grad():
        dt = sae.W_enc.dtype
        sae.W_enc.copy_((torch.randn(d, f) / d ** 0.5).to(dt))
        # Decoder rows of norms 0.2 .. 3, so that rescaling by them changes the top k.
        norms = torch.linspace(0.2, 3.0, f)[torch.randperm(f)]
        w_dec = torch.randn(f, d)
        sae.W_dec.copy_((w_dec / w_dec.norm(dim=1, keepdim=True) * norms[:, None]).to(dt))
        sae.b_enc.copy_((0.1 * torch.randn(f)).to(dt))
        sae.b_dec.copy_(x.float().mean(0).to(dt))
        if name == "jumprelu":
            sae.threshold.copy_(torch.rand(f) * 0.6)
    sae.save_model(name)
    # SAELens' encode of what it wrote, computed in f32 (as sae-encode does; a bf16 file is
    # widened exactly).
    sae = SAE.load_from_disk(name, dtype="float32")
    assert type(sae) is cls, type(sae)
    with torch.no_grad():
        codes = sae.encode(x)
    np.save(f"{name}.codes.npy", codes.numpy())
    active = (codes > 0).sum(0)
    info = {"architecture": sae.cfg.architecture(), "n_eligible": int((active >= min_act).sum()),
            "active": int((codes > 0).sum())}
    if name == "jumprelu":
        with torch.no_grad():
            pre = (x - sae.b_dec * sae.cfg.apply_b_dec_to_input) @ sae.W_enc + sae.b_enc
        info["bitten"] = int(((pre > 0) & (pre <= sae.threshold)).sum())
    if name == "topk_rescale":
        with torch.no_grad():
            pre = (x - sae.b_dec * sae.cfg.apply_b_dec_to_input) @ sae.W_enc + sae.b_enc
            plain = pre.topk(4, dim=-1).indices.sort(-1).values
            scaled = (pre * sae.W_dec.norm(dim=-1)).topk(4, dim=-1).indices.sort(-1).values
        info["rows_rescaling_changes"] = int((plain != scaled).any(-1).sum())
    out[name] = info
print(json.dumps(out))
"#;

/// An SAE that SAELens writes (`save_model`: standard, JumpReLU, TopK with and without
/// `rescale_acts_by_decoder_norm`, f32 and bf16) imports into `sae-encode` and `compare-sae`,
/// and `sae-encode` gives SAELens' own `encode`.
#[test]
fn saes_written_by_saelens_import_and_encode_like_saelens() {
    let Some(py) = python() else { return };
    let dir = clustered_dir(400, 8);
    let root = dir.path();
    build(root, "acts.npy", "10", "d.safetensors");
    let min_act = 5;
    let report = json_of(&run_python(
        &py,
        root,
        SAELENS_WRITES_SAES,
        &["acts.npy", &min_act.to_string()],
    ));
    assert!(
        report["jumprelu"]["bitten"].as_u64().unwrap() > 100,
        "{report}"
    );
    assert!(
        report["topk_rescale"]["rows_rescaling_changes"]
            .as_u64()
            .unwrap()
            > 50,
        "{report}"
    );
    for (name, arch) in [
        ("standard", "standard"),
        ("jumprelu", "jumprelu"),
        ("topk", "topk"),
        ("topk_rescale", "topk"),
        ("topk_bf16", "topk"),
    ] {
        let r = &report[name];
        assert_eq!(r["architecture"], arch);
        let sae = exemplar::sae::Sae::load(&root.join(name)).unwrap();
        assert_eq!(sae.activation.architecture(), arch, "{name}");
        assert_eq!(sae.metadata["hook_name"], "blocks.12.hook_resid_post");
        let out = format!("{name}.ours.npy");
        let run = exemplar(
            root,
            &["sae-encode", "--sae", name, "-a", "acts.npy", "-o", &out],
        )
        .ok();
        assert_mentions(&run.stdout, &["400 × 48", arch]);
        let theirs = read_npy(&root.join(format!("{name}.codes.npy")));
        let ours = read_npy(&root.join(&out));
        assert_eq!(ours.shape(), &[400, 48]);
        let active = f32_data(&theirs).iter().filter(|&&v| v > 0.0).count();
        assert_eq!(active as u64, r["active"].as_u64().unwrap());
        assert!(
            active > 400,
            "{name}: codes are not all zero ({active} active)"
        );
        codes_close(
            f32_data(&ours),
            f32_data(&theirs),
            &format!("{name}: sae-encode vs SAELens encode"),
        );
        // compare-sae reads it too, and finds the features SAELens' codes make eligible.
        let run = exemplar(
            root,
            &[
                "compare-sae",
                "-d",
                "d.safetensors",
                "--sae",
                name,
                "-a",
                "acts.npy",
                "--basis",
                "exemplar",
                "--top-k",
                "20",
                "--min-activations",
                &min_act.to_string(),
                "--json",
            ],
        )
        .ok();
        let c = json_of(&run.stdout);
        assert_eq!(c["config"]["sae_architecture"], arch);
        assert_eq!(c["config"]["n_sae_features"], 48);
        assert_eq!(
            c["results_by_basis"]["exemplar"]["n_eligible_sae"], r["n_eligible"],
            "{name}: eligible SAE features vs SAELens' codes"
        );
    }
}

fn codes_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: sizes");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}

#[test]
fn gemma_scope_npz_encodes_like_numpy_jumprelu() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let stats = json_of(&fixtures(
        &py,
        root,
        &["gemma-npz", ".", "12", "40", "300", "1"],
    ));
    assert!(
        stats["bitten"].as_u64().unwrap() > 100,
        "thresholds zero out positive pre-activations: {stats}"
    );
    let run = exemplar(
        root,
        &[
            "sae-encode",
            "--sae",
            "params.npz",
            "-a",
            "x.npy",
            "-o",
            "codes.npy",
        ],
    )
    .ok();
    assert_mentions(&run.stdout, &["300 × 40", "jumprelu"]);
    let got = read_npy(&root.join("codes.npy"));
    let want = read_npy(&root.join("expected.npy"));
    assert_eq!(got.shape(), &[300, 40]);
    codes_close(f32_data(&got), f32_data(&want), "jumprelu codes");
    // Without --force the codes stay; a GPU run (when this build and machine have one) agrees.
    let e = exemplar(
        root,
        &[
            "sae-encode",
            "--sae",
            "params.npz",
            "-a",
            "x.npy",
            "-o",
            "codes.npy",
        ],
    )
    .err();
    assert_mentions(&e, &["codes.npy", "exists"]);
    let cuda = exemplar(
        root,
        &[
            "sae-encode",
            "--sae",
            "params.npz",
            "-a",
            "x.npy",
            "--device",
            "cuda",
            "-o",
            "cuda.npy",
        ],
    );
    if cuda.success() {
        codes_close(
            f32_data(&read_npy(&root.join("cuda.npy"))),
            f32_data(&want),
            "cuda codes",
        );
    } else {
        let e = cuda.err();
        assert!(
            e.contains("torch") || e.contains("CUDA"),
            "--device cuda without a usable GPU says why:\n{e}"
        );
        assert_no_outputs(root, &["cuda.npy"]);
    }
}

#[test]
fn saelens_half_precision_and_pre_6_configs_load_and_encode() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // v6 cfg, standard ReLU, f16 weights, apply_b_dec_to_input = false.
    fixtures(
        &py,
        root,
        &["saelens", "v6", "10", "32", "200", "2", "float16", "0"],
    );
    // Pre-6.0 flat cfg: activation_fn_str = topk, activation_fn_kwargs.k = 3, bf16 weights.
    fixtures(
        &py,
        root,
        &["saelens", "flat", "10", "32", "200", "3", "bfloat16", "1"],
    );
    for (name, arch) in [("v6", "standard"), ("flat", "topk")] {
        let sae = exemplar::sae::Sae::load(&root.join(name)).unwrap();
        assert_eq!(sae.activation.architecture(), arch);
        assert_eq!(sae.metadata["hook_name"], "blocks.0.hook_resid_post");
        let x = format!("{name}/x.npy");
        let out = format!("{name}.npy");
        exemplar(root, &["sae-encode", "--sae", name, "-a", &x, "-o", &out]).ok();
        let got = read_npy(&root.join(&out));
        let want = read_npy(&root.join(format!("{name}/expected.npy")));
        codes_close(f32_data(&got), f32_data(&want), name);
        if arch == "topk" {
            for row in f32_data(&got).chunks(32) {
                assert!(row.iter().filter(|&&v| v != 0.0).count() <= 3);
            }
        }
    }
    assert_eq!(
        exemplar::sae::Sae::load(&root.join("flat"))
            .unwrap()
            .activation,
        exemplar::sae::SaeActivation::TopK { k: 3 }
    );
}

// ---------------------------------------------------------------------------------------------
// Correspondence vs an independent numpy/scipy implementation

#[test]
fn compare_sae_agrees_with_a_numpy_scipy_reference() {
    let Some(py) = python() else { return };
    let dir = clustered_dir(600, 9);
    let root = dir.path();
    build(root, "acts.npy", "8", "d.safetensors");
    std::fs::create_dir(root.join("gs")).unwrap();
    fixtures(
        &py,
        root,
        &["gemma-npz", "gs", &D.to_string(), "48", "10", "4"],
    );
    for (sae, top, min) in [("gs/params.npz", "25", "10"), ("sae", "15", "4")] {
        if sae == "sae" {
            exemplar(
                root,
                &["export-sae", "-d", "d.safetensors", "-k", "2", "-o", "sae"],
            )
            .ok();
        }
        let report = format!("report-{}.json", sae.replace('/', "_"));
        exemplar(
            root,
            &[
                "compare-sae",
                "-d",
                "d.safetensors",
                "--sae",
                sae,
                "-a",
                "acts.npy",
                "--top-k",
                top,
                "--min-activations",
                min,
                "--batch-size",
                "97",
                "-o",
                &report,
            ],
        )
        .ok();
        let got = read_json(&root.join(&report));
        let want = json_of(&fixtures(
            &py,
            root,
            &["compare-ref", sae, "d.safetensors", "acts.npy", top, min],
        ));
        assert_eq!(got["bases"], serde_json::json!(["exemplar", "mean"]));
        assert_eq!(got["config"]["n_tokens"], 600);
        for basis in ["exemplar", "mean"] {
            let g = &got["results_by_basis"][basis];
            let w = &want[basis];
            let what = format!("{sae} {basis}");
            assert_eq!(g["n_eligible_sae"], w["n_eligible_sae"], "{what}");
            assert_eq!(g["n_eligible_ep"], w["n_eligible_ep"], "{what}");
            for dir in ["sae_to_ep", "ep_to_sae"] {
                let (ga, wa) = (g[dir].as_array().unwrap(), w[dir].as_array().unwrap());
                assert!(!wa.is_empty(), "{what} {dir}: the fixture has matches");
                assert_eq!(ga.len(), wa.len(), "{what} {dir}");
                for (a, b) in ga.iter().zip(wa) {
                    for key in ["sae_feature", "ep_feature", "overlap"] {
                        assert_eq!(a[key], b[key], "{what} {dir} {key}\n{a}\n{b}");
                    }
                    for key in ["precision", "recall", "f1"] {
                        close(
                            a[key].as_f64().unwrap(),
                            b[key].as_f64().unwrap(),
                            1e-12,
                            &format!("{what} {dir} {key}"),
                        );
                    }
                }
            }
            let total: f64 = g["hungarian"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["f1"].as_f64().unwrap())
                .sum();
            close(
                total,
                w["hungarian_total"].as_f64().unwrap(),
                1e-9,
                &format!("{what} Hungarian total F1"),
            );
            let c = &g["coherence"];
            let hist: Vec<Value> = (1..=5)
                .map(|i| c["histogram"][i.to_string()].clone())
                .collect();
            assert_eq!(Value::Array(hist), w["histogram"], "{what} coherence");
            assert_eq!(c["frac_all_same"], w["frac_all_same"], "{what}");
            close(
                c["mean_distinct"].as_f64().unwrap(),
                w["mean_distinct"].as_f64().unwrap(),
                1e-12,
                &what,
            );
            let s = &g["summary"];
            close(
                s["headline_frac_ep_f1_gt_0_5"].as_f64().unwrap(),
                w["headline"].as_f64().unwrap(),
                1e-12,
                &what,
            );
            close(
                s["ep_to_sae"]["mean_f1"].as_f64().unwrap(),
                w["ep_mean_f1"].as_f64().unwrap(),
                1e-12,
                &what,
            );
            close(
                s["ep_to_sae"]["median_f1"].as_f64().unwrap(),
                w["ep_median_f1"].as_f64().unwrap(),
                1e-12,
                &what,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dictionary matching

fn csv_rows(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().split(',').map(String::from).collect();
    // Prompts in these fixtures hold no commas or quotes, so a plain split is exact.
    let rows = lines
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    (header, rows)
}

#[test]
fn match_agrees_with_scipy_and_writes_the_tables() {
    let Some(py) = python() else { return };
    let dir = clustered_dir(800, 21);
    let root = dir.path();
    build(root, "acts.npy", "5", "a.safetensors");
    build(root, "acts.npy", "12", "b.safetensors");
    let (da, db) = (
        load_dict(&root.join("a.safetensors")),
        load_dict(&root.join("b.safetensors")),
    );
    assert_ne!(da.len(), db.len(), "the fixture needs different K");
    for (basis, cutoff) in [("exemplar", "0.9"), ("mean", "0.95")] {
        let out = format!("m-{basis}");
        exemplar(
            root,
            &[
                "match",
                "a.safetensors",
                "b.safetensors",
                "-o",
                &out,
                "--cutoff",
                cutoff,
                "--basis",
                basis,
            ],
        )
        .ok();
        let want = json_of(&fixtures(
            &py,
            root,
            &["match-ref", "a.safetensors", "b.safetensors", cutoff, basis],
        ));
        let s = read_json(&root.join(&out).join("summary.json"));
        assert_eq!(s["k_a"], da.len());
        assert_eq!(s["k_b"], db.len());
        assert_eq!(s["n_pairs"], want["n_pairs"]);
        for key in ["mean", "median", "p10", "p90", "min", "max"] {
            close(
                s["cos"][key].as_f64().unwrap(),
                want[&format!("cos_{key}")].as_f64().unwrap(),
                1e-5,
                key,
            );
        }
        for group in ["dist_over_theta_a", "dist_over_theta_b"] {
            for key in ["mean", "median", "p10", "p90"] {
                let (g, w) = (
                    s[group][key].as_f64().unwrap(),
                    want[group][key].as_f64().unwrap(),
                );
                close(
                    g,
                    w,
                    1e-5 * w.abs().max(1.0),
                    &format!("{basis} {group} {key}"),
                );
            }
        }
        for key in [
            "median_cos_mean",
            "p10_cos_mean",
            "median_cos_exemplar",
            "p10_cos_exemplar",
            "gap_median_mean_minus_exemplar",
        ] {
            let (g, w) = (
                s["seed_stability"][key].as_f64().unwrap(),
                want["seed_stability"][key].as_f64().unwrap(),
            );
            close(g, w, 1e-5, &format!("{basis} seed_stability {key}"));
        }
        let (header, rows) = csv_rows(&root.join(&out).join("matches.csv"));
        assert_eq!(
            &header[..10],
            [
                "i_a",
                "i_b",
                "cos",
                "dist",
                "dist_over_theta_a",
                "dist_over_theta_b",
                "members_a",
                "members_b",
                "top_prompt_a",
                "top_prompt_b"
            ]
        );
        assert_eq!(rows.len() as u64, want["n_pairs"].as_u64().unwrap());
        let cos: Vec<f64> = rows.iter().map(|r| r[2].parse().unwrap()).collect();
        close(
            cos.iter().sum(),
            want["total_cos"].as_f64().unwrap(),
            1e-4,
            "total cos",
        );
        assert!(
            cos.windows(2).all(|w| w[0] >= w[1]),
            "sorted by cos descending"
        );
        let r0 = &rows[0];
        let (i_a, i_b): (usize, usize) = (r0[0].parse().unwrap(), r0[1].parse().unwrap());
        assert_eq!(r0[6], da.member_count(i_a).to_string());
        assert_eq!(r0[7], db.member_count(i_b).to_string());
        let theta_a = da.theta();
        close(
            r0[4].parse::<f64>().unwrap(),
            (1.0 - cos[0]) / theta_a,
            1e-9,
            "dist/θa",
        );
        assert!(
            r0[8].contains("[[") && r0[8].chars().count() <= 160,
            "top prompt of A: {}",
            r0[8]
        );
        let persisted = rows.iter().filter(|r| r[12] == "true").count() as u64;
        // Ties in cos could change which pairs persist, not their number.
        assert_eq!(persisted, want["n_persisted"].as_u64().unwrap());
        assert_eq!(s["n_persisted"], want["n_persisted"]);
        for (file, key, dict) in [
            ("a_dropped.csv", "dropped", &da),
            ("b_introduced.csv", "introduced", &db),
        ] {
            let (h, r) = csv_rows(&root.join(&out).join(file));
            assert_eq!(h, ["i", "members", "top_prompt"]);
            let mut ids: Vec<u64> = r.iter().map(|x| x[0].parse().unwrap()).collect();
            let members: Vec<u64> = r.iter().map(|x| x[1].parse().unwrap()).collect();
            assert!(
                members.windows(2).all(|w| w[0] >= w[1]),
                "{file} by members descending"
            );
            for (x, &m) in r.iter().zip(&members) {
                assert_eq!(dict.member_count(x[0].parse().unwrap()), m);
            }
            ids.sort_unstable();
            let want_ids: Vec<u64> = want[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(ids, want_ids, "{basis} {file}");
        }
    }
    // Never overwritten without --force; with it, rewritten.
    let before = std::fs::read(root.join("m-mean/summary.json")).unwrap();
    let e = exemplar(
        root,
        &["match", "a.safetensors", "b.safetensors", "-o", "m-mean"],
    )
    .err();
    assert_mentions(&e, &["exists"]);
    assert_eq!(
        std::fs::read(root.join("m-mean/summary.json")).unwrap(),
        before
    );
    exemplar(
        root,
        &[
            "match",
            "a.safetensors",
            "b.safetensors",
            "-o",
            "m-mean",
            "--force",
            "--json",
        ],
    )
    .ok();
    assert_ne!(
        std::fs::read(root.join("m-mean/summary.json")).unwrap(),
        before,
        "now on the exemplar basis"
    );
    // A dictionary of another width is refused and nothing is written.
    let other = tempfile::tempdir().unwrap();
    let x = clustered(300, 8, 3, 0.1, 1);
    write_npy(&other.path().join("acts.npy"), &x, 8);
    build(other.path(), "acts.npy", "10", "c.safetensors");
    std::fs::copy(
        other.path().join("c.safetensors"),
        root.join("c.safetensors"),
    )
    .unwrap();
    let e = exemplar(
        root,
        &["match", "a.safetensors", "c.safetensors", "-o", "m-bad"],
    )
    .err();
    assert_mentions(&e, &["dimension", "16", "8"]);
    assert!(!root.join("m-bad").exists());
}

// ---------------------------------------------------------------------------------------------
// End to end on the demo data, and bad inputs

fn demo() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/demo/minilm-l6-layer3.safetensors")
        .display()
        .to_string()
}

#[test]
fn demo_data_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let demo = demo();
    for (p, out) in [("3", "p3.safetensors"), ("10", "p10.safetensors")] {
        exemplar(
            root,
            &[
                "build",
                "-a",
                &demo,
                "-p",
                p,
                "--batch-size",
                "1024",
                "--no-saturation",
                "-o",
                out,
            ],
        )
        .ok();
    }
    let run = exemplar(
        root,
        &["match", "p3.safetensors", "p10.safetensors", "-o", "m"],
    )
    .ok();
    assert_mentions(&run.stdout, &["persisted", "dropped", "introduced"]);
    let s = read_json(&root.join("m/summary.json"));
    let (ka, kb) = (s["k_a"].as_u64().unwrap(), s["k_b"].as_u64().unwrap());
    assert!(ka > kb && kb > 1, "finer p3 has more regions: {ka} vs {kb}");
    assert_eq!(s["n_pairs"], kb);
    assert_eq!(
        s["n_dropped"].as_u64().unwrap(),
        ka - s["n_persisted"].as_u64().unwrap()
    );
    let (_, rows) = csv_rows(&root.join("m/matches.csv"));
    assert!(
        rows.iter().all(|r| r.len() >= 13),
        "at least 13 columns (a prompt holding commas is quoted, so a plain split gives more)"
    );
    // Both builds start from the same rows, so some exemplars are the same vector: cos is
    // clamped to exactly 1 (dist 0), never above.
    let cos: Vec<f64> = rows.iter().map(|r| r[2].parse().unwrap()).collect();
    assert!(
        cos.iter().all(|&c| c <= 1.0) && cos.contains(&1.0),
        "{:?}",
        &cos[..3]
    );
    assert!(
        rows.iter().all(|r| r[3].parse::<f64>().unwrap() >= 0.0),
        "dist ≥ 0"
    );
    exemplar(root, &["export-sae", "-d", "p3.safetensors", "-o", "sae3"]).ok();
    exemplar(
        root,
        &[
            "export-sae",
            "-d",
            "p10.safetensors",
            "--basis",
            "mean",
            "-o",
            "sae10",
        ],
    )
    .ok();
    let run = exemplar(
        root,
        &[
            "compare-sae",
            "-d",
            "p3.safetensors",
            "--sae",
            "sae10",
            "-a",
            &demo,
            "--n-activations",
            "3000",
            "--top-k",
            "50",
            "--min-activations",
            "10",
            "-o",
            "cmp.json",
        ],
    )
    .ok();
    assert_mentions(
        &run.stdout,
        &["headline", "SAE → EP", "EP → SAE", "Hungarian", "coherence"],
    );
    let r = read_json(&root.join("cmp.json"));
    assert_eq!(r["config"]["n_tokens"], 3000);
    for b in ["exemplar", "mean"] {
        let h = r["results_by_basis"][b]["summary"]["headline_frac_ep_f1_gt_0_5"]
            .as_f64()
            .unwrap();
        assert!((0.0..=1.0).contains(&h));
        assert!(!r["results_by_basis"][b]["hungarian"]
            .as_array()
            .unwrap()
            .is_empty());
    }
    // A dictionary against its own export on the exemplar basis: the SAE feature k is active
    // only on region k's rows, while EP's signed code (x − c)·e_k ranks all rows (and weighs
    // by ‖x − c‖), so the top sets differ at the edges — but most regions' best SAE match is
    // their own feature (here about 70%; a random pairing of ~200 regions would give < 1%).
    let run = exemplar(
        root,
        &[
            "compare-sae",
            "-d",
            "p3.safetensors",
            "--sae",
            "sae3",
            "-a",
            &demo,
            "--basis",
            "exemplar",
            "--top-k",
            "50",
            "--min-activations",
            "10",
            "--json",
        ],
    )
    .ok();
    let r = json_of(&run.stdout);
    let e2s = r["results_by_basis"]["exemplar"]["ep_to_sae"]
        .as_array()
        .unwrap();
    assert!(e2s.len() > 50, "{} regions matched", e2s.len());
    let same = e2s
        .iter()
        .filter(|m| m["ep_feature"] == m["sae_feature"])
        .count();
    assert!(
        same * 2 > e2s.len(),
        "{same} of {} regions match their own feature",
        e2s.len()
    );
    // Encode with the export and a Gemma-Scope-style npz of the demo's width.
    exemplar(
        root,
        &[
            "sae-encode",
            "--sae",
            "sae3",
            "-a",
            &demo,
            "-o",
            "codes.npy",
        ],
    )
    .ok();
    let codes = read_npy(&root.join("codes.npy"));
    assert_eq!(codes.shape(), &[4548, ka as usize]);
    let mut state = 99u64;
    let mut rnd = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
    };
    let (d, f) = (384usize, 64usize);
    let m = |v: Vec<f32>, shape: &[usize]| NpyArray::new(shape.to_vec(), v).unwrap();
    write_npz(
        &root.join("gs.npz"),
        &[
            ("W_enc", m((0..d * f).map(|_| rnd()).collect(), &[d, f])),
            ("W_dec", m((0..f * d).map(|_| rnd()).collect(), &[f, d])),
            ("b_enc", m(vec![0.0; f], &[f])),
            ("b_dec", m(vec![0.0; d], &[d])),
            ("threshold", m(vec![0.05; f], &[f])),
        ],
        false,
    )
    .unwrap();
    let run = exemplar(
        root,
        &[
            "compare-sae",
            "-d",
            "p10.safetensors",
            "--sae",
            "gs.npz",
            "-a",
            &demo,
            "--top-k",
            "30",
            "--min-activations",
            "5",
        ],
    )
    .ok();
    assert_mentions(&run.stdout, &["jumprelu", "basis exemplar", "basis mean"]);
}

#[test]
fn bad_inputs_give_clear_errors_and_leave_nothing_behind() {
    let dir = clustered_dir(300, 3);
    let root = dir.path();
    build(root, "acts.npy", "10", "d.safetensors");
    let m = |v: Vec<f32>, shape: &[usize]| NpyArray::new(shape.to_vec(), v).unwrap();
    // An npz without `threshold`.
    write_npz(
        &root.join("partial.npz"),
        &[
            ("W_enc", m(vec![0.1; D * 4], &[D, 4])),
            ("W_dec", m(vec![0.1; 4 * D], &[4, D])),
            ("b_enc", m(vec![0.0; 4], &[4])),
            ("b_dec", m(vec![0.0; D], &[D])),
        ],
        false,
    )
    .unwrap();
    let e = exemplar(
        root,
        &[
            "sae-encode",
            "--sae",
            "partial.npz",
            "-a",
            "acts.npy",
            "-o",
            "c.npy",
        ],
    )
    .err();
    assert_mentions(&e, &["partial.npz", "threshold"]);
    // An npz of another width: the activations' width is named.
    write_npz(
        &root.join("wide.npz"),
        &[
            ("W_enc", m(vec![0.1; 20 * 4], &[20, 4])),
            ("W_dec", m(vec![0.1; 4 * 20], &[4, 20])),
            ("b_enc", m(vec![0.0; 4], &[4])),
            ("b_dec", m(vec![0.0; 20], &[20])),
            ("threshold", m(vec![0.0; 4], &[4])),
        ],
        false,
    )
    .unwrap();
    let e = exemplar(
        root,
        &[
            "sae-encode",
            "--sae",
            "wide.npz",
            "-a",
            "acts.npy",
            "-o",
            "c.npy",
        ],
    )
    .err();
    assert_mentions(&e, &["acts.npy", "d_in", "20", "16"]);
    let e = exemplar(
        root,
        &[
            "compare-sae",
            "-d",
            "d.safetensors",
            "--sae",
            "wide.npz",
            "-a",
            "acts.npy",
            "-o",
            "r.json",
        ],
    )
    .err();
    assert_mentions(&e, &["dimension", "20", "16"]);
    // cfg.json that disagrees with the weights.
    exemplar(root, &["export-sae", "-d", "d.safetensors", "-o", "sae"]).ok();
    let cfg = root.join("sae/cfg.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("\"d_in\": {D}"), "\"d_in\": 17");
    std::fs::write(&cfg, text).unwrap();
    let e = exemplar(
        root,
        &[
            "sae-encode",
            "--sae",
            "sae",
            "-a",
            "acts.npy",
            "-o",
            "c.npy",
        ],
    )
    .err();
    assert_mentions(&e, &["sae_weights.safetensors", "W_enc", "expected [17"]);
    let e = exemplar(
        root,
        &[
            "compare-sae",
            "-d",
            "d.safetensors",
            "--sae",
            "sae",
            "-a",
            "acts.npy",
            "-o",
            "r.json",
        ],
    )
    .err();
    assert_mentions(&e, &["W_enc"]);
    // Not an SAE at all.
    let e = exemplar(
        root,
        &[
            "sae-encode",
            "--sae",
            "acts.npy",
            "-a",
            "acts.npy",
            "-o",
            "c.npy",
        ],
    )
    .err();
    assert_mentions(&e, &["not an SAE", "cfg.json"]);
    assert_no_outputs(root, &["c.npy", "r.json"]);
    // Existing outputs are kept without --force.
    std::fs::write(root.join("r.json"), "keep").unwrap();
    exemplar(
        root,
        &["export-sae", "-d", "d.safetensors", "-o", "sae", "--force"],
    )
    .ok();
    let e = exemplar(
        root,
        &[
            "compare-sae",
            "-d",
            "d.safetensors",
            "--sae",
            "sae",
            "-a",
            "acts.npy",
            "-o",
            "r.json",
        ],
    )
    .err();
    assert_mentions(&e, &["r.json", "exists"]);
    assert_eq!(
        std::fs::read_to_string(root.join("r.json")).unwrap(),
        "keep"
    );
    std::fs::create_dir(root.join("m")).unwrap();
    std::fs::write(root.join("m/summary.json"), "keep").unwrap();
    let e = exemplar(
        root,
        &["match", "d.safetensors", "d.safetensors", "-o", "m"],
    )
    .err();
    assert_mentions(&e, &["summary.json", "exists"]);
    assert_eq!(listing(&root.join("m")), ["summary.json"]);
    // Bad parameters.
    let e = exemplar(
        root,
        &["export-sae", "-d", "d.safetensors", "-k", "0", "-o", "sae0"],
    )
    .err();
    assert_mentions(&e, &["k"]);
    assert!(!root.join("sae0").exists());
    let e = exemplar(
        root,
        &[
            "match",
            "d.safetensors",
            "d.safetensors",
            "-o",
            "m2",
            "--cutoff",
            "1.5",
        ],
    )
    .err();
    assert_mentions(&e, &["cutoff"]);
    assert!(!root.join("m2").exists());
    assert_no_temp_files(root);
}

/// Every subcommand on activations of a small random Gemma-2 (the HF fixture made by
/// scripts/gemma_fixtures.py): activations → two dictionaries → match, export-sae, sae-encode,
/// compare-sae against the export and against a Gemma-Scope-style npz of the model's width.
#[cfg(feature = "torch")]
#[test]
fn small_random_gemma2_end_to_end() {
    let Some(root_fx) = gemma_fixtures() else {
        return;
    };
    let model = root_fx.join("gqa");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let docs: String = (0..24)
        .map(|i| {
            format!(
                "document {i} says the cat sat on mat {} and the dog ran {}\n",
                i * 7,
                i % 5
            )
        })
        .collect();
    std::fs::write(root.join("docs.txt"), docs).unwrap();
    exemplar(
        root,
        &[
            "activations",
            "--model",
            model.to_str().unwrap(),
            "--hook",
            "blocks.2.hook_resid_post",
            "--text",
            "docs.txt",
            "--ctx",
            "24",
            "-o",
            "acts.safetensors",
        ],
    )
    .ok();
    for (p, out) in [("5", "a.safetensors"), ("20", "b.safetensors")] {
        build(root, "acts.safetensors", p, out);
    }
    let (da, db) = (
        load_dict(&root.join("a.safetensors")),
        load_dict(&root.join("b.safetensors")),
    );
    assert_eq!(da.dim(), 64);
    exemplar(
        root,
        &[
            "match",
            "a.safetensors",
            "b.safetensors",
            "-o",
            "m",
            "--basis",
            "mean",
        ],
    )
    .ok();
    let s = read_json(&root.join("m/summary.json"));
    assert_eq!(
        s["n_pairs"].as_u64().unwrap() as usize,
        da.len().min(db.len())
    );
    let (_, rows) = csv_rows(&root.join("m/matches.csv"));
    assert!(
        rows[0][8].contains("[["),
        "top prompts come from the sidecar: {:?}",
        rows[0]
    );
    exemplar(root, &["export-sae", "-d", "a.safetensors", "-o", "sae"]).ok();
    exemplar(
        root,
        &[
            "sae-encode",
            "--sae",
            "sae",
            "-a",
            "acts.safetensors",
            "-o",
            "codes.npy",
        ],
    )
    .ok();
    // The export's k = 1 codes: the active feature is the nearest exemplar where one is active.
    exemplar(
        root,
        &[
            "assign",
            "-d",
            "a.safetensors",
            "-a",
            "acts.safetensors",
            "-o",
            "ids.npz",
        ],
    )
    .ok();
    let ids = exemplar::data::npy::read_npz(&root.join("ids.npz")).unwrap();
    let ids = i64_data(&ids.iter().find(|(n, _)| n == "ids").unwrap().1).to_vec();
    let codes = read_npy(&root.join("codes.npy"));
    let k = da.len();
    let mut active = 0;
    for (row, &id) in f32_data(&codes).chunks(k).zip(&ids) {
        if let Some(j) = row.iter().position(|&v| v > 0.0) {
            assert_eq!(j as i64, id);
            active += 1;
        }
    }
    assert!(
        active * 10 >= ids.len() * 9,
        "{active} of {} rows active",
        ids.len()
    );
    exemplar(
        root,
        &[
            "compare-sae",
            "-d",
            "b.safetensors",
            "--sae",
            "sae",
            "-a",
            "acts.safetensors",
            "--top-k",
            "20",
            "--min-activations",
            "3",
            "-o",
            "cmp.json",
        ],
    )
    .ok();
    let r = read_json(&root.join("cmp.json"));
    assert!(!r["results_by_basis"]["exemplar"]["ep_to_sae"]
        .as_array()
        .unwrap()
        .is_empty());
    let (d, f) = (64usize, 32usize);
    let mut state = 5u64;
    let mut rnd = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let m = |v: Vec<f32>, shape: &[usize]| NpyArray::new(shape.to_vec(), v).unwrap();
    write_npz(
        &root.join("gs.npz"),
        &[
            ("W_enc", m((0..d * f).map(|_| rnd()).collect(), &[d, f])),
            ("W_dec", m((0..f * d).map(|_| rnd()).collect(), &[f, d])),
            ("b_enc", m(vec![0.0; f], &[f])),
            ("b_dec", m(vec![0.0; d], &[d])),
            ("threshold", m(vec![0.1; f], &[f])),
        ],
        false,
    )
    .unwrap();
    exemplar(
        root,
        &[
            "compare-sae",
            "-d",
            "a.safetensors",
            "--sae",
            "gs.npz",
            "-a",
            "acts.safetensors",
            "--top-k",
            "20",
            "--min-activations",
            "3",
            "--json",
        ],
    )
    .ok();
    // A dictionary built from text knows its model and hook; the export hands both to SAELens,
    // with the context size and the BOS.
    let m = model.to_str().unwrap();
    exemplar(
        root,
        &[
            "build",
            "--model",
            m,
            "--hook",
            "blocks.1.hook_resid_mid",
            "--corpus",
            "docs.txt",
            "--ctx",
            "16",
            "--batch-documents",
            "8",
            "-p",
            "10",
            "--calibration-activations",
            "64",
            "--device",
            "cpu",
            "--no-saturation",
            "-o",
            "text.safetensors",
        ],
    )
    .ok();
    exemplar(
        root,
        &["export-sae", "-d", "text.safetensors", "-o", "text_sae"],
    )
    .ok();
    let cfg = read_json(&root.join("text_sae/cfg.json"));
    let meta = &cfg["metadata"];
    assert_eq!(meta["hook_name"], "blocks.1.hook_resid_mid", "{cfg}");
    assert_eq!(meta["model_name"], m, "{cfg}");
    assert_eq!(meta["context_size"], 16);
    assert_eq!(meta["prepend_bos"], true);
    assert_eq!(cfg["d_in"], 64);
    let sae = exemplar::sae::Sae::load(&root.join("text_sae")).unwrap();
    assert_eq!(sae.metadata["hook_name"], "blocks.1.hook_resid_mid");
}
