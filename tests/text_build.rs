//! Builds from text (`build --model DIR --corpus FILES`) on the small random Gemma-2 fixture:
//! identical to `activations` followed by `build --activations` on the same corpus and flags;
//! killed builds (SIGKILL) resume from their checkpoint to the same dictionary, for both
//! `--model` and `--activations`; resumes with other flags are refused; the metadata records
//! the model, corpus, order and FLOPs.
#![cfg(feature = "torch")]

mod common;

use common::{assert_mentions, exemplar};
use exemplar::model::{Gemma, Tokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn fixture() -> Option<PathBuf> {
    common::gemma_fixtures().map(|p| p.join("gqa"))
}

const WORDS: &[&str] = &[
    "the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "around", "quickly", "and",
    "slowly", "under", "bright", "moon", "light", "river", "stone", "green",
];

/// A JSON Lines corpus of `n` documents of 1..30 seeded random words (some very short, so
/// --min-tokens filters), plus an empty one (skipped by the reader).
fn write_corpus(dir: &Path, n: usize) -> PathBuf {
    let mut rng = common::Rng::new(11);
    let mut s = String::new();
    for i in 0..n {
        let len = 1 + rng.below(30);
        let text: Vec<&str> = (0..len).map(|_| WORDS[rng.below(WORDS.len())]).collect();
        s.push_str(&serde_json::json!({ "id": i, "body": text.join(" ") }).to_string());
        s.push('\n');
        if i == 3 {
            s.push_str("{\"id\": -1, \"body\": \"\"}\n");
        }
    }
    let p = dir.join("corpus.jsonl");
    std::fs::write(&p, s).unwrap();
    p
}

/// Every tensor of two safetensors files (names, dtypes, shapes, bytes) and their `exemplar`
/// metadata except `ignore`d keys must be equal. Returns both metadata objects.
#[track_caller]
fn assert_same_file(a: &Path, b: &Path, ignore: &[&str]) -> (Value, Value) {
    let (ba, bb) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (sa, sb) = (
        safetensors::SafeTensors::deserialize(&ba).unwrap(),
        safetensors::SafeTensors::deserialize(&bb).unwrap(),
    );
    let mut na = sa.names();
    let mut nb = sb.names();
    na.sort();
    nb.sort();
    assert_eq!(na, nb, "tensor names differ");
    for n in na {
        let (ta, tb) = (sa.tensor(n).unwrap(), sb.tensor(n).unwrap());
        assert_eq!(ta.dtype(), tb.dtype(), "{n}: dtype");
        assert_eq!(ta.shape(), tb.shape(), "{n}: shape");
        assert!(ta.data() == tb.data(), "{n}: values differ");
    }
    let meta = |bytes: &[u8]| -> Value {
        let (_, m) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
        serde_json::from_str(&m.metadata().as_ref().unwrap()["exemplar"]).unwrap()
    };
    let (ma, mb) = (meta(&ba), meta(&bb));
    let (oa, ob) = (ma.as_object().unwrap(), mb.as_object().unwrap());
    let mut keys: Vec<&String> = oa.keys().chain(ob.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        if !ignore.contains(&k.as_str()) {
            assert_eq!(oa.get(k), ob.get(k), "metadata `{k}` differs");
        }
    }
    (ma, mb)
}

/// The wall-clock fields, which differ between any two runs.
const TIMINGS: &[&str] = &[
    "activation_d2h_bytes",
    "build_seconds",
    "created_unix",
    "forward_seconds",
    "clustering_seconds",
    "calibration_seconds",
];

#[test]
fn text_build_equals_activations_then_build() {
    let Some(model) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let corpus = write_corpus(dir, 60);
    let m = model.to_str().unwrap();
    let c = corpus.to_str().unwrap();
    let hook = "blocks.2.hook_resid_post";
    let corpus_flags = [
        "--corpus",
        c,
        "--text-field",
        "body",
        "--ctx",
        "12",
        "--min-tokens",
        "3",
        "--shuffle-seed",
        "7",
        "--shuffle-buffer",
        "16",
    ];
    let build_flags = [
        "--percentile",
        "20",
        "--calibration-activations",
        "100",
        "--device",
        "cpu",
        "--saturation-window",
        "3",
        "--seed",
        "5",
        "--reservoir",
        "4",
        "--examples",
        "3",
    ];
    let mut args = vec![
        "build",
        "--model",
        m,
        "--hook",
        hook,
        "--batch-documents",
        "5",
    ];
    args.extend(corpus_flags);
    args.extend(build_flags);
    args.extend(["-o", "text.safetensors"]);
    exemplar(dir, &args).ok();

    let mut args = vec![
        "activations",
        "--model",
        m,
        "--hook",
        hook,
        "--batch-prompts",
        "5",
    ];
    args.extend(corpus_flags);
    args.extend(["-o", "acts.safetensors"]);
    let acts = exemplar(dir, &args).ok();
    let mut args = vec![
        "build",
        "-a",
        "acts.safetensors",
        "--batch-documents",
        "5",
        "--hook",
        hook,
        "--model-name",
        m,
    ];
    args.extend(build_flags);
    args.extend(["-o", "files.safetensors"]);
    exemplar(dir, &args).ok();

    // Source-specific fields: what was read (a corpus and a model vs an activation file).
    let mut ignore: Vec<&str> = TIMINGS.to_vec();
    ignore.extend([
        "inputs",
        "input_fingerprint",
        "corpus",
        "corpus_fingerprint",
        "model_path",
        "model_config_hash",
        "model_flops",
        "order_seed",
        "order_buffer",
        "ctx",
        "min_chars",
        "min_tokens",
        "final_position",
        "documents_read",
        "documents_skipped_tokens",
    ]);
    let (text, files) = assert_same_file(
        &dir.join("text.safetensors"),
        &dir.join("files.safetensors"),
        &ignore,
    );
    assert!(text["activations_streamed"].as_u64().unwrap() > 0);
    assert!(text["clustering_flops"].as_f64().unwrap() > 0.0);
    assert_eq!(text["clustering_flops"], files["clustering_flops"]);
    assert_eq!(text["batch_documents"], 5);
    assert_eq!(text["batch_size"], 0);
    // The recorded corpus: the order's seed, filters, and the fingerprint `activations` printed.
    assert_eq!(text["order_seed"], 7);
    assert_eq!(text["order_buffer"], 16);
    assert_eq!(text["ctx"], 12);
    assert_eq!(text["min_tokens"], 3);
    assert_eq!(text["model_path"], m);
    assert_eq!(text["hook"], hook);
    let fp = text["corpus_fingerprint"].as_str().unwrap();
    if text["documents_read"] == 60 {
        assert!(acts.stdout.contains(fp), "{}", acts.stdout);
    }
    let cfg = std::fs::read(model.join("config.json")).unwrap();
    use sha2::Digest;
    let h: String = sha2::Sha256::digest(&cfg)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(text["model_config_hash"], h.as_str());
    assert!(text["documents_skipped_tokens"].as_u64().unwrap() > 0);

    // model_flops = Σ over forward batches of Gemma::forward_flops(B·T, T, layer), the batches
    // being the corpus' kept documents (shuffled as recorded) in fives, T the longest of each.
    // Recomputed from the provenance sidecar of the activation file (same documents, in order).
    let g = Gemma::load(&model, tch::Kind::Float, tch::Device::Cpu).unwrap();
    let sidecar = std::fs::read_to_string(dir.join("acts.safetensors.provenance.jsonl")).unwrap();
    let lens: Vec<u64> = sidecar
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["tokens"]
                .as_array()
                .unwrap()
                .len() as u64
        })
        .collect();
    let batches = text["batches"].as_u64().unwrap() as usize;
    let calibration_batches = {
        let mut rows = 0u64;
        let mut n = 0;
        for ch in lens.chunks(5) {
            rows += ch.iter().map(|l| l - 1).sum::<u64>();
            n += 1;
            if rows >= 100 {
                break;
            }
        }
        n
    };
    let forwarded = batches.max(calibration_batches);
    let want: f64 = lens
        .chunks(5)
        .take(forwarded)
        .map(|ch| {
            let t = *ch.iter().max().unwrap();
            g.forward_flops(ch.len() as u64 * t, t, 2)
        })
        .sum();
    let got = text["model_flops"].as_f64().unwrap();
    assert!(
        (got - want).abs() <= 1e-9 * want,
        "model_flops {got} != {want}"
    );
    let _ = Tokenizer::from_file(&model.join("tokenizer.json"), 2).unwrap();
}

