//! Checkpoints of a long build: the dictionary so far (the dictionary file's tensors, so every
//! statistic, example and reservoir round-trips exactly) plus, in the `__metadata__` entry
//! `exemplar_checkpoint`, the builder's own state, the calibration, the input's position and the
//! identity of the run (flags and inputs), and, when recorded, the per-row assignments as the
//! tensor `checkpoint_assignments`. Written atomically, so a build killed at any moment leaves
//! either the previous checkpoint or the new one.

use crate::build::BuilderState;
use crate::calibrate::{Calibration, PercentileMethod};
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::tensorfile::{TensorFile, TensorOut};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `__metadata__` key of the checkpoint record.
const KEY: &str = "exemplar_checkpoint";
/// Version of the record; a reader refuses others.
const VERSION: u32 = 1;

/// The calibration of a checkpointed build (its center is the dictionary's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRecord {
    pub theta: f64,
    pub percentile: f64,
    pub method: String,
    pub n_activations: u64,
    pub batch_size: usize,
    pub batch_percentiles: Vec<f64>,
}

impl CalibrationRecord {
    pub fn of(c: &Calibration) -> Self {
        CalibrationRecord {
            theta: c.theta,
            percentile: c.percentile,
            method: c.method.as_str().to_string(),
            n_activations: c.n_activations,
            batch_size: c.batch_size,
            batch_percentiles: c.batch_percentiles.clone(),
        }
    }

    pub fn calibration(&self, center: Vec<f32>) -> Result<Calibration> {
        Ok(Calibration {
            center,
            theta: self.theta,
            percentile: self.percentile,
            method: PercentileMethod::parse(&self.method).ok_or_else(|| {
                Error::param("checkpoint", format!("unknown method {}", self.method))
            })?,
            n_activations: self.n_activations,
            batch_size: self.batch_size,
            batch_percentiles: self.batch_percentiles.clone(),
        })
    }
}

/// Everything of a build's state besides the dictionary and the assignments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub version: u32,
    /// The run's flags and inputs; a resume must present the same.
    pub identity: serde_json::Value,
    pub builder: BuilderState,
    pub calibration: CalibrationRecord,
    /// The input's position after the last clustered batch (the source's own record).
    pub position: serde_json::Value,
    /// Rows and tokens clustered so far.
    pub activations: u64,
    pub tokens: u64,
    /// Seconds spent before this checkpoint (all runs so far).
    pub elapsed_seconds: f64,
}

impl CheckpointRecord {
    pub fn new(
        identity: serde_json::Value,
        builder: BuilderState,
        calibration: CalibrationRecord,
        position: serde_json::Value,
    ) -> Self {
        CheckpointRecord {
            version: VERSION,
            identity,
            builder,
            calibration,
            position,
            activations: 0,
            tokens: 0,
            elapsed_seconds: 0.0,
        }
    }
}

/// Writes a checkpoint atomically (replacing an older one).
pub fn save(
    path: &Path,
    dict: &Dictionary,
    record: &CheckpointRecord,
    assignments: Option<&[i64]>,
) -> Result<()> {
    let json = serde_json::to_string(record).expect("records serialise");
    let extra = match assignments {
        Some(a) => vec![TensorOut::i64("checkpoint_assignments", vec![a.len()], a)],
        None => vec![],
    };
    dict.save_with(path, true, &[(KEY, json)], extra)
}

/// Reads a checkpoint: the dictionary, the record, and the assignments when it has them.
pub fn load(path: &Path) -> Result<(Dictionary, CheckpointRecord, Option<Vec<i64>>)> {
    let f = TensorFile::open(path)?;
    let dict = Dictionary::load_from(&f)?;
    let json = f.metadata().get(KEY).ok_or_else(|| {
        Error::format(
            path,
            "a dictionary, not a checkpoint (no `exemplar_checkpoint` metadata)",
        )
    })?;
    let record: CheckpointRecord = serde_json::from_str(json)
        .map_err(|e| Error::format(path, format!("invalid checkpoint record: {e}")))?;
    if record.version != VERSION {
        return Err(Error::format(
            path,
            format!(
                "checkpoint version {} (this build reads {VERSION})",
                record.version
            ),
        ));
    }
    let assignments = if f.has("checkpoint_assignments") {
        let n = f.shape("checkpoint_assignments")?;
        Some(f.i64("checkpoint_assignments", &n)?)
    } else {
        None
    };
    Ok((dict, record, assignments))
}

/// The keys whose values differ between the checkpoint's identity and this run's (both JSON
/// objects), as `key: checkpoint X, now Y` lines.
pub fn identity_differences(recorded: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let a = recorded.as_object().unwrap_or(&empty);
    let b = now.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show =
                |v: Option<&serde_json::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
            format!("{k}: checkpoint {}, now {}", show(a.get(k)), show(b.get(k)))
        })
        .collect()
}
