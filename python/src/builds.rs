//! `calibrate`, `build` and the streaming `Builder`: the CLI's drivers
//! (`pipeline::calibrate_source`, `pipeline::run_build`) over activation files, in-memory arrays,
//! or batches pushed from a Python loop, with the CLI's defaults.

use crate::dictionary::PyDictionary;
use crate::errors::{invalid, to_py, IntoPy};
use crate::rows::{extract, HostRows, Input, RowFeed};
use exemplar::backend::{Backend, DeviceChoice};
use exemplar::build::{BuildConfig, BuildOutput, Semantics};
use exemplar::calibrate::{Calibration, PercentileMethod};
use exemplar::data::{ActivationBatch, ActivationStream, StreamOptions};
use exemplar::pipeline::{self, BatchSource, BuildPlan, CalibrationSpec};
use exemplar::Error;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Mutex;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Backends

#[cfg(feature = "cuda")]
static CUDA: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();

/// The backend for `device` (`cpu`, `cuda`, `auto`), as the CLI's `--device`. An opened CUDA
/// device is kept for the process (its kernels are compiled once). `auto` without a usable
/// device is the CPU (the reason is recorded nowhere but `exemplar.cuda_status()`).
pub fn backend(py: Python<'_>, device: &str) -> PyResult<Backend> {
    let choice = DeviceChoice::parse(device).py_err(py)?;
    if choice == DeviceChoice::Cpu {
        return Ok(Backend::Cpu);
    }
    #[cfg(feature = "cuda")]
    if let Some(b) = CUDA.get() {
        return Ok(b.clone());
    }
    let (b, _note) = py.detach(|| Backend::select(choice)).py_err(py)?;
    #[cfg(feature = "cuda")]
    if b.is_cuda() {
        return Ok(CUDA.get_or_init(|| b).clone());
    }
    Ok(b)
}

/// `(True, "cuda (NAME, sm_XY)")` when a CUDA device is usable, else `(False, why)`.
#[pyfunction]
pub fn cuda_status(py: Python<'_>) -> PyResult<(bool, String)> {
    match py.detach(|| Backend::select(DeviceChoice::Auto)) {
        Ok((b, None)) => Ok((b.is_cuda(), b.describe())),
        Ok((_, Some(note))) => Ok((false, note)),
        Err(e) => Ok((false, crate::errors::message(&e))),
    }
}

// ---------------------------------------------------------------------------------------------
// Progress and Ctrl-C

/// Called after every batch read (with the GIL): Ctrl-C, then the user's progress callback.
/// A Python exception from either stops the work; it is raised in place of the library error
/// that carries it out.
pub struct Hooks {
    progress: Option<Py<PyAny>>,
    total: Option<u64>,
    read: u64,
    error: Option<PyErr>,
}

impl Hooks {
    pub fn new(progress: Option<Py<PyAny>>, total: Option<u64>) -> Self {
        Hooks {
            progress,
            total,
            read: 0,
            error: None,
        }
    }

    fn after(&mut self, rows: u64) -> exemplar::Result<()> {
        self.read += rows;
        let (read, total) = (self.read, self.total);
        let r = Python::attach(|py| -> PyResult<()> {
            py.check_signals()?;
            if let Some(cb) = &self.progress {
                cb.call1(py, (read, total))?;
            }
            Ok(())
        });
        r.map_err(|e| {
            self.error = Some(e);
            Error::param("progress", "stopped by a Python exception")
        })
    }

    /// The Python exception that stopped the work, else the library error as one.
    pub fn raise(&mut self, py: Python<'_>, e: Error) -> PyErr {
        self.error.take().unwrap_or_else(|| to_py(py, e))
    }
}

/// A [`BatchSource`] with [`Hooks`] after each read.
struct Tracked<'a, S: ?Sized> {
    inner: &'a mut S,
    hooks: &'a mut Hooks,
}

