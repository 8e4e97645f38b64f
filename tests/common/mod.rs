//! Shared helpers of the end-to-end tests (`tests/cli.rs`, `tests/python_interop.rs`): running
//! the real `exemplar` binary, writing small synthetic activation files, and checking that a
//! failed command left nothing behind.

#![allow(dead_code)]

use exemplar::data::npy::{self, NpyArray, NpyData};
use exemplar::Dictionary;
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------------------------
// The project's Python and the Gemma-2 fixtures (scripts/test.sh provides both)

/// The Python interpreter of `EXEMPLAR_PYTHON`, or `None` (after saying so) when the Python-backed
/// checks should skip — unless `EXEMPLAR_REQUIRE_PYTHON=1`, which turns the skip into a failure so
/// CI can never skip them silently.
pub fn python() -> Option<PathBuf> {
    match std::env::var_os("EXEMPLAR_PYTHON") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            if std::env::var("EXEMPLAR_REQUIRE_PYTHON").as_deref() == Ok("1") {
                panic!(
                    "EXEMPLAR_REQUIRE_PYTHON=1 but EXEMPLAR_PYTHON is not set: run scripts/test.sh"
                );
            }
            eprintln!("skipping: EXEMPLAR_PYTHON not set (scripts/test.sh sets it)");
            None
        }
    }
}

/// Runs `python -c script args...` in `dir`; panics with its output unless it exits 0.
/// Returns its stdout.
pub fn run_python(py: &Path, dir: &Path, script: &str, args: &[&str]) -> String {
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", py.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python script failed ({:?})\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status.code()
    );
    stdout
}

/// The directory of the small random Gemma-2 checkpoints (`EXEMPLAR_GEMMA_FIXTURES`, written by
/// scripts/gemma_fixtures.py), or `None` after saying why the test skips; a failure instead
/// when `EXEMPLAR_REQUIRE_PYTHON` is set (as in scripts/test.sh).
pub fn gemma_fixtures() -> Option<PathBuf> {
    match std::env::var_os("EXEMPLAR_GEMMA_FIXTURES") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("EXEMPLAR_REQUIRE_PYTHON").is_some() => {
            panic!("EXEMPLAR_GEMMA_FIXTURES is not set but EXEMPLAR_REQUIRE_PYTHON is")
        }
        None => {
            eprintln!(
                "skipping: EXEMPLAR_GEMMA_FIXTURES not set (scripts/test.sh makes the HF fixtures)"
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running the binary

/// The outcome of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub cmdline: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics unless the command succeeded; returns self for chaining.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(
            self.success(),
            "`{}` failed ({:?})\n--- stdout\n{}\n--- stderr\n{}",
            self.cmdline,
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless the command failed with a non-zero exit; returns its stderr.
    #[track_caller]
    pub fn err(self) -> String {
        assert!(
            !self.success() && self.code.is_some(),
            "`{}` should have failed ({:?})\n--- stdout\n{}\n--- stderr\n{}",
            self.cmdline,
            self.code,
            self.stdout,
            self.stderr
        );
        self.stderr
    }
}

/// Runs `exemplar args...` with `dir` as working directory (so file names in messages are the
/// short relative names the test passed). Progress bars are hidden (`CI=1`).
pub fn exemplar(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_exemplar"))
        .args(args)
        .current_dir(dir)
        .env("CI", "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running the exemplar binary");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        cmdline: format!("exemplar {}", args.join(" ")),
    }
}

/// Asserts that `text` contains every one of `needles` (case-insensitive).
#[track_caller]
pub fn assert_mentions(text: &str, needles: &[&str]) {
    let lower = text.to_lowercase();
    for n in needles {
        assert!(
            lower.contains(&n.to_lowercase()),
            "message should mention {n:?}:\n{text}"
        );
    }
}

/// Names of the entries of `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Asserts that none of `outputs` exists in `dir` and that no temporary output file
/// (`.exemplar-*.tmp`) was left there.
#[track_caller]
pub fn assert_no_outputs(dir: &Path, outputs: &[&str]) {
    for o in outputs {
        assert!(
            !dir.join(o).exists(),
            "{o} must not exist after a failed command; directory holds {:?}",
            listing(dir)
        );
    }
    assert_no_temp_files(dir);
}

/// Asserts that no `.exemplar-*.tmp` file is in `dir`.
#[track_caller]
pub fn assert_no_temp_files(dir: &Path) {
    let stray: Vec<String> = listing(dir)
        .into_iter()
        .filter(|n| n.starts_with(".exemplar-") || n.ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "stray temporary files: {stray:?}");
}

// ---------------------------------------------------------------------------------------------
// Synthetic data

/// A small deterministic generator (splitmix64 + Box–Muller), so the tests need no crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `k` cluster centers (random unit directions plus a common non-zero offset) in `d` dims.
pub struct Clusters {
    pub offset: Vec<f64>,
    pub centers: Vec<Vec<f64>>,
}

impl Clusters {
    pub fn new(d: usize, k: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let offset: Vec<f64> = (0..d).map(|_| 0.5 + 0.5 * rng.normal()).collect();
        let centers = (0..k)
            .map(|_| {
                let v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.iter().map(|x| x / norm).collect()
            })
            .collect();
        Clusters { offset, centers }
    }

    /// `n × d` row-major rows, each around a random center, with Gaussian noise of standard
    /// deviation `spread` per component.
    pub fn sample(&self, n: usize, spread: f64, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(17));
        let mut out = Vec::with_capacity(n * self.offset.len());
        for _ in 0..n {
            let c = &self.centers[rng.below(self.centers.len())];
            for (o, v) in self.offset.iter().zip(c) {
                out.push((o + v + spread * rng.normal()) as f32);
            }
        }
        out
    }
}

