//! The streaming EP builder: batches of activations in, partitions out.
//!
//! Per batch (see `docs/semantics.md`):
//! 1. rows become centered unit directions;
//! 2. **phase A**: each row's nearest pre-batch exemplar (exact: f32 GEMM screen, f64 re-check
//!    of ambiguous rows); rows within θ join it;
//! 3. **phase B**: the unmatched rows, in stream order, are sequential leader clustering: a row
//!    within θ of an earlier in-batch leader follows the nearest one, otherwise it becomes a new
//!    exemplar;
//! 4. with [`Semantics::StrictOrder`], rows matched in phase A also consider the in-batch
//!    leaders created before them and join the nearest of both (ties to the older partition),
//!    so every output is independent of batch size;
//! 5. statistics, examples and reservoirs are updated row by row in stream order.
//!
//! Under both rules the exemplar set and its order equal strict sequential leader clustering,
//! so K and exemplar ids do not depend on batch size.
//!
//! Each step runs on the builder's [`Backend`], with identical decisions (`docs/gpu.md`). On the
//! CPU, phase B is [`leaders_cpu`] and the strict-order search [`nearest_prefix_cpu`]. On CUDA
//! the batch's rows go up once and stay there: prepare, phase A, phase B (leaders appended to
//! the device-resident exemplars), the strict-order search and the direction sums run on the
//! device. Only per-row decisions (partition id, f64 similarity) and the rows the host must
//! keep (exemplars of new partitions, rows entering a reservoir) come down. The direction sums
//! then live on the device; they are copied back when the host needs them (a merge,
//! [`Builder::dictionary`], [`Builder::finish`]).

use crate::backend::cpu::{
    leaders_cpu, nearest_prefix_cpu, screen_margin, screen_rows, LeaderDecision,
};
use crate::backend::Backend;
use crate::data::{ActivationBatch, TokenRef};
use crate::dictionary::{Dictionary, Example};
use crate::error::{Error, Result};
use crate::geometry;
use crate::linalg::{dot_f64, matmul_abt};
/// The reservoirs' draw: a uniform integer in `[0, n)` that depends only on the seed and the
/// stream row, so every backend and batch size draws the same (defined in [`crate::rng`]).
pub use crate::rng::uniform_below;
use rayon::prelude::*;

/// How rows that match a pre-batch exemplar are assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Semantics {
    /// The reference's rule: rows within θ of a pre-batch exemplar join the nearest pre-batch
    /// exemplar, even if a leader created earlier in the batch is nearer.
    #[default]
    TwoPhase,
    /// Every row joins the nearest of the pre-batch exemplars and the in-batch leaders created
    /// before it: sequential leader clustering, independent of batch size.
    StrictOrder,
}

impl Semantics {
    /// The name stored in the dictionary.
    pub fn as_str(self) -> &'static str {
        match self {
            Semantics::TwoPhase => "two-phase",
            Semantics::StrictOrder => "strict-order",
        }
    }
}

/// Settings of a build.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildConfig {
    pub semantics: Semantics,
    /// Stop after this many consecutive batches without a new partition (`None`: never).
    pub saturation_window: Option<u64>,
    /// Seed of the reservoirs (and of merge sampling).
    pub seed: u64,
    /// Closest and farthest examples kept per partition.
    pub examples_per_partition: usize,
    /// Member directions kept per partition by reservoir sampling.
    pub reservoir_size: usize,
    /// After each batch, merge partitions whose exemplars are within this cosine distance
    /// (the reference's `merge_close` uses θ).
    pub merge_threshold: Option<f64>,
    /// Keep one partition id per stream row (for `--assignments`); the value is the number of
    /// rows in the stream.
    pub record_assignments: Option<u64>,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            semantics: Semantics::TwoPhase,
            saturation_window: Some(1),
            seed: 0,
            examples_per_partition: 10,
            reservoir_size: 30,
            merge_threshold: None,
            record_assignments: None,
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchOutcome {
    /// Rows clustered.
    pub rows: usize,
    /// Partitions created by this batch.
    pub new_partitions: usize,
    /// K after the batch (after merges).
    pub partitions: usize,
    /// Partitions merged away after this batch.
    pub merged: usize,
    /// Whether the saturation window is now reached.
    pub saturated: bool,
}

/// The result of a finished build.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub dictionary: Dictionary,
    /// Per stream row, the final partition id (−1: not streamed, skipped, or dropped by
    /// `min_members`), when recorded.
    pub assignments: Option<Vec<i64>>,
}

/// A row's place after the assignment phases.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    /// Unmatched so far.
    Unset,
    /// Joins partition `id` (existing before the batch) with exact similarity `sim`.
    Old { id: u32, sim: f64 },
    /// Becomes the `ordinal`-th new partition of the batch.
    Leader { ordinal: u32 },
    /// Joins the `ordinal`-th new partition of the batch with exact similarity `sim`.
    Follow { ordinal: u32, sim: f64 },
}

/// Separates the merge sampler's random stream from the reservoirs' ("merge" in ASCII).
const MERGE_SAMPLING_STREAM: u64 = 0x006d_6572_6765;

/// Rows of unmatched candidates per chunk in the nominal FLOP count of phase B (the chunk of
/// [`leaders_cpu`]).
const LEADER_CHUNK: usize = 256;

/// A batch's centered unit directions: on the host, or on the device (CUDA builds).
enum Prepared {
    Host(Vec<f32>),
    #[cfg(feature = "cuda")]
    Device(cudarc::driver::CudaSlice<f32>),
}

