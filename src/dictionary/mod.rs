//! The dictionary: exemplars, per-partition statistics, examples with provenance and reservoirs,
//! and what users do with it (assign, distances, OOD score, encode). Saved as one safetensors
//! file ([`file`], specified in `docs/format.md`).

pub mod encode;
pub mod file;
pub mod mib;
pub mod torch_save;

use crate::backend::cpu::nearest_rows;
use crate::data::TokenRef;
use crate::geometry;
use crate::linalg::matmul_abt;
use rayon::prelude::*;
use std::collections::BTreeMap;

pub use encode::{Basis, Readout};

/// One kept example of a partition: a member activation and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Example {
    /// Cosine distance to the partition's exemplar.
    pub distance: f32,
    /// Index of the row in the input stream.
    pub stream_row: i64,
    /// Document and token position, when the input had provenance.
    pub token: Option<TokenRef>,
}

/// Measurements of a build run: wall-clock seconds of its phases (the forward passes of builds
/// from text, the clustering (`add_batch`) and the calibration) and the hooked activations'
/// device-to-host traffic. Measurements, not settings: tests comparing two builds blank them
/// (with `build_seconds` and `created_unix`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    #[serde(default)]
    pub forward_seconds: Option<f64>,
    #[serde(default)]
    pub clustering_seconds: f64,
    #[serde(default)]
    pub calibration_seconds: Option<f64>,
    /// Bytes of hooked activations copied from the model's GPU to the host (builds from text
    /// on a GPU): the calibration's rows, plus every batch's when the clustering does not read
    /// them in place. `None` when the model ran on the CPU.
    #[serde(default)]
    pub activation_d2h_bytes: Option<u64>,
}

/// The build's settings and record, stored in the file's metadata.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BuildInfo {
    pub percentile: Option<f64>,
    pub percentile_method: Option<String>,
    pub calibration_activations: Option<u64>,
    pub calibration_batch_size: Option<u64>,
    pub batch_size: u64,
    pub semantics: String,
    pub seed: u64,
    pub saturation_window: Option<u64>,
    pub saturated: bool,
    pub activations_streamed: u64,
    pub tokens_streamed: u64,
    pub batches: u64,
    pub skipped_nonfinite: u64,
    pub examples_per_partition: u64,
    pub reservoir_size: u64,
    pub min_members: u64,
    pub merge_threshold: Option<f64>,
    pub max_activations: Option<u64>,
    pub max_tokens: Option<u64>,
    pub inputs: Vec<String>,
    pub input_fingerprint: Option<String>,
    pub model: Option<String>,
    pub hook: Option<String>,
    pub backend: String,
    pub crate_version: String,
    pub build_seconds: f64,
    pub created_unix: u64,
    /// Forward FLOPs actually spent on the model (`Gemma::forward_flops` of every forward,
    /// calibration included); `None` for builds from activation files.
    #[serde(default)]
    pub model_flops: Option<f64>,
    /// Clustering FLOPs: `2·D·rows·K` of every nearest-exemplar step (phase A, and the strict-order
    /// revisit against the in-batch leaders) plus the in-batch leader work of phase B (`2·D·c·L`
    /// against earlier leaders and `2·D·c²` within each chunk of `c` unmatched rows).
    /// Calibration is not included.
    #[serde(default)]
    pub clustering_flops: f64,
    /// The model checkpoint directory of a build from text.
    #[serde(default)]
    pub model_path: Option<String>,
    /// SHA-256 of the checkpoint's `config.json` (lowercase hex).
    #[serde(default)]
    pub model_config_hash: Option<String>,
    /// Corpus files of a build from text (in reading order).
    #[serde(default)]
    pub corpus: Vec<String>,
    /// SHA-256 of the corpus documents read (see docs/corpora.md).
    #[serde(default)]
    pub corpus_fingerprint: Option<String>,
    /// Seed of the document order's shuffle (`None`: file order).
    #[serde(default)]
    pub order_seed: Option<u64>,
    /// Shuffle buffer (documents) of the document order.
    #[serde(default)]
    pub order_buffer: Option<u64>,
    /// Tokens kept per document after the BOS.
    #[serde(default)]
    pub ctx: Option<u64>,
    /// Documents per batch (builds from text, or `--batch-documents`).
    #[serde(default)]
    pub batch_documents: Option<u64>,
    /// Documents with fewer characters were skipped.
    #[serde(default)]
    pub min_chars: Option<u64>,
    /// Documents with fewer tokens (BOS excluded) were skipped.
    #[serde(default)]
    pub min_tokens: Option<u64>,
    /// Only the last token of each document was kept.
    #[serde(default)]
    pub final_position: bool,
    /// Documents were packed into windows of BOS + `ctx` tokens (SAELens-style); the examples'
    /// document ids are then window indices.
    #[serde(default)]
    pub packed: bool,
    /// Corpus documents read (accepted by the corpus filters) and skipped by the token filter.
    #[serde(default)]
    pub documents_read: Option<u64>,
    #[serde(default)]
    pub documents_skipped_tokens: Option<u64>,
    /// Wall-clock seconds of the build's phases.
    #[serde(flatten)]
    pub timings: Timings,
    /// Times the build was resumed from a checkpoint.
    #[serde(default)]
    pub resumed: u64,
    /// The saturation curve: after every clustered batch, the activations and tokens streamed
    /// so far and K (after any merge of that batch; before `min_members` finalisation).
    #[serde(default)]
    pub saturation_curve: Vec<SaturationPoint>,
}

