//! The file parsers, fuzzed for good: `.npy` headers and data, `.npz`, `.safetensors` inputs,
//! provenance sidecars, the dictionary file, build checkpoints (the file, the builder state it
//! records) and checkpoint-set manifests, and the corpus readers (text, JSON Lines, gzip,
//! zstd, Parquet).
//!
//! Each target starts from small valid files written by the project's own writers (or, where
//! the project only reads a format, by the crate it reads it with), mutates them (truncation,
//! bit flips, byte and integer overwrites at the header and footer, numbers in headers replaced
//! by huge or negative ones, dtype and other tokens swapped, bytes inserted, deleted or
//! duplicated, deep nesting), and runs the parser on the result. Some seeds mutate only a part
//! of the file, a header's text, and frame it again (length fields recomputed), so that the
//! mutations reach the header's parser instead of its length check. A case fails when the
//! parser
//!
//! * panics (proptest then shrinks the mutations to a minimal failing input),
//! * returns an error that does not name the file,
//! * makes an allocation larger than [`alloc_limit`] of the bytes it was given (the global
//!   allocator below records the largest request of the thread running the case): a size
//!   read from a header must be checked against the file before anything is allocated by it,
//! * or runs longer than [`HANG_SECONDS`] (a watchdog thread then ends the process, naming the
//!   input).
//!
//! Why proptest: it runs on stable Rust under plain `cargo test` (no nightly, no `cargo fuzz`
//! or libFuzzer toolchain in CI), its runner takes a fixed seed and a fixed number of cases (so
//! CI runs the same inputs every time, in bounded time), and it shrinks a failure to a minimal
//! list of mutations, which becomes the regression test. Coverage-guided engines (cargo-fuzz,
//! bolero's libFuzzer mode) need nightly and an unbounded run; bolero's stable mode is random
//! testing too, with less control over strategies and shrinking.
//!
//! Each target runs a fixed number of cases (see [`cases`]; all of them together take about
//! 10–25 s of the debug test profile on a small shared 2-core machine). `EXEMPLAR_FUZZ_SCALE=N`
//! runs N times as many cases and `EXEMPLAR_FUZZ_SEED=S` draws others, for longer hunts outside
//! CI; `EXEMPLAR_FUZZ_DEBUG=1` prints why each input was refused. An input that aborts the
//! process (an allocation the system refuses, a hang) stays on disk, under
//! `target/tmp/fuzz_parsers/`, for a regression test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exemplar::checkpoint::{self, CalibrationRecord, CheckpointRecord};
use exemplar::data::corpus::{CorpusOptions, CorpusReader, Shuffle, TextMode};
use exemplar::data::npy::{self, NpyArray};
use exemplar::data::provenance::{self, DocIdSet};
use exemplar::data::{ActivationBatch, ActivationStream, Document, StreamOptions, TokenRef};
use exemplar::tensorfile::{self, TensorOut};
use exemplar::{BuildConfig, Builder, Dictionary};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

// ---------------------------------------------------------------------------------------------
// Budget

/// Cases per target in CI (times `EXEMPLAR_FUZZ_SCALE`), chosen so that every target costs
/// a few seconds in the debug test profile on a small shared machine.
mod cases {
    pub const NPY_HEADER: u32 = 2000;
    pub const NPY_HEADER_TEXT: u32 = 1200;
    pub const NPY_STREAM: u32 = 700;
    pub const NPZ: u32 = 500;
    pub const SAFETENSORS: u32 = 700;
    pub const SIDECAR: u32 = 700;
    pub const DICTIONARY: u32 = 500;
    pub const CHECKPOINT: u32 = 400;
    pub const CHECKPOINT_STATE: u32 = 300;
    pub const CHECKPOINT_SET: u32 = 400;
    pub const CORPUS_TEXT: u32 = 700;
    pub const CORPUS_COMPRESSED: u32 = 500;
    pub const PARQUET: u32 = 500;
}

/// A case running longer than this is a hang.
const HANG_SECONDS: u64 = 60;

/// The largest allocation a parser may make for an input of `input_bytes` bytes: a fixed
/// allowance (read buffers, decoder state) plus a small multiple of the input (values decoded
/// from f16 to f32, token strings out of their JSON, ...). A size declared by a header but not
/// backed by the file blows through it.
fn alloc_limit(input_bytes: usize) -> usize {
    (8 << 20) + 16 * input_bytes
}

fn scale() -> u32 {
    std::env::var("EXEMPLAR_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn seed() -> u64 {
    std::env::var("EXEMPLAR_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f022)
}

// ---------------------------------------------------------------------------------------------
// The largest allocation of the current thread

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations while the thread's locals are torn down are not recorded.
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size);
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the only addition is a
// store into a thread-local `Cell` (no allocation, no unwinding).
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Runs `f`, returning its result and the largest allocation it made on this thread.
fn tracked<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|c| c.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// Where a mutation applies: anywhere, near the start (headers, length fields), or near the end
/// (zip and Parquet footers).
#[derive(Debug, Clone)]
enum Pos {
    Any(Index),
    Head(u8),
    Tail(u8),
}

impl Pos {
    /// A position in `0..len` (`len > 0`).
    fn at(&self, len: usize) -> usize {
        match self {
            Pos::Any(i) => i.index(len),
            Pos::Head(k) => usize::from(*k).min(len - 1),
            Pos::Tail(k) => len - 1 - usize::from(*k).min(len - 1),
        }
    }
}

/// An integer to write: a fixed value or the input's length plus a small delta.
#[derive(Debug, Clone)]
enum IntValue {
    Abs(u64),
    Len(i8),
}

/// Integers that break length, offset and count fields.
const INTS: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 40,
    (1 << 62) + 3,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 7,
    u64::MAX,
];

/// Numbers (as text) that break shapes, offsets, sizes and counts in text headers.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "-0",
    "7",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "1e308",
    "1e400",
    "3.5",
    "NaN",
    "1L",
];