/// The build's state on a CUDA device. Everything here is derived from the host dictionary at
/// the time it was last rebuilt, so checkpoints need nothing from it: a restored builder
/// uploads the exemplars and sums again at its first batch.
#[cfg(feature = "cuda")]
struct DeviceState {
    dev: std::sync::Arc<crate::backend::cuda::CudaDevice>,
    center: cudarc::driver::CudaSlice<f32>,
    /// The dictionary's exemplars, in order. Emptied after a merge (ids are renumbered) and
    /// refilled from the host at the next batch.
    exemplars: crate::backend::cuda::GrowableRows,
    /// While `Some`, the authoritative direction sums (the host's are stale). `None` after a
    /// merge or before the first batch: the host's are current and are uploaded next batch.
    sums: Option<crate::backend::cuda::DeviceSums>,
}

/// The streaming builder.
pub struct Builder {
    dict: Dictionary,
    backend: Backend,
    #[cfg(feature = "cuda")]
    device: Option<DeviceState>,
    /// The dictionary with its direction sums copied back from the device, made by the first
    /// [`Builder::dictionary`] call after a change (only while the sums live on the device).
    #[cfg(feature = "cuda")]
    synced: std::cell::OnceCell<Dictionary>,
    config: BuildConfig,
    /// Per stream row, the *creation* id of its partition (stable across merges).
    assignments: Option<Vec<i64>>,
    /// Creation id → current id (−1 once merged away).
    creation_to_current: Vec<i64>,
    /// Current id → creation id.
    current_to_creation: Vec<i64>,
    batches: u64,
    last_new_batch: u64,
    saturated: bool,
}

impl Builder {
    /// A builder that grows an empty dictionary with `center` and `theta`.
    pub fn new(center: Vec<f32>, theta: f64, config: BuildConfig) -> Result<Self> {
        let mut dict = Dictionary::new(center, theta)?;
        if config.examples_per_partition == 0 {
            return Err(Error::param("examples", "must be at least 1"));
        }
        if let Some(m) = config.merge_threshold {
            geometry::check_threshold(m).map_err(|_| {
                Error::param(
                    "merge threshold",
                    format!("must be a finite number > 0, got {m}"),
                )
            })?;
        }
        if config.saturation_window == Some(0) {
            return Err(Error::param("saturation window", "must be at least 1"));
        }
        dict.examples_per_partition = config.examples_per_partition;
        dict.reservoir_size = config.reservoir_size;
        dict.info.semantics = config.semantics.as_str().into();
        dict.info.seed = config.seed;
        dict.info.saturation_window = config.saturation_window;
        dict.info.examples_per_partition = config.examples_per_partition as u64;
        dict.info.reservoir_size = config.reservoir_size as u64;
        dict.info.merge_threshold = config.merge_threshold;
        let assignments = config.record_assignments.map(|n| vec![-1i64; n as usize]);
        Ok(Builder {
            dict,
            backend: Backend::Cpu,
            #[cfg(feature = "cuda")]
            device: None,
            #[cfg(feature = "cuda")]
            synced: std::cell::OnceCell::new(),
            config,
            assignments,
            creation_to_current: vec![],
            current_to_creation: vec![],
            batches: 0,
            last_new_batch: 0,
            saturated: false,
        })
    }

    /// Records the standardisation the batches were put through (from the calibration), so
    /// the dictionary applies it to every row it reads. The builder itself clusters the rows
    /// it is given.
    pub fn with_scaling(mut self, scaling: Option<geometry::Scaling>) -> Result<Self> {
        self.dict.set_scaling(scaling)?;
        Ok(self)
    }

