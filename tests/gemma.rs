//! Gemma-2 and Gemma 3 in tch against Hugging Face transformers, on small random checkpoints
//! written by `scripts/gemma_fixtures.py` (scripts/test.sh runs it and sets
//! EXEMPLAR_GEMMA_FIXTURES). The real Gemma 3 270M is checked in `tests/gemma3_real.rs`.
#![cfg(feature = "torch")]

use exemplar::model::{Edit, Gemma, HookKind, HookPoint, Intervention, Tokenizer};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Two Gemma-2 configs and one Gemma 3 (docs/gemma-fixtures.md).
const CONFIGS: [&str; 3] = ["gqa", "sharded", "gemma3"];

mod common;

use common::gemma_fixtures as fixtures;

fn expected(dir: &std::path::Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("expected.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// Max |got − want| over valid (mask = 1) positions, relative to max |want| there.
fn rel_err(got: &Tensor, want: &Tensor, mask: &Tensor) -> f64 {
    let extra = got.dim() - 2;
    let mut shape = mask.size();
    shape.extend(std::iter::repeat_n(1, extra));
    masked_rel_err(got, want, &mask.view(shape.as_slice()).expand_as(want))
}

/// [`rel_err`] of an attention map `[B, H, T, T]`: at valid query rows and at the keys a query
/// may see (hidden scores hold f32::MIN on both sides).
fn rel_err_map(got: &Tensor, want: &Tensor, mask: &Tensor) -> f64 {
    let (b, t) = (mask.size()[0], mask.size()[1]);
    let rows = mask.view([b, 1, t, 1]).expand_as(want).to_kind(Kind::Bool);
    let visible = want.gt(f64::from(f32::MIN) / 2.0);
    masked_rel_err(got, want, &rows.logical_and(&visible))
}

fn masked_rel_err(got: &Tensor, want: &Tensor, keep: &Tensor) -> f64 {
    let keep = keep.to_kind(Kind::Bool);
    let g = got.to_kind(Kind::Float).to_device(Device::Cpu);
    let zero = Tensor::zeros_like(want);
    let (g, w) = (g.where_self(&keep, &zero), want.where_self(&keep, &zero));
    (&g - &w).abs().max().double_value(&[]) / w.abs().max().double_value(&[])
}

/// [`rel_err`] or [`rel_err_map`], by the hook's kind.
fn hook_err(hp: &HookPoint, got: &Tensor, want: &Tensor, mask: &Tensor) -> f64 {
    if hp.kind.is_attention_map() {
        rel_err_map(got, want, mask)
    } else {
        rel_err(got, want, mask)
    }
}

fn all_hooks(layers: usize) -> Vec<HookPoint> {
    (0..layers)
        .flat_map(|layer| {
            HookKind::ALL
                .iter()
                .map(move |&kind| HookPoint { layer, kind })
        })
        .collect()
}

/// The fixture's name of a hook's tensor.
fn key(hp: &HookPoint) -> String {
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
    format!("{k}.{}", hp.layer)
}

#[test]
fn every_hook_and_the_logits_equal_hf_transformers() {
    let Some(root) = fixtures() else { return };
    for name in CONFIGS {
        let dir = root.join(name);
        let exp = expected(&dir);
        let model = Gemma::load(&dir, Kind::Float, Device::Cpu).unwrap();
        let l = model.config.num_hidden_layers;
        let (ids, mask) = (&exp["input_ids"], &exp["attention_mask"]);
        let out = model.forward(ids, mask, &all_hooks(l), &[], true).unwrap();
        for (hp, t) in &out.hooks {
            let want = &exp[&key(hp)];
            assert_eq!(t.size(), want.size(), "{name} {hp}: shape");
            let e = hook_err(hp, t, want, mask);
            assert!(e < 1e-4, "{name} {hp}: relative error {e:e}");
            if hp.kind == HookKind::ResidPost && hp.layer + 1 < l {
                // blocks.L.hook_resid_post is HF hidden_states[L+1] (the last entry is normed).
                let e = rel_err(t, &exp[&format!("hidden_states.{}", hp.layer + 1)], mask);
                assert!(e < 1e-4, "{name} {hp} vs hidden_states: {e:e}");
            }
        }
        let n = HookKind::ALL.len() * l;
        assert_eq!(out.hooks.len(), n);
        let worst = out
            .hooks
            .iter()
            .map(|(hp, t)| hook_err(hp, t, &exp[&key(hp)], mask))
            .fold(0.0, f64::max);
        let e = rel_err(out.logits.as_ref().unwrap(), &exp["logits"], mask);
        eprintln!("{name}: worst relative error over {n} hooks {worst:.2e}, logits {e:.2e}");
        assert!(e < 1e-4, "{name} logits: relative error {e:e}");
    }
}

#[test]
fn a_forward_that_stops_early_gives_the_same_activations() {
    let Some(root) = fixtures() else { return };
    let dir = root.join("gqa");
    let exp = expected(&dir);
    let model = Gemma::load(&dir, Kind::Float, Device::Cpu).unwrap();
    let hp = HookPoint::parse("blocks.1.hook_resid_post").unwrap();
    let out = model
        .forward(&exp["input_ids"], &exp["attention_mask"], &[hp], &[], false)
        .unwrap();
    assert_eq!(out.hooks.keys().copied().collect::<Vec<_>>(), vec![hp]);
    assert!(out.logits.is_none());
    assert!(
        rel_err(
            &out.hooks[&hp],
            &exp["resid_post.1"],
            &exp["attention_mask"]
        ) < 1e-4
    );
}

#[test]
fn tokenizer_and_greedy_generation_equal_python() {
    let Some(root) = fixtures() else { return };
    for name in CONFIGS {
        let dir = root.join(name);
        let model = Gemma::load(&dir, Kind::Float, Device::Cpu).unwrap();
        let tok =
            Tokenizer::from_file(&dir.join("tokenizer.json"), model.config.bos_token_id).unwrap();
        let cases: Vec<serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(dir.join("tokenizer_expected.json")).unwrap(),
        )
        .unwrap();
        assert!(!cases.is_empty());
        for c in &cases {
            let want: Vec<i64> = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            assert_eq!(
                tok.encode(c["text"].as_str().unwrap()).unwrap(),
                want,
                "{name}: {c}"
            );
        }
        let exp = expected(&dir);
        let gen: Vec<i64> = Vec::<i64>::try_from(exp["generated_ids"].view([-1])).unwrap();
        let got = model
            .generate_greedy(&gen[..7], gen.len() - 7, &[])
            .unwrap();
        assert_eq!(got, gen, "{name}: greedy generation");
    }
}

fn unit(v: Vec<f32>) -> Tensor {
    let t = Tensor::from_slice(&v);
    &t / t.norm()
}

fn seeded(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

#[test]
fn interventions_do_their_algebra_and_change_what_follows() {
    let Some(root) = fixtures() else { return };
    let dir = root.join("gqa");
    let exp = expected(&dir);
    let model = Gemma::load(&dir, Kind::Float, Device::Cpu).unwrap();
    let d = model.config.hidden_size;
    let (ids, mask) = (&exp["input_ids"], &exp["attention_mask"]);
    let at = HookPoint::parse("blocks.1.hook_resid_post").unwrap();
    let later = HookPoint::parse("blocks.2.hook_resid_post").unwrap();
    let earlier = HookPoint::parse("blocks.1.hook_resid_mid").unwrap();
    let hooks = [earlier, at, later];
    let base = model.forward(ids, mask, &hooks, &[], true).unwrap();
    let e = unit(seeded(d, 1));
    let c = Tensor::from_slice(&seeded(d, 2)) * 3.0;
    let run = |edit: Edit, positions: Option<Vec<i64>>| {
        let mut iv = Intervention::new(at, edit);
        iv.positions = positions;
        model.forward(ids, mask, &hooks, &[iv], true).unwrap()
    };
    let max_abs = |t: &Tensor| t.abs().max().double_value(&[]);

    // Adding α·e shifts the projection on e by α, everywhere, and nothing before the hook.
    let added = run(
        Edit::Add {
            direction: e.shallow_clone(),
            alpha: 2.5,
        },
        None,
    );
    let shift = (&added.hooks[&at] - &base.hooks[&at]).matmul(&e);
    assert!(max_abs(&(shift - 2.5)) < 1e-4);
    assert!(max_abs(&(&added.hooks[&earlier] - &base.hooks[&earlier])) == 0.0);
    assert!(
        max_abs(&(&added.hooks[&later] - &base.hooks[&later])) > 1e-3,
        "the edit reaches the next block"
    );
    assert!(max_abs(&(added.logits.as_ref().unwrap() - base.logits.as_ref().unwrap())) > 1e-3);

    // Projecting out two directions leaves zero centered projection on both.
    let e2 = unit(seeded(d, 3));
    let dirs = Tensor::stack(&[&e, &e2], 0);
    let ablated = run(
        Edit::ProjectOut {
            directions: dirs,
            center: c.shallow_clone(),
        },
        None,
    );
    let xc = &ablated.hooks[&at] - &c;
    assert!(max_abs(&xc.matmul(&e)) < 1e-4 && max_abs(&xc.matmul(&e2)) < 1e-4);
    // ...and keeps the orthogonal complement.
    let base_c = &base.hooks[&at] - &c;
    let removed = &base_c - &xc;
    // Orthonormal basis of span{e, e2} by Gram–Schmidt: what was removed lies in that span.
    let e2o = &e2 - &e * e2.dot(&e);
    let e2o = &e2o / e2o.norm();
    let q = Tensor::stack(&[&e, &e2o], 0);
    let resid = &removed - removed.matmul(&q.transpose(0, 1)).matmul(&q);
    assert!(
        max_abs(&resid) < 1e-4,
        "only the span of the directions changes"
    );

    // Clamping sets the centered projection.
    let clamped = run(
        Edit::ClampProjection {
            direction: e.shallow_clone(),
            center: c.shallow_clone(),
            value: -4.0,
        },
        None,
    );
    assert!(max_abs(&((&clamped.hooks[&at] - &c).matmul(&e) + 4.0)) < 1e-4);

    // At chosen positions only: other positions unchanged at the hook; causality downstream.
    let p = 5;
    let local = run(
        Edit::Add {
            direction: e.shallow_clone(),
            alpha: 10.0,
        },
        Some(vec![p]),
    );
    let diff_at = (&local.hooks[&at] - &base.hooks[&at])
        .abs()
        .amax([0, 2].as_slice(), false);
    let diff_later = (&local.hooks[&later] - &base.hooks[&later])
        .abs()
        .amax([0, 2].as_slice(), false);
    let t = diff_at.size()[0];
    for i in 0..t {
        let (a, l) = (diff_at.double_value(&[i]), diff_later.double_value(&[i]));
        if i == p {
            assert!(a > 1.0);
        } else {
            assert_eq!(a, 0.0, "position {i} untouched at the hook");
        }
        if i < p {
            assert_eq!(
                l, 0.0,
                "position {i} precedes the edit: causal attention keeps it"
            );
        }
    }
    assert!(
        diff_later.double_value(&[p + 1]) > 1e-4,
        "later positions see the edit"
    );
    // Generation under steering differs from plain generation.
    let gen: Vec<i64> = Vec::<i64>::try_from(exp["generated_ids"].view([-1])).unwrap();
    let steer = [Intervention::new(
        HookPoint::parse("blocks.0.hook_resid_post").unwrap(),
        Edit::Add {
            direction: e.shallow_clone(),
            alpha: 50.0,
        },
    )];
    assert_ne!(model.generate_greedy(&gen[..7], 6, &steer).unwrap(), gen);
}

#[test]
fn interventions_equal_the_same_edits_done_with_pytorch_forward_hooks() {
    let Some(root) = fixtures() else { return };
    for name in CONFIGS {
        let dir = root.join(name);
        let exp = expected(&dir);
        let model = Gemma::load(&dir, Kind::Float, Device::Cpu).unwrap();
        let (ids, mask) = (&exp["input_ids"], &exp["attention_mask"]);
        // α·e added to blocks.1.hook_resid_post (the decoder layer's output in HF).
        let add = Intervention::new(
            HookPoint::parse("blocks.1.hook_resid_post").unwrap(),
            Edit::Add {
                direction: exp["iv.add.direction"].shallow_clone(),
                alpha: 3.0,
            },
        );
        let out = model.forward(ids, mask, &[], &[add], true).unwrap();
        let e = rel_err(out.logits.as_ref().unwrap(), &exp["iv.add.logits"], mask);
        assert!(e < 1e-4, "{name} add: relative error {e:e}");
        // Head 1's z at block 1 patched from a run on another input (o_proj's input in HF).
        let z = HookPoint::parse("blocks.1.attn.hook_z").unwrap();
        let src = model
            .forward(&exp["iv.patch.input_ids"], mask, &[z], &[], false)
            .unwrap();
        let patch = Intervention::new(
            z,
            Edit::Replace {
                value: src.hooks[&z].shallow_clone(),
            },
        )
        .on_heads(vec![1]);
        let out = model.forward(ids, mask, &[z], &[patch], true).unwrap();
        let e = rel_err(out.logits.as_ref().unwrap(), &exp["iv.patch.logits"], mask);
        assert!(e < 1e-4, "{name} z patch: relative error {e:e}");
        // Only head 1 changed at the hook.
        let base = model.forward(ids, mask, &[z], &[], false).unwrap();
        let changed = (&out.hooks[&z] - &base.hooks[&z])
            .abs()
            .amax([0, 1, 3].as_slice(), false);
        for h in 0..changed.size()[0] {
            let c = changed.double_value(&[h]);
            assert_eq!(c > 0.0, h == 1, "{name}: head {h} changed by {c}");
        }
    }
}

#[test]
fn bad_interventions_are_refused_before_any_work() {
    let Some(root) = fixtures() else { return };
    let model = Gemma::load(&root.join("gemma3"), Kind::Float, Device::Cpu).unwrap();
    let ids = Tensor::from_slice(&[2i64, 5, 6, 7]).view([1, 4]);
    let mask = Tensor::ones([1, 4], (Kind::Int64, Device::Cpu));
    let err = |iv: Intervention| {
        model
            .forward(&ids, &mask, &[], &[iv], true)
            .expect_err("must be refused")
            .to_string()
    };
    let z = HookPoint::parse("blocks.1.attn.hook_z").unwrap();
    let d = Tensor::zeros([32], (Kind::Float, Device::Cpu));
    let e = err(Intervention::new(
        z,
        Edit::Add {
            direction: d.shallow_clone(),
            alpha: 1.0,
        },
    )
    .on_heads(vec![4]));
    assert!(e.contains("head 4") && e.contains("4 heads"), "{e}");
    let e = err(Intervention::new(
        HookPoint::parse("blocks.1.hook_resid_post").unwrap(),
        Edit::Add {
            direction: d.shallow_clone(),
            alpha: 1.0,
        },
    ));
    assert!(e.contains("[32]") && e.contains("[64]"), "{e}");
    let e = err(Intervention::new(
        z,
        Edit::Add {
            direction: d.shallow_clone(),
            alpha: f64::NAN,
        },
    ));
    assert!(e.contains("not finite"), "{e}");
    let e = err(Intervention::new(
        HookPoint::parse("blocks.1.hook_resid_post").unwrap(),
        Edit::Add {
            direction: Tensor::zeros([64], (Kind::Float, Device::Cpu)),
            alpha: 1.0,
        },
    )
    .on_heads(vec![0]));
    assert!(e.contains("per-head hooks"), "{e}");
    let e = err(Intervention::new(
        HookPoint::parse("blocks.1.attn.hook_pattern").unwrap(),
        Edit::Replace {
            value: Tensor::zeros([4], (Kind::Float, Device::Cpu)),
        },
    ));
    assert!(
        e.contains("cannot be edited") || e.contains("not edited"),
        "{e}"
    );
    let e = err(Intervention::new(
        HookPoint::parse("blocks.9.hook_resid_post").unwrap(),
        Edit::Add {
            direction: Tensor::zeros([64], (Kind::Float, Device::Cpu)),
            alpha: 1.0,
        },
    ));
    assert!(e.contains("blocks.9") && e.contains("5 blocks"), "{e}");
}

#[test]
fn a_forward_that_stops_inside_a_block_gives_the_same_activations() {
    let Some(root) = fixtures() else { return };
    for name in CONFIGS {
        let dir = root.join(name);
        let exp = expected(&dir);
        let model = Gemma::load(&dir, Kind::Float, Device::Cpu).unwrap();
        for h in [
            "blocks.1.hook_resid_pre",
            "blocks.1.attn.hook_z",
            "blocks.1.hook_resid_mid",
        ] {
            let hp = HookPoint::parse(h).unwrap();
            let out = model
                .forward(&exp["input_ids"], &exp["attention_mask"], &[hp], &[], false)
                .unwrap();
            assert_eq!(out.hooks.len(), 1);
            let e = rel_err(&out.hooks[&hp], &exp[&key(&hp)], &exp["attention_mask"]);
            assert!(e < 1e-4, "{name} {hp}: {e:e}");
        }
    }
}

#[test]
fn bad_checkpoints_are_errors_naming_the_tensor_or_field() {
    let Some(root) = fixtures() else { return };
    let src = root.join("gqa");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let weights: Vec<(String, Tensor)> =
        Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    // A missing tensor.
    let missing: Vec<(String, Tensor)> = weights
        .iter()
        .filter(|(n, _)| n != "model.layers.1.mlp.up_proj.weight")
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    Tensor::write_safetensors(&missing, dir.join("model.safetensors")).unwrap();
    let err = Gemma::load(dir, Kind::Float, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("missing"),
        "{err}"
    );
    // A mis-shaped tensor.
    let bad: Vec<(String, Tensor)> = weights
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                if n == "model.layers.0.self_attn.q_proj.weight" {
                    t.narrow(0, 0, 8)
                } else {
                    t.shallow_clone()
                },
            )
        })
        .collect();
    Tensor::write_safetensors(&bad, dir.join("model.safetensors")).unwrap();
    let err = Gemma::load(dir, Kind::Float, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.layers.0.self_attn.q_proj.weight") && err.contains("shape"),
        "{err}"
    );
    // A config without a required field.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("num_key_value_heads");
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let err = Gemma::load(dir, Kind::Float, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("num_key_value_heads") && err.contains("config.json"),
        "{err}"
    );
    // A truncated weight file.
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = Gemma::load(dir, Kind::Float, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn hook_names_round_trip_and_bad_names_are_rejected() {
    for n in [
        "blocks.0.hook_resid_pre",
        "blocks.12.hook_resid_post",
        "blocks.3.attn.hook_z",
        "blocks.7.hook_mlp_out",
        "blocks.2.hook_attn_out",
        "blocks.1.hook_resid_mid",
        "blocks.4.attn.hook_q",
        "blocks.4.attn.hook_k",
        "blocks.4.attn.hook_v",
        "blocks.4.attn.hook_rot_q",
        "blocks.4.attn.hook_rot_k",
        "blocks.4.attn.hook_attn_scores",
        "blocks.4.attn.hook_pattern",
    ] {
        assert_eq!(HookPoint::parse(n).unwrap().name(), n);
    }
    for n in [
        "blocks.x.hook_resid_post",
        "layers.1.hook_resid_post",
        "blocks.1.hook_nope",
        "blocks.1",
    ] {
        assert!(HookPoint::parse(n).is_err(), "{n}");
    }
}

#[test]
fn activations_cli_writes_rows_the_build_reads() {
    let Some(root) = fixtures() else { return };
    let dir = root.join("gqa");
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("docs.txt");
    std::fs::write(&text, "the cat sat on the mat and looked at the dog\n\nlanguage models read text\nhello world hello world hello world hello world\n").unwrap();
    let out = tmp.path().join("acts.safetensors");
    let bin = env!("CARGO_BIN_EXE_exemplar");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let o = run(&[
        "activations",
        "--model",
        dir.to_str().unwrap(),
        "--hook",
        "blocks.2.hook_resid_post",
        "--text",
        text.to_str().unwrap(),
        "--ctx",
        "6",
        "--batch-prompts",
        "2",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Rows = Σ min(len, ctx) over the 3 documents, and they equal a direct forward.
    let model = Gemma::load(&dir, Kind::Float, Device::Cpu).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"), model.config.bos_token_id).unwrap();
    let docs = [
        "the cat sat on the mat and looked at the dog",
        "language models read text",
        "hello world hello world hello world hello world",
    ];
    let acts: HashMap<String, Tensor> = Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .collect();
    let a = &acts["activations"];
    let hp = HookPoint::parse("blocks.2.hook_resid_post").unwrap();
    let mut row = 0;
    for doc in docs {
        let mut ids = tok.encode(doc).unwrap();
        ids.truncate(7);
        let n = ids.len() as i64;
        let input = Tensor::from_slice(&ids).view([1, n]);
        let fwd = model
            .forward(
                &input,
                &Tensor::ones([1, n], (Kind::Int64, Device::Cpu)),
                &[hp],
                &[],
                false,
            )
            .unwrap();
        let want = fwd.hooks[&hp].get(0).narrow(0, 1, n - 1);
        let got = a.narrow(0, row, n - 1);
        let err = (&got - &want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]);
        assert!(
            err < 1e-5,
            "padding in a batch must not change a document's activations: {err:e}"
        );
        row += n - 1;
    }
    assert_eq!(a.size(), [row, model.config.hidden_size as i64]);
    let side =
        std::fs::read_to_string(tmp.path().join("acts.safetensors.provenance.jsonl")).unwrap();
    assert_eq!(side.lines().count(), 3);
    // The build reads it, and inspect shows token context.
    let dict = tmp.path().join("d.safetensors");
    let o = run(&[
        "build",
        "-a",
        out.to_str().unwrap(),
        "-p",
        "20",
        "--batch-size",
        "8",
        "-o",
        dict.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["inspect", dict.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("[["));
    // Bad input: an unknown hook, a missing model dir, an existing output.
    let o = run(&[
        "activations",
        "--model",
        dir.to_str().unwrap(),
        "--hook",
        "blocks.9.hook_resid_post",
        "--text",
        text.to_str().unwrap(),
        "-o",
        tmp.path().join("x.safetensors").to_str().unwrap(),
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("blocks.9"));
    let o = run(&[
        "activations",
        "--model",
        dir.to_str().unwrap(),
        "--hook",
        "blocks.1.hook_resid_post",
        "--text",
        text.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--force"));
}

#[test]
fn bf16_on_a_gpu_is_within_bf16_tolerance_of_hf() {
    let Some(root) = fixtures() else { return };
    if !tch::Cuda::is_available() {
        eprintln!("skipping: no CUDA device visible to libtorch (this check runs on a GPU machine, see scripts/gpu-run.sh)");
        return;
    }
    for name in CONFIGS {
        let dir = root.join(name);
        let exp = expected(&dir);
        let model = Gemma::load(&dir, Kind::BFloat16, Device::Cuda(0)).unwrap();
        let l = model.config.num_hidden_layers;
        let mask = &exp["attention_mask"];
        let out = model
            .forward(&exp["input_ids"], mask, &all_hooks(l), &[], true)
            .unwrap();
        for (hp, t) in &out.hooks {
            if hp.kind == HookKind::ResidPost {
                let e = rel_err(t, &exp[&format!("resid_post.{}", hp.layer)], mask);
                eprintln!("{name} {hp}: bf16 relative error {e:.3e}");
                assert!(e < 5e-2, "{name} {hp}: bf16 relative error {e:e}");
            }
        }
        let e = rel_err(out.logits.as_ref().unwrap(), &exp["logits"], mask);
        assert!(e < 5e-2, "{name} logits: bf16 relative error {e:e}");
    }
}

#[test]
fn cached_generation_equals_recomputing_the_prefix_with_and_without_edits() {
    let Some(root) = fixtures() else { return };
    for name in CONFIGS {
        let dir = root.join(name);
        let exp = expected(&dir);
        let model = Gemma::load(&dir, Kind::Float, Device::Cpu).unwrap();
        let gen: Vec<i64> = Vec::<i64>::try_from(exp["generated_ids"].view([-1])).unwrap();
        let prompt = &gen[..7];
        let d = model.config.hidden_size;
        // Plain, then with an edit at every position, then at one absolute position only.
        let e = unit(seeded(d, 4));
        let edits: Vec<Vec<Intervention>> = vec![
            vec![],
            vec![Intervention::new(
                HookPoint::parse("blocks.0.hook_resid_post").unwrap(),
                Edit::Add {
                    direction: e.shallow_clone(),
                    alpha: 20.0,
                },
            )],
            vec![Intervention::new(
                HookPoint::parse("blocks.1.hook_resid_mid").unwrap(),
                Edit::Add {
                    direction: e.shallow_clone(),
                    alpha: 40.0,
                },
            )
            .at_positions(vec![8])],
        ];
        let mut plain_logprobs: Option<Vec<f64>> = None;
        for ivs in &edits {
            let slow = model.generate_greedy(prompt, 6, ivs).unwrap();
            let fast = model
                .generate(prompt, 6, exemplar::model::Sampling::Greedy, false, ivs)
                .unwrap();
            assert_eq!(
                fast.ids,
                slow,
                "{name}: cached greedy differs ({} edits)",
                ivs.len()
            );
            // Each step's log-probability is the uncached forward's.
            let t = slow.len() as i64;
            let full = model
                .forward(
                    &Tensor::from_slice(&slow).view([1, t]),
                    &Tensor::ones([1, t], (Kind::Int64, Device::Cpu)),
                    &[],
                    ivs,
                    true,
                )
                .unwrap()
                .logits
                .unwrap()
                .get(0)
                .log_softmax(-1, Kind::Double);
            for (i, lp) in fast.logprobs.iter().enumerate() {
                let pos = prompt.len() + i;
                let want = full.double_value(&[pos as i64 - 1, slow[pos]]);
                assert!((lp - want).abs() < 1e-4, "{name} step {i}: {lp} vs {want}");
            }
            // Every edit changes what the model predicts (so the comparison above has teeth:
            // an edit the cache skipped would have shown).
            match &plain_logprobs {
                None => plain_logprobs = Some(fast.logprobs.clone()),
                Some(p) => assert_ne!(p, &fast.logprobs, "{name}: the edit changed nothing"),
            }
        }
        // Seeded sampling is reproducible, and another seed differs somewhere.
        let sample = |seed| {
            model
                .generate(
                    prompt,
                    6,
                    exemplar::model::Sampling::Sample {
                        temperature: 2.0,
                        top_k: None,
                        seed,
                    },
                    false,
                    &[],
                )
                .unwrap()
                .ids
        };
        assert_eq!(sample(1), sample(1));
        assert!(
            (2..8).any(|s| sample(s) != sample(1)),
            "{name}: seeds never differ"
        );
        // top_k = 1 is greedy.
        let k1 = model
            .generate(
                prompt,
                6,
                exemplar::model::Sampling::Sample {
                    temperature: 1.0,
                    top_k: Some(1),
                    seed: 9,
                },
                false,
                &[],
            )
            .unwrap();
        assert_eq!(k1.ids, gen, "{name}: top-1 sampling is greedy");
    }
}

#[test]
fn gated_raised_and_norm_keeping_edits_touch_only_what_they_should() {
    let Some(root) = fixtures() else { return };
    let dir = root.join("gemma3");
    let exp = expected(&dir);
    let model = Gemma::load(&dir, Kind::Float, Device::Cpu).unwrap();
    let (ids, mask) = (&exp["input_ids"], &exp["attention_mask"]);
    let d = model.config.hidden_size;
    let at = HookPoint::parse("blocks.2.hook_resid_post").unwrap();
    let base = model.forward(ids, mask, &[at], &[], false).unwrap().hooks[&at].shallow_clone();
    let c = base.mean_dim([0, 1].as_slice(), false, Kind::Float);
    // Two "regions": the directions of two positions' activations; the gate opens where a
    // position's nearest of them is region 1 within θ.
    let dir_of = |b: i64, p: i64| {
        let u = base.get(b).get(p) - &c;
        &u / u.norm()
    };
    let exemplars = Tensor::stack(&[dir_of(0, 3), dir_of(0, 9)], 0);
    let gate = || exemplar::model::RegionGate {
        center: c.shallow_clone(),
        exemplars: exemplars.shallow_clone(),
        regions: vec![1],
        theta: 0.5,
    };
    let e = unit(seeded(d, 5));
    let gated = Intervention::new(
        at,
        Edit::Add {
            direction: e.shallow_clone(),
            alpha: 5.0,
        },
    )
    .gated(gate());
    let out = model
        .forward(ids, mask, &[at], &[gated], false)
        .unwrap()
        .hooks[&at]
        .shallow_clone();
    let changed = (&out - &base).abs().amax([-1].as_slice(), false).gt(0.0);
    // The gate's own decision, by hand in f64.
    let xc = base.to_kind(Kind::Double) - c.to_kind(Kind::Double);
    let u = &xc / xc.norm_scalaropt_dim(2, [-1].as_slice(), true);
    let sims = u.matmul(&exemplars.to_kind(Kind::Double).tr());
    let (best, id) = sims.max_dim(-1, false);
    let open = id.eq(1).logical_and(&(best.neg() + 1.0).le(0.5));
    assert!(
        bool::try_from(changed.eq_tensor(&open).all()).unwrap(),
        "the gate decides"
    );
    let opened = i64::try_from(open.sum(Kind::Int64)).unwrap();
    assert!(
        opened >= 1 && opened < ids.numel() as i64,
        "{opened} positions open"
    );
    // Raise: positions below the value reach it, those above are untouched.
    let raise = Intervention::new(
        at,
        Edit::RaiseProjection {
            direction: e.shallow_clone(),
            center: c.shallow_clone(),
            value: 0.0,
        },
    );
    let out = model
        .forward(ids, mask, &[at], &[raise], false)
        .unwrap()
        .hooks[&at]
        .shallow_clone();
    let before = (&base - &c).matmul(&e);
    let after = (&out - &c).matmul(&e);
    let want = before.clamp_min(0.0);
    assert!(f64::try_from((&after - &want).abs().max()).unwrap() < 1e-4);
    // Keep-norm: the projection moves, the norm does not.
    let kept = Intervention::new(
        at,
        Edit::Add {
            direction: e.shallow_clone(),
            alpha: 30.0,
        },
    )
    .keeping_norm();
    let out = model
        .forward(ids, mask, &[at], &[kept], false)
        .unwrap()
        .hooks[&at]
        .shallow_clone();
    let n0 = base.norm_scalaropt_dim(2, [-1].as_slice(), false);
    let n1 = out.norm_scalaropt_dim(2, [-1].as_slice(), false);
    assert!(f64::try_from(((&n1 - &n0) / &n0).abs().max()).unwrap() < 1e-5);
    assert!(f64::try_from((&out - &base).abs().max()).unwrap() > 1.0);
    // A gate on a per-head hook, or with a region out of range, is refused.
    let bad = Intervention::new(
        at,
        Edit::Add {
            direction: e.shallow_clone(),
            alpha: 1.0,
        },
    )
    .gated(exemplar::model::RegionGate {
        regions: vec![2],
        ..gate()
    });
    let err = model
        .forward(ids, mask, &[at], &[bad], false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gate region 2") && err.contains("2 regions"),
        "{err}"
    );
}