/// One point of a build's saturation curve ([`BuildInfo::saturation_curve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SaturationPoint {
    /// Activations clustered so far.
    pub activations: u64,
    /// Tokens streamed so far (BOS included).
    pub tokens: u64,
    /// Partitions after the batch.
    pub partitions: u64,
}

impl Default for BuildInfo {
    fn default() -> Self {
        BuildInfo {
            percentile: None,
            percentile_method: None,
            calibration_activations: None,
            calibration_batch_size: None,
            batch_size: 0,
            semantics: "two-phase".into(),
            seed: 0,
            saturation_window: None,
            saturated: false,
            activations_streamed: 0,
            tokens_streamed: 0,
            batches: 0,
            skipped_nonfinite: 0,
            examples_per_partition: 0,
            reservoir_size: 0,
            min_members: 1,
            merge_threshold: None,
            max_activations: None,
            max_tokens: None,
            inputs: vec![],
            input_fingerprint: None,
            model: None,
            hook: None,
            backend: "cpu".into(),
            crate_version: env!("CARGO_PKG_VERSION").into(),
            build_seconds: 0.0,
            created_unix: 0,
            model_flops: None,
            clustering_flops: 0.0,
            model_path: None,
            model_config_hash: None,
            corpus: vec![],
            corpus_fingerprint: None,
            order_seed: None,
            order_buffer: None,
            ctx: None,
            batch_documents: None,
            min_chars: None,
            min_tokens: None,
            final_position: false,
            packed: false,
            documents_read: None,
            documents_skipped_tokens: None,
            timings: Timings::default(),
            resumed: 0,
            saturation_curve: vec![],
        }
    }
}

/// An EP dictionary of `K` partitions over activations of width `D`.
///
/// Partition `k` is defined by its exemplar `e_k`, the direction of the activation that created
/// it. Per partition the dictionary keeps running sums (member count, Σ member directions in
/// f64, Σd, Σd² of member→exemplar distances), the closest and farthest examples, and a
/// reservoir of member directions.
#[derive(Debug, Clone, PartialEq)]
pub struct Dictionary {
    pub(crate) dim: usize,
    pub(crate) center: Vec<f32>,
    pub(crate) theta: f64,
    pub(crate) exemplars: Vec<f32>,
    pub(crate) counts: Vec<u64>,
    pub(crate) direction_sums: Vec<f64>,
    pub(crate) sum_distances: Vec<f64>,
    pub(crate) sum_sq_distances: Vec<f64>,
    pub(crate) exemplar_rows: Vec<i64>,
    pub(crate) exemplar_tokens: Vec<Option<TokenRef>>,
    pub(crate) last_member_rows: Vec<i64>,
    pub(crate) examples_per_partition: usize,
    pub(crate) closest: Vec<Vec<Example>>,
    pub(crate) farthest: Vec<Vec<Example>>,
    pub(crate) reservoir_size: usize,
    pub(crate) reservoir_rows: Vec<Vec<i64>>,
    pub(crate) reservoir: Vec<Vec<f32>>,
    pub(crate) documents: BTreeMap<i64, Vec<String>>,
    pub(crate) info: BuildInfo,
    /// Per-dimension standardisation every row goes through before centering (`None`: rows
    /// are used as they are).
    pub(crate) scaling: Option<geometry::Scaling>,
}