/// Spawns `exemplar args`, waits for `checkpoint` to appear, SIGKILLs the process.
fn kill_after_checkpoint(dir: &Path, args: &[&str], checkpoint: &Path) {
    kill_when(dir, args, || checkpoint.exists());
}

/// Spawns `exemplar args`, waits until `ready()`, SIGKILLs the process (after 300 ms more).
fn kill_when(dir: &Path, args: &[&str], mut ready: impl FnMut() -> bool) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_exemplar"))
        .args(args)
        .current_dir(dir)
        .env("CI", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !ready() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the checkpoint awaited did not appear"
        );
        if let Some(s) = child.try_wait().unwrap() {
            panic!("the build ended ({s}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the build was not killed: {status}"
    );
}

/// Runs `flags` uninterrupted, then killed + resumed, and checks both give the same files.
fn check_kill_and_resume(dir: &Path, flags: &[&str], also: &[(&str, &str)]) {
    let mut args = vec!["build"];
    args.extend(flags);
    let mut full = args.clone();
    full.extend(["-o", "full.safetensors"]);
    for (f, _) in also {
        full.extend(["--assignments", *f]);
    }
    exemplar(dir, &full).ok();
    let mut killed = args.clone();
    killed.extend([
        "-o",
        "resumed.safetensors",
        "--checkpoint",
        "ck.safetensors",
        "--checkpoint-every",
        "1",
        "--throttle-ms",
        "250",
    ]);
    for (_, f) in also {
        killed.extend(["--assignments", *f]);
    }
    kill_after_checkpoint(dir, &killed, &dir.join("ck.safetensors"));
    assert!(!dir.join("resumed.safetensors").exists());
    // The checkpoint holds part of the build.
    let ck = exemplar::Dictionary::load(&dir.join("ck.safetensors")).unwrap();
    let full_dict = exemplar::Dictionary::load(&dir.join("full.safetensors")).unwrap();
    assert!(ck.info().batches >= 1 && ck.info().batches < full_dict.info().batches);
    // Without --resume an existing checkpoint is not overwritten.
    let e = exemplar(dir, &killed).err();
    assert_mentions(&e, &["ck.safetensors", "--resume"]);
    let mut resume: Vec<&str> = killed
        .iter()
        .copied()
        .filter(|a| *a != "--throttle-ms" && *a != "250")
        .collect();
    resume.push("--resume");
    exemplar(dir, &resume).ok();
    let mut ignore = TIMINGS.to_vec();
    ignore.push("resumed");
    let (a, b) = assert_same_file(
        &dir.join("full.safetensors"),
        &dir.join("resumed.safetensors"),
        &ignore,
    );
    assert_eq!(a["resumed"], 0);
    assert_eq!(b["resumed"], 1);
    for (f, g) in also {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(dir.join(g)).unwrap(),
            "{f} and {g} differ"
        );
    }
}

