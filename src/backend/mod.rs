//! Compute backends. The CPU backend is the oracle: [`cpu`] holds the twins of the CUDA
//! kernels (`nearest`, `leaders`, `calibrate`; the twins of `prepare` and `stats` are
//! [`crate::geometry::directions`] and the builder's running sums), built on [`crate::linalg`]'s
//! GEMM and canonical f64 dot product. Every CUDA kernel has its CPU twin, with the same
//! semantics, and a parity test against it. `cuda` (feature `cuda`) holds the launchers.
//!
//! [`Backend`] is what the builder, calibration and assignment run on. Its GPU steps return the
//! same ids and exact similarities as the CPU (see `docs/semantics.md`), so a dictionary built
//! on either backend is the same.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

pub use cpu::LeaderDecision;

use crate::error::{Error, Result};
#[cfg(feature = "cuda")]
use std::sync::Arc;

/// Candidate rows prepared for a backend (see [`Backend::candidates`]).
pub struct Candidates<'a> {
    host: &'a [f32],
    d: usize,
    #[cfg(feature = "cuda")]
    device: Option<cuda::GrowableRows>,
}

/// Which backend the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU.
    Cpu,
    /// CUDA device 0; an error when none is usable.
    Cuda,
    /// CUDA when a device is usable, otherwise the CPU (with the reason).
    #[default]
    Auto,
}

impl DeviceChoice {
    /// Parses `cpu`, `cuda` or `auto`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            "auto" => Ok(DeviceChoice::Auto),
            _ => Err(Error::param(
                "device",
                format!("`{s}` is not cpu, cuda or auto"),
            )),
        }
    }
}

/// A compute backend.
#[derive(Clone, Default)]
pub enum Backend {
    /// The CPU (multithreaded GEMM; the oracle).
    #[default]
    Cpu,
    /// A CUDA device.
    #[cfg(feature = "cuda")]
    Cuda(Arc<cuda::CudaDevice>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Backend {
    /// Selects a backend. With [`DeviceChoice::Auto`] a missing GPU is not an error: the CPU is
    /// chosen and the second value says why, so the caller can tell the user.
    pub fn select(choice: DeviceChoice) -> Result<(Backend, Option<String>)> {
        match choice {
            DeviceChoice::Cpu => Ok((Backend::Cpu, None)),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda => Ok((Backend::Cuda(Arc::new(cuda::CudaDevice::open(0)?)), None)),
            #[cfg(not(feature = "cuda"))]
            DeviceChoice::Cuda => Err(Error::CudaUnavailable(
                "this build of exemplar has no `cuda` feature".into(),
            )),
            #[cfg(feature = "cuda")]
            DeviceChoice::Auto => match cuda::CudaDevice::open(0) {
                Ok(dev) => Ok((Backend::Cuda(Arc::new(dev)), None)),
                Err(Error::CudaUnavailable(why)) => Ok((
                    Backend::Cpu,
                    Some(format!("no CUDA device ({why}); using the CPU")),
                )),
                Err(e) => Err(e),
            },
            #[cfg(not(feature = "cuda"))]
            DeviceChoice::Auto => Ok((
                Backend::Cpu,
                Some("built without the `cuda` feature; using the CPU".into()),
            )),
        }
    }

    /// Bytes copied host → device and device → host by this backend so far (`None` on the
    /// CPU).
    pub fn transferred_bytes(&self) -> Option<(u64, u64)> {
        match self {
            Backend::Cpu => None,
            #[cfg(feature = "cuda")]
            Backend::Cuda(d) => Some(d.transferred_bytes()),
        }
    }

    /// What the GPU's nearest searches did so far: rows, rows the screen left ambiguous, rows
    /// re-checked over all candidates (`None` on the CPU).
    pub fn nearest_totals(&self) -> Option<(u64, u64, u64)> {
        match self {
            Backend::Cpu => None,
            #[cfg(feature = "cuda")]
            Backend::Cuda(d) => {
                let t = d.nearest_totals();
                Some((t.rows, t.ambiguous, t.rechecked))
            }
        }
    }

    /// Rows the GPU prepared straight from torch memory so far (`None` on the CPU).
    pub fn rows_read_in_place(&self) -> Option<u64> {
        match self {
            Backend::Cpu => None,
            #[cfg(feature = "cuda")]
            Backend::Cuda(d) => Some(d.rows_read_in_place()),
        }
    }

    /// Whether this is a CUDA device.
    pub fn is_cuda(&self) -> bool {
        !matches!(self, Backend::Cpu)
    }

    /// "cpu", or "cuda (device name, sm_XY)": recorded in the dictionary's metadata.
    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu => "cpu".into(),
            #[cfg(feature = "cuda")]
            Backend::Cuda(d) => format!(
                "cuda ({}, sm_{}{})",
                d.name(),
                d.compute_capability().0,
                d.compute_capability().1
            ),
        }
    }

