//! Typed errors of the library. The CLI wraps them with `anyhow`; library callers can match on
//! the variant (for example to tell bad input from an I/O failure).

use std::path::PathBuf;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file whose bytes are not what its format says (truncated, corrupt, wrong header).
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },

    /// A dtype the reader does not handle.
    #[error("{path}: unsupported dtype {dtype} (supported: {supported})")]
    UnsupportedDtype {
        path: PathBuf,
        dtype: String,
        supported: &'static str,
    },

    /// Activation widths that disagree (between files, or with a calibration or dictionary).
    #[error("dimension mismatch: {what} has D = {found}, expected D = {expected}")]
    DimensionMismatch {
        what: String,
        expected: usize,
        found: usize,
    },

    /// A row that holds NaN or ±Inf.
    #[error("{path}: row {row} holds a non-finite value (NaN or Inf); pass --skip-nonfinite to drop such rows")]
    NonFinite { path: PathBuf, row: u64 },

    /// A row that is exactly the center (it has no direction on the sphere).
    #[error("{path}: row {row} has zero norm after centering (it equals the center), so it has no direction")]
    ZeroNorm { path: PathBuf, row: u64 },

    /// A stream or file with no rows where rows are needed.
    #[error("empty input: {0}")]
    EmptyInput(String),

    /// A parameter outside its domain (percentile, threshold, batch size, ...).
    #[error("invalid {name}: {message}")]
    InvalidParameter { name: &'static str, message: String },

    /// No usable CUDA device: the driver or NVRTC library cannot be loaded, or no device opens.
    /// Callers can fall back to the CPU backend.
    #[error("CUDA is not available: {0}")]
    CudaUnavailable(String),

    /// A CUDA call failed on a device that is present.
    #[error("CUDA error: {0}")]
    Cuda(String),

    /// An output path that already exists (outputs are never overwritten without `force`).
    #[error("{0} already exists; pass --force to overwrite it")]
    OutputExists(PathBuf),
}

/// Result alias of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A format error on `path`.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An invalid parameter.
    pub fn param(name: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidParameter {
            name,
            message: message.into(),
        }
    }
}