/// Tokens swapped into quoted strings: dtype names of every format, names of the fields and
/// tensors the readers look for, and odd strings.
const TOKENS: &[&str] = &[
    "F32",
    "F16",
    "BF16",
    "F64",
    "I64",
    "I32",
    "U8",
    "I8",
    "BOOL",
    "F8_E4M3",
    "F4",
    "F6_E2M3",
    "E8M0",
    "<f4",
    "<f2",
    ">f4",
    "<f8",
    "<i8",
    "|b1",
    "|u1",
    "O",
    "activations",
    "exemplars",
    "center",
    "reservoir",
    "document_ids",
    "document_offsets",
    "document_tokens",
    "checkpoint_assignments",
    "__metadata__",
    "format",
    "format_version",
    "exemplar",
    "exemplar-dictionary",
    "exemplar-calibration",
    "exemplar_checkpoint",
    "text",
    "doc_id",
    "tokens",
    "positions",
    "shape",
    "descr",
    "fortran_order",
    "data_offsets",
    "dtype",
    "dim",
    "partitions",
    "theta",
    "files",
    "generation",
    "version",
    "../outside.safetensors",
    "..",
    "",
    "\\u0000",
    "\\ud800",
    "é",
];

/// Bare values swapped in for words and numbers.
const BARE: &[&str] = &[
    "True", "False", "None", "null", "true", "false", "[]", "{}", "()", "(1,)", "[[]]", "\"\"",
    "-1", "0", "1e999",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Keep only the bytes before the position.
    Truncate(Pos),
    FlipBit(Pos, u8),
    SetByte(Pos, u8),
    /// Overwrite a little-endian integer of 1, 2, 4 or 8 bytes.
    Int(Pos, u8, IntValue),
    /// Replace the run of ASCII digits at or after the position.
    Number(Index, &'static str),
    /// Replace the contents of the quoted string at or after the position.
    Token(Index, &'static str),
    /// Replace the word (letters, digits, `_`) at or after the position.
    Bare(Index, &'static str),
    Insert(Pos, Vec<u8>),
    Delete(Pos, u16),
    /// Insert a copy of the bytes at the position, right after them.
    Duplicate(Pos, u16),
    /// Insert `n` copies of an opening bracket (deep nesting).
    Nest(Pos, u8, u16),
}

fn pos() -> impl Strategy<Value = Pos> {
    prop_oneof![
        4 => any::<Index>().prop_map(Pos::Any),
        2 => (0u8..24).prop_map(Pos::Head),
        1 => (0u8..64).prop_map(Pos::Tail),
    ]
}

/// One mutation. `text`: the input is a header's text (a framed seed), so mutations that keep
/// its syntax (numbers, tokens, words) weigh more than blind byte edits.
fn mutation(focus: &'static [&'static str], text: bool) -> impl Strategy<Value = Mutation> {
    let token: BoxedStrategy<&'static str> = if focus.is_empty() {
        prop::sample::select(TOKENS).boxed()
    } else {
        prop_oneof![prop::sample::select(TOKENS), prop::sample::select(focus)].boxed()
    };
    let int = prop_oneof![
        3 => prop::sample::select(INTS).prop_map(IntValue::Abs),
        1 => (-9i8..9).prop_map(IntValue::Len),
    ];
    let (bytes, words) = if text { (1, 4) } else { (3, 1) };
    prop_oneof![
        bytes => pos().prop_map(Mutation::Truncate),
        bytes => (pos(), 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        2 * bytes - 1 => (pos(), any::<u8>()).prop_map(|(p, b)| Mutation::SetByte(p, b)),
        3 * bytes - 2 => (pos(), prop::sample::select(&[1u8, 2, 4, 8][..]), int)
            .prop_map(|(p, w, v)| Mutation::Int(p, w, v)),
        4 * words => (any::<Index>(), prop::sample::select(NUMBERS)).prop_map(|(i, n)| Mutation::Number(i, n)),
        3 * words => (any::<Index>(), token).prop_map(|(i, t)| Mutation::Token(i, t)),
        2 * words => (any::<Index>(), prop::sample::select(BARE)).prop_map(|(i, t)| Mutation::Bare(i, t)),
        1 => (pos(), prop::collection::vec(any::<u8>(), 1..12)).prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => (pos(), 1u16..64).prop_map(|(p, n)| Mutation::Delete(p, n)),
        1 => (pos(), 1u16..64).prop_map(|(p, n)| Mutation::Duplicate(p, n)),
        1 => (pos(), 0u8..3, prop_oneof![1u16..64, Just(300u16), Just(60000u16)])
            .prop_map(|(p, k, n)| Mutation::Nest(p, k, n)),
    ]
}

/// `count` mutations (applied in order); `focus` adds tokens of the target's own.
fn mutations(
    count: std::ops::Range<usize>,
    focus: &'static [&'static str],
    text: bool,
) -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(focus, text), count)
}

/// The contents (`[start, end)`, quotes excluded) of the quoted strings of `b`, read from the
/// start with backslash escapes, as in JSON and Python literals.
fn quoted_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let q = b[i];
        if q == b'"' || q == b'\'' {
            let start = i + 1;
            let mut k = start;
            while k < b.len() && b[k] != q {
                k += if b[k] == b'\\' { 2 } else { 1 };
            }
            if k >= b.len() {
                break;
            }
            spans.push((start, k));
            i = k + 1;
        } else {
            i += 1;
        }
    }
    spans
}

