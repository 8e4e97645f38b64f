//! Circuits from discrete codes (O'Neill & Bui, "Sparse Autoencoders Enable Scalable and
//! Reliable Circuit Identification", arXiv 2405.12522) with EP codes, checked by exact
//! activation patching, and MIB's circuit-track metrics.
//!
//! * [`task`]: the task file (JSON Lines: prompt, answer, corrupted prompt, wrong answer) and
//!   its token checks; head names.
//! * [`codes`]: EP dictionaries per head or shared, codes per prompt and head.
//! * [`score`]: node and (sparse) edge scores, ROC-AUC, random rankings.
//! * [`faithfulness`]: MIB faithfulness, CPR and CMD.
//! * [`mib`]: the importance-score JSON of MIB's circuit track.
//! * [`patch`] and [`run`] (feature `torch`): the forwards, exact per-head patching, and the
//!   whole analysis.
//!
//! `docs/analyses.md` states every definition and what it was checked against.

pub mod codes;
pub mod faithfulness;
pub mod mib;
pub mod score;
pub mod task;

#[cfg(feature = "torch")]
pub mod patch;
#[cfg(feature = "torch")]
pub mod run;
