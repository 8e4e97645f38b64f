//! The build-compute comparison: `exemplar synth` (activations with known features), the TopK
//! SAE trainer (`train-sae`, tch) and `budget-sweep` (EP vs SAE quality against FLOPs). The
//! sweep's quality numbers are recomputed independently in numpy from the files it wrote.

mod common;

use common::*;
use exemplar::tensorfile::TensorFile;

#[test]
fn synth_writes_the_documented_tensors_and_refuses_bad_specs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    exemplar(
        d,
        &[
            "synth",
            "-o",
            "s.safetensors",
            "--dim",
            "16",
            "--rows",
            "300",
            "--features",
            "5",
            "--secondary",
            "1",
        ],
    )
    .ok();
    let f = TensorFile::open(&d.join("s.safetensors")).unwrap();
    assert_eq!(f.shape("activations").unwrap(), vec![300, 16]);
    assert_eq!(f.shape("features").unwrap(), vec![5, 16]);
    assert_eq!(f.shape("offset").unwrap(), vec![16]);
    let dom = f.i64("dominant", &[300]).unwrap();
    assert!(dom.iter().all(|&j| (0..5).contains(&j)));
    // Never overwritten without --force; bad specs name the flag.
    assert_mentions(
        &exemplar(d, &["synth", "-o", "s.safetensors"]).err(),
        &["already exists", "--force"],
    );
    let e = exemplar(
        d,
        &[
            "synth",
            "-o",
            "t.safetensors",
            "--features",
            "4",
            "--secondary",
            "4",
        ],
    )
    .err();
    assert_mentions(&e, &["secondary"]);
    assert_no_outputs(d, &["t.safetensors"]);
}

#[cfg(feature = "torch")]
mod torch {
    use super::*;
    use std::path::{Path, PathBuf};

    use exemplar::data::{ActivationStream, StreamOptions};
    use exemplar::eval::synthetic::{feature_recovery, SyntheticSpec};
    use exemplar::sae::train::{train_topk_sae, TrainConfig};
    use exemplar::sae::{Sae, SaeActivation};

    fn synth_file(dir: &Path, name: &str, spec: &SyntheticSpec) -> PathBuf {
        let s = spec.generate().unwrap();
        let p = dir.join(name);
        write_safetensors(&p, "activations", &s.activations, spec.dim);
        p
    }

    fn spec() -> SyntheticSpec {
        SyntheticSpec {
            dim: 32,
            rows: 40_000,
            features: 16,
            secondary: 1,
            zipf: 0.0,
            noise: 0.01,
            offset_norm: 2.0,
            seed: 3,
            row_seed: 0,
        }
    }

    fn stream(p: &Path) -> ActivationStream {
        ActivationStream::open(&[p.to_path_buf()], StreamOptions::default()).unwrap()
    }

    /// Fraction of variance of `rows` the SAE leaves unexplained.
    fn fvu(sae: &Sae, rows: &[f32], d: usize) -> f64 {
        let rec = sae.decode(&sae.encode(rows).unwrap()).unwrap();
        let n = rows.len() / d;
        let mean: Vec<f64> = (0..d)
            .map(|j| rows.chunks(d).map(|r| r[j] as f64).sum::<f64>() / n as f64)
            .collect();
        let (mut e, mut t) = (0.0, 0.0);
        for (x, y) in rows.chunks(d).zip(rec.chunks(d)) {
            for j in 0..d {
                e += (x[j] as f64 - y[j] as f64).powi(2);
                t += (x[j] as f64 - mean[j]).powi(2);
            }
        }
        e / t
    }

    #[test]
    fn topk_sae_learns_the_structure_with_unit_decoder_rows_and_counted_flops() {
        let dir = tempfile::tempdir().unwrap();
        let sp = spec();
        let train = synth_file(dir.path(), "train.safetensors", &sp);
        let held = SyntheticSpec {
            rows: 3000,
            row_seed: 9,
            ..sp.clone()
        }
        .generate()
        .unwrap();
        let mut cfg = TrainConfig::new(32, 2);
        cfg.batch_size = 256;
        cfg.aux_k_coef = 0.0;
        let run = |rows: u64| {
            let mut c = cfg.clone();
            c.max_rows = Some(rows);
            train_topk_sae(&mut stream(&train), &c).unwrap()
        };
        let (small, rec_small) = run(1000);
        let (big, rec_big) = run(40_000);
        // Exactly the budget, in ceil(rows / batch) steps, and FLOPs = 12·D·F per row (AuxK off).
        assert_eq!((rec_small.rows, rec_small.steps), (1000, 4));
        assert_eq!((rec_big.rows, rec_big.steps), (40_000, 157));
        assert_eq!(rec_big.flops, 12.0 * 32.0 * 32.0 * 40_000.0);
        assert_eq!(big.activation, SaeActivation::TopK { k: 2 });
        for r in big.w_dec.chunks(32) {
            let n: f64 = r.iter().map(|&v| (v as f64).powi(2)).sum();
            assert!((n - 1.0).abs() < 1e-4, "decoder row norm² {n}");
        }
        // More data, better held-out reconstruction; and the trained SAE beats its own init by far.
        let (f_small, f_big) = (
            fvu(&small, &held.activations, 32),
            fvu(&big, &held.activations, 32),
        );
        assert!(
            f_big < 0.1 && f_big < f_small,
            "held-out FVU {f_small} → {f_big}"
        );
        // Its decoder points at the true features better than the random init did.
        let (m_big, _) = feature_recovery(&held.features, &big.w_dec, 32, 0.9);
        let (m_small, _) = feature_recovery(&held.features, &small.w_dec, 32, 0.9);
        assert!(m_big > m_small, "recovery {m_small} → {m_big}");
    }