/// The byte range `[start, end)` of the first run at or after `from` (wrapping round) of bytes
/// for which `inside` holds.
fn run_at(b: &[u8], from: usize, inside: impl Fn(u8) -> bool) -> Option<(usize, usize)> {
    let start = (from..b.len())
        .chain(0..from)
        .find(|&i| inside(b[i]) && (i == 0 || !inside(b[i - 1]) || i == from))?;
    let end = (start..b.len()).find(|&i| !inside(b[i])).unwrap_or(b.len());
    Some((start, end))
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    if len == 0 {
        if let Mutation::Insert(_, b) = m {
            bytes.extend_from_slice(b);
        }
        return;
    }
    match m {
        Mutation::Truncate(p) => bytes.truncate(p.at(len)),
        Mutation::FlipBit(p, bit) => bytes[p.at(len)] ^= 1 << bit,
        Mutation::SetByte(p, v) => bytes[p.at(len)] = *v,
        Mutation::Int(p, width, value) => {
            let v = match value {
                IntValue::Abs(v) => *v,
                IntValue::Len(d) => (len as u64).wrapping_add_signed(i64::from(*d)),
            };
            let at = p.at(len);
            let w = usize::from(*width).min(len - at);
            bytes[at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
        }
        Mutation::Number(i, n) => {
            if let Some((a, b)) = run_at(bytes, i.index(len), |c| c.is_ascii_digit()) {
                bytes.splice(a..b, n.bytes());
            }
        }
        Mutation::Token(i, t) => {
            let spans = quoted_spans(bytes);
            let from = i.index(len);
            let span = spans
                .iter()
                .find(|&&(a, _)| a >= from)
                .or(spans.first())
                .copied();
            if let Some((a, b)) = span {
                bytes.splice(a..b, t.bytes());
            }
        }
        Mutation::Bare(i, t) => {
            let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
            if let Some((a, b)) = run_at(bytes, i.index(len), word) {
                bytes.splice(a..b, t.bytes());
            }
        }
        Mutation::Insert(p, b) => {
            let at = p.at(len);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Delete(p, n) => {
            let at = p.at(len);
            let end = (at + usize::from(*n)).min(len);
            bytes.drain(at..end);
        }
        Mutation::Duplicate(p, n) => {
            let at = p.at(len);
            let end = (at + usize::from(*n)).min(len);
            let copy = bytes[at..end].to_vec();
            bytes.splice(end..end, copy);
        }
        Mutation::Nest(p, kind, n) => {
            let open: &[u8] = match kind {
                0 => b"[",
                1 => b"(",
                _ => b"{\"a\":",
            };
            let at = p.at(len);
            let nest: Vec<u8> = open.repeat(usize::from(*n));
            bytes.splice(at..at, nest);
        }
    }
}

fn mutate(seed: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in ms {
        apply(&mut b, m);
    }
    b
}

// ---------------------------------------------------------------------------------------------
// The harness

/// A valid file to start from: written to `name` in the case's directory (where its
/// `companions`, written unchanged, sit beside it), with bytes that the case mutates.
#[derive(Clone)]
struct Seed {
    name: String,
    bytes: Vec<u8>,
    companions: Vec<(String, Vec<u8>)>,
    /// When set, `bytes` is a part of the file (a header's text) and this frames the mutated
    /// part into the whole file (length fields recomputed), so that mutations reach the parser
    /// of that part instead of stopping at a length check.
    frame: Option<Frame>,
}

type Frame = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

impl Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seed")
            .field("name", &self.name)
            .field("bytes", &self.bytes.len())
            .field("framed", &self.frame.is_some())
            .finish()
    }
}

impl Seed {
    fn new(name: &str, bytes: Vec<u8>) -> Self {
        Seed {
            name: name.to_string(),
            bytes,
            companions: vec![],
            frame: None,
        }
    }

    fn framed(
        name: &str,
        part: Vec<u8>,
        frame: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        Seed {
            frame: Some(Arc::new(frame)),
            ..Seed::new(name, part)
        }
    }

    fn with(mut self, name: &str, bytes: Vec<u8>) -> Self {
        self.companions.push((name.to_string(), bytes));
        self
    }
}

/// A `.safetensors` file as its JSON header (the part to mutate) and the frame that puts a
/// header in front of the file's data with its 8-byte length.
fn safetensors_header_seed(name: &str, file: &[u8]) -> Seed {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header = file[8..8 + n].to_vec();
    let data = file[8 + n..].to_vec();
    Seed::framed(name, header, move |h| {
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(h);
        out.extend_from_slice(&data);
        out
    })
}

