//! Evaluation: intrinsic metrics of a dictionary (spec §6), and the harness that compares EP with
//! SAEs and with itself (spec §7–§8): EP ↔ SAE correspondence, dictionary ↔ dictionary
//! matching, probes, concept detection, the OOD signal, and the build-compute comparison with a
//! TopK SAE trained on the same activations. The SAEs themselves (files, encoders, the trainer)
//! are a dictionary kind of their own, in [`crate::sae`].

pub mod assignment;
#[cfg(feature = "torch")]
pub mod budget;
pub mod compare;
pub mod detect;
pub mod documents;
mod intrinsic;
pub mod logistic;
pub mod matching;
pub mod metrics;
pub mod ood;
pub mod plot;
pub mod probe;
pub mod quality;
pub mod synthetic;
pub mod tree;

pub use intrinsic::{gini, intrinsic_metrics, median, IntrinsicMetrics};