    /// Runs the build on `backend` (call it before the first batch). Every backend returns the
    /// same exact decisions, so the dictionary does not change; the backend is recorded in its
    /// metadata.
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.dict.info.backend = backend.describe();
        self.backend = backend;
        self
    }

    /// The dictionary so far. On CUDA its direction sums are copied back from the device at
    /// the first call after a batch (`K × D` f64); a device that fails that copy panics with
    /// the driver's message (see [`Builder::try_dictionary`]).
    pub fn dictionary(&self) -> &Dictionary {
        self.try_dictionary()
            .unwrap_or_else(|e| panic!("copying the direction sums back from the GPU failed: {e}"))
    }

    /// [`Builder::dictionary`], with a failed copy from the device as an error.
    pub fn try_dictionary(&self) -> Result<&Dictionary> {
        #[cfg(feature = "cuda")]
        if let Some(st) = &self.device {
            if let Some(sums) = &st.sums {
                if let Some(d) = self.synced.get() {
                    return Ok(d);
                }
                let mut dict = self.dict.clone();
                dict.direction_sums = st.dev.download_sums(sums)?;
                return Ok(self.synced.get_or_init(|| dict));
            }
        }
        Ok(&self.dict)
    }

    /// Whether the saturation window has been reached.
    pub fn is_saturated(&self) -> bool {
        self.saturated
    }

    /// Batches clustered so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Clusters one batch. A row equal to the center is an error naming its stream row (the
    /// caller maps it to file and row); nothing of the batch is applied then.
    pub fn add_batch(&mut self, batch: &ActivationBatch) -> Result<BatchOutcome> {
        let d = self.dict.dim;
        if batch.dim != d {
            return Err(Error::DimensionMismatch {
                what: "activation batch".into(),
                expected: d,
                found: batch.dim,
            });
        }
        let n = batch.rows();
        if n == 0 {
            return Err(Error::EmptyInput("an empty batch".into()));
        }
        #[cfg(feature = "cuda")]
        self.synced.take();
        let k0 = self.dict.len();
        let u = self.prepare(batch)?;
        let (targets, flops) = self.decide(&u, n)?;
        let new = self.apply(batch, &u, &targets, k0)?;
        self.dict.info.clustering_flops += flops;
        self.dict.info.activations_streamed += n as u64;
        self.dict.info.tokens_streamed += batch.new_tokens;
        self.dict.info.skipped_nonfinite += batch.skipped_nonfinite;
        for doc in &batch.documents {
            self.dict
                .documents
                .entry(doc.doc_id)
                .or_insert_with(|| doc.tokens.clone());
        }
        let merged = match self.config.merge_threshold {
            Some(m) => self.merge_close(m)?,
            None => 0,
        };
        self.dict.prune_documents();
        if new > 0 {
            self.last_new_batch = self.batches;
        }
        self.batches += 1;
        self.dict.info.batches = self.batches;
        self.dict
            .info
            .saturation_curve
            .push(crate::dictionary::SaturationPoint {
                activations: self.dict.info.activations_streamed,
                tokens: self.dict.info.tokens_streamed,
                partitions: self.dict.len() as u64,
            });
        if let Some(w) = self.config.saturation_window {
            if self.batches - self.last_new_batch > w {
                self.saturated = true;
                self.dict.info.saturated = true;
            }
        }
        Ok(BatchOutcome {
            rows: n,
            new_partitions: new,
            partitions: self.dict.len(),
            merged,
            saturated: self.saturated,
        })
    }

    /// The batch's centered unit directions, on the device for CUDA (only the raw rows go
    /// up, or none when they are already in a CUDA tensor). A row equal to the center is
    /// [`Error::ZeroNorm`] naming its stream row.
    fn prepare(&mut self, batch: &ActivationBatch) -> Result<Prepared> {
        let host = |data: &[f32], center: &[f32]| {
            geometry::directions(data, center).map_err(|z| Error::ZeroNorm {
                path: "<stream>".into(),
                row: batch.stream_rows[z.index],
            })
        };
        #[cfg(feature = "cuda")]
        if let Backend::Cuda(_) = self.backend {
            self.sync_device()?;
            let st = self.device.as_ref().expect("synced above");
            let (n, d) = (batch.rows(), self.dict.dim);
            let prepared = match self.prepare_in_place(batch)? {
                Some(p) => p,
                None => {
                    let x = st.dev.upload(&batch.host_data())?;
                    st.dev.prepare_f32(&x, n, d, &st.center, None)
                }
            };
            return match prepared {
                Ok(u) => Ok(Prepared::Device(u)),
                Err(e) => {
                    // The same typed error as the CPU build when it is a zero-norm row.
                    host(&batch.host_data(), &self.dict.center)?;
                    Err(e)
                }
            };
        }
        Ok(Prepared::Host(host(&batch.host_data(), &self.dict.center)?))
    }

    /// The prepare kernel run on rows still in a CUDA tensor of this device, read in place
    /// (`None`: the batch's rows are not there). The outer error is a bad tensor; the inner one
    /// the kernel's.
    #[cfg(feature = "cuda")]
    fn prepare_in_place(
        &self,
        batch: &ActivationBatch,
    ) -> Result<Option<Result<cudarc::driver::CudaSlice<f32>>>> {
        #[cfg(feature = "torch")]
        if let (Some(t), Some(st)) = (&batch.tensor_rows, &self.device) {
            if t.tensor.device().is_cuda() {
                use crate::backend::cuda::torch::TorchRows;
                if t.index.len() != batch.rows() {
                    return Err(Error::param(
                        "tensor rows",
                        format!(
                            "{} indexed rows for a batch of {}",
                            t.index.len(),
                            batch.rows()
                        ),
                    ));
                }
                let view = TorchRows::new(&st.dev, &t.tensor)?;
                let index = st.dev.upload(&t.index)?;
                return Ok(Some(st.dev.prepare_torch(&view, &st.center, Some(&index))));
            }
        }
        let _ = batch;
        Ok(None)
    }

    /// With a CUDA backend: creates the device state, copies the exemplars created since the
    /// last batch (all of them after a merge or a restore), and uploads the direction sums when
    /// the host holds the current ones.
    #[cfg(feature = "cuda")]
    fn sync_device(&mut self) -> Result<()> {
        let Backend::Cuda(dev) = &self.backend else {
            return Ok(());
        };
        let d = self.dict.dim;
        if self.device.is_none() {
            self.device = Some(DeviceState {
                dev: dev.clone(),
                center: dev.upload(&self.dict.center)?,
                exemplars: dev.growable_rows(d)?,
                sums: None,
            });
        }
        let st = self.device.as_mut().expect("just created");
        if st.exemplars.rows() > self.dict.len() {
            // A batch failed after appending its leaders.
            st.exemplars.clear();
        }
        let have = st.exemplars.rows();
        st.dev
            .append_rows(&mut st.exemplars, &self.dict.exemplars[have * d..])?;
        if st.sums.is_none() {
            st.sums = Some(st.dev.upload_sums(&self.dict.direction_sums, d)?);
        }
        Ok(())
    }

    /// Phases A and B: where each row goes, and the nominal FLOPs of the similarity products
    /// (see [`crate::dictionary::BuildInfo::clustering_flops`]).
    fn decide(&mut self, u: &Prepared, n: usize) -> Result<(Vec<Target>, f64)> {
        let d = self.dict.dim;
        let theta = self.dict.theta;
        let mut targets = vec![Target::Unset; n];
        let k0 = self.dict.len();
        // The first row of an empty dictionary founds partition 0; phase A then compares the
        // rest of the batch with it, as the reference does.
        let start = usize::from(k0 == 0);
        if k0 == 0 {
            targets[0] = Target::Leader { ordinal: 0 };
        }
        // Phase A: the exact nearest pre-batch exemplar of every other row.
        let mut flops = 2.0 * d as f64 * (n - start) as f64 * k0.max(1) as f64;
        let join = |best: Option<(u32, f64)>| match best {
            Some((_, sim)) if geometry::distance_from_similarity(sim) > theta => Target::Unset,
            None => Target::Unset,
            // The only partition visible to phase A is the founder.
            Some((_, sim)) if k0 == 0 => Target::Follow { ordinal: 0, sim },
            Some((id, sim)) => Target::Old { id, sim },
        };
        let phase_a = self.phase_a(u, start)?;
        for (t, best) in targets[start..].iter_mut().zip(phase_a) {
            *t = join(best);
        }
        // Phase B: sequential leader clustering of the unmatched rows. Leaders of phase B are
        // compared with leaders of phase B only (the founder, if any, was phase A's
        // candidate), so their ordinals start after it.
        let unmatched: Vec<usize> = (start..n)
            .filter(|&i| targets[i] == Target::Unset)
            .collect();
        let first_b = start;
        let decisions = self.phase_b(u, &unmatched)?;
        let mut lead_rows: Vec<usize> = Vec::new(); // rows of phase B's leaders, in order
        for (chunk, dec) in unmatched
            .chunks(LEADER_CHUNK)
            .zip(decisions.chunks(LEADER_CHUNK))
        {
            let c = chunk.len() as f64;
            flops += 2.0 * d as f64 * c * (lead_rows.len() as f64 + c);
            for (&i, &dec) in chunk.iter().zip(dec) {
                targets[i] = match dec {
                    LeaderDecision::Leader { ordinal } => {
                        debug_assert_eq!(ordinal as usize, lead_rows.len());
                        lead_rows.push(i);
                        Target::Leader {
                            ordinal: ordinal + first_b as u32,
                        }
                    }
                    LeaderDecision::Follow { ordinal, sim } => Target::Follow {
                        ordinal: ordinal + first_b as u32,
                        sim,
                    },
                };
            }
        }
        if self.config.semantics == Semantics::StrictOrder && !lead_rows.is_empty() {
            flops += self.strict_order_pass(u, &mut targets, &lead_rows, first_b)?;
        }
        Ok((targets, flops))
    }

    /// Phase A for rows `start..n`: the exact nearest pre-batch exemplar (the founder, when
    /// the dictionary is empty) and its f64 similarity; `None` where the row is certainly
    /// unmatched (its f32 screen is below 1 − θ by more than the screen's error).
    fn phase_a(&mut self, u: &Prepared, start: usize) -> Result<Vec<Option<(u32, f64)>>> {
        let d = self.dict.dim;
        let k0 = self.dict.len();
        match u {
            Prepared::Host(u) => {
                let certainly_far = (1.0 - self.dict.theta) as f32 - screen_margin(d);
                let old: &[f32] = if k0 == 0 {
                    &u[..d]
                } else {
                    &self.dict.exemplars
                };
                let rest = &u[start * d..];
                Ok(screen_rows(rest, old, d)
                    .par_iter()
                    .enumerate()
                    .map(|(a, sc)| {
                        (sc.top.best >= certainly_far)
                            .then(|| sc.resolve(&rest[a * d..(a + 1) * d], old, d))
                    })
                    .collect())
            }
            #[cfg(feature = "cuda")]
            Prepared::Device(u) => {
                let st = self.device.as_mut().expect("prepared on the device");
                let dev = st.dev.clone();
                if k0 == 0 {
                    // The founder becomes exemplar 0 on the device, before phase B's leaders.
                    dev.append_device_rows(&mut st.exemplars, &u.slice(..d))?;
                }
                let k = st.exemplars.rows();
                debug_assert_eq!(k, k0.max(1));
                let n = u.len() / d;
                if n == start {
                    return Ok(Vec::new());
                }
                let screen = dev.screen_for(k, d);
                let (ids, sims) = dev.nearest_device(
                    screen,
                    &u.slice(start * d..),
                    n - start,
                    &st.exemplars.view(),
                    k,
                    d,
                    None,
                )?;
                let (ids, sims) = (dev.download(&ids)?, dev.download(&sims)?);
                Ok(ids
                    .into_iter()
                    .zip(sims)
                    .map(|(id, sim)| Some((id as u32, sim)))
                    .collect())
            }
        }
    }

    /// Phase B: the decisions of [`leaders_cpu`] for the rows `unmatched`, in stream order. On
    /// CUDA the leaders are appended to the device exemplars, after the founder (if any), so
    /// the device copy stays in the order of the dictionary's exemplars.
    fn phase_b(&mut self, u: &Prepared, unmatched: &[usize]) -> Result<Vec<LeaderDecision>> {
        let (d, theta) = (self.dict.dim, self.dict.theta);
        if unmatched.is_empty() {
            return Ok(Vec::new());
        }
        match u {
            Prepared::Host(u) => Ok(leaders_cpu(&gather(u, d, unmatched), d, theta)),
            #[cfg(feature = "cuda")]
            Prepared::Device(u) => {
                let st = self.device.as_mut().expect("prepared on the device");
                let idx: Vec<u32> = unmatched.iter().map(|&i| i as u32).collect();
                let w = st.dev.gather_rows(&u.slice(..), d, &idx)?;
                st.dev
                    .leaders(&w.slice(..), idx.len(), d, theta, &mut st.exemplars)
            }
        }
    }

    /// Strict order: rows matched to a pre-batch exemplar (or, in an empty dictionary, to the
    /// founder) move to an in-batch leader created before them when it is strictly nearer
    /// ([`nearest_prefix_cpu`], on the backend). `lead_rows` are phase B's leaders, whose
    /// ordinals start at `first_b` (the dictionary holds the pre-batch exemplars only; the
    /// batch is applied afterwards). Returns the FLOPs of its similarity products.
    fn strict_order_pass(
        &mut self,
        u: &Prepared,
        targets: &mut [Target],
        lead_rows: &[usize],
        first_b: usize,
    ) -> Result<f64> {
        let d = self.dict.dim;
        let matched: Vec<usize> = (0..targets.len())
            .filter(|&i| match targets[i] {
                Target::Old { .. } => true,
                Target::Follow { ordinal: 0, .. } => first_b == 1,
                _ => false,
            })
            .filter(|&i| lead_rows[0] < i)
            .collect();
        if matched.is_empty() {
            return Ok(0.0);
        }
        let l = lead_rows.len();
        // Leaders created before each row (at least the first, by the filter above).
        let limits: Vec<u32> = matched
            .iter()
            .map(|&i| lead_rows.partition_point(|&r| r < i) as u32)
            .collect();
        let nearest: Vec<Option<(u32, f64)>> = match u {
            Prepared::Host(u) => nearest_prefix_cpu(
                &gather(u, d, &matched),
                &limits,
                &gather(u, d, lead_rows),
                d,
            ),
            #[cfg(feature = "cuda")]
            Prepared::Device(u) => {
                let st = self.device.as_ref().expect("prepared on the device");
                let dev = &st.dev;
                let idx: Vec<u32> = matched.iter().map(|&i| i as u32).collect();
                let w = dev.gather_rows(&u.slice(..), d, &idx)?;
                let lim: Vec<i32> = limits.iter().map(|&x| x as i32).collect();
                let lim = dev.upload(&lim)?;
                // Phase B's leaders are the device exemplars after the pre-batch ones and the
                // founder.
                let first = self.dict.len() + first_b;
                debug_assert_eq!(st.exemplars.rows(), first + l);
                let leaders = st.exemplars.view().slice(first * d..(first + l) * d);
                let screen = dev.screen_for(l, d);
                let (ids, sims) =
                    dev.nearest_with(screen, &w, idx.len(), &leaders, l, d, Some(&lim))?;
                ids.into_iter()
                    .zip(sims)
                    .map(|(i, s)| (i >= 0).then_some((i as u32, s)))
                    .collect()
            }
        };
        for (&i, best) in matched.iter().zip(nearest) {
            let Some((ord, sim)) = best else { continue };
            let current = match targets[i] {
                Target::Old { sim, .. } | Target::Follow { sim, .. } => sim,
                _ => unreachable!("only matched rows are revisited"),
            };
            // Ties stay with the older partition (the lower id).
            if sim > current {
                targets[i] = Target::Follow {
                    ordinal: ord + first_b as u32,
                    sim,
                };
            }
        }
        Ok(2.0 * d as f64 * matched.len() as f64 * l as f64)
    }

    /// Creates the new partitions and records every row's membership, in stream order.
    /// Returns the number of partitions created. On CUDA the direction sums are added on the
    /// device first, and only the rows the host keeps come down: exemplars of new partitions
    /// and rows entering a reservoir (found by replaying the reservoir's draws, which depend
    /// only on the seed, the stream row and the member's rank).
    fn apply(
        &mut self,
        batch: &ActivationBatch,
        u: &Prepared,
        targets: &[Target],
        k0: usize,
    ) -> Result<usize> {
        let d = self.dict.dim;
        let member = |t: &Target| match *t {
            Target::Unset => unreachable!("every row has a target after phase B"),
            Target::Old { id, sim } => (id as usize, geometry::distance_from_similarity(sim)),
            Target::Leader { ordinal } => (k0 + ordinal as usize, 0.0),
            Target::Follow { ordinal, sim } => (
                k0 + ordinal as usize,
                geometry::distance_from_similarity(sim),
            ),
        };
        // The rows the host keeps: exemplars of new partitions and rows entering a reservoir,
        // found by replaying record_member's ranks and draws. The CPU build uses this set too
        // (its rows for the sums come from `u`), so every CPU test checks the replay.
        let cap = self.dict.reservoir_size as u64;
        let created = targets
            .iter()
            .filter(|t| matches!(t, Target::Leader { .. }))
            .count();
        let mut counts: Vec<u64> = self.dict.counts.clone();
        counts.resize(k0 + created, 0);
        let mut keep: Vec<usize> = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let (k, _) = member(t);
            counts[k] += 1;
            let rank = counts[k];
            let enters = cap > 0
                && (rank <= cap
                    || uniform_below(self.config.seed, batch.stream_rows[i], rank) < cap);
            if matches!(t, Target::Leader { .. }) || enters {
                keep.push(i);
            }
        }
        // `kept` holds the kept rows in order; `sum_rows` every row, when the sums are on the
        // host.
        let (kept, sum_rows): (std::borrow::Cow<'_, [f32]>, Option<&[f32]>) = match u {
            Prepared::Host(u) => (gather(u, d, &keep).into(), Some(u)),
            #[cfg(feature = "cuda")]
            Prepared::Device(u) => {
                let st = self.device.as_mut().expect("prepared on the device");
                let kept = if keep.is_empty() {
                    Vec::new()
                } else {
                    let idx: Vec<u32> = keep.iter().map(|&i| i as u32).collect();
                    st.dev
                        .download(&st.dev.gather_rows(&u.slice(..), d, &idx)?)?
                };
                let memberships: Vec<(u32, u32)> = targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (member(t).0 as u32, i as u32))
                    .collect();
                let sums = st
                    .sums
                    .as_mut()
                    .expect("uploaded when the batch was prepared");
                st.dev.grow_sums(sums, k0 + created)?;
                st.dev
                    .add_direction_sums(&u.slice(..), &memberships, sums)?;
                (kept.into(), None)
            }
        };
        let mut next = 0usize; // position in `keep`
        let mut made = 0usize;
        for (i, t) in targets.iter().enumerate() {
            let row = (keep.get(next) == Some(&i)).then(|| {
                next += 1;
                &kept[(next - 1) * d..next * d]
            });
            let stream_row = batch.stream_rows[i] as i64;
            let token = batch.tokens.as_ref().map(|t| t[i]);
            if let Target::Leader { ordinal } = *t {
                debug_assert_eq!(ordinal as usize, made);
                self.create_partition(row.expect("leaders' rows are kept"), stream_row, token);
                made += 1;
            }
            let (k, dist) = member(t);
            let sum_row = sum_rows.map(|u| &u[i * d..(i + 1) * d]);
            self.record_member(k, sum_row, row, dist, stream_row, token);
        }
        Ok(made)
    }

    /// With the direction sums on the device: copies them into the host dictionary, which
    /// holds the current ones from then on (before a merge renumbers partitions, and at the
    /// end of the build). The device exemplars are emptied; both are uploaded again at the
    /// next batch.
    #[cfg(feature = "cuda")]
    fn pull_device_sums(&mut self) -> Result<()> {
        if let Some(st) = self.device.as_mut() {
            if let Some(sums) = st.sums.take() {
                self.dict.direction_sums = st.dev.download_sums(&sums)?;
            }
            st.exemplars.clear();
        }
        self.synced.take();
        Ok(())
    }

    fn create_partition(&mut self, dir: &[f32], stream_row: i64, token: Option<TokenRef>) {
        let dict = &mut self.dict;
        let d = dict.dim;
        dict.exemplars.extend_from_slice(dir);
        dict.counts.push(0);
        dict.direction_sums.extend(std::iter::repeat_n(0.0, d));
        dict.sum_distances.push(0.0);
        dict.sum_sq_distances.push(0.0);
        dict.exemplar_rows.push(stream_row);
        dict.exemplar_tokens.push(token);
        dict.last_member_rows.push(stream_row);
        dict.closest.push(Vec::new());
        dict.farthest.push(Vec::new());
        dict.reservoir_rows.push(Vec::new());
        dict.reservoir.push(Vec::new());
        let creation = self.creation_to_current.len() as i64;
        self.creation_to_current.push(dict.len() as i64 - 1);
        self.current_to_creation.push(creation);
    }

    /// Adds a row to partition `k`. `sum_row` is the row for the direction sums (`None`: they
    /// are kept on the device); `dir` is the row when the host kept it (a new exemplar or a
    /// reservoir entrant, see `apply`).
    fn record_member(
        &mut self,
        k: usize,
        sum_row: Option<&[f32]>,
        dir: Option<&[f32]>,
        dist: f64,
        stream_row: i64,
        token: Option<TokenRef>,
    ) {
        let dict = &mut self.dict;
        let d = dict.dim;
        dict.counts[k] += 1;
        let rank = dict.counts[k];
        let need = "the row of a reservoir entrant is kept";
        if let Some(row) = sum_row {
            for (s, &x) in dict.direction_sums[k * d..(k + 1) * d].iter_mut().zip(row) {
                *s += x as f64;
            }
        }
        dict.sum_distances[k] += dist;
        dict.sum_sq_distances[k] += dist * dist;
        dict.last_member_rows[k] = stream_row;
        let ex = Example {
            distance: dist as f32,
            stream_row,
            token,
        };
        insert_closest(&mut dict.closest[k], ex, dict.examples_per_partition);
        insert_farthest(&mut dict.farthest[k], ex, dict.examples_per_partition);
        // Reservoir sampling (Algorithm R) with a counter-based RNG keyed by the stream row,
        // so the sample is reproducible and independent of batching.
        let cap = dict.reservoir_size;
        if cap > 0 {
            if (rank as usize) <= cap {
                dict.reservoir_rows[k].push(stream_row);
                dict.reservoir[k].extend_from_slice(dir.expect(need));
            } else {
                let j = uniform_below(self.config.seed, stream_row as u64, rank);
                if (j as usize) < cap {
                    let j = j as usize;
                    dict.reservoir_rows[k][j] = stream_row;
                    dict.reservoir[k][j * d..(j + 1) * d].copy_from_slice(dir.expect(need));
                }
            }
        }
        if let Some(a) = self.assignments.as_mut() {
            if let Some(slot) = a.get_mut(stream_row as usize) {
                *slot = self.current_to_creation[k];
            }
        }
    }

    /// The reference's `merge_close`: pairs of exemplars within `threshold` are grouped
    /// transitively (union-find); each group merges into its largest member (earliest on
    /// ties), which keeps its exemplar. Returns the number of partitions merged away.
    fn merge_close(&mut self, threshold: f64) -> Result<usize> {
        let d = self.dict.dim;
        let k = self.dict.len();
        if k < 2 {
            return Ok(0);
        }
        let e = &self.dict.exemplars;
        let margin = screen_margin(d);
        let tile = crate::linalg::tile_rows(k);
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        let mut buf = vec![0.0f32; tile.min(k) * k];
        for r0 in (0..k).step_by(tile) {
            let r1 = (r0 + tile).min(k);
            let s = &mut buf[..(r1 - r0) * k];
            matmul_abt(&e[r0 * d..r1 * d], e, d, s);
            for i in r0..r1 {
                for j in i + 1..k {
                    let s32 = s[(i - r0) * k + j];
                    if ((1.0 - s32) as f64) <= threshold + margin as f64 {
                        let sim = dot_f64(&e[i * d..(i + 1) * d], &e[j * d..(j + 1) * d]);
                        if (1.0 - sim.clamp(-1.0, 1.0)) <= threshold {
                            pairs.push((i, j));
                        }
                    }
                }
            }
        }
        if pairs.is_empty() {
            return Ok(0);
        }
        // The merge adds direction sums on the host and renumbers partitions.
        #[cfg(feature = "cuda")]
        self.pull_device_sums()?;
        let mut parent: Vec<usize> = (0..k).collect();
        fn find(p: &mut [usize], mut x: usize) -> usize {
            while p[x] != x {
                p[x] = p[p[x]];
                x = p[x];
            }
            x
        }
        for &(i, j) in &pairs {
            let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
            if ri != rj {
                parent[rj] = ri;
            }
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut group_of_root = std::collections::HashMap::new();
        for i in 0..k {
            let r = find(&mut parent, i);
            let g = *group_of_root.entry(r).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        let mut keep = vec![true; k];
        for g in groups.iter_mut().filter(|g| g.len() > 1) {
            // Stable sort by count descending: the largest (earliest on ties) is the target.
            g.sort_by(|&a, &b| self.dict.counts[b].cmp(&self.dict.counts[a]));
            let target = g[0];
            for &src in &g[1..] {
                self.merge_into(target, src);
                keep[src] = false;
            }
        }
        let merged = keep.iter().filter(|&&x| !x).count();
        // Creation ids of merged partitions now point at their targets; then renumber.
        for g in groups.iter().filter(|g| g.len() > 1) {
            for &src in &g[1..] {
                self.redirect(src, g[0]);
            }
        }
        let map = self.dict.retain(&keep);
        for cur in self.creation_to_current.iter_mut() {
            if *cur >= 0 {
                *cur = map[*cur as usize];
            }
        }
        let mut inv = vec![-1i64; self.dict.len()];
        for (old, &new) in map.iter().enumerate() {
            if new >= 0 {
                inv[new as usize] = self.current_to_creation[old];
            }
        }
        self.current_to_creation = inv;
        Ok(merged)
    }

    /// Points every creation id that maps to current partition `from` (its own and those of
    /// partitions merged into it earlier) at current partition `to`.
    fn redirect(&mut self, from: usize, to: usize) {
        for cur in self.creation_to_current.iter_mut() {
            if *cur == from as i64 {
                *cur = to as i64;
            }
        }
    }

    /// Merges partition `src` into `target` (statistics add; the target keeps its exemplar;
    /// distances of `src` members stay measured to their own exemplar, as in the reference).
    fn merge_into(&mut self, target: usize, src: usize) {
        let dict = &mut self.dict;
        let d = dict.dim;
        dict.counts[target] += dict.counts[src];
        for j in 0..d {
            dict.direction_sums[target * d + j] += dict.direction_sums[src * d + j];
        }
        dict.sum_distances[target] += dict.sum_distances[src];
        dict.sum_sq_distances[target] += dict.sum_sq_distances[src];
        dict.last_member_rows[target] =
            dict.last_member_rows[target].max(dict.last_member_rows[src]);
        let n = dict.examples_per_partition;
        let src_closest = std::mem::take(&mut dict.closest[src]);
        for ex in src_closest {
            insert_closest(&mut dict.closest[target], ex, n);
        }
        let src_far = std::mem::take(&mut dict.farthest[src]);
        for ex in src_far {
            insert_farthest(&mut dict.farthest[target], ex, n);
        }
        // Reservoirs: concatenate; above capacity keep a seeded random subset (partial
        // Fisher–Yates keyed by the two exemplars' stream rows).
        let cap = dict.reservoir_size;
        let src_rows = std::mem::take(&mut dict.reservoir_rows[src]);
        let src_vecs = std::mem::take(&mut dict.reservoir[src]);
        let mut rows = std::mem::take(&mut dict.reservoir_rows[target]);
        let mut vecs = std::mem::take(&mut dict.reservoir[target]);
        rows.extend(src_rows);
        vecs.extend(src_vecs);
        if rows.len() > cap {
            let key = (dict.exemplar_rows[target] as u64) << 32 ^ dict.exemplar_rows[src] as u64;
            let m = rows.len();
            for i in 0..cap {
                let j = i + uniform_below(
                    self.config.seed ^ MERGE_SAMPLING_STREAM,
                    key.wrapping_add(i as u64),
                    (m - i) as u64,
                ) as usize;
                rows.swap(i, j);
                for c in 0..d {
                    vecs.swap(i * d + c, j * d + c);
                }
            }
            rows.truncate(cap);
            vecs.truncate(cap * d);
        }
        dict.reservoir_rows[target] = rows;
        dict.reservoir[target] = vecs;
    }

    /// Ends the build: drops partitions below `min_members`, renumbers, and maps the recorded
    /// assignments to final ids.
    /// On CUDA the direction sums are copied back first; a device that fails that copy panics
    /// with the driver's message (see [`Builder::try_finish`]).
    pub fn finish(self, min_members: u64) -> BuildOutput {
        self.try_finish(min_members)
            .unwrap_or_else(|e| panic!("copying the direction sums back from the GPU failed: {e}"))
    }

    /// [`Builder::finish`], with a failed copy from the device as an error.
    pub fn try_finish(mut self, min_members: u64) -> Result<BuildOutput> {
        #[cfg(feature = "cuda")]
        self.pull_device_sums()?;
        let map = self.dict.finalize(min_members.max(1));
        self.dict.info.min_members = min_members.max(1);
        let assignments = self.assignments.map(|mut a| {
            for v in a.iter_mut() {
                if *v >= 0 {
                    let cur = self.creation_to_current[*v as usize];
                    *v = if cur >= 0 { map[cur as usize] } else { -1 };
                }
            }
            a
        });
        Ok(BuildOutput {
            dictionary: self.dict,
            assignments,
        })
    }

    /// Mutable access to the build record (the driver fills inputs, budgets, timings).
    pub fn info_mut(&mut self) -> &mut crate::dictionary::BuildInfo {
        #[cfg(feature = "cuda")]
        self.synced.take();
        &mut self.dict.info
    }

    /// The builder's state beyond its dictionary (for checkpoints). The reservoirs' random
    /// numbers are counter-based (keyed by seed and stream row), so there is no generator state.
    pub fn state(&self) -> BuilderState {
        BuilderState {
            creation_to_current: self.creation_to_current.clone(),
            current_to_creation: self.current_to_creation.clone(),
            batches: self.batches,
            last_new_batch: self.last_new_batch,
            saturated: self.saturated,
        }
    }

    /// The recorded per-row assignments so far (creation ids), when recorded.
    pub fn recorded_assignments(&self) -> Option<&[i64]> {
        self.assignments.as_deref()
    }

    /// A builder that continues from a checkpoint: `dict` and `state` as saved by
    /// [`Builder::dictionary`] and [`Builder::state`], with the same `config`.
    pub fn restore(
        dict: Dictionary,
        state: BuilderState,
        assignments: Option<Vec<i64>>,
        config: BuildConfig,
    ) -> Result<Self> {
        let fresh = Builder::new(dict.center.clone(), dict.theta, config.clone())?;
        let k = dict.len();
        if state.current_to_creation.len() != k
            || state.current_to_creation.iter().any(|&c| {
                c < 0
                    || c as usize >= state.creation_to_current.len()
                    || state.creation_to_current[c as usize] < 0
            })
            || state.creation_to_current.iter().any(|&c| c >= k as i64)
            || state.batches != dict.info.batches
            || state.last_new_batch > state.batches
        {
            return Err(Error::param(
                "checkpoint",
                "the builder state does not match its dictionary",
            ));
        }
        if dict.examples_per_partition != config.examples_per_partition
            || dict.reservoir_size != config.reservoir_size
            || dict.info.seed != config.seed
        {
            return Err(Error::param(
                "checkpoint",
                "examples, reservoir size or seed differ from the checkpoint's",
            ));
        }
        let assignments = match (config.record_assignments, assignments) {
            (None, _) => None,
            (Some(n), Some(a)) if a.len() as u64 == n => Some(a),
            (Some(_), _) => {
                return Err(Error::param(
                    "checkpoint",
                    "the recorded assignments are missing or have another length",
                ))
            }
        };
        Ok(Builder {
            dict,
            assignments,
            creation_to_current: state.creation_to_current,
            current_to_creation: state.current_to_creation,
            batches: state.batches,
            last_new_batch: state.last_new_batch,
            saturated: state.saturated,
            ..fresh
        })
    }
}

/// What a checkpoint keeps of a [`Builder`] besides its dictionary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BuilderState {
    /// Creation id → current id (−1 once merged away).
    pub creation_to_current: Vec<i64>,
    /// Current id → creation id.
    pub current_to_creation: Vec<i64>,
    pub batches: u64,
    pub last_new_batch: u64,
    pub saturated: bool,
}

/// Rows `idx` of `u` (rows of width `d`), in that order.
fn gather(u: &[f32], d: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        out.extend_from_slice(&u[i * d..(i + 1) * d]);
    }
    out
}

/// Keeps the `n` smallest `(distance, stream_row)`, ascending.
fn insert_closest(v: &mut Vec<Example>, ex: Example, n: usize) {
    let key = |e: &Example| (e.distance, e.stream_row);
    let pos = v.partition_point(|e| key(e) < key(&ex));
    if pos < n {
        v.insert(pos, ex);
        v.truncate(n);
    }
}

/// Keeps the `n` largest distances (earlier stream row first on ties), descending.
fn insert_farthest(v: &mut Vec<Example>, ex: Example, n: usize) {
    let pos = v.partition_point(|e| {
        e.distance > ex.distance || (e.distance == ex.distance && e.stream_row < ex.stream_row)
    });
    if pos < n {
        v.insert(pos, ex);
        v.truncate(n);
    }
}
