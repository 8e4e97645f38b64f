//! The library's typed errors as Python exceptions, with the messages the CLI prints.
//!
//! The hierarchy (built at import with Python's `type`, so the classes can inherit from both
//! `ExemplarError` and the matching built-in):
//!
//! ```text
//! ExemplarError(Exception)
//! ├── InvalidInputError(ExemplarError, ValueError)   bad rows, shapes, dtypes, parameters
//! ├── FileFormatError(ExemplarError, ValueError)      a file whose bytes are not its format
//! ├── FileIOError(ExemplarError, OSError)             the OS failed on a named file
//! │   └── OutputExistsError(FileIOError, FileExistsError)
//! ├── CudaUnavailableError(ExemplarError)             no usable CUDA device (fall back to "cpu")
//! └── CudaError(ExemplarError)                        a CUDA call failed on a present device
//! ```

use exemplar::Error;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// The exception classes, created once per interpreter.
pub struct Classes {
    pub base: Py<PyType>,
    pub input: Py<PyType>,
    pub format: Py<PyType>,
    pub io: Py<PyType>,
    pub exists: Py<PyType>,
    pub cuda_unavailable: Py<PyType>,
    pub cuda: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn make_class<'py>(
    py: Python<'py>,
    name: &str,
    bases: &[Bound<'py, PyAny>],
    doc: &str,
) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__module__", "exemplar")?;
    ns.set_item("__doc__", doc)?;
    let bases = PyTuple::new(py, bases)?;
    let builtins = py.import("builtins")?;
    let t = builtins.getattr("type")?.call1((name, bases, ns))?;
    Ok(t.cast_into::<PyType>()?.unbind())
}

/// The exception classes (created at the first call).
pub fn classes(py: Python<'_>) -> PyResult<&Classes> {
    CLASSES.get_or_try_init(py, || {
        let b = py.import("builtins")?;
        let exc = b.getattr("Exception")?;
        let value = b.getattr("ValueError")?;
        let os = b.getattr("OSError")?;
        let exists_builtin = b.getattr("FileExistsError")?;
        let base = make_class(
            py,
            "ExemplarError",
            &[exc],
            "Base class of every error exemplar raises.",
        )?;
        let base_b = base.bind(py).clone().into_any();
        let input = make_class(
            py,
            "InvalidInputError",
            &[base_b.clone(), value.clone()],
            "Bad input: rows (shape, dtype, NaN/Inf, a row equal to the center), or a parameter \
             outside its domain.",
        )?;
        let format = make_class(
            py,
            "FileFormatError",
            &[base_b.clone(), value],
            "A file whose bytes are not what its format says (truncated, corrupt, wrong header, \
             unsupported dtype).",
        )?;
        let io = make_class(
            py,
            "FileIOError",
            &[base_b.clone(), os],
            "The operating system failed on a named file.",
        )?;
        let exists = make_class(
            py,
            "OutputExistsError",
            &[io.bind(py).clone().into_any(), exists_builtin],
            "An output that already exists (pass force=True to replace it).",
        )?;
        let cuda_unavailable = make_class(
            py,
            "CudaUnavailableError",
            std::slice::from_ref(&base_b),
            "No usable CUDA device (no driver, no NVRTC, no device, or a build without CUDA); \
             device=\"cpu\" always works.",
        )?;
        let cuda = make_class(
            py,
            "CudaError",
            &[base_b],
            "A CUDA call failed on a device that is present.",
        )?;
        Ok::<_, PyErr>(Classes {
            base,
            input,
            format,
            io,
            exists,
            cuda_unavailable,
            cuda,
        })
    })
}

/// The message the CLI prints for `e` (after `error: `), with the causes it prints on the
/// following lines when the message does not already hold them.
pub fn message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str("\n  caused by: ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg
}

/// An exception of class `class` with message `msg` and the given attributes.
fn raise(py: Python<'_>, class: &Py<PyType>, msg: String, attrs: &[(&str, Py<PyAny>)]) -> PyErr {
    let class = class.bind(py);
    match class.call1((msg.clone(),)) {
        Ok(value) => {
            for (k, v) in attrs {
                let _ = value.setattr(*k, v);
            }
            PyErr::from_value(value)
        }
        Err(e) => e,
    }
}

/// A library error as the matching Python exception. `path` and `row` (where the error names
/// them) and `name` (a parameter's) are set as attributes.
pub fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let c = match classes(py) {
        Ok(c) => c,
        Err(err) => return err,
    };
    let msg = message(&e);
    let s = |v: &dyn ToString| -> Py<PyAny> {
        v.to_string()
            .into_pyobject(py)
            .expect("a str")
            .into_any()
            .unbind()
    };
    let n = |v: u64| -> Py<PyAny> { v.into_pyobject(py).expect("an int").into_any().unbind() };
    match &e {
        Error::Io { path, .. } => raise(py, &c.io, msg, &[("path", s(&path.display()))]),
        Error::OutputExists(path) => raise(py, &c.exists, msg, &[("path", s(&path.display()))]),
        Error::Format { path, .. } | Error::UnsupportedDtype { path, .. } => {
            raise(py, &c.format, msg, &[("path", s(&path.display()))])
        }
        Error::NonFinite { path, row } | Error::ZeroNorm { path, row } => raise(
            py,
            &c.input,
            msg,
            &[("path", s(&path.display())), ("row", n(*row))],
        ),
        Error::InvalidParameter { name, .. } => raise(py, &c.input, msg, &[("name", s(name))]),
        Error::DimensionMismatch { .. } | Error::EmptyInput(_) => raise(py, &c.input, msg, &[]),
        Error::CudaUnavailable(_) => raise(py, &c.cuda_unavailable, msg, &[]),
        #[cfg(feature = "cuda")]
        Error::Cuda(_) => raise(py, &c.cuda, msg, &[]),
        #[allow(unreachable_patterns)]
        _ => raise(py, &c.base, msg, &[]),
    }
}

/// An [`InvalidInputError`](classes) raised by the bindings themselves (a bad argument).
pub fn invalid(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    match classes(py) {
        Ok(c) => raise(py, &c.input, msg.into(), &[]),
        Err(e) => e,
    }
}

/// Converts library results inside binding code: `lib(py, result)?`.
pub trait IntoPy<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for exemplar::Result<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}
