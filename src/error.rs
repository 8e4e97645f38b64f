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

    /// A row that holds NaN or ±Inf (a stream drops such rows instead with
    /// `StreamOptions::skip_nonfinite`).
    #[error("{path}: row {row} holds a non-finite value (NaN or Inf)")]
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

    /// A CUDA call failed on a device that is present, or a launcher refused arguments that do
    /// not fit its kernel (see [`CudaError`]).
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(#[from] CudaError),

    /// An output path that already exists (outputs are never overwritten without `force`).
    #[error("{0} already exists; it is not overwritten")]
    OutputExists(PathBuf),
}

/// What went wrong in the CUDA backend (feature `cuda`) on a machine where CUDA is present.
/// cudarc's driver, NVRTC and cuBLAS errors are kept as the [source](std::error::Error::source),
/// not flattened into text; a missing driver or library is [`Error::CudaUnavailable`] instead,
/// so that callers can fall back to the CPU.
#[cfg(feature = "cuda")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// A driver call failed: an allocation, a copy, a context or pointer query.
    #[error("CUDA {op} failed")]
    Driver {
        op: &'static str,
        #[source]
        source: cudarc::driver::DriverError,
    },

    /// A kernel launch failed.
    #[error("launching the CUDA kernel {kernel} failed")]
    Launch {
        kernel: &'static str,
        #[source]
        source: cudarc::driver::DriverError,
    },

    /// A kernel module's PTX would not load on the device (`entry: None`), or the loaded module
    /// has no such entry point.
    #[error("loading kernels/{module}.cu{} failed", entry.map(|e| format!(" (entry point {e})")).unwrap_or_default())]
    Load {
        module: &'static str,
        entry: Option<&'static str>,
        #[source]
        source: cudarc::driver::DriverError,
    },

    /// NVRTC could not compile a kernel module (its log is in the source).
    #[error("compiling kernels/{module}.cu with NVRTC failed")]
    Compile {
        module: String,
        #[source]
        source: cudarc::nvrtc::CompileError,
    },

    /// A cuBLAS call failed.
    #[error("cuBLAS {op} failed")]
    Cublas {
        op: &'static str,
        #[source]
        source: cudarc::cublas::result::CublasError,
    },

    /// libcublas cannot be loaded (only the cuBLAS screen needs it).
    #[error("libcublas cannot be loaded (the cublas-bf16 screen needs it)")]
    CublasMissing,

    /// Arguments that do not fit the kernel `op` launches: a length, a shape, or an index width.
    /// Checked before the launch, so nothing ran.
    #[error("{op}: {what}: expected {expected}, found {found}")]
    Shape {
        op: &'static str,
        what: String,
        expected: String,
        found: String,
    },

    /// A result the kernels guarantee is missing: a bug in this crate.
    #[error("{op}: {what} (a bug in exemplar's CUDA backend)")]
    Internal { op: &'static str, what: String },
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
