//! Gemma-2 in tch (feature `torch`): config, weights, forward with hooks and interventions,
//! tokenizer, and activation extraction to files the build reads.

pub mod config;
pub mod extract;
pub mod gemma2;
pub mod hooks;
pub mod text;
pub mod tokenizer;

pub use config::{AttentionKind, Gemma2Config};
pub use gemma2::{ForwardOutput, Gemma2};
pub use hooks::{Edit, HookKind, HookPoint, Intervention};
pub use tokenizer::Tokenizer;