impl Dictionary {
    /// An empty dictionary with center `center` and threshold `theta`.
    pub fn new(center: Vec<f32>, theta: f64) -> crate::Result<Self> {
        if center.is_empty() {
            return Err(crate::Error::param(
                "center",
                "must have at least one component",
            ));
        }
        if let Some(i) = center.iter().position(|v| !v.is_finite()) {
            return Err(crate::Error::param(
                "center",
                format!("component {i} is not finite"),
            ));
        }
        geometry::check_threshold(theta)?;
        Ok(Dictionary {
            dim: center.len(),
            center,
            theta,
            exemplars: vec![],
            counts: vec![],
            direction_sums: vec![],
            sum_distances: vec![],
            sum_sq_distances: vec![],
            exemplar_rows: vec![],
            exemplar_tokens: vec![],
            last_member_rows: vec![],
            examples_per_partition: 10,
            closest: vec![],
            farthest: vec![],
            reservoir_size: 30,
            reservoir_rows: vec![],
            reservoir: vec![],
            documents: BTreeMap::new(),
            info: BuildInfo::default(),
            scaling: None,
        })
    }

    /// The per-dimension standardisation rows go through before centering, if any.
    pub fn scaling(&self) -> Option<&geometry::Scaling> {
        self.scaling.as_ref()
    }

    /// Sets the standardisation (the dictionary's exemplars and center must be in its space).
    pub fn set_scaling(&mut self, scaling: Option<geometry::Scaling>) -> crate::Result<()> {
        if let Some(sc) = &scaling {
            sc.check(self.dim)?;
        }
        self.scaling = scaling;
        Ok(())
    }

