//! The Gemma family in tch (feature `torch`): Gemma-2 and Gemma 3 (text) configs, weights,
//! forward with hooks and interventions, tokenizer, and activation extraction to files the
//! build reads.

pub mod config;
pub mod extract;
pub mod gemma;
pub mod generate;
pub mod hooks;
pub mod rows;
pub mod tokenizer;
pub mod windows;

pub use config::{AttentionKind, GemmaConfig, GemmaFamily, Rope};
pub use gemma::{ForwardOutput, Gemma, KvCache, Logits};
pub use generate::{Generation, Sampling};
pub use hooks::{Edit, HookKind, HookPoint, Intervention, RegionGate};
pub use tokenizer::Tokenizer;