#[test]
fn killed_text_build_resumes_to_the_same_dictionary() {
    let Some(model) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let corpus = write_corpus(dir, 80);
    let flags = [
        "--model",
        model.to_str().unwrap(),
        "--hook",
        "blocks.1.hook_resid_post",
        "--corpus",
        corpus.to_str().unwrap(),
        "--text-field",
        "body",
        "--ctx",
        "10",
        "--batch-documents",
        "4",
        "--percentile",
        "15",
        "--calibration-activations",
        "60",
        "--no-saturation",
        "--device",
        "cpu",
        "--reservoir",
        "3",
        "--merge-close",
        "--merge-threshold",
        "0.05",
    ];
    check_kill_and_resume(dir, &flags, &[]);
    // Other flags than the checkpoint's: refused, naming the difference.
    let mut other = vec!["build"];
    other.extend(flags);
    let i = other.iter().position(|a| *a == "15").unwrap();
    other[i] = "25";
    other.extend([
        "-o",
        "other.safetensors",
        "--checkpoint",
        "ck.safetensors",
        "--resume",
    ]);
    let e = exemplar(dir, &other).err();
    assert_mentions(&e, &["refusing to resume", "percentile", "15", "25"]);
    assert!(!dir.join("other.safetensors").exists());
}

#[test]
fn killed_activation_build_resumes_to_the_same_dictionary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = common::clustered(3000, 16, 40, 0.3, 3);
    common::write_npy(&dir.join("x.npy"), &data, 16);
    let flags = [
        "-a",
        "x.npy",
        "--batch-size",
        "100",
        "--percentile",
        "5",
        "--calibration-activations",
        "300",
        "--no-saturation",
        "--device",
        "cpu",
        "--strict-order",
    ];
    check_kill_and_resume(dir, &flags, &[("full_ids.npy", "resumed_ids.npy")]);
}

#[test]
fn final_position_keeps_the_last_token_of_each_document() {
    let Some(model) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let corpus = write_corpus(dir, 40);
    let m = model.to_str().unwrap();
    let c = corpus.to_str().unwrap();
    let common_flags = [
        "--hook",
        "blocks.3.hook_resid_post",
        "--corpus",
        c,
        "--text-field",
        "body",
        "--ctx",
        "8",
        "--final-position",
        "--min-tokens",
        "2",
    ];
    let mut args = vec!["build", "--model", m, "--batch-documents", "6"];
    args.extend(common_flags);
    args.extend([
        "--percentile",
        "20",
        "--calibration-activations",
        "10",
        "--device",
        "cpu",
        "--no-saturation",
        "-o",
        "text.safetensors",
    ]);
    exemplar(dir, &args).ok();
    let mut args = vec!["activations", "--model", m, "--batch-prompts", "6"];
    args.extend(common_flags);
    args.extend(["-o", "acts.safetensors"]);
    let acts = exemplar(dir, &args).ok();
    // One row per kept document, at its last token.
    let sidecar = std::fs::read_to_string(dir.join("acts.safetensors.provenance.jsonl")).unwrap();
    let mut kept = 0;
    for l in sidecar.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let n = v["tokens"].as_array().unwrap().len() as i64;
        assert!((3..=9).contains(&n), "{l}");
        assert_eq!(v["positions"], serde_json::json!([n - 1]), "{l}");
        kept += 1;
    }
    exemplar(
        dir,
        &[
            "build",
            "-a",
            "acts.safetensors",
            "--batch-documents",
            "6",
            "--percentile",
            "20",
            "--calibration-activations",
            "10",
            "--device",
            "cpu",
            "--no-saturation",
            "--hook",
            "blocks.3.hook_resid_post",
            "--model-name",
            m,
            "-o",
            "files.safetensors",
        ],
    )
    .ok();
    let mut ignore: Vec<&str> = TIMINGS.to_vec();
    ignore.extend([
        "inputs",
        "input_fingerprint",
        "corpus",
        "corpus_fingerprint",
        "model_path",
        "model_config_hash",
        "model_flops",
        "order_seed",
        "order_buffer",
        "ctx",
        "min_chars",
        "min_tokens",
        "final_position",
        "documents_read",
        "documents_skipped_tokens",
    ]);
    let (text, _) = assert_same_file(
        &dir.join("text.safetensors"),
        &dir.join("files.safetensors"),
        &ignore,
    );
    assert_eq!(text["final_position"], true);
    // Every document was read (no saturation): the fingerprint (hashed as the documents reach
    // the build from the read-ahead thread) is the corpus reader's own.
    assert_eq!(text["documents_read"], 40);
    let fp = text["corpus_fingerprint"].as_str().unwrap();
    assert!(
        acts.stdout.contains(&format!("corpus fingerprint {fp}")),
        "{}",
        acts.stdout
    );
    assert_eq!(text["activations_streamed"], kept);
    assert_eq!(
        text["documents_read"].as_u64().unwrap()
            - text["documents_skipped_tokens"].as_u64().unwrap(),
        kept
    );
}