impl<S: BatchSource + ?Sized> BatchSource for Tracked<'_, S> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn next_batch(&mut self, max_rows: usize) -> exemplar::Result<Option<ActivationBatch>> {
        let b = self.inner.next_batch(max_rows)?;
        if let Some(b) = &b {
            self.hooks.after(b.rows() as u64)?;
        }
        Ok(b)
    }
    fn position(&self) -> serde_json::Value {
        self.inner.position()
    }
    fn seek(&mut self, position: &serde_json::Value) -> exemplar::Result<()> {
        self.inner.seek(position)
    }
    fn locate(&self, e: Error) -> Error {
        self.inner.locate(e)
    }
    fn record(&self, info: &mut exemplar::dictionary::BuildInfo) {
        self.inner.record(info)
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs: files or arrays

/// `inputs` of `build`/`calibrate`: activation files, or in-memory arrays.
pub enum Inputs {
    Files(Vec<PathBuf>),
    Arrays(Vec<HostRows>),
}

fn is_path(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")?)
}

/// A path, an array, or a list/tuple of either (not mixed).
pub fn inputs(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Inputs> {
    let items: Vec<Bound<'_, PyAny>> =
        if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
            obj.try_iter()?.collect::<PyResult<_>>()?
        } else {
            vec![obj.clone()]
        };
    if items.is_empty() {
        return Err(to_py(py, Error::EmptyInput("no input files".into())));
    }
    let paths = items.iter().map(is_path).collect::<PyResult<Vec<bool>>>()?;
    if paths.iter().all(|&p| p) {
        let files = items
            .iter()
            .map(|i| i.extract::<PathBuf>())
            .collect::<PyResult<_>>()?;
        return Ok(Inputs::Files(files));
    }
    if paths.iter().any(|&p| p) {
        return Err(invalid(
            py,
            "inputs mixes activation files and arrays: give files, or arrays",
        ));
    }
    let mut arrays = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match extract(py, item, &format!("inputs[{i}]"))? {
            Input::Host(h) => arrays.push(h),
            #[cfg(feature = "cuda")]
            Input::Cuda(_) => {
                return Err(invalid(
                    py,
                    format!(
                        "inputs[{i}] is a CUDA tensor; builds read host memory: pass x.cpu() \
                         (Dictionary.assign reads CUDA tensors in place)"
                    ),
                ))
            }
        }
    }
    if let Some((i, a)) = arrays
        .iter()
        .enumerate()
        .find(|(_, a)| a.dim != arrays[0].dim)
    {
        return Err(to_py(
            py,
            Error::DimensionMismatch {
                what: format!("inputs[{i}]"),
                expected: arrays[0].dim,
                found: a.dim,
            },
        ));
    }
    Ok(Inputs::Arrays(arrays))
}

/// Batches of in-memory arrays, cut as the CLI cuts files of the same rows (`RowFeed`).
struct ArraySource {
    arrays: Vec<HostRows>,
    names: Vec<String>,
    feed: RowFeed,
    batch_size: usize,
    array: usize,
    row: usize,
    emitted: u64,
}

impl ArraySource {
    fn new(arrays: Vec<HostRows>, batch_size: usize, skip_nonfinite: bool) -> Self {
        let dim = arrays[0].dim;
        let names = (0..arrays.len()).map(|i| format!("<array {i}>")).collect();
        ArraySource {
            arrays,
            names,
            feed: RowFeed::new(dim, skip_nonfinite),
            batch_size,
            array: 0,
            row: 0,
            emitted: 0,
        }
    }

    fn total_rows(&self) -> u64 {
        self.arrays.iter().map(|a| a.rows as u64).sum()
    }

    /// Pushes up to `want` more rows of the arrays into the feed (with the GIL).
    fn pull(&mut self, want: usize) -> exemplar::Result<()> {
        while self.array < self.arrays.len() && self.feed.buffered() < want {
            let a = &self.arrays[self.array];
            let n = (a.rows - self.row).min((want - self.feed.buffered()).max(1024));
            if n > 0 {
                let (data, raw) = Python::attach(|py| a.read(py, self.row, n, true))
                    .map_err(|e| Error::param("inputs", e.to_string()))?;
                self.feed.push(
                    &self.names[self.array],
                    self.row as u64,
                    self.array,
                    a.elem,
                    raw,
                    data,
                )?;
                self.row += n;
            }
            if self.row == a.rows {
                self.array += 1;
                self.row = 0;
            }
        }
        Ok(())
    }
}

impl BatchSource for ArraySource {
    fn dim(&self) -> usize {
        self.feed.dim()
    }
    fn next_batch(&mut self, max_rows: usize) -> exemplar::Result<Option<ActivationBatch>> {
        if self.batch_size == 0 {
            return Err(Error::param("batch size", "must be at least 1"));
        }
        let want = max_rows.min(self.batch_size);
        self.pull(want)?;
        match self.feed.take(want) {
            Some(b) => {
                self.emitted += b.rows() as u64;
                Ok(Some(b))
            }
            None => {
                self.feed.finish_trailing();
                Ok(None)
            }
        }
    }
    fn position(&self) -> serde_json::Value {
        serde_json::json!({ "rows": self.emitted })
    }
    fn seek(&mut self, _: &serde_json::Value) -> exemplar::Result<()> {
        Err(Error::param(
            "resume",
            "builds from arrays are not checkpointed",
        ))
    }
    fn locate(&self, e: Error) -> Error {
        self.feed.locate_error(e)
    }
    fn record(&self, info: &mut exemplar::dictionary::BuildInfo) {
        info.inputs = self.names.clone();
        info.input_fingerprint = Some(self.feed.fingerprint());
    }
}