    /// Raw activations (`n × D`) in the space the dictionary lives in: standardised when it
    /// has a [`Dictionary::scaling`], as they are otherwise.
    pub fn to_space<'a>(&self, rows: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        match &self.scaling {
            Some(sc) => sc.apply(rows).into(),
            None => rows.into(),
        }
    }

    /// A direction of the dictionary's space (an exemplar, a mean direction) as a unit
    /// direction of the activations' space: `σ ⊙ v / ‖σ ⊙ v‖` for a standardised dictionary,
    /// `v / ‖v‖` otherwise. This is what to add to a model's residual stream to move along it.
    pub fn activation_direction(&self, v: &[f32]) -> Vec<f32> {
        let w = match &self.scaling {
            Some(sc) => sc.to_activation_space(v),
            None => v.to_vec(),
        };
        let n = geometry::norm(&w).max(f64::MIN_POSITIVE);
        w.iter().map(|&x| (x as f64 / n) as f32).collect()
    }

    /// Number of partitions K.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether K = 0.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Width D.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The center c.
    pub fn center(&self) -> &[f32] {
        &self.center
    }

    /// The threshold θ.
    pub fn theta(&self) -> f64 {
        self.theta
    }

    /// The build record.
    pub fn info(&self) -> &BuildInfo {
        &self.info
    }

    /// Replaces the build record (e.g. to add provenance the builder could not know).
    pub fn set_info(&mut self, info: BuildInfo) {
        self.info = info;
    }

    /// All exemplars, `K × D` row-major.
    pub fn exemplars(&self) -> &[f32] {
        &self.exemplars
    }

    /// Exemplar direction of partition `k`.
    pub fn exemplar(&self, k: usize) -> &[f32] {
        &self.exemplars[k * self.dim..(k + 1) * self.dim]
    }

    /// Members assigned at build time (exemplar included).
    pub fn member_count(&self, k: usize) -> u64 {
        self.counts[k]
    }

    /// All member counts.
    pub fn member_counts(&self) -> &[u64] {
        &self.counts
    }

    /// Σ of member directions of partition `k` (f64).
    pub fn direction_sum(&self, k: usize) -> &[f64] {
        &self.direction_sums[k * self.dim..(k + 1) * self.dim]
    }

    /// Unit vector along Σ member directions.
    pub fn mean_direction(&self, k: usize) -> Vec<f32> {
        let s = self.direction_sum(k);
        let n = s.iter().map(|v| v * v).sum::<f64>().sqrt();
        s.iter()
            .map(|v| (v / (n + geometry::NORM_EPSILON)) as f32)
            .collect()
    }

    /// All mean directions, `K × D`.
    pub fn mean_directions(&self) -> Vec<f32> {
        (0..self.len())
            .flat_map(|k| self.mean_direction(k))
            .collect()
    }

    /// `‖Σ member directions‖ / N`, in [0, 1].
    pub fn coherence(&self, k: usize) -> f64 {
        let s = self.direction_sum(k);
        s.iter().map(|v| v * v).sum::<f64>().sqrt() / self.counts[k] as f64
    }

    /// Mean member→exemplar distance (the exemplar's own 0 included).
    pub fn mean_distance(&self, k: usize) -> f64 {
        self.sum_distances[k] / self.counts[k] as f64
    }

    /// Σd and Σd² of member→exemplar distances.
    pub fn distance_sums(&self, k: usize) -> (f64, f64) {
        (self.sum_distances[k], self.sum_sq_distances[k])
    }

    /// Stream row of the activation that created partition `k`, and its token if known.
    pub fn exemplar_source(&self, k: usize) -> (i64, Option<TokenRef>) {
        (self.exemplar_rows[k], self.exemplar_tokens[k])
    }

    /// The closest members kept for partition `k`, ascending by distance.
    pub fn closest_examples(&self, k: usize) -> &[Example] {
        &self.closest[k]
    }

    /// The farthest members kept for partition `k`, descending by distance.
    pub fn farthest_examples(&self, k: usize) -> &[Example] {
        &self.farthest[k]
    }

    /// The reservoir of member directions of partition `k` (`n × D`, n ≤ reservoir size).
    pub fn reservoir(&self, k: usize) -> &[f32] {
        &self.reservoir[k]
    }

    /// Token strings of a document that an example refers to.
    pub fn document_tokens(&self, doc_id: i64) -> Option<&[String]> {
        self.documents.get(&doc_id).map(|v| v.as_slice())
    }

    /// A one-line context for an example: up to `window` tokens either side, the example's
    /// token in `[[…]]`, newlines as `⏎`. SentencePiece pieces (Gemma: `▁` marks a space) are
    /// joined back into text; other tokens (WordPiece) are joined with spaces. `None` when the
    /// example has no provenance or its text was not kept.
    pub fn example_context(&self, ex: &Example, window: usize) -> Option<String> {
        let t = ex.token?;
        let toks = self.document_tokens(t.doc_id)?;
        let p = t.position as usize;
        if p >= toks.len() {
            return None;
        }
        let lo = p.saturating_sub(window);
        let hi = (p + window + 1).min(toks.len());
        let pieces = toks.iter().any(|t| t.contains('\u{2581}'));
        let mut s = String::new();
        for (i, tok) in toks.iter().enumerate().take(hi).skip(lo) {
            let tok = if pieces {
                tok.replace('\u{2581}', " ")
            } else {
                tok.clone()
            };
            if i == p {
                s.push_str("[[");
                s.push_str(&tok);
                s.push_str("]]");
            } else {
                s.push_str(&tok);
            }
            if !pieces {
                s.push(' ');
            }
        }
        Some(s.trim().replace('\n', "⏎"))
    }

    /// Centered unit directions of raw activations (`n × D`). Errors on a row equal to the
    /// center, naming its index.
    pub fn directions(&self, rows: &[f32]) -> crate::Result<Vec<f32>> {
        self.check_rows(rows)?;
        geometry::directions(&self.to_space(rows), &self.center).map_err(|z| {
            crate::Error::param(
                "activations",
                format!("row {} has zero norm after centering", z.index),
            )
        })
    }

    fn check_rows(&self, rows: &[f32]) -> crate::Result<()> {
        if rows.len() % self.dim != 0 {
            return Err(crate::Error::DimensionMismatch {
                what: "activations".into(),
                expected: self.dim,
                found: rows.len(),
            });
        }
        Ok(())
    }

    /// Nearest exemplar of every row (no threshold), exact (decided on f64 dot products, ties
    /// to the lowest id), with the clamped cosine distance. An empty dictionary gives id −1 and
    /// distance +inf.
    pub fn assign(&self, rows: &[f32]) -> crate::Result<(Vec<i64>, Vec<f32>)> {
        let u = self.directions(rows)?;
        Ok(self.assign_directions(&u))
    }

    /// [`Dictionary::assign`] on rows that already are centered unit directions.
    pub fn assign_directions(&self, u: &[f32]) -> (Vec<i64>, Vec<f32>) {
        let d = self.dim;
        let n = u.len() / d;
        if self.is_empty() {
            return (vec![-1; n], vec![f32::INFINITY; n]);
        }
        let (ids, sims) = nearest_rows(u, &self.exemplars, d);
        ids.iter()
            .zip(&sims)
            .map(|(&k, &s)| (k as i64, geometry::distance_from_similarity(s) as f32))
            .unzip()
    }

    /// Within-θ flags for distances from [`Dictionary::assign`]: the OOD signal (a row farther
    /// than θ from every exemplar is outside the dictionary's regions).
    pub fn within_threshold(&self, distances: &[f32]) -> Vec<bool> {
        distances
            .iter()
            .map(|&d| (d as f64) <= self.theta)
            .collect()
    }

    /// Cosine distances of every row to every exemplar, `n × K` row-major, clamped to [0, 2]
    /// (one f32 GEMM; for decisions use [`Dictionary::assign`], which is exact).
    pub fn distances(&self, rows: &[f32]) -> crate::Result<Vec<f32>> {
        let u = self.directions(rows)?;
        let mut out = vec![0.0f32; (u.len() / self.dim) * self.len()];
        if !self.is_empty() {
            matmul_abt(&u, &self.exemplars, self.dim, &mut out);
        }
        out.par_iter_mut()
            .for_each(|s| *s = (1.0 - *s).clamp(0.0, 2.0));
        Ok(out)
    }

    /// Drops partitions with fewer than `min_members` members and renumbers the rest in order.
    /// Returns the map old id → new id (−1 for dropped).
    pub fn finalize(&mut self, min_members: u64) -> Vec<i64> {
        let keep: Vec<bool> = self.counts.iter().map(|&c| c >= min_members).collect();
        self.retain(&keep)
    }

    /// Keeps the partitions flagged in `keep`, in order; returns the id map.
    pub(crate) fn retain(&mut self, keep: &[bool]) -> Vec<i64> {
        let d = self.dim;
        let mut map = vec![-1i64; keep.len()];
        let mut next = 0i64;
        for (k, &kp) in keep.iter().enumerate() {
            if kp {
                map[k] = next;
                next += 1;
            }
        }
        if next as usize == keep.len() {
            return map;
        }
        fn filt<T: Clone>(v: &mut Vec<T>, keep: &[bool]) {
            let mut i = 0;
            v.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
        fn filt_rows<T: Clone>(v: &mut Vec<T>, d: usize, keep: &[bool]) {
            let mut out = Vec::with_capacity(v.len());
            for (k, chunk) in v.chunks(d).enumerate() {
                if keep[k] {
                    out.extend_from_slice(chunk);
                }
            }
            *v = out;
        }
        filt_rows(&mut self.exemplars, d, keep);
        filt_rows(&mut self.direction_sums, d, keep);
        filt(&mut self.counts, keep);
        filt(&mut self.sum_distances, keep);
        filt(&mut self.sum_sq_distances, keep);
        filt(&mut self.exemplar_rows, keep);
        filt(&mut self.exemplar_tokens, keep);
        filt(&mut self.last_member_rows, keep);
        filt(&mut self.closest, keep);
        filt(&mut self.farthest, keep);
        filt(&mut self.reservoir_rows, keep);
        filt(&mut self.reservoir, keep);
        self.prune_documents();
        map
    }

    /// Keeps only the documents that some example refers to.
    pub(crate) fn prune_documents(&mut self) {
        if self.documents.is_empty() {
            return;
        }
        let used: std::collections::BTreeSet<i64> = self
            .closest
            .iter()
            .chain(&self.farthest)
            .flatten()
            .filter_map(|e| e.token.map(|t| t.doc_id))
            .collect();
        self.documents.retain(|id, _| used.contains(id));
    }
}

impl std::fmt::Display for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nontrivial = self.counts.iter().filter(|&&c| c >= 2).count();
        write!(
            f,
            "Dictionary({} partitions, {} with ≥2 members, θ={:.4}, ||center||={:.4})",
            self.len(),
            nontrivial,
            self.theta,
            geometry::norm(&self.center)
        )
    }
}