#[test]
fn bench_reports_flops_by_hand_and_the_reference_cost_model() {
    let tmp = tempfile::tempdir().unwrap();
    let run = exemplar(
        tmp.path(),
        &[
            "bench",
            "--shape",
            "tiny",
            "--hook",
            "blocks.1.hook_resid_post",
            "--documents",
            "8",
            "--ctx",
            "16",
            "--batch-documents",
            "4",
            "--calibration-activations",
            "30",
            "--percentile",
            "10",
            "--device",
            "cpu",
            "--peak-tflops",
            "2",
            "--json",
            "-o",
            "bench.json",
        ],
    )
    .ok();
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("bench.json")).unwrap())
            .unwrap();
    assert_eq!(v, file);
    let (build, harvest) = (&v["results"][0], &v["results"][1]);
    assert_eq!(build["path"], "build");
    assert_eq!(harvest["path"], "harvest");
    // 8 documents of BOS + 16 random ids, 2 batches of 4.
    for r in [build, harvest] {
        assert_eq!(r["tokens"], 8 * 17);
        assert_eq!(r["activations"], 8 * 16);
        assert_eq!(r["batches"], 2);
        assert_eq!(r["d2h_bytes_per_batch"], 0.0); // on the CPU nothing crosses a bus
        let total = r["model_flops"].as_f64().unwrap() + r["clustering_flops"].as_f64().unwrap();
        let mfu = total / r["wall_seconds"].as_f64().unwrap() / 2e12;
        assert!((r["mfu"].as_f64().unwrap() - mfu).abs() <= 1e-9 * mfu);
        assert!(r["clustering_flops"].as_f64().unwrap() > 0.0);
    }
    // The tiny shape: D 64, MLP 128, 4 heads (2 KV) of 16, vocab 512, 4 layers. Per token and
    // layer: 2·(q,o 2·64·64 + k,v 2·64·32 + MLP 3·64·128 + attention 2·17·64) = 78,080.
    let per_token_layer =
        2.0 * (2.0 * 64.0 * 64.0 + 2.0 * 64.0 * 32.0 + 3.0 * 64.0 * 128.0 + 2.0 * 17.0 * 64.0);
    assert_eq!(per_token_layer, 78_080.0);
    let tokens = 136.0;
    let truncated = per_token_layer * tokens * 2.0; // blocks 0 and 1
    let all_blocks = per_token_layer * tokens * 4.0;
    let unembedding = 2.0 * 64.0 * 512.0 * tokens;
    assert_eq!(build["model_flops"].as_f64().unwrap(), truncated);
    assert_eq!(
        harvest["model_flops"].as_f64().unwrap(),
        all_blocks + unembedding
    );
    let r = &v["reference_cost_model"];
    assert_eq!(r["model_flops"].as_f64().unwrap(), all_blocks + unembedding);
    assert_eq!(r["truncated_forward_flops"].as_f64().unwrap(), truncated);
    let wasted = 1.0 - truncated / (all_blocks + unembedding);
    assert!((r["wasted_fraction"].as_f64().unwrap() - wasted).abs() < 1e-12);
    // Per batch of 4 × 16 rows of D = 64: bf16 down, f32 back, f32 shard; logits 4 × 17 × 512 bf16.
    assert_eq!(r["d2h_bytes_per_batch"], 4.0 * 16.0 * 64.0 * 2.0);
    assert_eq!(r["h2d_bytes_per_batch"], 4.0 * 16.0 * 64.0 * 4.0);
    assert_eq!(r["logits_bytes_per_batch"], 4.0 * 17.0 * 512.0 * 2.0);
}