fn percentile_method(py: Python<'_>, name: &str) -> PyResult<PercentileMethod> {
    PercentileMethod::parse(name).ok_or_else(|| {
        invalid(
            py,
            format!("invalid percentile_method: `{name}` is not linear or nearest-rank"),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Calibration

/// A calibration: the center and θ (see `exemplar calibrate`).
#[pyclass(name = "Calibration", module = "exemplar", frozen)]
pub struct PyCalibration {
    pub inner: Calibration,
    inputs: Vec<String>,
    fingerprint: Option<String>,
}

#[pymethods]
impl PyCalibration {
    /// Loads a calibration file written by `exemplar calibrate` or `Calibration.save`.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let (inner, inputs, fingerprint) = py
            .detach(|| -> exemplar::Result<_> {
                let cal = Calibration::load(&path)?;
                let file = exemplar::tensorfile::TensorFile::open(&path)?;
                let header: serde_json::Value = file
                    .metadata()
                    .get("exemplar")
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or_default();
                let inputs = header["inputs"]
                    .as_array()
                    .map(|v| {
                        v.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let fp = header["input_fingerprint"].as_str().map(String::from);
                Ok((cal, inputs, fp))
            })
            .py_err(py)?;
        Ok(PyCalibration {
            inner,
            inputs,
            fingerprint,
        })
    }

    /// Writes the calibration file (atomically; an existing file only with `force=True`).
    #[pyo3(signature = (path, *, force = false))]
    fn save(&self, py: Python<'_>, path: PathBuf, force: bool) -> PyResult<()> {
        py.detach(|| {
            self.inner
                .save(&path, &self.inputs, self.fingerprint.as_deref(), force)
        })
        .py_err(py)
    }

    /// The center c, float32 (D,).
    #[getter]
    fn center<'py>(&self, py: Python<'py>) -> Bound<'py, numpy::PyArray1<f32>> {
        numpy::PyArray1::from_slice(py, &self.inner.center)
    }
    /// θ, the cosine-distance threshold.
    #[getter]
    fn theta(&self) -> f64 {
        self.inner.theta
    }
    #[getter]
    fn percentile(&self) -> f64 {
        self.inner.percentile
    }
    /// `linear` or `nearest-rank`.
    #[getter]
    fn percentile_method(&self) -> &'static str {
        self.inner.method.as_str()
    }
    /// Rows used (whole batches).
    #[getter]
    fn n_activations(&self) -> u64 {
        self.inner.n_activations
    }
    #[getter]
    fn batch_size(&self) -> usize {
        self.inner.batch_size
    }
    /// The percentile of each calibration batch (θ is their mean), float64.
    #[getter]
    fn batch_percentiles<'py>(&self, py: Python<'py>) -> Bound<'py, numpy::PyArray1<f64>> {
        numpy::PyArray1::from_slice(py, &self.inner.batch_percentiles)
    }
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    /// The inputs recorded (file paths, or `<array i>`).
    #[getter]
    fn inputs(&self) -> Vec<String> {
        self.inputs.clone()
    }
    /// SHA-256 of the rows read (docs/format.md).
    #[getter]
    fn input_fingerprint(&self) -> Option<String> {
        self.fingerprint.clone()
    }
    fn __repr__(&self) -> String {
        format!(
            "Calibration(θ={:.6}, p{} {}, {} rows in batches of {}, D={})",
            self.inner.theta,
            self.inner.percentile,
            self.inner.method.as_str(),
            self.inner.n_activations,
            self.inner.batch_size,
            self.inner.dim()
        )
    }
}