    #[test]
    fn dead_features_are_tracked() {
        let dir = tempfile::tempdir().unwrap();
        // 4 true features, 64 SAE features, k = 1, no AuxK: most features never fire.
        let sp = SyntheticSpec {
            features: 4,
            rows: 8000,
            ..spec()
        };
        let train = synth_file(dir.path(), "t.safetensors", &sp);
        let mut cfg = TrainConfig::new(64, 1);
        cfg.batch_size = 500;
        cfg.aux_k_coef = 0.0;
        cfg.dead_after = 2000;
        let (_, rec) = train_topk_sae(&mut stream(&train), &cfg).unwrap();
        assert!(
            rec.dead_fraction > 0.5,
            "dead fraction {}",
            rec.dead_fraction
        );
        // k > width is refused before any work.
        let e = train_topk_sae(&mut stream(&train), &TrainConfig::new(8, 9))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1..=width (8)") && e.contains("got 9"), "{e}");
    }

    #[test]
    fn budget_sweep_reports_match_an_independent_numpy_evaluation() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = |args: &[&str]| exemplar(d, args).ok();
        s(&[
            "synth",
            "-o",
            "train.safetensors",
            "--dim",
            "24",
            "--rows",
            "6000",
            "--features",
            "12",
            "--secondary",
            "1",
            "--zipf",
            "0.5",
            "--seed",
            "2",
        ]);
        s(&[
            "synth",
            "-o",
            "held.safetensors",
            "--dim",
            "24",
            "--rows",
            "800",
            "--features",
            "12",
            "--secondary",
            "1",
            "--zipf",
            "0.5",
            "--seed",
            "2",
            "--row-seed",
            "5",
        ]);
        let args = [
            "budget-sweep",
            "-a",
            "train.safetensors",
            "--eval-activations",
            "held.safetensors",
            "--ground-truth",
            "held.safetensors",
            "--budgets",
            "6000,1500",
            "-p",
            "2",
            "--batch-size",
            "1000",
            "--width",
            "24",
            "-k",
            "2",
            "--sae-batch-size",
            "250",
            "--device",
            "cpu",
            "-o",
            "sweep",
        ];
        let out = exemplar(d, &args).ok();
        assert_mentions(&out.stdout, &["budget", "1500", "6000", "report.json"]);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("sweep/report.json")).unwrap())
                .unwrap();
        let ep = report["ep"].as_array().unwrap();
        let sae = report["sae"].as_array().unwrap();
        assert_eq!(ep.len(), 2);
        // Budgets sorted; each side streamed exactly its budget (no saturation by default).
        for (i, b) in [1500u64, 6000].iter().enumerate() {
            assert_eq!(ep[i]["budget"].as_u64(), Some(*b));
            assert_eq!(ep[i]["activations"].as_u64(), Some(*b));
            assert_eq!(sae[i]["training"]["rows"].as_u64(), Some(*b));
            // EP's FLOPs = its metadata's clustering FLOPs + the calibration GEMMs.
            let dict = load_dict(&d.join(format!("sweep/ep-{b}.safetensors")));
            let clustering = dict.info().clustering_flops;
            let f = ep[i]["flops"].as_f64().unwrap();
            let cal = ep[i]["calibration_flops"].as_f64().unwrap();
            assert_eq!(f, clustering + cal);
            // Calibration: whole batches of 1000 rows up to the budget: 4·D·Σ b².
            assert_eq!(
                cal,
                4.0 * 24.0 * 1000.0 * 1000.0 * (*b as f64 / 1000.0).ceil()
            );
            assert_eq!(ep[i]["partitions"].as_u64(), Some(dict.len() as u64));
        }
        let png = std::fs::read(d.join("sweep/quality_vs_compute.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // plot-sweep redraws the same figure from the report.
        exemplar(d, &["plot-sweep", "sweep/report.json", "-o", "again.png"]).ok();
        assert_eq!(std::fs::read(d.join("again.png")).unwrap(), png);
        let e = exemplar(d, &["plot-sweep", "held.safetensors", "-o", "x.png"]).err();
        assert_mentions(&e, &["held.safetensors"]);
        assert!(!d.join("x.png").exists());

        // numpy: reconstruct with each artifact from its file and compare with the report.
        let Some(py) = python() else { return };
        let script = r#"
import json, numpy as np
from safetensors.numpy import load_file
rep = json.load(open("sweep/report.json"))
held = load_file("held.safetensors")
x = held["activations"].astype(np.float64); truth = held["features"].astype(np.float64)
tot = ((x - x.mean(0)) ** 2).sum()
def recovery(dirs):
    t = truth / np.linalg.norm(truth, axis=1, keepdims=True)
    l = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    best = np.abs(t @ l.T).max(1)
    return best.mean(), (best > 0.9).mean()
out = {}
for p in rep["ep"]:
    dct = load_file(p["dictionary"])
    c = dct["center"].astype(np.float64); e = dct["exemplars"].astype(np.float64)
    proj = (x - c) @ e.T
    k = proj.argmax(1); v = np.maximum(proj[np.arange(len(x)), k], 0)
    rec = c + v[:, None] * e[k]
    out["ep%d" % p["budget"]] = [1 - ((x - rec) ** 2).sum() / tot, *recovery(e)]
for p in rep["sae"]:
    w = load_file(p["sae"] + "/sae_weights.safetensors")
    cfg = json.load(open(p["sae"] + "/cfg.json"))
    assert cfg["architecture"] == "topk" and cfg["k"] == 2
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    idx = np.argsort(-pre, axis=1, kind="stable")[:, :2]
    z = np.zeros_like(pre); np.put_along_axis(z, idx, np.maximum(np.take_along_axis(pre, idx, 1), 0), 1)
    rec = z @ w["W_dec"] + w["b_dec"]
    out["sae%d" % p["budget"]] = [1 - ((x - rec) ** 2).sum() / tot, *recovery(w["W_dec"].astype(np.float64))]
print(json.dumps(out))
"#;
        let got: serde_json::Value =
            serde_json::from_str(run_python(&py, d, script, &[]).trim()).unwrap();
        for (side, points) in [("ep", ep), ("sae", sae)] {
            for p in points {
                let key = format!("{side}{}", p["budget"]);
                let want = got[&key].as_array().unwrap();
                let q = &p["quality"];
                for (name, j) in [
                    ("explained_variance", 0),
                    ("feature_recovery_mean", 1),
                    ("feature_recovery_frac", 2),
                ] {
                    let (a, b) = (q[name].as_f64().unwrap(), want[j].as_f64().unwrap());
                    assert!((a - b).abs() < 1e-4, "{key} {name}: report {a}, numpy {b}");
                }
            }
        }
    }

    /// The embedded demo activations (real MiniLM rows, D = 384) through train-sae and a
    /// two-budget sweep, end to end.
    #[test]
    fn demo_data_sweep_runs_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let demo =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data/demo/minilm-l6-layer3.safetensors");
        let demo = demo.to_str().unwrap();
        exemplar(
            d,
            &[
                "train-sae",
                "-a",
                demo,
                "--width",
                "128",
                "-k",
                "4",
                "--sae-batch-size",
                "512",
                "-o",
                "sae",
            ],
        )
        .ok();
        let out = exemplar(
            d,
            &[
                "budget-sweep",
                "-a",
                demo,
                "--eval-activations",
                demo,
                "--eval-rows",
                "1000",
                "--budgets",
                "1024,4548",
                "-p",
                "5",
                "--batch-size",
                "512",
                "--width",
                "128",
                "-k",
                "4",
                "--sae-batch-size",
                "512",
                "-o",
                "sweep",
            ],
        )
        .ok();
        assert_mentions(&out.stdout, &["4548", "quality_vs_compute.png"]);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("sweep/report.json")).unwrap())
                .unwrap();
        let ep = report["ep"].as_array().unwrap();
        assert_eq!(ep[1]["activations"].as_u64(), Some(4548));
        assert!(ep[1]["partitions"].as_u64().unwrap() > ep[0]["partitions"].as_u64().unwrap());
        for p in ep.iter().chain(report["sae"].as_array().unwrap()) {
            let ev = p["quality"]["explained_variance"].as_f64().unwrap();
            assert!(ev > 0.0 && ev < 1.0, "{ev}");
        }
    }

    /// Activations of the small random Gemma-2 fixture through train-sae and budget-sweep.
    #[test]
    fn small_random_gemma2_activations_through_train_sae_and_the_sweep() {
        let Some(fx) = gemma_fixtures() else {
            return;
        };
        let fx = fx.join("gqa");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let docs: String = (0..40)
            .map(|i| {
                format!(
                    "note {i}: the river {} runs past hill {} toward the sea\n",
                    i * 3,
                    i % 7
                )
            })
            .collect();
        std::fs::write(d.join("docs.txt"), docs).unwrap();
        let fx = fx.to_str().unwrap();
        let acts = |corpus: &str, out: &str| {
            exemplar(
                d,
                &[
                    "activations",
                    "--model",
                    fx,
                    "--hook",
                    "blocks.1.hook_resid_post",
                    "--corpus",
                    corpus,
                    "--ctx",
                    "16",
                    "-o",
                    out,
                ],
            )
            .ok();
        };
        acts("docs.txt", "train.safetensors");
        std::fs::write(
            d.join("held.txt"),
            "a held out sentence about rivers and hills\nthe sea is far from here\n",
        )
        .unwrap();
        acts("held.txt", "held.safetensors");
        exemplar(
            d,
            &[
                "train-sae",
                "-a",
                "train.safetensors",
                "--width",
                "64",
                "-k",
                "4",
                "--sae-batch-size",
                "128",
                "-o",
                "sae",
            ],
        )
        .ok();
        let out = exemplar(
            d,
            &[
                "budget-sweep",
                "-a",
                "train.safetensors",
                "--eval-activations",
                "held.safetensors",
                "--budgets",
                "200,400",
                "-p",
                "5",
                "--batch-size",
                "100",
                "--width",
                "64",
                "-k",
                "4",
                "--sae-batch-size",
                "100",
                "-o",
                "sweep",
            ],
        )
        .ok();
        assert_mentions(&out.stdout, &["400", "report.json"]);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("sweep/report.json")).unwrap())
                .unwrap();
        assert_eq!(report["ep"][1]["activations"].as_u64(), Some(400));
        assert_eq!(report["sae"][1]["training"]["rows"].as_u64(), Some(400));
        assert!(report["ep"][1]["clustering_flops"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn train_sae_cli_writes_a_loadable_saelens_sae_and_bad_inputs_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        exemplar(
            d,
            &[
                "synth",
                "-o",
                "a.safetensors",
                "--dim",
                "16",
                "--rows",
                "2000",
                "--features",
                "8",
            ],
        )
        .ok();
        let out = exemplar(
            d,
            &[
                "train-sae",
                "-a",
                "a.safetensors",
                "--width",
                "32",
                "-k",
                "3",
                "--sae-batch-size",
                "500",
                "-o",
                "sae",
                "--json",
            ],
        )
        .ok();
        let rec: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(rec["rows"].as_u64(), Some(2000));
        assert_eq!(rec["steps"].as_u64(), Some(4));
        let sae = Sae::load(&d.join("sae")).unwrap();
        assert_eq!(
            (sae.d_in, sae.d_sae, sae.activation.clone()),
            (16, 32, SaeActivation::TopK { k: 3 })
        );
        assert!(
            sae.metadata["exemplar_training"]["record"]["flops"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        // Existing output: refused, nothing touched.
        let before = std::fs::read(d.join("sae/cfg.json")).unwrap();
        assert_mentions(
            &exemplar(
                d,
                &[
                    "train-sae",
                    "-a",
                    "a.safetensors",
                    "--width",
                    "8",
                    "-k",
                    "1",
                    "-o",
                    "sae",
                ],
            )
            .err(),
            &["already exists"],
        );
        assert_eq!(std::fs::read(d.join("sae/cfg.json")).unwrap(), before);
        // Ground truth of another width: the file is named.
        exemplar(
            d,
            &[
                "synth",
                "-o",
                "b.safetensors",
                "--dim",
                "8",
                "--rows",
                "100",
                "--features",
                "4",
            ],
        )
        .ok();
        let e = exemplar(
            d,
            &[
                "budget-sweep",
                "-a",
                "a.safetensors",
                "--eval-activations",
                "a.safetensors",
                "--ground-truth",
                "b.safetensors",
                "--budgets",
                "500",
                "-p",
                "5",
                "-o",
                "sw",
            ],
        )
        .err();
        assert_mentions(&e, &["b.safetensors", "features"]);
        assert!(!d.join("sw/report.json").exists());
        let e = exemplar(
            d,
            &[
                "budget-sweep",
                "-a",
                "a.safetensors",
                "--eval-activations",
                "a.safetensors",
                "--budgets",
                "0",
                "-p",
                "5",
                "-o",
                "sw",
            ],
        )
        .err();
        assert_mentions(&e, &["budget"]);
    }
}