#[test]
fn a_bad_corpus_is_an_error_naming_the_file_and_line_and_leaves_nothing() {
    let Some(model) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("bad.jsonl"),
        "{\"text\": \"one two three\"}\n{\"text\": \"four five\"}\n{\"text\": oops}\n",
    )
    .unwrap();
    let m = model.to_str().unwrap();
    let e = exemplar(
        dir,
        &[
            "build",
            "--model",
            m,
            "--hook",
            "blocks.0.hook_resid_post",
            "--corpus",
            "bad.jsonl",
            "--percentile",
            "10",
            "--device",
            "cpu",
            "--checkpoint",
            "ck.st",
            "-o",
            "d.safetensors",
        ],
    )
    .err();
    assert_mentions(&e, &["bad.jsonl", "line 3"]);
    common::assert_no_outputs(dir, &["d.safetensors", "ck.st"]);
    // --corpus is for builds from text only.
    let e = exemplar(
        dir,
        &[
            "build",
            "-a",
            "x.npy",
            "--corpus",
            "bad.jsonl",
            "-p",
            "5",
            "-o",
            "d.safetensors",
        ],
    )
    .err();
    assert_mentions(&e, &["--corpus", "--model"]);
    // A missing text field names it.
    std::fs::write(dir.join("nofield.jsonl"), "{\"body\": \"a b c\"}\n").unwrap();
    let e = exemplar(
        dir,
        &[
            "build",
            "--model",
            m,
            "--hook",
            "blocks.0.hook_resid_post",
            "--corpus",
            "nofield.jsonl",
            "--percentile",
            "10",
            "--device",
            "cpu",
            "-o",
            "d.safetensors",
        ],
    )
    .err();
    assert_mentions(&e, &["nofield.jsonl", "text"]);
    common::assert_no_outputs(dir, &["d.safetensors"]);
}

/// The flags (hooks and percentiles aside) of the builds of several pairs: pairs saturate on
/// their own (window 1).
fn pair_flags<'a>(m: &'a str, c: &'a str) -> Vec<&'a str> {
    vec![
        "build",
        "--model",
        m,
        "--corpus",
        c,
        "--text-field",
        "body",
        "--ctx",
        "12",
        "--min-tokens",
        "3",
        "--batch-documents",
        "5",
        "--calibration-activations",
        "100",
        "--device",
        "cpu",
        "--saturation-window",
        "1",
        "--seed",
        "5",
        "--reservoir",
        "4",
        "--examples",
        "3",
    ]
}

/// `build --model` with two hooks and two percentiles runs one forward per batch (to the deepest
/// hook) and writes, per (hook, percentile) pair, the dictionary the single build of that pair
/// gives: same tensors and metadata, except timings and `model_flops`, which is the shared
/// forward's over the batches that dictionary saw. Each pair saturates on its own.
#[test]
fn several_hooks_and_percentiles_from_one_forward_equal_single_builds() {
    let Some(model) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let corpus = write_corpus(dir, 60);
    let (m, c) = (model.to_str().unwrap(), corpus.to_str().unwrap());
    let flags = pair_flags(m, c);
    let (shallow, deep) = ("blocks.1.hook_resid_post", "blocks.3.hook_resid_post");
    let percentiles = ["5", "60"];
    let mut multi = flags.to_vec();
    multi.extend(["--hook", deep, "--hook", shallow, "--percentile", "5,60"]);
    multi.extend(["-o", "multi"]);
    let run = exemplar(dir, &multi).ok();
    let mut stopped_at = Vec::new();
    for (hook, layer) in [(deep, 3u64), (shallow, 1)] {
        for p in percentiles {
            let name = format!("{hook}.p{p}.safetensors");
            let single_out = format!("single-{name}");
            let mut single = flags.to_vec();
            single.extend(["--hook", hook, "--percentile", p, "-o", &single_out]);
            exemplar(dir, &single).ok();
            assert!(run.stdout.contains(&name), "{}", run.stdout);
            let mut ignore = TIMINGS.to_vec();
            ignore.push("model_flops");
            let (got, want) = assert_same_file(
                &dir.join("multi").join(&name),
                &dir.join(&single_out),
                &ignore,
            );
            assert_eq!(got["hook"], hook);
            assert_eq!(got["percentile"], p.parse::<f64>().unwrap());
            // The forward of a single build stops after block `layer`; the shared one after
            // block 3, over the same batches: FLOPs scale by (3 + 1) / (layer + 1).
            let (g, w) = (
                got["model_flops"].as_f64().unwrap(),
                want["model_flops"].as_f64().unwrap(),
            );
            let scaled = w * 4.0 / (layer + 1) as f64;
            assert!(
                (g - scaled).abs() <= 1e-12 * scaled,
                "{hook} p{p}: {g} vs {w}"
            );
            stopped_at.push((
                got["documents_read"].as_u64().unwrap(),
                got["saturated"].as_bool().unwrap(),
            ));
        }
    }
    // The pairs stop on their own: at least one saturates before another stops.
    let docs: Vec<u64> = stopped_at.iter().map(|s| s.0).collect();
    assert!(
        docs.iter().any(|&d| d != docs[0]) && stopped_at.iter().any(|s| s.1),
        "{stopped_at:?}"
    );

    // Outputs are checked before any work: an existing one is refused (nothing written)
    // unless --force.
    let mut again = flags.to_vec();
    again.extend(["--hook", shallow, "--hook", deep, "--percentile", "5,60"]);
    again.extend(["-o", "multi"]);
    let kept = dir.join("multi").join(format!("{shallow}.p5.safetensors"));
    let before = std::fs::read(&kept).unwrap();
    let e = exemplar(dir, &again).err();
    assert_mentions(&e, &["exists"]);
    assert!(
        std::fs::read(&kept).unwrap() == before,
        "a refused build touched its output"
    );
    std::fs::copy(&kept, dir.join("before.safetensors")).unwrap();
    let mut forced = again.clone();
    forced.push("--force");
    exemplar(dir, &forced).ok();
    let mut ignore = TIMINGS.to_vec();
    ignore.push("model_flops");
    assert_same_file(&dir.join("before.safetensors"), &kept, &ignore);
    // A file where the directory should be, checkpoints, and --activations are refused.
    std::fs::write(dir.join("afile"), b"x").unwrap();
    let mut bad = flags.to_vec();
    bad.extend(["--hook", shallow, "--percentile", "5,60", "-o", "afile"]);
    assert_mentions(&exemplar(dir, &bad).err(), &["directory", "afile"]);
    let mut bad = flags.to_vec();
    bad.extend(["--hook", shallow, "--percentile", "5,60", "-o", "new"]);
    bad.extend(["--checkpoint", "afile"]);
    assert_mentions(&exemplar(dir, &bad).err(), &["directory", "afile"]);
    let e = exemplar(
        dir,
        &["build", "-a", "x.npy", "-p", "1", "-p", "2", "-o", "out2"],
    )
    .err();
    assert_mentions(&e, &["--model"]);
    assert!(!dir.join("new").exists() && !dir.join("out2").exists());
}