/// `exemplar calibrate`: the center and θ from the first rows of the inputs.
#[pyfunction]
#[pyo3(signature = (inputs, *, percentile, batch_size = 16_384, calibration_activations = 200_000,
    percentile_method = "linear", standardize = false, tensor = None, skip_nonfinite = false,
    device = "auto", progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn calibrate(
    py: Python<'_>,
    inputs: &Bound<'_, PyAny>,
    percentile: f64,
    batch_size: usize,
    calibration_activations: u64,
    percentile_method: &str,
    standardize: bool,
    tensor: Option<String>,
    skip_nonfinite: bool,
    device: &str,
    progress: Option<Py<PyAny>>,
) -> PyResult<PyCalibration> {
    let method = self::percentile_method(py, percentile_method)?;
    let input = self::inputs(py, inputs)?;
    let dev = backend(py, device)?;
    let mut hooks = Hooks::new(progress, Some(calibration_activations));
    if batch_size == 0 {
        return Err(to_py(py, Error::param("batch size", "must be at least 1")));
    }
    let r = py.detach(|| -> exemplar::Result<_> {
        let (mut cal, names, fp) = match input {
            Inputs::Files(paths) => {
                let mut stream = ActivationStream::open(
                    &paths,
                    StreamOptions {
                        tensor,
                        skip_nonfinite,
                    },
                )?;
                let (cal, _) = {
                    let mut rows = pipeline::RowBatches::new(&mut stream, batch_size);
                    let mut src = Tracked {
                        inner: &mut rows,
                        hooks: &mut hooks,
                    };
                    pipeline::calibrate_source(
                        &dev,
                        &mut src,
                        percentile,
                        method,
                        calibration_activations,
                        standardize,
                    )?
                };
                let names = paths.iter().map(|p| p.display().to_string()).collect();
                (cal, names, stream.fingerprint())
            }
            Inputs::Arrays(arrays) => {
                let mut arr = ArraySource::new(arrays, batch_size, skip_nonfinite);
                let (cal, _) = {
                    let mut src = Tracked {
                        inner: &mut arr,
                        hooks: &mut hooks,
                    };
                    pipeline::calibrate_source(
                        &dev,
                        &mut src,
                        percentile,
                        method,
                        calibration_activations,
                        standardize,
                    )?
                };
                (cal, arr.names.clone(), arr.feed.fingerprint())
            }
        };
        // As `exemplar calibrate`: the batch size asked for is recorded (a build calibrating
        // inline records its largest calibration batch).
        cal.batch_size = batch_size;
        Ok((cal, names, fp))
    });
    match r {
        Ok((inner, inputs, fp)) => Ok(PyCalibration {
            inner,
            inputs,
            fingerprint: Some(fp),
        }),
        Err(e) => Err(hooks.raise(py, e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Build settings (the flags of `exemplar build`)

/// The flags of `exemplar build` that shape a dictionary.
pub struct Flags {
    pub percentile: Option<f64>,
    pub calibration: Option<Calibration>,
    pub calibration_activations: u64,
    pub method: PercentileMethod,
    pub standardize: bool,
    pub batch_size: usize,
    pub documents: bool,
    pub saturation_window: Option<u64>,
    pub max_activations: Option<u64>,
    pub max_tokens: Option<u64>,
    pub strict_order: bool,
    pub seed: u64,
    pub examples: usize,
    pub reservoir: usize,
    pub min_members: u64,
    pub merge_close: bool,
    pub merge_threshold: Option<f64>,
    pub model_name: Option<String>,
    pub hook: Option<String>,
    pub assignments: bool,
}

impl Flags {
    /// The calibration and plan `exemplar build` makes of its flags.
    fn plan(&self) -> (CalibrationSpec, BuildPlan) {
        let cal = match (&self.calibration, self.percentile) {
            (Some(c), _) => CalibrationSpec::Fixed(c.clone()),
            (None, Some(p)) => CalibrationSpec::Inline {
                percentile: p,
                method: self.method,
                activations: self.calibration_activations,
                standardize: self.standardize,
            },
            (None, None) => unreachable!("checked by the caller"),
        };
        let plan = BuildPlan {
            config: BuildConfig {
                semantics: if self.strict_order {
                    Semantics::StrictOrder
                } else {
                    Semantics::TwoPhase
                },
                saturation_window: self.saturation_window,
                seed: self.seed,
                examples_per_partition: self.examples,
                reservoir_size: self.reservoir,
                merge_threshold: match (&cal, self.merge_close) {
                    (_, false) => None,
                    (_, true) if self.merge_threshold.is_some() => self.merge_threshold,
                    (CalibrationSpec::Fixed(c), true) => Some(c.theta),
                    // θ is known only after calibration: the driver resolves NaN to it.
                    (CalibrationSpec::Inline { .. }, true) => Some(f64::NAN),
                },
                record_assignments: self.assignments.then_some(0),
            },
            batch_size: if self.documents { 0 } else { self.batch_size },
            max_activations: self.max_activations,
            max_tokens: self.max_tokens,
            min_members: self.min_members,
            model: self.model_name.clone(),
            hook: self.hook.clone(),
            total_rows: None,
        };
        (cal, plan)
    }
}

/// `calibration=`: a `Calibration`, a calibration file, or None; exclusive with `percentile=`.
fn calibration_arg(
    py: Python<'_>,
    percentile: Option<f64>,
    calibration: Option<&Bound<'_, PyAny>>,
    merge_threshold: Option<f64>,
    merge_close: bool,
) -> PyResult<Option<Calibration>> {
    if merge_threshold.is_some() && !merge_close {
        return Err(invalid(py, "merge_threshold needs merge_close=True"));
    }
    let cal = match calibration {
        None => None,
        Some(c) if c.is_none() => None,
        Some(c) => match c.cast::<PyCalibration>() {
            Ok(pc) => Some(pc.get().inner.clone()),
            Err(_) => {
                let path: PathBuf = c.extract()?;
                Some(py.detach(|| Calibration::load(&path)).py_err(py)?)
            }
        },
    };
    match (&cal, percentile) {
        (Some(_), Some(_)) => Err(invalid(
            py,
            "give calibration= or percentile=, not both (percentile calibrates inline)",
        )),
        (None, None) => Err(invalid(
            py,
            "give percentile= (calibrate inline on the first rows) or calibration= (a \
             Calibration or a calibration file)",
        )),
        _ => Ok(cal),
    }
}

/// `exemplar build` over activation files or arrays.
#[pyfunction]
#[pyo3(signature = (inputs, *, percentile = None, calibration = None,
    calibration_activations = 200_000, percentile_method = "linear", standardize = false,
    batch_size = 16_384, batch_documents = None, saturation_window = Some(1), max_activations = None,
    max_tokens = None, strict_order = false, seed = 0, examples = 10, reservoir = 30,
    min_members = 1, merge_close = false, merge_threshold = None, model_name = None,
    hook = None, tensor = None, skip_nonfinite = false, device = "auto",
    return_assignments = false, progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn build<'py>(
    py: Python<'py>,
    inputs: &Bound<'py, PyAny>,
    percentile: Option<f64>,
    calibration: Option<&Bound<'py, PyAny>>,
    calibration_activations: u64,
    percentile_method: &str,
    standardize: bool,
    batch_size: usize,
    batch_documents: Option<usize>,
    saturation_window: Option<u64>,
    max_activations: Option<u64>,
    max_tokens: Option<u64>,
    strict_order: bool,
    seed: u64,
    examples: usize,
    reservoir: usize,
    min_members: u64,
    merge_close: bool,
    merge_threshold: Option<f64>,
    model_name: Option<String>,
    hook: Option<String>,
    tensor: Option<String>,
    skip_nonfinite: bool,
    device: &str,
    return_assignments: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let method = self::percentile_method(py, percentile_method)?;
    let cal = calibration_arg(py, percentile, calibration, merge_threshold, merge_close)?;
    let input = self::inputs(py, inputs)?;
    if batch_documents.is_some() && matches!(input, Inputs::Arrays(_)) {
        return Err(invalid(
            py,
            "batch_documents needs activation files with provenance sidecars, not arrays",
        ));
    }
    let flags = Flags {
        percentile,
        calibration: cal,
        calibration_activations,
        method,
        standardize,
        batch_size,
        documents: batch_documents.is_some(),
        saturation_window,
        max_activations,
        max_tokens,
        strict_order,
        seed,
        examples,
        reservoir,
        min_members,
        merge_close,
        merge_threshold,
        model_name,
        hook,
        assignments: return_assignments,
    };
    let dev = backend(py, device)?;
    let (spec, mut plan) = flags.plan();
    let mut hooks = Hooks::new(progress, None);
    let r = py.detach(|| -> exemplar::Result<BuildOutput> {
        match input {
            Inputs::Files(paths) => {
                let mut stream = ActivationStream::open(
                    &paths,
                    StreamOptions {
                        tensor,
                        skip_nonfinite,
                    },
                )?;
                plan.total_rows = Some(stream.total_rows());
                hooks.total = Some(stream.total_rows());
                if let CalibrationSpec::Fixed(c) = &spec {
                    if c.dim() != stream.dim() {
                        return Err(Error::DimensionMismatch {
                            what: format!("activations {} (calibration)", paths[0].display()),
                            expected: c.dim(),
                            found: stream.dim(),
                        });
                    }
                }
                match batch_documents {
                    Some(n) => {
                        let mut docs = pipeline::DocumentBatches::new(&mut stream, n)?;
                        let mut src = Tracked {
                            inner: &mut docs,
                            hooks: &mut hooks,
                        };
                        pipeline::run_build(&dev, &mut src, spec, &plan, None)
                    }
                    None => {
                        let mut rows = pipeline::RowBatches::new(&mut stream, batch_size);
                        let mut src = Tracked {
                            inner: &mut rows,
                            hooks: &mut hooks,
                        };
                        pipeline::run_build(&dev, &mut src, spec, &plan, None)
                    }
                }
            }
            Inputs::Arrays(arrays) => {
                let mut arr = ArraySource::new(arrays, batch_size, skip_nonfinite);
                plan.total_rows = Some(arr.total_rows());
                hooks.total = Some(arr.total_rows());
                if let CalibrationSpec::Fixed(c) = &spec {
                    if c.dim() != arr.dim() {
                        return Err(Error::DimensionMismatch {
                            what: "inputs[0] (calibration)".into(),
                            expected: c.dim(),
                            found: arr.dim(),
                        });
                    }
                }
                let mut src = Tracked {
                    inner: &mut arr,
                    hooks: &mut hooks,
                };
                pipeline::run_build(&dev, &mut src, spec, &plan, None)
            }
        }
    });
    let out = r.map_err(|e| hooks.raise(py, e))?;
    let dict = Bound::new(py, PyDictionary::new(out.dictionary))?.into_any();
    match out.assignments {
        Some(ids) if return_assignments => {
            let ids = numpy::PyArray1::from_vec(py, ids).into_any();
            Ok(PyTuple::new(py, [dict, ids])?.into_any())
        }
        _ => Ok(dict),
    }
}

// ---------------------------------------------------------------------------------------------
// The streaming builder

/// Main side → worker.
enum ToWorker {
    /// A batch, and the input fingerprint after it.
    Batch(ActivationBatch, String),
    /// The end of the input, and the final fingerprint.
    End(String),
}

/// Worker → main side: ready for the next batch of at most this many rows.
struct Ready(usize);

/// The worker's [`BatchSource`]: batches pushed by `Builder.add`, one at a time; each request
/// tells the main side it may cut the next batch (so `add` returns once its rows are
/// clustered).
struct ChannelSource {
    dim: usize,
    rx: Receiver<ToWorker>,
    tx: SyncSender<Ready>,
    emitted: u64,
    fingerprint: String,
    /// The input has ended (asked again, e.g. after an inline calibration read it all, the
    /// source stays at its end without asking the main side).
    ended: bool,
}

impl BatchSource for ChannelSource {
    fn dim(&self) -> usize {
        self.dim
    }
    fn next_batch(&mut self, max_rows: usize) -> exemplar::Result<Option<ActivationBatch>> {
        if self.ended || self.tx.send(Ready(max_rows)).is_err() {
            self.ended = true;
            return Ok(None);
        }
        match self.rx.recv() {
            Ok(ToWorker::Batch(b, fp)) => {
                self.dim = b.dim;
                self.fingerprint = fp;
                self.emitted += b.rows() as u64;
                Ok(Some(b))
            }
            Ok(ToWorker::End(fp)) => {
                self.fingerprint = fp;
                self.ended = true;
                Ok(None)
            }
            // The Builder was dropped: end the build.
            Err(_) => {
                self.ended = true;
                Ok(None)
            }
        }
    }
    fn position(&self) -> serde_json::Value {
        serde_json::json!({ "rows": self.emitted })
    }
    fn seek(&mut self, _: &serde_json::Value) -> exemplar::Result<()> {
        Err(Error::param(
            "resume",
            "streaming builds are not checkpointed",
        ))
    }
    fn record(&self, info: &mut exemplar::dictionary::BuildInfo) {
        info.inputs = vec!["<Builder.add>".into()];
        info.input_fingerprint = Some(self.fingerprint.clone());
    }
}

/// Where the worker stands, as the main side knows it.
enum State {
    /// Waiting for a batch of at most this many rows.
    Ready(usize),
    /// A batch was sent and its reply not yet received (after a Ctrl-C while waiting).
    Busy,
    /// The build stopped (saturation or a budget): its result, until `finish` takes it.
    Stopped(Option<Box<BuildOutput>>),
    /// The build failed with this message.
    Failed(String),
}

/// A streaming build fed from a Python loop (see docs/python.md).
#[pyclass(name = "Builder", module = "exemplar")]
pub struct PyBuilder {
    tx: Option<Sender<ToWorker>>,
    /// The worker's requests (taken out while waiting without the GIL).
    rx: Mutex<Option<Receiver<Ready>>>,
    worker: Option<std::thread::JoinHandle<exemplar::Result<BuildOutput>>>,
    state: State,
    feed: Option<RowFeed>,
    dim: Option<usize>,
    batch_size: usize,
    skip_nonfinite: bool,
    adds: u64,
    batches: u64,
    /// Rows sent to the clustering (calibration reads included).
    sent: u64,
    progress: Option<Py<PyAny>>,
    finished: bool,
}

impl PyBuilder {
    /// Waits (without the GIL, answering Ctrl-C) for the worker's next request or its end.
    fn wait(&mut self, py: Python<'_>) -> PyResult<()> {
        self.state = State::Busy;
        loop {
            let rx = self
                .rx
                .lock()
                .expect("not poisoned")
                .take()
                .expect("one waiter at a time");
            let (rx, r) = py.detach(move || {
                let r = rx.recv_timeout(Duration::from_millis(100));
                (rx, r)
            });
            *self.rx.lock().expect("not poisoned") = Some(rx);
            match r {
                Ok(Ready(m)) => {
                    self.state = State::Ready(m);
                    return Ok(());
                }
                Err(RecvTimeoutError::Timeout) => py.check_signals()?,
                Err(RecvTimeoutError::Disconnected) => {
                    let handle = self.worker.take().expect("the worker ran");
                    let result = py.detach(|| handle.join()).unwrap_or_else(|_| {
                        Err(Error::param("build", "the build thread panicked"))
                    });
                    return match result {
                        Ok(out) => {
                            self.state = State::Stopped(Some(Box::new(out)));
                            Ok(())
                        }
                        Err(e) => {
                            let e = match &self.feed {
                                Some(f) => f.locate_error(e),
                                None => e,
                            };
                            self.state = State::Failed(crate::errors::message(&e));
                            Err(to_py(py, e))
                        }
                    };
                }
            }
        }
    }

    /// Brings a state left `Busy` by a Ctrl-C up to date; raises a failed build's error.
    fn settle(&mut self, py: Python<'_>) -> PyResult<()> {
        if matches!(self.state, State::Busy) {
            self.wait(py)?;
        }
        if let State::Failed(m) = &self.state {
            return Err(invalid(
                py,
                format!("this Builder stopped with an error ({m}); start a new one"),
            ));
        }
        Ok(())
    }

    /// Sends batches while the worker wants them and the feed holds enough rows (`flush`: any
    /// rows left).
    fn pump(&mut self, py: Python<'_>, flush: bool) -> PyResult<()> {
        while let State::Ready(m) = self.state {
            let feed = self.feed.as_mut().expect("a feed once rows came");
            let want = m.min(self.batch_size);
            if feed.buffered() == 0 || (!flush && feed.buffered() < want) {
                return Ok(());
            }
            let batch = feed.take(want).expect("rows are buffered");
            self.sent += (batch.rows() as u64) + batch.skipped_nonfinite;
            let fp = feed.fingerprint();
            let tx = self.tx.as_ref().expect("the worker runs");
            if tx.send(ToWorker::Batch(batch, fp)).is_err() {
                // The worker ended: its result comes through `wait`.
            }
            self.batches += 1;
            self.wait(py)?;
            if let Some(cb) = &self.progress {
                cb.call1(py, (self.sent, py.None()))?;
            }
        }
        Ok(())
    }
}

#[pymethods]
impl PyBuilder {
    #[new]
    #[pyo3(signature = (*, percentile = None, calibration = None,
        calibration_activations = 200_000, percentile_method = "linear", standardize = false,
        batch_size = 16_384, saturation_window = Some(1), max_activations = None, max_tokens = None,
        strict_order = false, seed = 0, examples = 10, reservoir = 30, min_members = 1,
        merge_close = false, merge_threshold = None, model_name = None, hook = None,
        skip_nonfinite = false, device = "auto", progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        percentile: Option<f64>,
        calibration: Option<&Bound<'_, PyAny>>,
        calibration_activations: u64,
        percentile_method: &str,
        standardize: bool,
        batch_size: usize,
        saturation_window: Option<u64>,
        max_activations: Option<u64>,
        max_tokens: Option<u64>,
        strict_order: bool,
        seed: u64,
        examples: usize,
        reservoir: usize,
        min_members: u64,
        merge_close: bool,
        merge_threshold: Option<f64>,
        model_name: Option<String>,
        hook: Option<String>,
        skip_nonfinite: bool,
        device: &str,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let method = self::percentile_method(py, percentile_method)?;
        let cal = calibration_arg(py, percentile, calibration, merge_threshold, merge_close)?;
        if batch_size == 0 {
            return Err(to_py(py, Error::param("batch size", "must be at least 1")));
        }
        let dim = cal.as_ref().map(|c| c.dim());
        let flags = Flags {
            percentile,
            calibration: cal,
            calibration_activations,
            method,
            standardize,
            batch_size,
            documents: false,
            saturation_window,
            max_activations,
            max_tokens,
            strict_order,
            seed,
            examples,
            reservoir,
            min_members,
            merge_close,
            merge_threshold,
            model_name,
            hook,
            assignments: false,
        };
        let dev = backend(py, device)?;
        let (spec, plan) = flags.plan();
        // The builder's own checks of its settings, now rather than after the calibration.
        let mut probe = plan.config.clone();
        if probe.merge_threshold.is_some_and(f64::is_nan) {
            probe.merge_threshold = Some(1.0);
        }
        exemplar::Builder::new(vec![1.0], 1.0, probe).py_err(py)?;
        let (to_worker, from_main) = mpsc::channel::<ToWorker>();
        let (to_main, from_worker) = mpsc::sync_channel::<Ready>(1);
        let worker = std::thread::Builder::new()
            .name("exemplar-builder".into())
            .spawn(move || {
                let mut src = ChannelSource {
                    dim: dim.unwrap_or(0),
                    rx: from_main,
                    tx: to_main,
                    emitted: 0,
                    fingerprint: String::new(),
                    ended: false,
                };
                pipeline::run_build(&dev, &mut src, spec, &plan, None)
            })
            .map_err(|e| invalid(py, format!("cannot start the build thread: {e}")))?;
        let mut b = PyBuilder {
            tx: Some(to_worker),
            rx: Mutex::new(Some(from_worker)),
            worker: Some(worker),
            state: State::Busy,
            feed: None,
            dim,
            batch_size,
            skip_nonfinite,
            adds: 0,
            batches: 0,
            sent: 0,
            progress,
            finished: false,
        };
        // Bad settings fail here, before any row.
        b.wait(py)?;
        if let State::Stopped(_) = b.state {
            return Err(to_py(
                py,
                Error::EmptyInput("the build stopped before any row".into()),
            ));
        }
        Ok(b)
    }

    /// Adds rows `x` (shape `(..., D)`; numpy float32/float16/bfloat16 or a CPU torch tensor),
    /// clustering every full batch. Returns whether the build wants more rows: False once it
    /// has saturated or reached a budget (rows added after that are not clustered).
    fn add(&mut self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<bool> {
        if self.finished {
            return Err(invalid(py, "finish() was already called"));
        }
        self.settle(py)?;
        let name = format!("add() call {}", self.adds);
        let rows =
            match extract(py, x, &name)? {
                Input::Host(h) => h,
                #[cfg(feature = "cuda")]
                Input::Cuda(_) => return Err(invalid(
                    py,
                    "Builder.add: x is a CUDA tensor; the builder reads host memory: pass x.cpu() \
                     (Dictionary.assign reads CUDA tensors in place)",
                )),
            };
        if let Some(d) = self.dim {
            if rows.dim != d {
                return Err(to_py(
                    py,
                    Error::DimensionMismatch {
                        what: name,
                        expected: d,
                        found: rows.dim,
                    },
                ));
            }
        }
        if !matches!(self.state, State::Ready(_)) {
            self.adds += 1;
            return Ok(false);
        }
        let (data, raw) = rows.read(py, 0, rows.rows, true)?;
        let skip = self.skip_nonfinite;
        let feed = self
            .feed
            .get_or_insert_with(|| RowFeed::new(rows.dim, skip));
        // One input for the fingerprint per dtype: a stream of one dtype hashes as one file.
        feed.push(&name, 0, rows.elem as usize, rows.elem, raw, data)
            .py_err(py)?;
        self.dim = Some(rows.dim);
        self.adds += 1;
        self.pump(py, false)?;
        Ok(matches!(self.state, State::Ready(_)))
    }

    /// Clusters the rows still buffered (the last, short batch) and returns the dictionary.
    fn finish(&mut self, py: Python<'_>) -> PyResult<PyDictionary> {
        if self.finished {
            return Err(invalid(py, "finish() was already called"));
        }
        self.settle(py)?;
        if self.feed.is_none() && matches!(self.state, State::Ready(_)) {
            return Err(to_py(
                py,
                Error::EmptyInput("no rows to build from (call add() first)".into()),
            ));
        }
        self.pump(py, true)?;
        if let State::Ready(_) = self.state {
            let feed = self.feed.as_mut().expect("rows came");
            feed.finish_trailing();
            let fp = feed.fingerprint();
            let _ = self.tx.as_ref().expect("running").send(ToWorker::End(fp));
            self.wait(py)?;
        }
        self.finished = true;
        self.tx = None;
        match &mut self.state {
            State::Stopped(out) => {
                let out = out.take().expect("taken once");
                Ok(PyDictionary::new(out.dictionary))
            }
            State::Failed(m) => Err(invalid(py, m.clone())),
            _ => Err(invalid(py, "the build did not stop")),
        }
    }

    /// False once the build has stopped (saturated, or a budget reached).
    #[getter]
    fn wants_more(&self) -> bool {
        matches!(self.state, State::Ready(_) | State::Busy) && !self.finished
    }

    /// Rows added so far (skipped non-finite rows included; not those added after the stop).
    #[getter]
    fn rows(&self) -> u64 {
        self.feed.as_ref().map_or(0, |f| f.rows_pushed())
    }

    /// Batches sent to the clustering so far.
    #[getter]
    fn batches(&self) -> u64 {
        self.batches
    }

    /// Width D (None before the first rows or calibration).
    #[getter]
    fn dim(&self) -> Option<usize> {
        self.dim
    }

    fn __repr__(&self) -> String {
        let state = match &self.state {
            State::Ready(_) | State::Busy if !self.finished => "running",
            State::Stopped(_) => "stopped",
            State::Failed(_) => "failed",
            _ => "finished",
        };
        format!(
            "Builder({state}, {} rows added in {} calls, {} batches of {})",
            self.rows(),
            self.adds,
            self.batches,
            self.batch_size
        )
    }
}
