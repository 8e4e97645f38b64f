//! Compute backends. The CPU backend is the oracle: its operations live in [`crate::linalg`],
//! [`crate::geometry`], [`crate::calibrate`] and [`crate::build`]; every CUDA kernel here has
//! a CPU twin there, with the same semantics, and a parity test against it.

#[cfg(feature = "cuda")]
pub mod cuda;