/// The rows left in the model's tensors (the GPU hand-over's path, run here on the CPU, where
/// the builder copies them out) give the same dictionary as rows copied to the host, whether
/// the switch comes before the calibration or after it (as `run_builds` does on a GPU, so that
/// the calibration's batches, replayed, are host rows and the rest are tensors); rows cut by an
/// activation budget are cut from the tensor's index too.
#[test]
fn rows_left_in_the_model_tensors_build_the_same_dictionary() {
    use exemplar::backend::Backend;
    use exemplar::build::BuildConfig;
    use exemplar::calibrate::PercentileMethod;
    use exemplar::data::corpus::{CorpusOptions, CorpusReader};
    use exemplar::data::ActivationBatch;
    use exemplar::model::HookPoint;
    use exemplar::pipeline::text::{TextOptions, TextSource};
    use exemplar::pipeline::{self, BatchSource, BuildPlan, CalibrationSpec};

    /// A text source that leaves its rows in the tensors once `switch_after` rows are read,
    /// and checks that every batch holds its rows where it should.
    struct Switching<'s, 'm> {
        inner: &'s mut TextSource<'m>,
        switch_after: u64,
        read: u64,
        in_tensors: bool,
        tensor_batches: u64,
    }
    impl BatchSource for Switching<'_, '_> {
        fn dim(&self) -> usize {
            self.inner.dim()
        }
        fn streams(&self) -> usize {
            self.inner.streams()
        }
        fn next_batch(&mut self, n: usize) -> exemplar::Result<Option<ActivationBatch>> {
            Ok(self.next_batches(n)?.map(|mut v| v.swap_remove(0)))
        }
        fn next_batches(&mut self, n: usize) -> exemplar::Result<Option<Vec<ActivationBatch>>> {
            if self.read >= self.switch_after && !self.in_tensors {
                assert!(self.inner.keep_rows_in_tensors());
                self.in_tensors = true;
            }
            let Some(batches) = self.inner.next_batches(n)? else {
                return Ok(None);
            };
            for b in &batches {
                assert_eq!(b.tensor_rows.is_some(), self.in_tensors, "rows in tensors");
                assert_eq!(b.data.is_empty(), self.in_tensors, "rows in data");
                assert_eq!(b.host_data().len(), b.rows() * b.dim);
            }
            self.tensor_batches += u64::from(self.in_tensors);
            self.read += batches[0].rows() as u64;
            Ok(Some(batches))
        }
        fn position(&self) -> serde_json::Value {
            self.inner.position()
        }
        fn seek(&mut self, p: &serde_json::Value) -> exemplar::Result<()> {
            self.inner.seek(p)
        }
        fn record(&self, info: &mut exemplar::dictionary::BuildInfo) {
            self.inner.record(info)
        }
    }

    let Some(dir) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_corpus(tmp.path(), 60);
    let model = Gemma::load(&dir, tch::Kind::Float, tch::Device::Cpu).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"), model.config.bos_token_id).unwrap();
    let hook = HookPoint::parse("blocks.2.hook_resid_post").unwrap();
    let shallow = HookPoint::parse("blocks.0.hook_resid_mid").unwrap();
    // One dictionary per hook, from one forward per batch.
    let build_hooks = |hooks: &[HookPoint], switch_after: u64| {
        let options = CorpusOptions {
            text_field: "body".into(),
            ..CorpusOptions::default()
        };
        let reader = CorpusReader::open(std::slice::from_ref(&corpus), options).unwrap();
        let text = TextOptions {
            ctx: 12,
            batch_documents: 5,
            min_tokens: 3,
            final_position: false,
            pack: false,
        };
        let mut inner = TextSource::with_hooks(reader, &tok, &model, hooks.to_vec(), text).unwrap();
        let mut src = Switching {
            inner: &mut inner,
            switch_after,
            read: 0,
            in_tensors: false,
            tensor_batches: 0,
        };
        let plan = BuildPlan::new(BuildConfig {
            reservoir_size: 4,
            saturation_window: None,
            ..BuildConfig::default()
        });
        let pairs = (0..hooks.len())
            .map(|stream| pipeline::BuildPair {
                stream,
                calibration: CalibrationSpec::Inline {
                    percentile: 20.0,
                    method: PercentileMethod::Linear,
                    activations: 100,
                    standardize: false,
                },
                hook: Some(hooks[stream].name()),
            })
            .collect();
        let out = pipeline::run_builds(&Backend::Cpu, &mut src, pairs, &plan, None).unwrap();
        (
            out.into_iter().map(|o| o.dictionary).collect::<Vec<_>>(),
            src.tensor_batches,
        )
    };
    let build = |final_position: bool, switch_after: u64, max_activations: Option<u64>| {
        let options = CorpusOptions {
            text_field: "body".into(),
            ..CorpusOptions::default()
        };
        let reader = CorpusReader::open(std::slice::from_ref(&corpus), options).unwrap();
        let text = TextOptions {
            ctx: 12,
            batch_documents: 5,
            min_tokens: 3,
            final_position,
            pack: false,
        };
        let mut inner = TextSource::new(reader, &tok, &model, hook, text).unwrap();
        let mut src = Switching {
            inner: &mut inner,
            switch_after,
            read: 0,
            in_tensors: false,
            tensor_batches: 0,
        };
        let plan = BuildPlan {
            max_activations,
            hook: Some(hook.name()),
            ..BuildPlan::new(BuildConfig {
                reservoir_size: 4,
                examples_per_partition: 3,
                seed: 5,
                saturation_window: None,
                ..BuildConfig::default()
            })
        };
        let cal = CalibrationSpec::Inline {
            percentile: 20.0,
            method: PercentileMethod::Linear,
            activations: 100,
            standardize: false,
        };
        let out = pipeline::run_build(&Backend::Cpu, &mut src, cal, &plan, None).unwrap();
        (out.dictionary, src.tensor_batches)
    };
    // Every position (the switch after the calibration's 100 rows), and the last token of
    // each document (one row per document: the switch comes within the calibration's reads).
    for (final_position, budgets, switches) in [
        (false, [None, Some(333)], [0, 100]),
        (true, [None, Some(33)], [0, 20]),
    ] {
        for budget in budgets {
            let (copied, none) = build(final_position, u64::MAX, budget);
            assert_eq!(none, 0);
            assert!(copied.len() > 3, "K = {}", copied.len());
            for switch_after in switches {
                let (in_tensors, batches) = build(final_position, switch_after, budget);
                assert!(batches > 2, "{batches} batches in tensors");
                common::assert_same_dictionary(&copied, &in_tensors, true);
            }
            if let Some(b) = budget {
                assert_eq!(copied.info().activations_streamed, b);
            }
        }
    }
    // Two hooks from one forward: each hook's own tensor feeds its own dictionary.
    let (copied, _) = build_hooks(&[hook, shallow], u64::MAX);
    let (in_tensors, batches) = build_hooks(&[hook, shallow], 100);
    assert!(batches > 2, "{batches} batches in tensors");
    assert_eq!(copied.len(), 2);
    assert!(
        copied[0].exemplars() != copied[1].exemplars(),
        "the hooks differ"
    );
    for (a, b) in copied.iter().zip(&in_tensors) {
        common::assert_same_dictionary(a, b, true);
    }
}

