//! The CPU backend: the oracle. Each file is the twin of one `kernels/*.cu` module, with the
//! same semantics (the same f64 decisions in the same canonical order, ties to the lowest
//! index), and the GPU parity tests compare the CUDA launchers with it.
//!
//! | file | twin of | what it holds |
//! |---|---|---|
//! | `nearest.rs` | `nearest.cu` | the f32 top-2 screen, [`Screen::resolve`], [`exact_nearest`], [`nearest_rows`] |
//! | `leaders.rs` | `leaders.cu` | phase B's in-batch leaders ([`leaders_cpu`]) and the strict-order prefix search ([`nearest_prefix_cpu`]) |
//! | `calibrate.rs` | `calibrate.cu` | the exact pairwise-distance percentile and its rank and window helpers |
//!
//! The other two kernel modules have their twins where the data is: `prepare.cu` is
//! `geometry::directions`, `stats.cu` is `Builder::record_member` (`build.rs`). The GEMM and
//! the canonical f64 dot product they all use are in `linalg`.

pub mod calibrate;
pub mod leaders;
pub mod nearest;

pub use calibrate::{check_percentile, pairwise_distance_percentile, PercentileMethod};
pub use leaders::{leaders_cpu, nearest_prefix_cpu, LeaderDecision};
pub use nearest::{
    exact_nearest, nearest_rows, screen_margin, screen_rows, top2_screen, Screen, Top2,
};