/// A safetensors file as the value of one `__metadata__` entry (the part to mutate) and the
/// frame that writes the file's tensors again with that value.
fn metadata_seed(name: &str, file: &[u8], key: &'static str) -> Seed {
    let st = safetensors::SafeTensors::deserialize(file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(file).unwrap();
    let meta: std::collections::HashMap<String, String> =
        meta.metadata().clone().unwrap_or_default();
    let tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let value = meta[key].clone().into_bytes();
    Seed::framed(name, value, move |v| {
        let mut meta = meta.clone();
        meta.insert(key.to_string(), String::from_utf8_lossy(v).into_owned());
        let views = tensors.iter().map(|(n, d, s, b)| {
            (
                n.as_str(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        });
        safetensors::serialize(views, Some(meta)).unwrap()
    })
}

/// Ends the process when a case runs longer than [`HANG_SECONDS`], naming its input.
struct Watchdog {
    started_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
}

impl Watchdog {
    fn start(target: &'static str, input_dir: PathBuf) -> Self {
        let started_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let (s, t) = (Arc::clone(&started_ms), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !t.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let since = s.load(Ordering::Relaxed);
                let now = epoch.elapsed().as_millis() as u64;
                if since > 0 && now.saturating_sub(since) > HANG_SECONDS * 1000 {
                    // Straight to stderr: the test harness does not capture this thread's
                    // writes, and the process ends here.
                    let _ = writeln!(
                        std::io::stderr(),
                        "fuzz target {target}: a case has run for more than {HANG_SECONDS} s \
                         (a hang); its input is in {}",
                        input_dir.display()
                    );
                    std::process::exit(3);
                }
            }
        });
        Watchdog {
            started_ms,
            stop,
            epoch,
        }
    }

    fn case_started(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.started_ms.store(now.max(1), Ordering::Relaxed);
    }

    fn case_ended(&self) {
        self.started_ms.store(0, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a target's parsers made of one input: for each, `Ok` or the error, which must name
/// `names`. The input counts as accepted when the first parser accepted it.
struct Outcome {
    results: Vec<exemplar::Result<()>>,
    /// The path every error must name (the mutated file, or the directory of a set).
    names: PathBuf,
}

/// Runs `cases` cases of `target`: a seed and up to a few mutations each, written into a fresh
/// directory, then `run(dir, mutated_path)`.
fn fuzz(
    target: &'static str,
    cases: u32,
    seeds: Vec<Seed>,
    muts: std::ops::Range<usize>,
    run: impl Fn(&Path, &Path) -> Outcome,
) {
    fuzz_focused(target, cases, seeds, muts, &[], run)
}

/// [`fuzz`], with tokens of the target's own swapped into quoted strings as often as the
/// common ones.
fn fuzz_focused(
    target: &'static str,
    cases: u32,
    seeds: Vec<Seed>,
    muts: std::ops::Range<usize>,
    focus: &'static [&'static str],
    run: impl Fn(&Path, &Path) -> Outcome,
) {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz_parsers")
        .join(format!("{target}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let watchdog = Watchdog::start(target, root.clone());
    let config = Config {
        cases: cases * scale(),
        failure_persistence: None,
        max_shrink_iters: 4096,
        max_shrink_time: 120_000,
        ..Config::default()
    };
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed().to_le_bytes());
    key[8..8 + target.len().min(24)].copy_from_slice(&target.as_bytes()[..target.len().min(24)]);
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let n = seeds.len();
    let started = Instant::now();
    let case = Cell::new(0u64);
    let accepted = Cell::new(0u64);
    let framed: Vec<bool> = seeds.iter().map(|s| s.frame.is_some()).collect();
    let strategy =
        (0..n).prop_flat_map(move |w| (Just(w), mutations(muts.clone(), focus, framed[w])));
    let result = runner.run(&strategy, |(which, ms)| {
        case.set(case.get() + 1);
        let seed = &seeds[which];
        let dir = root.join(format!("case-{}", case.get() % 2));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            p
        };
        for (name, bytes) in &seed.companions {
            write(name, bytes);
        }
        let mut bytes = mutate(&seed.bytes, &ms);
        if let Some(frame) = &seed.frame {
            bytes = frame(&bytes);
        }
        let path = write(&seed.name, &bytes);
        let input_bytes = bytes.len() + seed.companions.iter().map(|c| c.1.len()).sum::<usize>();
        watchdog.case_started();
        let (outcome, largest) = tracked(|| run(&dir, &path));
        watchdog.case_ended();
        let limit = alloc_limit(input_bytes);
        prop_assert!(
            largest <= limit,
            "{target}: an allocation of {largest} bytes for {input_bytes} bytes of input \
             (limit {limit}); results: {:?}",
            outcome.results
        );
        accepted
            .set(accepted.get() + u64::from(outcome.results.first().is_some_and(Result::is_ok)));
        if std::env::var_os("EXEMPLAR_FUZZ_DEBUG").is_some() {
            if let Some(Err(e)) = outcome.results.first() {
                let m = e
                    .to_string()
                    .replace(&outcome.names.display().to_string(), "P");
                eprintln!("REJECT {target} {}", m.chars().take(90).collect::<String>());
            }
        }
        for e in outcome.results.iter().filter_map(|r| r.as_ref().err()) {
            let message = e.to_string();
            prop_assert!(
                message.contains(&outcome.names.display().to_string()),
                "{target}: the error does not name {}: {message}",
                outcome.names.display()
            );
        }
        Ok(())
    });
    drop(watchdog);
    eprintln!(
        "fuzz target {target}: {} cases ({} inputs accepted) in {:.2} s",
        case.get(),
        accepted.get(),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!(
            "fuzz target {target} failed (inputs under {}): {e}",
            root.display()
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

fn outcome(result: exemplar::Result<()>, names: &Path) -> Outcome {
    outcomes(vec![result], names)
}

fn outcomes(results: Vec<exemplar::Result<()>>, names: &Path) -> Outcome {
    Outcome {
        results,
        names: names.to_path_buf(),
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::TempDir::new().unwrap()
}

fn bytes_of(write: impl FnOnce(&Path)) -> Vec<u8> {
    let dir = tmp();
    let p = dir.path().join("seed");
    write(&p);
    std::fs::read(&p).unwrap()
}

fn rows(n: usize, d: usize) -> Vec<f32> {
    (0..n * d)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.25 + (i / d) as f32 * 0.125)
        .collect()
}

/// A `.npy` file with a hand-written header of format `version` (the writer only writes 1.0).
fn npy_raw(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let mut out = npy::MAGIC.to_vec();
    out.extend_from_slice(&[version, 0]);
    let header = format!("{dict}\n");
    if version == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect()
}

/// Streams every row of `paths`, checking what a successful open promises.
fn drain(paths: &[PathBuf], options: StreamOptions) -> exemplar::Result<()> {
    let mut s = ActivationStream::open(paths, options)?;
    let (dim, total) = (s.dim(), s.total_rows());
    assert!(dim > 0 && total > 0);
    let mut seen = 0u64;
    while let Some(b) = s.next_batch(3)? {
        assert_eq!(b.data.len(), b.rows() * dim);
        seen += b.rows() as u64;
        if let Some(t) = &b.tokens {
            assert_eq!(t.len(), b.rows());
        }
    }
    assert_eq!(seen + s.skipped_nonfinite(), total);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// .npy

#[test]
fn fuzz_npy_header_and_arrays() {
    let arrays = [
        NpyArray::vector(vec![3i64, -1, 4, 1, 5]),
        NpyArray::matrix(rows(3, 4), 3, 4).unwrap(),
        NpyArray::vector(vec![true, false, true]),
        NpyArray::vector(Vec::<i64>::new()),
    ];
    let mut seeds: Vec<Seed> = arrays
        .iter()
        .map(|a| {
            let mut b = Vec::new();
            npy::write_npy(&mut b, a).unwrap();
            Seed::new("a.npy", b)
        })
        .collect();
    seeds.push(Seed::new(
        "a.npy",
        npy_raw(
            3,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1), }",
            &[0; 8],
        ),
    ));
    fuzz("npy_header", cases::NPY_HEADER, seeds, 1..4, |_, path| {
        let bytes = std::fs::read(path).unwrap();
        let header = npy::parse_header(&bytes, path).map(|h| {
            assert!(h.data_offset <= bytes.len());
        });
        let array = npy::read_npy(&bytes, path).map(|a| {
            assert_eq!(
                Some(a.data().len()),
                a.shape().iter().try_fold(1usize, |x, &d| x.checked_mul(d))
            );
        });
        outcomes(vec![header, array], path)
    });
}

/// The header's text mutated and then framed (magic, version, the length it now has, data for
/// the seed's shape), so that mutations of the dict (deep nesting, long or odd literals) reach
/// the literal parser instead of a length mismatch.
#[test]
fn fuzz_npy_header_text() {
    let seeds = [
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", 24),
        ("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", 12),
        (
            "{'descr': [('a', '<f4'), ('b', [('c', '<i8')], (2,))], 'fortran_order': True, 'shape': (1,), }",
            20,
        ),
        ("{\"shape\": (6L,), \"descr\": \"<i8\", \"fortran_order\": False}", 48),
    ]
    .iter()
    .map(|&(text, data)| {
        Seed::framed("h.npy", text.as_bytes().to_vec(), move |t| {
            let mut npy = npy::MAGIC.to_vec();
            npy.extend_from_slice(&[2, 0]);
            npy.extend_from_slice(&(t.len() as u32 + 1).to_le_bytes());
            npy.extend_from_slice(t);
            npy.push(b'\n');
            npy.extend((0..data).map(|i| (i % 7) as u8));
            npy
        })
    })
    .collect();
    fuzz(
        "npy_header_text",
        cases::NPY_HEADER_TEXT,
        seeds,
        1..4,
        |_, path| {
            let bytes = std::fs::read(path).unwrap();
            let header = npy::parse_header(&bytes, path).map(drop);
            let array = npy::read_npy(&bytes, path).map(drop);
            let stream = drain(&[path.to_path_buf()], StreamOptions::default());
            // Accepted: the header parses (the array and the stream then need the right dtype).
            outcomes(vec![header, array, stream], path)
        },
    );
}

#[test]
fn fuzz_npy_activation_stream() {
    let mut seeds = vec![
        Seed::new(
            "acts.npy",
            bytes_of(|p| {
                npy::write_npy_file(p, &NpyArray::matrix(rows(5, 3), 5, 3).unwrap(), true).unwrap()
            }),
        ),
        Seed::new(
            "acts.npy",
            npy_raw(
                2,
                "{'descr': '<f2', 'fortran_order': False, 'shape': (4, 2), }",
                &f16_bytes(&rows(4, 2)),
            ),
        ),
    ];
    // No extension: the stream tells the format by the magic.
    let mut plain = seeds[0].clone();
    plain.name = "acts".into();
    seeds.push(plain);
    fuzz("npy_stream", cases::NPY_STREAM, seeds, 1..4, |_, path| {
        let r = drain(&[path.to_path_buf()], StreamOptions::default());
        let skip = drain(
            &[path.to_path_buf()],
            StreamOptions {
                skip_nonfinite: true,
                ..Default::default()
            },
        );
        outcomes(vec![r, skip], path)
    });
}

#[test]
fn fuzz_npz() {
    let stored = bytes_of(|p| {
        npy::write_npz(
            p,
            &[
                ("ids", NpyArray::vector(vec![0i64, 5, -1])),
                ("d", NpyArray::matrix(rows(2, 3), 2, 3).unwrap()),
                ("w", NpyArray::vector(vec![true, false])),
            ],
            true,
        )
        .unwrap()
    });
    // As numpy.savez_compressed writes them (Gemma Scope's params.npz): deflated members.
    let deflated = {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, a) in [
            ("W_enc.npy", NpyArray::matrix(rows(3, 2), 3, 2).unwrap()),
            ("b_enc.npy", NpyArray::vector(vec![0.5f32, -1.0])),
        ] {
            z.start_file(name, options).unwrap();
            npy::write_npy(&mut z, &a).unwrap();
        }
        z.finish().unwrap().into_inner()
    };
    let seeds = vec![Seed::new("p.npz", stored), Seed::new("p.npz", deflated)];
    fuzz("npz", cases::NPZ, seeds, 1..4, |_, path| {
        outcome(npy::read_npz(path).map(drop), path)
    });
}

// ---------------------------------------------------------------------------------------------
// .safetensors activation inputs

#[test]
fn fuzz_safetensors_activation_stream() {
    let acts = rows(4, 3);
    let other = rows(2, 2);
    let written = bytes_of(|p| {
        let mut meta = BTreeMap::new();
        meta.insert("source".to_string(), "fuzz".to_string());
        tensorfile::write(
            p,
            vec![
                TensorOut::f32("activations", vec![4, 3], &acts),
                TensorOut::f32("other", vec![2, 2], &other),
                TensorOut::u8("bytes", b"abc"),
            ],
            &meta,
            true,
        )
        .unwrap()
    });
    let half = |dtype: safetensors::Dtype, name: &str, data: Vec<u8>, shape: Vec<usize>| {
        let view = safetensors::tensor::TensorView::new(dtype, shape, &data).unwrap();
        safetensors::serialize([(name, view)], None).unwrap()
    };
    let bf16 = half(safetensors::Dtype::BF16, "x", bf16_bytes(&acts), vec![4, 3]);
    let seeds = vec![
        Seed::new("a.safetensors", written.clone()),
        Seed::new("a.safetensors", bf16.clone()),
        Seed::new(
            "a.safetensors",
            half(
                safetensors::Dtype::F16,
                "acts",
                f16_bytes(&other),
                vec![2, 2],
            ),
        ),
        Seed::new("a.bin", written.clone()),
        // The JSON header mutated, its length kept right.
        safetensors_header_seed("a.safetensors", &written),
        safetensors_header_seed("a.safetensors", &bf16),
    ];
    fuzz("safetensors", cases::SAFETENSORS, seeds, 1..4, |_, path| {
        let p = [path.to_path_buf()];
        let default = drain(&p, StreamOptions::default());
        let named = drain(
            &p,
            StreamOptions {
                tensor: Some("other".into()),
                skip_nonfinite: true,
            },
        );
        outcomes(vec![default, named], path)
    });
}

// ---------------------------------------------------------------------------------------------
// Provenance sidecars

fn sidecar_lines(docs: &[(i64, usize, &[usize])]) -> Vec<u8> {
    let mut out = String::new();
    for &(doc, tokens, positions) in docs {
        let toks: Vec<String> = (0..tokens).map(|t| format!("t{doc}.{t}")).collect();
        out += &serde_json::json!({"doc_id": doc, "tokens": toks, "positions": positions, "text": "x"})
            .to_string();
        out.push('\n');
    }
    out.into_bytes()
}

#[test]
fn fuzz_provenance_sidecar() {
    let npy_bytes = bytes_of(|p| {
        npy::write_npy_file(p, &NpyArray::matrix(rows(6, 2), 6, 2).unwrap(), true).unwrap()
    });
    let seeds = vec![
        Seed::new(
            "a.npy.provenance.jsonl",
            sidecar_lines(&[(0, 4, &[1, 2, 3]), (7, 3, &[0, 2]), (2, 2, &[1])]),
        )
        .with("a.npy", npy_bytes.clone()),
        Seed::new(
            "a.npy.provenance.jsonl",
            sidecar_lines(&[(5, 7, &[1, 2, 3, 4, 5, 6])]),
        )
        .with("a.npy", npy_bytes),
    ];
    fuzz("sidecar", cases::SIDECAR, seeds, 1..4, |dir, path| {
        let mut ids = DocIdSet::new();
        let v = provenance::validate_sidecar(path, &mut ids).map(drop);
        let s = drain(&[dir.join("a.npy")], StreamOptions::default());
        outcomes(vec![v, s], path)
    });
}

// ---------------------------------------------------------------------------------------------
// The dictionary file, checkpoints and checkpoint sets

const D: usize = 4;

fn build_config() -> BuildConfig {
    BuildConfig {
        examples_per_partition: 2,
        reservoir_size: 2,
        saturation_window: None,
        record_assignments: Some(24),
        // Merges make creation ids map many-to-one, as in long builds.
        merge_threshold: Some(0.3),
        seed: 3,
        ..BuildConfig::default()
    }
}

/// Rows `first..first + n` with provenance (4 rows per document).
fn batch(first: u64, n: usize) -> ActivationBatch {
    let data: Vec<f32> = (first..first + n as u64)
        .flat_map(|r| {
            (0..D).map(move |j| {
                if (r % 5) as usize == j {
                    2.0
                } else {
                    (r % 3) as f32 * 0.3
                }
            })
        })
        .collect();
    let mut b = ActivationBatch::from_rows(data, D, first);
    b.tokens = Some(
        (first..first + n as u64)
            .map(|r| TokenRef {
                doc_id: (r / 4) as i64,
                position: 1 + (r % 4) as i64,
            })
            .collect(),
    );
    let docs: std::collections::BTreeSet<i64> =
        (first..first + n as u64).map(|r| (r / 4) as i64).collect();
    b.documents = docs
        .into_iter()
        .map(|doc_id| Document {
            doc_id,
            tokens: (0..5).map(|t| format!("d{doc_id}t{t}")).collect(),
        })
        .collect();
    b
}

fn builder_after(batches: u64) -> Builder {
    let mut b = Builder::new(vec![0.1; D], 0.2, build_config()).unwrap();
    for i in 0..batches {
        b.add_batch(&batch(i * 8, 8)).unwrap();
    }
    b
}

fn record(b: &Builder) -> CheckpointRecord {
    let cal = CalibrationRecord {
        theta: 0.2,
        percentile: 5.0,
        method: "linear".into(),
        n_activations: 8,
        batch_size: 8,
        batch_percentiles: vec![0.2],
    };
    let mut rec = CheckpointRecord::new(
        serde_json::json!({"flags": 1}),
        b.state(),
        cal,
        serde_json::json!({"rows": 16}),
    );
    rec.activations = 16;
    rec.tokens = 20;
    rec
}

#[test]
fn fuzz_dictionary_file() {
    let dict = builder_after(2).finish(1).dictionary;
    assert!(dict.len() >= 3);
    let file = bytes_of(|p| dict.save(p, true).unwrap());
    let seeds = vec![
        Seed::new("d.safetensors", file.clone()),
        // The `exemplar` JSON (θ, D, K, the build record) mutated inside a valid file.
        metadata_seed("d.safetensors", &file, "exemplar"),
        // The safetensors header (names, dtypes, shapes, offsets) mutated, its length kept.
        safetensors_header_seed("d.safetensors", &file),
    ];
    fuzz("dictionary", cases::DICTIONARY, seeds, 1..4, |_, path| {
        let r = Dictionary::load(path).map(|d| {
            // A loaded dictionary can be used.
            let x: Vec<f32> = (0..2 * d.dim()).map(|i| i as f32 * 0.5).collect();
            let _ = d.assign(&x);
        });
        outcome(r, path)
    });
}

/// Loads a checkpoint and, when it loads, continues the build from it.
fn resume(path: &Path) -> exemplar::Result<()> {
    let (dict, rec, assignments) = checkpoint::load(path)?;
    let _ = rec
        .calibration
        .calibration(dict.center().to_vec(), dict.scaling().cloned());
    // A state that passed `load` is one `restore` accepts or refuses, never one it panics on;
    // refusals for this run's settings (not the file's) need not name the file.
    if let Ok(mut b) = Builder::restore(dict, rec.builder, assignments, build_config()) {
        let _ = b.add_batch(&batch(16, 8));
        let _ = b.finish(2);
    }
    Ok(())
}

#[test]
fn fuzz_checkpoint() {
    let b = builder_after(2);
    let file = bytes_of(|p| {
        checkpoint::save(p, b.dictionary(), &record(&b), b.recorded_assignments()).unwrap()
    });
    let seeds = vec![
        Seed::new("ck.safetensors", file.clone()),
        // The checkpoint record (remaps, counters, calibration, position) mutated inside a
        // valid file.
        metadata_seed("ck.safetensors", &file, "exemplar_checkpoint"),
    ];
    fuzz("checkpoint", cases::CHECKPOINT, seeds, 1..4, |_, path| {
        outcome(resume(path), path)
    });
}

/// A change to a checkpoint's builder state or recorded assignments, near the valid ones.
#[derive(Debug, Clone)]
enum StateEdit {
    CreationToCurrent(Index, i64),
    CurrentToCreation(Index, i64),
    Assignment(Index, i64),
    PushCreation(i64),
    PopCreation,
    PopCurrent,
    Swap(Index, Index),
    Batches(u64),
    LastNewBatch(u64),
    DropAssignments,
}

fn state_edit() -> impl Strategy<Value = StateEdit> {
    let id = prop_oneof![4 => -2i64..12, 1 => Just(i64::MAX), 1 => Just(i64::MIN)];
    prop_oneof![
        3 => (any::<Index>(), id.clone()).prop_map(|(i, v)| StateEdit::CreationToCurrent(i, v)),
        3 => (any::<Index>(), id.clone()).prop_map(|(i, v)| StateEdit::CurrentToCreation(i, v)),
        3 => (any::<Index>(), id.clone()).prop_map(|(i, v)| StateEdit::Assignment(i, v)),
        1 => id.prop_map(StateEdit::PushCreation),
        1 => Just(StateEdit::PopCreation),
        1 => Just(StateEdit::PopCurrent),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| StateEdit::Swap(a, b)),
        1 => prop_oneof![0u64..5, Just(u64::MAX)].prop_map(StateEdit::Batches),
        1 => prop_oneof![0u64..5, Just(u64::MAX)].prop_map(StateEdit::LastNewBatch),
        1 => Just(StateEdit::DropAssignments),
    ]
}

/// Checkpoints whose builder state and assignments are edited near the valid ones (each
/// written by the project's writer, so the file itself is well formed): a state that loads is
/// one a resumed build runs on without panicking; one that does not is an error naming the
/// file. The byte-level target above found the assignments bug; this one walks the state's
/// consistency checks directly.
#[test]
fn fuzz_checkpoint_state() {
    let b = builder_after(2);
    let dict = b.dictionary().clone();
    let valid = record(&b);
    let assignments = b.recorded_assignments().unwrap().to_vec();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz_parsers")
        .join(format!("checkpoint_state-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let path = root.join("ck.safetensors");
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: cases::CHECKPOINT_STATE * scale(),
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed() as u8; 32]),
    );
    let started = Instant::now();
    let accepted = Cell::new(0u32);
    let result = runner.run(&prop::collection::vec(state_edit(), 1..4), |edits| {
        let mut rec = valid.clone();
        let mut a = Some(assignments.clone());
        for e in &edits {
            let st = &mut rec.builder;
            let set = |v: &mut Vec<i64>, i: &Index, x: i64| {
                if !v.is_empty() {
                    let k = i.index(v.len());
                    v[k] = x;
                }
            };
            match e {
                StateEdit::CreationToCurrent(i, x) => set(&mut st.creation_to_current, i, *x),
                StateEdit::CurrentToCreation(i, x) => set(&mut st.current_to_creation, i, *x),
                StateEdit::Assignment(i, x) => {
                    if let Some(a) = a.as_mut() {
                        set(a, i, *x)
                    }
                }
                StateEdit::PushCreation(x) => st.creation_to_current.push(*x),
                StateEdit::PopCreation => drop(st.creation_to_current.pop()),
                StateEdit::PopCurrent => drop(st.current_to_creation.pop()),
                StateEdit::Swap(i, j) => {
                    let v = &mut st.current_to_creation;
                    if !v.is_empty() {
                        let (i, j) = (i.index(v.len()), j.index(v.len()));
                        v.swap(i, j);
                    }
                }
                StateEdit::Batches(n) => st.batches = *n,
                StateEdit::LastNewBatch(n) => st.last_new_batch = *n,
                StateEdit::DropAssignments => a = None,
            }
        }
        checkpoint::save(&path, &dict, &rec, a.as_deref()).unwrap();
        let (r, largest) = tracked(|| resume(&path));
        prop_assert!(largest <= alloc_limit(std::fs::metadata(&path).unwrap().len() as usize));
        match r {
            Ok(()) => accepted.set(accepted.get() + 1),
            Err(e) => prop_assert!(
                e.to_string().contains(&path.display().to_string()),
                "the error does not name the file: {e}"
            ),
        }
        Ok(())
    });
    eprintln!(
        "fuzz target checkpoint_state: {} cases ({} accepted) in {:.2} s",
        cases::CHECKPOINT_STATE * scale(),
        accepted.get(),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("fuzz target checkpoint_state failed: {e}");
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn fuzz_checkpoint_set_manifest() {
    let (a, b) = (builder_after(2), builder_after(1));
    let files = {
        let dir = tmp();
        let set = dir.path().join("set");
        let (ra, rb) = (record(&a), record(&b));
        let items = [
            (a.dictionary(), &ra, a.recorded_assignments()),
            (b.dictionary(), &rb, b.recorded_assignments()),
        ];
        checkpoint::save_set(&set, &items).unwrap();
        checkpoint::save_set(&set, &items).unwrap(); // generation 1
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&set)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let manifest = files
        .iter()
        .find(|f| f.0 == "manifest.json")
        .unwrap()
        .1
        .clone();
    let mut seed = Seed::new("set/manifest.json", manifest);
    for (name, bytes) in files.iter().filter(|f| f.0 != "manifest.json") {
        seed = seed.with(&format!("set/{name}"), bytes.clone());
    }
    // Beside the set, and at an absolute path elsewhere, files that no manifest may make
    // exemplar remove.
    seed = seed.with("outside.safetensors", b"precious".to_vec());
    let elsewhere = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fuzz-sentinel-{}.safetensors", std::process::id()));
    std::fs::write(&elsewhere, b"precious").unwrap();
    let focus: &'static [&'static str] = Box::leak(Box::new([
        "../outside.safetensors",
        "..",
        ".",
        "",
        "manifest.json",
        "pair-0.g1.safetensors",
        "pair-1.g0.safetensors",
        Box::leak(elsewhere.display().to_string().into_boxed_str()),
    ]));
    let (ra, rb) = (record(&a), record(&b));
    fuzz_focused(
        "checkpoint_set",
        cases::CHECKPOINT_SET,
        vec![seed],
        1..4,
        focus,
        |dir, _| {
            let set = dir.join("set");
            let loaded = checkpoint::load_set(&set).map(drop);
            // Writing the next generation over whatever the manifest says.
            let items = [
                (a.dictionary(), &ra, a.recorded_assignments()),
                (b.dictionary(), &rb, b.recorded_assignments()),
            ];
            let saved = checkpoint::save_set(&set, &items);
            for sentinel in [&dir.join("outside.safetensors"), &elsewhere] {
                assert_eq!(
                    std::fs::read(sentinel).ok().as_deref(),
                    Some(&b"precious"[..]),
                    "a manifest made exemplar remove {}",
                    sentinel.display()
                );
            }
            if saved.is_ok() {
                assert_eq!(checkpoint::load_set(&set).map(|s| s.len()).ok(), Some(2));
            }
            outcomes(vec![loaded, saved], &set)
        },
    );
    let _ = std::fs::remove_file(&elsewhere);
}

// ---------------------------------------------------------------------------------------------
// Corpora

fn read_corpus(path: &Path, options: CorpusOptions) -> exemplar::Result<()> {
    let mut reader = CorpusReader::open(&[path.to_path_buf()], options)?;
    while let Some(doc) = reader.next_document()? {
        assert!(!doc.text.trim().is_empty());
    }
    Ok(())
}

/// Reads `path` three ways: strictly, skipping invalid records with a shuffle, and (text)
/// by paragraphs and whole.
fn read_corpus_ways(path: &Path) -> Vec<exemplar::Result<()>> {
    let strict = read_corpus(path, CorpusOptions::default());
    let lenient = read_corpus(
        path,
        CorpusOptions {
            skip_invalid: true,
            min_chars: 3,
            shuffle: Some(Shuffle { seed: 1, buffer: 4 }),
            text_mode: TextMode::Paragraphs,
            ..CorpusOptions::default()
        },
    );
    let whole = read_corpus(
        path,
        CorpusOptions {
            skip_invalid: true,
            text_mode: TextMode::Whole,
            ..CorpusOptions::default()
        },
    );
    // Every error names the file; an empty corpus is an error too.
    vec![strict, lenient, whole]
}

const JSONL: &str = concat!(
    "{\"id\": 1, \"text\": \"first doc\", \"meta\": {\"text\": \"nested\"}}\n",
    "\n",
    "{\"text\": \"second \\\"quoted\\\" \\u00e9\\n line\", \"tags\": [1, 2, {\"a\": null}]}\n",
    "{\"text\": \"third\", \"n\": 12345}",
);

const TEXT: &str = "\u{feff}first line\nsecond line\r\n\n   \nthird paragraph\nstill third\n";

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

#[test]
fn fuzz_corpus_text_and_jsonl() {
    let seeds = vec![
        Seed::new("c.jsonl", JSONL.as_bytes().to_vec()),
        Seed::new("c.ndjson", JSONL.as_bytes().to_vec()),
        Seed::new("c.txt", TEXT.as_bytes().to_vec()),
    ];
    fuzz("corpus_text", cases::CORPUS_TEXT, seeds, 1..5, |_, path| {
        outcomes(read_corpus_ways(path), path)
    });
}

#[test]
fn fuzz_corpus_compressed() {
    // Mutated compressed bytes (the decoders' checks) and mutated text, then compressed (the
    // line readers behind the decoders): the case picks one by its seed.
    let seeds = vec![
        Seed::new("c.jsonl.gz", gzip(JSONL.as_bytes())),
        Seed::new("c.jsonl.zst", zstd(JSONL.as_bytes())),
        Seed::new("c.txt.gz", gzip(TEXT.as_bytes())),
        Seed::new("c.jsonl", JSONL.as_bytes().to_vec()),
        Seed::new("c.txt", TEXT.as_bytes().to_vec()),
    ];
    fuzz(
        "corpus_compressed",
        cases::CORPUS_COMPRESSED,
        seeds,
        1..4,
        |dir, path| {
            if path.extension().is_some_and(|e| e == "gz" || e == "zst") {
                return outcomes(read_corpus_ways(path), path);
            }
            // Plain seeds: compress the mutated text both ways (and as concatenated frames).
            let text = std::fs::read(path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let gz = dir.join(format!("{name}.gz"));
            let mut two = gzip(&text[..text.len() / 2]);
            two.extend(gzip(&text[text.len() / 2..]));
            std::fs::write(&gz, two).unwrap();
            let zs = dir.join(format!("{name}.zst"));
            std::fs::write(&zs, zstd(&text)).unwrap();
            for e in read_corpus_ways(&gz)
                .iter()
                .filter_map(|r| r.as_ref().err())
            {
                assert!(e.to_string().contains(&gz.display().to_string()), "{e}");
            }
            outcomes(read_corpus_ways(&zs), &zs)
        },
    );
}

fn parquet_bytes(
    schema: &str,
    texts: &[Option<&str>],
    compression: parquet::basic::Compression,
    dictionary: bool,
) -> Vec<u8> {
    use parquet::data_type::ByteArray;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .set_dictionary_enabled(dictionary)
            .set_data_page_row_count_limit(2)
            .set_write_batch_size(2)
            .build(),
    );
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, props).unwrap();
    for (g, chunk) in texts.chunks(3).enumerate() {
        let mut rg = writer.next_row_group().unwrap();
        while let Some(mut column) = rg.next_column().unwrap() {
            match column.untyped() {
                parquet::column::writer::ColumnWriter::ByteArrayColumnWriter(w) => {
                    let values: Vec<ByteArray> = chunk
                        .iter()
                        .flatten()
                        .map(|t| ByteArray::from(t.as_bytes().to_vec()))
                        .collect();
                    let defs: Vec<i16> = chunk.iter().map(|t| i16::from(t.is_some())).collect();
                    let optional = w.get_descriptor().max_def_level() > 0;
                    w.write_batch(&values, optional.then_some(&defs[..]), None)
                        .unwrap();
                }
                parquet::column::writer::ColumnWriter::Int64ColumnWriter(w) => {
                    let ids: Vec<i64> = (0..chunk.len()).map(|i| (g * 3 + i) as i64).collect();
                    w.write_batch(&ids, None, None).unwrap();
                }
                _ => unreachable!("the schemas here hold strings and int64s"),
            }
            column.close().unwrap();
        }
        rg.close().unwrap();
    }
    writer.close().unwrap();
    out
}

#[test]
fn fuzz_corpus_parquet() {
    use parquet::basic::{Compression, GzipLevel, ZstdLevel};
    let texts = [
        Some("first document"),
        Some("second"),
        None,
        Some("fourth, a little longer"),
        Some("second"),
        Some("é ü"),
        Some("seventh"),
    ];
    let optional = "message m { optional binary text (STRING); required int64 id; }";
    let required = "message m { required int64 id; required binary text (UTF8); }";
    let all: Vec<Option<&str>> = texts.iter().flatten().map(|t| Some(*t)).collect();
    let seeds = vec![
        Seed::new(
            "c.parquet",
            parquet_bytes(optional, &texts, Compression::UNCOMPRESSED, false),
        ),
        Seed::new(
            "c.parquet",
            parquet_bytes(optional, &texts, Compression::SNAPPY, true),
        ),
        Seed::new(
            "c.parquet",
            parquet_bytes(
                required,
                &all,
                Compression::ZSTD(ZstdLevel::default()),
                true,
            ),
        ),
        Seed::new(
            "c.parquet",
            parquet_bytes(
                required,
                &all,
                Compression::GZIP(GzipLevel::default()),
                false,
            ),
        ),
        Seed::new(
            "c.parquet",
            parquet_bytes(optional, &texts, Compression::LZ4_RAW, false),
        ),
    ];
    fuzz("parquet", cases::PARQUET, seeds, 1..4, |_, path| {
        let strict = read_corpus(path, CorpusOptions::default());
        let lenient = read_corpus(
            path,
            CorpusOptions {
                skip_invalid: true,
                ..CorpusOptions::default()
            },
        );
        outcomes(vec![strict, lenient], path)
    });
}

/// The mutation engine itself: every mutation keeps to the input's bounds, whatever its
/// length.
#[test]
fn mutations_apply_to_any_input() {
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 2000,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    runner
        .run(
            &(
                prop::collection::vec(any::<u8>(), 0..40),
                mutations(1..6, &["x"], false),
            ),
            |(seed, ms)| {
                let _ = mutate(&seed, &ms);
                Ok(())
            },
        )
        .unwrap();
}