    /// Candidates for many [`Backend::nearest_among`] calls, prepared once: on a GPU they are
    /// copied to the device here and stay there.
    pub fn candidates<'a>(&self, host: &'a [f32], d: usize) -> Result<Candidates<'a>> {
        if d == 0 || host.is_empty() || host.len() % d != 0 {
            return Err(Error::param(
                "candidates",
                format!("{} values are not k ≥ 1 rows of width {d}", host.len()),
            ));
        }
        Ok(Candidates {
            host,
            d,
            #[cfg(feature = "cuda")]
            device: match self {
                Backend::Cuda(dev) => {
                    let mut g = dev.growable_rows(d)?;
                    dev.append_rows(&mut g, host)?;
                    Some(g)
                }
                Backend::Cpu => None,
            },
        })
    }

    /// The exact nearest of each unit row of `u` (`n × d`) among `cands`: ids and f64
    /// similarities, identical on every backend.
    pub fn nearest_among(&self, u: &[f32], cands: &Candidates<'_>) -> Result<(Vec<u32>, Vec<f64>)> {
        let d = cands.d;
        if u.len() % d != 0 {
            return Err(Error::param(
                "rows",
                format!("{} values are not rows of width {d}", u.len()),
            ));
        }
        match self {
            Backend::Cpu => Ok(cpu::nearest_rows(u, cands.host, d)),
            #[cfg(feature = "cuda")]
            Backend::Cuda(dev) => {
                let g = cands.device.as_ref().ok_or_else(|| {
                    Error::param("candidates", "prepared for the CPU backend, used with CUDA")
                })?;
                let (ids, sims) =
                    dev.nearest(&dev.upload(u)?, u.len() / d, &g.view(), g.rows(), d)?;
                Ok((ids.into_iter().map(|i| i as u32).collect(), sims))
            }
        }
    }

    /// [`Backend::nearest_among`] for a single use of `cands` (`k × d`, k ≥ 1).
    pub fn nearest(&self, u: &[f32], cands: &[f32], d: usize) -> Result<(Vec<u32>, Vec<f64>)> {
        self.nearest_among(u, &self.candidates(cands, d)?)
    }

    /// Phase B of a batch, [`cpu::leaders_cpu`], on this backend: identical decisions and
    /// similarities on every backend. `rows` are the unmatched unit rows (`m × d`) in stream
    /// order.
    pub fn leaders(&self, rows: &[f32], d: usize, theta: f64) -> Result<Vec<LeaderDecision>> {
        if d == 0 || rows.len() % d != 0 {
            return Err(Error::param(
                "rows",
                format!("{} values are not rows of width {d}", rows.len()),
            ));
        }
        crate::geometry::check_threshold(theta)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Backend::Cpu => Ok(cpu::leaders_cpu(rows, d, theta)),
            #[cfg(feature = "cuda")]
            Backend::Cuda(dev) => {
                let w = dev.upload(rows)?;
                let mut g = dev.growable_rows(d)?;
                dev.leaders(&w.as_view(), rows.len() / d, d, theta, &mut g)
            }
        }
    }

    /// The strict-order rule's search, [`cpu::nearest_prefix_cpu`], on this backend: for
    /// each unit row, the exact nearest of the first `limits[r]` rows of `leaders`.
    pub fn nearest_prefix(
        &self,
        rows: &[f32],
        limits: &[u32],
        leaders: &[f32],
        d: usize,
    ) -> Result<Vec<Option<(u32, f64)>>> {
        if d == 0 || rows.len() != limits.len() * d || leaders.len() % d != 0 {
            return Err(Error::param(
                "rows",
                format!(
                    "{} row values, {} limits and {} leader values do not fit width {d}",
                    rows.len(),
                    limits.len(),
                    leaders.len()
                ),
            ));
        }
        let l = leaders.len() / d;
        if limits.is_empty() || l == 0 {
            return Ok(vec![None; limits.len()]);
        }
        match self {
            Backend::Cpu => Ok(cpu::nearest_prefix_cpu(rows, limits, leaders, d)),
            #[cfg(feature = "cuda")]
            Backend::Cuda(dev) => {
                let lim: Vec<i32> = limits.iter().map(|&x| x.min(l as u32) as i32).collect();
                let (u, e, lim) = (dev.upload(rows)?, dev.upload(leaders)?, dev.upload(&lim)?);
                let n = limits.len();
                let screen = dev.screen_for(l, d);
                let (ids, sims) =
                    dev.nearest_with(screen, &u, n, &e.slice(..), l, d, Some(&lim))?;
                Ok(ids
                    .into_iter()
                    .zip(sims)
                    .map(|(i, s)| (i >= 0).then_some((i as u32, s)))
                    .collect())
            }
        }
    }

    /// The exact pairwise-distance percentile of the unit rows `u`, identical on every backend.
    pub fn pairwise_percentile(
        &self,
        u: &[f32],
        d: usize,
        percentile: f64,
        method: cpu::PercentileMethod,
    ) -> Result<f64> {
        match self {
            Backend::Cpu => cpu::pairwise_distance_percentile(u, d, percentile, method),
            #[cfg(feature = "cuda")]
            Backend::Cuda(dev) => {
                dev.pairwise_percentile(&dev.upload(u)?, u.len() / d, d, percentile, method)
            }
        }
    }
}
