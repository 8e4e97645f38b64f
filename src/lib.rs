//! # exemplar
//!
//! Exemplar Partitioning (EP): interpretable feature dictionaries of language-model activations,
//! built by leader clustering on the centered unit sphere.
//!
//! The modules follow the data's path: [`data`] (activation files in) → [`calibrate`] (center
//! and θ) → [`build`] (streaming leader clustering) → [`dictionary`] (the object users hold,
//! its file, assign/encode) → [`eval`] (metrics). [`pipeline`] drives them over a stream.
//! [`sae`] holds the other dictionary kind, sparse autoencoders (SAELens / Gemma Scope files,
//! encoders, a TopK trainer), which [`eval`] compares with EP.

pub mod analysis;
pub mod backend;
pub mod build;
pub mod calibrate;
pub mod checkpoint;
pub mod data;
pub mod dictionary;
pub mod error;
pub mod eval;
pub mod geometry;
pub mod linalg;
#[cfg(feature = "torch")]
pub mod model;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod rng;
pub mod sae;
pub mod tensorfile;

pub use build::{BuildConfig, Builder, Semantics};
pub use calibrate::{Calibration, PercentileMethod};
pub use dictionary::Dictionary;
pub use error::{Error, Result};