/// A build of several (hook, percentile) pairs checkpoints them as a set (a directory with a
/// manifest). Killed once a pair has stopped (saturated) and another has not, and resumed, it
/// writes every pair's uninterrupted dictionary: the stopped pair keeps its record of the
/// corpus as of its own stop.
#[test]
fn a_killed_build_of_several_pairs_resumes_to_the_same_dictionaries() {
    let Some(model) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let corpus = write_corpus(dir, 120);
    let (m, c) = (model.to_str().unwrap(), corpus.to_str().unwrap());
    let mut flags = pair_flags(m, c);
    flags.extend([
        "--hook",
        "blocks.3.hook_resid_post",
        "--hook",
        "blocks.1.hook_resid_post",
        "--percentile",
        "2,80",
    ]);
    let mut full = flags.to_vec();
    full.extend(["-o", "full"]);
    exemplar(dir, &full).ok();
    let mut killed = flags.to_vec();
    killed.extend([
        "-o",
        "resumed",
        "--checkpoint",
        "ck",
        "--checkpoint-every",
        "1",
        "--throttle-ms",
        "200",
    ]);
    // The records of the set the manifest names (None while there is none).
    let ck = dir.join("ck");
    let records = || -> Option<Vec<Value>> {
        let m: Value =
            serde_json::from_slice(&std::fs::read(ck.join("manifest.json")).ok()?).ok()?;
        m["files"]
            .as_array()?
            .iter()
            .map(|f| {
                let bytes = std::fs::read(ck.join(f.as_str()?)).ok()?;
                let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
                serde_json::from_str(&meta.metadata().as_ref()?["exemplar_checkpoint"]).ok()
            })
            .collect()
    };
    let stopped = |r: &[Value]| r.iter().filter(|r| r["stopped"] == true).count();
    kill_when(dir, &killed, || {
        records().is_some_and(|r| stopped(&r) >= 1 && stopped(&r) < r.len())
    });
    assert!(!dir.join("resumed").exists());
    let at_kill = records().unwrap();
    assert_eq!(at_kill.len(), 4);
    assert!(stopped(&at_kill) >= 1, "no pair had stopped");
    // One generation's files and the manifest, nothing else.
    let mut names: Vec<String> = std::fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
    let mut resume: Vec<&str> = killed
        .iter()
        .copied()
        .filter(|a| *a != "--throttle-ms" && *a != "200")
        .collect();
    resume.push("--resume");
    exemplar(dir, &resume).ok();
    let mut ignore = TIMINGS.to_vec();
    ignore.push("resumed");
    for hook in ["blocks.3.hook_resid_post", "blocks.1.hook_resid_post"] {
        for p in ["2", "80"] {
            let name = format!("{hook}.p{p}.safetensors");
            let (a, b) = assert_same_file(
                &dir.join("full").join(&name),
                &dir.join("resumed").join(&name),
                &ignore,
            );
            assert_eq!(
                (a["resumed"].as_u64(), b["resumed"].as_u64()),
                (Some(0), Some(1))
            );
        }
    }
    // A set is resumed only by the same pairs.
    let mut other: Vec<&str> = resume.clone();
    let i = other.iter().position(|a| *a == "2,80").unwrap();
    other[i] = "2,50";
    let i = other.iter().position(|a| *a == "resumed").unwrap();
    other[i] = "other";
    assert_mentions(
        &exemplar(dir, &other).err(),
        &["refusing to resume", "percentile"],
    );
    // A resume needs the set's manifest.
    let mut none = resume.clone();
    let i = none.iter().position(|a| *a == "ck").unwrap();
    none[i] = "nothing-here";
    let i = none.iter().position(|a| *a == "resumed").unwrap();
    none[i] = "other";
    assert_mentions(&exemplar(dir, &none).err(), &["nothing-here"]);
    assert!(!dir.join("other").exists());
}

