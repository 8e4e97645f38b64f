//! Activation inputs: `.npy` and `.safetensors` files streamed in order as f32 row batches, with
//! an optional provenance sidecar per file (see `docs/inputs.md`), the `.npy`/`.npz` writers used
//! for per-row outputs, and text corpora (`docs/corpora.md`).
//!
//! The modules import each other without cycles (this file only declares and re-exports them):
//!
//! ```text
//! stream ──► npy ──────────────► mapped (map_file, ElemType, MappedMatrix)
//!    │ └───► safetensors_input ─┘
//!    ├─────► mapped
//!    ├─────► batch ──► provenance
//!    └─────► provenance
//! corpus (no `data` imports)
//! ```

mod batch;
pub mod corpus;
mod mapped;
pub mod npy;
pub mod provenance;
mod safetensors_input;
mod stream;

#[cfg(feature = "torch")]
pub use batch::TensorRows;
pub use batch::{ActivationBatch, TokenRef};
pub use provenance::Document;
pub use stream::{ActivationStream, StreamOptions};