/// `n × d` rows around `k` clusters drawn from `seed` (see [`Clusters`]).
pub fn clustered(n: usize, d: usize, k: usize, spread: f64, seed: u64) -> Vec<f32> {
    Clusters::new(d, k, seed).sample(n, spread, seed)
}

/// Writes `data` (`n × d`, f32) as a `.npy` file.
pub fn write_npy(path: &Path, data: &[f32], d: usize) {
    assert_eq!(data.len() % d, 0);
    npy::write_npy_file(
        path,
        &NpyArray::matrix(data.to_vec(), data.len() / d, d).unwrap(),
        true,
    )
    .unwrap();
}

/// A `.npy` file with a hand-written header (`shape` as Python text, e.g. `(2, 3)`).
pub fn write_npy_raw(path: &Path, descr: &str, fortran: bool, shape: &str, data: &[u8]) {
    let dict = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    let total = (10 + dict.len() + 1).div_ceil(64) * 64;
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&((total - 10) as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

/// Writes `data` (`n × d`) as an f64 (`<f8`) `.npy` file (a dtype exemplar does not read).
pub fn write_npy_f64(path: &Path, data: &[f32], d: usize) {
    let bytes: Vec<u8> = data
        .iter()
        .flat_map(|&x| (x as f64).to_le_bytes())
        .collect();
    write_npy_raw(
        path,
        "<f8",
        false,
        &format!("({}, {d})", data.len() / d),
        &bytes,
    );
}

/// Writes `data` (`n × d`, F32) as a `.safetensors` file holding the tensor `name`.
pub fn write_safetensors(path: &Path, name: &str, data: &[f32], d: usize) {
    let n = data.len() / d;
    let nbytes = data.len() * 4;
    let mut header = format!(
        "{{\"{name}\":{{\"dtype\":\"F32\",\"shape\":[{n},{d}],\"data_offsets\":[0,{nbytes}]}}}}"
    )
    .into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// Writes a provenance sidecar for `rows` rows: documents of `per_doc` rows each (the last may
/// be shorter), tokens `<bos> d<doc>t<pos>...`, every position after the BOS activated. Document
/// ids start at `first_doc`. Returns the number of documents.
pub fn write_sidecar(activation_path: &Path, rows: usize, per_doc: usize, first_doc: i64) -> usize {
    let mut lines = String::new();
    let mut left = rows;
    let mut doc = first_doc;
    while left > 0 {
        let m = left.min(per_doc);
        let mut tokens = vec!["<bos>".to_string()];
        tokens.extend((1..=m).map(|p| format!("d{doc}t{p}")));
        let positions: Vec<usize> = (1..=m).collect();
        lines.push_str(
            &serde_json::json!({"doc_id": doc, "tokens": tokens, "positions": positions})
                .to_string(),
        );
        lines.push('\n');
        left -= m;
        doc += 1;
    }
    let mut p = activation_path.as_os_str().to_owned();
    p.push(".provenance.jsonl");
    std::fs::write(PathBuf::from(p), lines).unwrap();
    (doc - first_doc) as usize
}

// ---------------------------------------------------------------------------------------------
// Reading results

/// Reads an `.npy` file written by exemplar.
pub fn read_npy(path: &Path) -> NpyArray {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    npy::read_npy(&bytes, path).unwrap()
}

pub fn i64_data(a: &NpyArray) -> &[i64] {
    match a.data() {
        NpyData::I64(v) => v,
        other => panic!("expected int64, found {}", other.descr()),
    }
}

pub fn f32_data(a: &NpyArray) -> &[f32] {
    match a.data() {
        NpyData::F32(v) => v,
        other => panic!("expected float32, found {}", other.descr()),
    }
}

pub fn bool_data(a: &NpyArray) -> &[bool] {
    match a.data() {
        NpyData::Bool(v) => v,
        other => panic!("expected bool, found {}", other.descr()),
    }
}

/// Loads a dictionary file, panicking with the error.
pub fn load_dict(path: &Path) -> Dictionary {
    Dictionary::load(path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Asserts that two dictionaries are equal in everything but the build's timing
/// (`build_seconds`, `created_unix`) and, with `same_inputs == false`, the input names and
/// fingerprint.
#[track_caller]
pub fn assert_same_dictionary(a: &Dictionary, b: &Dictionary, same_inputs: bool) {
    assert_eq!(a.len(), b.len(), "K differs");
    assert_eq!(a.dim(), b.dim(), "D differs");
    assert_eq!(a.theta(), b.theta(), "θ differs");
    assert_eq!(a.center(), b.center(), "center differs");
    assert_eq!(a.exemplars(), b.exemplars(), "exemplars differ");
    assert_eq!(a.member_counts(), b.member_counts(), "member counts differ");
    for k in 0..a.len() {
        assert_eq!(
            a.direction_sum(k),
            b.direction_sum(k),
            "Σ directions of {k}"
        );
        assert_eq!(
            a.distance_sums(k),
            b.distance_sums(k),
            "distance sums of {k}"
        );
        assert_eq!(
            a.exemplar_source(k),
            b.exemplar_source(k),
            "exemplar row of {k}"
        );
        assert_eq!(
            a.closest_examples(k),
            b.closest_examples(k),
            "closest of {k}"
        );
        assert_eq!(
            a.farthest_examples(k),
            b.farthest_examples(k),
            "farthest of {k}"
        );
        assert_eq!(a.reservoir(k), b.reservoir(k), "reservoir of {k}");
    }
    let norm = |d: &Dictionary| {
        let mut i = d.info().clone();
        i.build_seconds = 0.0;
        i.created_unix = 0;
        i.timings = Default::default();
        if !same_inputs {
            i.inputs.clear();
            i.input_fingerprint = None;
        }
        i
    };
    assert_eq!(norm(a), norm(b), "build info differs");
}

/// Bincount of the non-negative ids into `k` bins; panics on an id outside [-1, k).
pub fn bincount(ids: &[i64], k: usize) -> Vec<u64> {
    let mut c = vec![0u64; k];
    for &i in ids {
        assert!(i >= -1 && i < k as i64, "id {i} outside [-1, {k})");
        if i >= 0 {
            c[i as usize] += 1;
        }
    }
    c
}

// ---------------------------------------------------------------------------------------------
// The real Gemma 3 270M (scripts/get-model.sh) and HF transformers' outputs on it
// (scripts/real_model_fixtures.py); scripts/test.sh provides both.

/// `(snapshot, fixtures)` of the real Gemma 3 270M (`EXEMPLAR_GEMMA3_270M`,
/// `EXEMPLAR_GEMMA3_270M_FIXTURES`), or `None` after saying why the test skips; a failure instead
/// when `EXEMPLAR_REQUIRE_REAL_MODEL=1` (as in scripts/test.sh).
pub fn real_gemma3() -> Option<(PathBuf, PathBuf)> {
    let get = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    match (get("EXEMPLAR_GEMMA3_270M"), get("EXEMPLAR_GEMMA3_270M_FIXTURES")) {
        (Some(m), Some(f)) => Some((m, f)),
        _ if std::env::var("EXEMPLAR_REQUIRE_REAL_MODEL").as_deref() == Ok("1") => panic!(
            "EXEMPLAR_REQUIRE_REAL_MODEL=1 but EXEMPLAR_GEMMA3_270M / EXEMPLAR_GEMMA3_270M_FIXTURES are not set: run scripts/test.sh"
        ),
        _ => {
            eprintln!("skipping: the real Gemma 3 270M is not set up (scripts/test.sh runs scripts/get-model.sh gemma-3-270m)");
            None
        }
    }
}

/// Runs the Python check script `scripts/<script>` with `py` in `dir`; panics with its output
/// unless it exits 0. Returns its stdout.
#[allow(dead_code)] // not every test binary runs a check script
pub fn run_python_check(py: &Path, script: &str, dir: &Path, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let out = std::process::Command::new(py)
        .arg(&path)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", py.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {} failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `texts` as a JSON Lines corpus `c.jsonl` (field `text`) in `dir`.
pub fn write_text_corpus(dir: &Path, texts: &[&str]) {
    let mut s = String::new();
    for t in texts {
        s.push_str(&serde_json::json!({ "text": t }).to_string());
        s.push('\n');
    }
    std::fs::write(dir.join("c.jsonl"), s).unwrap();
}

/// An EP build (p10, 24 tokens per document, batches of 6) of `dir`'s `c.jsonl` at `hooks` of
/// the fixture `model` into `out` (a file; a directory for several hooks).
pub fn build_text_dictionary(dir: &Path, model: &str, hooks: &str, out: &str) {
    exemplar(
        dir,
        &[
            "build",
            "--model",
            model,
            "--hook",
            hooks,
            "--corpus",
            "c.jsonl",
            "--ctx",
            "24",
            "-p",
            "10",
            "--batch-documents",
            "6",
            "--calibration-activations",
            "100",
            "--no-saturation",
            "--device",
            "cpu",
            "-o",
            out,
        ],
    )
    .ok();
}

/// Six short sentences as `c.jsonl` in `dir` and their dictionary at `hooks` into `out`
/// (`build_text_dictionary`): the small real-text dictionary the model-analysis tests start from.
pub fn build_small_text_dictionary(dir: &Path, model: &str, hooks: &str, out: &str) {
    write_text_corpus(
        dir,
        &[
            "The capital of France is Paris, and the capital of Germany is Berlin.",
            "the river and the brown dog sat on the bank of the river all the day",
            "She tells the cat about the letter in the basket.",
            "The quick brown fox jumps over the lazy dog near the river.",
            "Water boils at one hundred degrees at sea level in the kettle.",
            "A bird sings in the tree and the wind blows over the hill.",
        ],
    );
    build_text_dictionary(dir, model, hooks, out);
}
