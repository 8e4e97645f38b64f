//! `exemplar._native`: the Python extension over the `exemplar` crate (PyO3, abi3). Every
//! computation is the crate's own (the CLI's drivers and the library's functions); this crate
//! only moves rows in and arrays out, maps errors to exceptions, and releases the GIL.

// Without `cuda`, `rows::Input` has only its host variant; its matches keep the CUDA arm's place.
#![cfg_attr(not(feature = "cuda"), allow(clippy::infallible_destructuring_match))]

mod builds;
#[cfg(feature = "cuda")]
mod cuda;
mod dictionary;
mod errors;
mod rows;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<dictionary::PyDictionary>()?;
    m.add_class::<builds::PyCalibration>()?;
    m.add_class::<builds::PyBuilder>()?;
    m.add_function(wrap_pyfunction!(builds::build, m)?)?;
    m.add_function(wrap_pyfunction!(builds::calibrate, m)?)?;
    m.add_function(wrap_pyfunction!(builds::cuda_status, m)?)?;
    let c = errors::classes(py)?;
    m.add("ExemplarError", c.base.bind(py))?;
    m.add("InvalidInputError", c.input.bind(py))?;
    m.add("FileFormatError", c.format.bind(py))?;
    m.add("FileIOError", c.io.bind(py))?;
    m.add("OutputExistsError", c.exists.bind(py))?;
    m.add("CudaUnavailableError", c.cuda_unavailable.bind(py))?;
    m.add("CudaError", c.cuda.bind(py))?;
    m.add("CUDA_BUILD", cfg!(feature = "cuda"))?;
    m.add("CRATE_VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