#[test]
fn a_packed_text_build_equals_packed_activations_then_build_and_resumes() {
    let Some(model) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let corpus = write_corpus(dir, 80);
    let m = model.to_str().unwrap();
    let c = corpus.to_str().unwrap();
    let hook = "blocks.1.hook_resid_post";
    let corpus_flags = [
        "--corpus",
        c,
        "--text-field",
        "body",
        "--ctx",
        "9",
        "--pack",
    ];
    let build_flags = [
        "--percentile",
        "20",
        "--calibration-activations",
        "60",
        "--device",
        "cpu",
        "--no-saturation",
        "--seed",
        "3",
    ];
    let mut args = vec![
        "build",
        "--model",
        m,
        "--hook",
        hook,
        "--batch-documents",
        "4",
    ];
    args.extend(corpus_flags);
    args.extend(build_flags);
    args.extend(["-o", "text.safetensors"]);
    exemplar(dir, &args).ok();
    let mut args = vec![
        "activations",
        "--model",
        m,
        "--hook",
        hook,
        "--batch-prompts",
        "4",
    ];
    args.extend(corpus_flags);
    args.extend(["-o", "acts.safetensors"]);
    exemplar(dir, &args).ok();
    let mut args = vec![
        "build",
        "-a",
        "acts.safetensors",
        "--batch-documents",
        "4",
        "--hook",
        hook,
        "--model-name",
        m,
    ];
    args.extend(build_flags);
    args.extend(["-o", "files.safetensors"]);
    exemplar(dir, &args).ok();
    let mut ignore: Vec<&str> = TIMINGS.to_vec();
    ignore.extend([
        "inputs",
        "input_fingerprint",
        "corpus",
        "corpus_fingerprint",
        "model_path",
        "model_config_hash",
        "model_flops",
        "ctx",
        "min_chars",
        "min_tokens",
        "packed",
        "documents_read",
        "documents_skipped_tokens",
    ]);
    let (text, _) = assert_same_file(
        &dir.join("text.safetensors"),
        &dir.join("files.safetensors"),
        &ignore,
    );
    assert_eq!(text["packed"], true);
    // Every window is BOS + 9 tokens, and every position but a BOS is a row.
    let sidecar = std::fs::read_to_string(dir.join("acts.safetensors.provenance.jsonl")).unwrap();
    let mut windows = 0;
    for (i, line) in sidecar.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["doc_id"], i as i64, "windows are numbered in order");
        let tokens = v["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 10);
        assert_eq!(tokens[0], "<bos>");
        let rows: Vec<i64> = v["positions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_i64().unwrap())
            .collect();
        let want: Vec<i64> = (1..10).filter(|&p| tokens[p as usize] != "<bos>").collect();
        assert_eq!(rows, want);
        windows += 1;
    }
    assert!(windows > 20, "{windows} windows");
    // A killed packed build resumes (the windows are cut again) to the same dictionary.
    let mut flags = vec!["--model", m, "--hook", hook, "--batch-documents", "4"];
    flags.extend(corpus_flags);
    flags.extend(build_flags);
    flags.extend(["--reservoir", "3"]);
    check_kill_and_resume(dir, &flags, &[]);
}
