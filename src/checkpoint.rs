//! Checkpoints of a long build: the dictionary so far (the dictionary file's tensors, so every
//! statistic, example and reservoir round-trips exactly) plus, in the `__metadata__` entry
//! `exemplar_checkpoint`, the builder's own state, the calibration, the input's position and the
//! identity of the run (flags and inputs), and, when recorded, the per-row assignments as the
//! tensor `checkpoint_assignments`. Written atomically, so a build killed at any moment leaves
//! either the previous checkpoint or the new one.
//!
//! A build of several dictionaries from one read of the input (several hooks and percentiles)
//! checkpoints them together as a *set*: a directory holding one such file per dictionary and
//! generation (`pair-<i>.g<generation>.safetensors`) and `manifest.json`, which names the
//! current generation's files. The manifest is replaced (atomically) only after every file of
//! its generation is written, and the files of the previous generation are removed after it, so
//! a build killed at any moment leaves a manifest naming a complete set written at one point of
//! the input.

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

    /// The calibration, with the dictionary's center and standardisation.
    pub fn calibration(
        &self,
        center: Vec<f32>,
        scaling: Option<crate::geometry::Scaling>,
    ) -> Result<Calibration> {
        Ok(Calibration {
            center,
            scaling,
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
    /// In a set: this dictionary had stopped (saturated or reached its budget) before the last
    /// batch read, and its record of the input was taken then.
    #[serde(default)]
    pub stopped: bool,
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
            stopped: false,
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
    check_record(&dict, &record, assignments.as_deref())
        .map_err(|m| Error::format(path, format!("inconsistent checkpoint: {m}")))?;
    Ok((dict, record, assignments))
}

/// Checks that the record fits its dictionary, so that a build resumed from it can never index
/// out of bounds: the calibration's method is known; every current partition's creation id is
/// a creation id that maps back to it; every creation id maps to a current partition (or to
/// −1); the batch counters agree with the dictionary's; and every recorded assignment is −1 or
/// a creation id.
fn check_record(
    dict: &Dictionary,
    record: &CheckpointRecord,
    assignments: Option<&[i64]>,
) -> std::result::Result<(), String> {
    let cal = &record.calibration;
    if PercentileMethod::parse(&cal.method).is_none() {
        return Err(format!("unknown percentile method `{}`", cal.method));
    }
    let b = &record.builder;
    let (k, created) = (dict.len(), b.creation_to_current.len());
    if b.current_to_creation.len() != k {
        return Err(format!(
            "the builder maps {} partitions, the dictionary holds {k}",
            b.current_to_creation.len()
        ));
    }
    for (current, &creation) in b.current_to_creation.iter().enumerate() {
        let back = usize::try_from(creation)
            .ok()
            .and_then(|c| b.creation_to_current.get(c));
        if back != Some(&(current as i64)) {
            return Err(format!(
                "partition {current} has creation id {creation}, which does not map back to it"
            ));
        }
    }
    if let Some(bad) = b
        .creation_to_current
        .iter()
        .find(|&&c| c < -1 || c >= k as i64)
    {
        return Err(format!(
            "a creation id maps to partition {bad}; the dictionary holds {k}"
        ));
    }
    if b.batches != dict.info.batches || b.last_new_batch > b.batches {
        return Err(format!(
            "batch counters {} (last new {}) differ from the dictionary's {}",
            b.batches, b.last_new_batch, dict.info.batches
        ));
    }
    if let Some(bad) = assignments
        .unwrap_or_default()
        .iter()
        .find(|&&a| a < -1 || a >= created as i64)
    {
        return Err(format!(
            "a recorded assignment names partition {bad}, of {created} created"
        ));
    }
    Ok(())
}

/// The manifest of a checkpoint set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    generation: u64,
    /// The checkpoint files of this generation, one per dictionary, in the build's order.
    files: Vec<String>,
}

const MANIFEST: &str = "manifest.json";

fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let p = dir.join(MANIFEST);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&p, e)),
    };
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(&p, format!("invalid checkpoint manifest: {e}")))?;
    if m.version != VERSION {
        return Err(Error::format(
            &p,
            format!(
                "checkpoint version {} (this build reads {VERSION})",
                m.version
            ),
        ));
    }
    // The set's files are read, and the previous generation's removed, by these names: only
    // the names `save_set` writes (plain file names in the set's directory) are accepted.
    for (i, f) in m.files.iter().enumerate() {
        let want = pair_file(i, m.generation);
        if *f != want {
            return Err(Error::format(
                &p,
                format!("invalid checkpoint manifest: file {i} is {f:?}, expected {want:?}"),
            ));
        }
    }
    Ok(Some(m))
}

/// The file name of pair `i` in generation `generation` of a checkpoint set.
fn pair_file(i: usize, generation: u64) -> String {
    format!("pair-{i}.g{generation}.safetensors")
}

/// Writes a checkpoint set into the directory `dir` (created if missing): a new generation of
/// files, then the manifest naming them, then the previous generation's files are removed.
pub fn save_set(
    dir: &Path,
    items: &[(&Dictionary, &CheckpointRecord, Option<&[i64]>)],
) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::param(
            "checkpoint",
            format!(
                "{} is a file; a build of several dictionaries checkpoints into a directory",
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let old = read_manifest(dir)?;
    let generation = match &old {
        None => 0,
        Some(m) => m.generation.checked_add(1).ok_or_else(|| {
            Error::format(
                dir.join(MANIFEST),
                format!(
                    "invalid checkpoint manifest: generation {} is the last",
                    m.generation
                ),
            )
        })?,
    };
    let mut files = Vec::with_capacity(items.len());
    for (i, (dict, record, assignments)) in items.iter().enumerate() {
        let name = pair_file(i, generation);
        save(&dir.join(&name), dict, record, *assignments)?;
        files.push(name);
    }
    let manifest = Manifest {
        version: VERSION,
        generation,
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifests serialise");
    crate::output::write_atomic(&dir.join(MANIFEST), &json, true)?;
    if let Some(old) = old {
        for f in old.files.iter().filter(|f| !manifest.files.contains(f)) {
            // A file already gone (a kill between the manifest and this) is no loss.
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
    Ok(())
}

/// Reads the checkpoint set in `dir`: each dictionary's [`load`], in the build's order.
#[allow(clippy::type_complexity)]
pub fn load_set(dir: &Path) -> Result<Vec<(Dictionary, CheckpointRecord, Option<Vec<i64>>)>> {
    let m = read_manifest(dir)?.ok_or_else(|| {
        Error::format(
            dir,
            format!("not a checkpoint set (no {MANIFEST}; a build of several dictionaries checkpoints into a directory)"),
        )
    })?;
    m.files.iter().map(|f| load(&dir.join(f))).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{BuildConfig, Builder};
    use crate::data::{ActivationBatch, Document, TokenRef};

    /// Seeded rows in a few loose clusters, with provenance (10 rows per document).
    fn batch(first: u64, n: usize, d: usize) -> ActivationBatch {
        let mut data = Vec::with_capacity(n * d);
        for r in first..first + n as u64 {
            let c = (r * 7 % 5) as f32;
            for j in 0..d {
                let z = crate::build::uniform_below(3, r * d as u64 + j as u64, 1000) as f32;
                data.push(if j as f32 == c { 3.0 } else { 0.0 } + z / 1000.0);
            }
        }
        let mut b = ActivationBatch::from_rows(data, d, first);
        b.tokens = Some(
            (first..first + n as u64)
                .map(|r| TokenRef {
                    doc_id: (r / 10) as i64,
                    position: 1 + (r % 10) as i64,
                })
                .collect(),
        );
        let docs: std::collections::BTreeSet<i64> =
            (first..first + n as u64).map(|r| (r / 10) as i64).collect();
        b.documents = docs
            .into_iter()
            .map(|doc_id| Document {
                doc_id,
                tokens: (0..11).map(|t| format!("t{doc_id}.{t}")).collect(),
            })
            .collect();
        b
    }

    #[test]
    fn a_checkpointed_builder_continues_to_the_same_dictionary() {
        let d = 6;
        let config = BuildConfig {
            reservoir_size: 3,
            examples_per_partition: 2,
            saturation_window: None,
            merge_threshold: Some(0.02),
            record_assignments: Some(400),
            seed: 9,
            ..BuildConfig::default()
        };
        let center = vec![0.1; d];
        let batches: Vec<ActivationBatch> = (0..4).map(|i| batch(i * 100, 100, d)).collect();
        let mut full = Builder::new(center.clone(), 0.05, config.clone()).unwrap();
        for b in &batches {
            full.add_batch(b).unwrap();
        }
        let mut first = Builder::new(center, 0.05, config.clone()).unwrap();
        for b in &batches[..2] {
            first.add_batch(b).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ck.safetensors");
        let cal = CalibrationRecord {
            theta: 0.05,
            percentile: 5.0,
            method: "linear".into(),
            n_activations: 100,
            batch_size: 100,
            batch_percentiles: vec![0.05],
        };
        let rec = CheckpointRecord::new(
            serde_json::json!({"x": 1}),
            first.state(),
            cal.clone(),
            serde_json::json!({"rows": 200}),
        );
        save(&p, first.dictionary(), &rec, first.recorded_assignments()).unwrap();
        let (dict, got, assignments) = load(&p).unwrap();
        assert_eq!(&dict, first.dictionary());
        assert_eq!(got, rec);
        assert_eq!(assignments.as_deref(), first.recorded_assignments());
        let mut resumed = Builder::restore(dict, got.builder, assignments, config).unwrap();
        for b in &batches[2..] {
            resumed.add_batch(b).unwrap();
        }
        let (a, b) = (full.finish(1), resumed.finish(1));
        assert!(a.dictionary.len() > 5);
        assert_eq!(a.dictionary, b.dictionary);
        assert_eq!(a.assignments, b.assignments);
        // A dictionary without the record is not a checkpoint.
        let plain = dir.path().join("d.safetensors");
        a.dictionary.save(&plain, false).unwrap();
        let e = load(&plain).unwrap_err().to_string();
        assert!(e.contains("not a checkpoint"), "{e}");
    }

    fn small_checkpoint() -> (Builder, CheckpointRecord) {
        let config = BuildConfig {
            reservoir_size: 2,
            examples_per_partition: 2,
            saturation_window: None,
            record_assignments: Some(200),
            ..BuildConfig::default()
        };
        let mut b = Builder::new(vec![0.1; 6], 0.05, config).unwrap();
        b.add_batch(&batch(0, 100, 6)).unwrap();
        let cal = CalibrationRecord {
            theta: 0.05,
            percentile: 5.0,
            method: "linear".into(),
            n_activations: 100,
            batch_size: 100,
            batch_percentiles: vec![0.05],
        };
        let rec = CheckpointRecord::new(
            serde_json::json!({}),
            b.state(),
            cal,
            serde_json::json!({"rows": 100}),
        );
        (b, rec)
    }

    fn load_error(p: &Path) -> String {
        let e = load(p).unwrap_err();
        assert!(
            matches!(e, Error::Format { ref path, .. } if path == p),
            "{e}"
        );
        e.to_string()
    }

    /// Found by tests/fuzz_parsers.rs (`fuzz_checkpoint`): one byte of `checkpoint_assignments`
    /// set to 7 made a resumed build index its remap out of bounds at `finish`.
    #[test]
    fn a_checkpoint_inconsistent_with_its_dictionary_is_refused_naming_the_file() {
        let (b, rec) = small_checkpoint();
        let k = b.dictionary().len();
        let created = rec.builder.creation_to_current.len() as i64;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ck.safetensors");
        let mut assignments = b.recorded_assignments().unwrap().to_vec();
        assignments[3] = created;
        save(&p, b.dictionary(), &rec, Some(&assignments)).unwrap();
        assert!(load_error(&p).contains("recorded assignment names partition"));
        assignments[3] = -2;
        save(&p, b.dictionary(), &rec, Some(&assignments)).unwrap();
        assert!(load_error(&p).contains("recorded assignment"));

        let mut bad = rec.clone();
        bad.builder.current_to_creation.swap(0, 1);
        save(&p, b.dictionary(), &bad, None).unwrap();
        assert!(
            load_error(&p).contains("does not map back"),
            "{}",
            load_error(&p)
        );
        let mut bad = rec.clone();
        bad.builder.creation_to_current.push(k as i64);
        save(&p, b.dictionary(), &bad, None).unwrap();
        assert!(load_error(&p).contains("maps to partition"));
        let mut bad = rec.clone();
        bad.builder.current_to_creation.pop();
        save(&p, b.dictionary(), &bad, None).unwrap();
        assert!(load_error(&p).contains("the builder maps"));
        let mut bad = rec.clone();
        bad.builder.last_new_batch = bad.builder.batches + 1;
        save(&p, b.dictionary(), &bad, None).unwrap();
        assert!(load_error(&p).contains("batch counters"));
        let mut bad = rec.clone();
        bad.calibration.method = "cubic".into();
        save(&p, b.dictionary(), &bad, None).unwrap();
        assert!(load_error(&p).contains("unknown percentile method `cubic`"));
        // The consistent record loads.
        save(&p, b.dictionary(), &rec, b.recorded_assignments()).unwrap();
        assert_eq!(load(&p).unwrap().1, rec);
    }

    /// Found by tests/fuzz_parsers.rs (`fuzz_checkpoint_set_manifest`): a manifest naming
    /// `../outside.safetensors` made `save_set` remove that file (it removes the previous
    /// generation's files by the manifest's names), and `load_set` read it.
    #[test]
    fn a_manifest_names_only_the_files_of_its_set() {
        let (b, rec) = small_checkpoint();
        let dir = tempfile::tempdir().unwrap();
        let set = dir.path().join("set");
        let items = [(b.dictionary(), &rec, None)];
        save_set(&set, &items).unwrap();
        let outside = dir.path().join("outside.safetensors");
        std::fs::copy(set.join("pair-0.g0.safetensors"), &outside).unwrap();
        let manifest = set.join(MANIFEST);
        for files in [
            r#"["../outside.safetensors"]"#,
            r#"["pair-0.g1.safetensors"]"#,
            r#"["pair-1.g0.safetensors"]"#,
            r#"["pair-0.g0.safetensors", "pair-0.g0.safetensors"]"#,
        ] {
            std::fs::write(
                &manifest,
                format!(r#"{{"version": 1, "generation": 0, "files": {files}}}"#),
            )
            .unwrap();
            for e in [
                load_set(&set).unwrap_err(),
                save_set(&set, &items).unwrap_err(),
            ] {
                assert!(
                    matches!(&e, Error::Format { path, message }
                        if *path == manifest && message.contains("invalid checkpoint manifest")),
                    "{files}: {e}"
                );
            }
            assert!(outside.exists(), "{files}");
        }
        // The last generation cannot be followed (it overflowed before).
        let last = u64::MAX;
        std::fs::rename(
            set.join("pair-0.g0.safetensors"),
            set.join(pair_file(0, last)),
        )
        .unwrap();
        std::fs::write(
            &manifest,
            format!(
                r#"{{"version": 1, "generation": {last}, "files": ["{}"]}}"#,
                pair_file(0, last)
            ),
        )
        .unwrap();
        assert_eq!(load_set(&set).unwrap().len(), 1);
        let e = save_set(&set, &items).unwrap_err().to_string();
        assert!(e.contains("is the last"), "{e}");
    }

    #[test]
    fn identity_differences_name_each_changed_key() {
        let a = serde_json::json!({"percentile": 10.0, "seed": 0, "gone": true});
        let b = serde_json::json!({"percentile": 5.0, "seed": 0, "new": 1});
        assert_eq!(
            identity_differences(&a, &b),
            vec![
                "gone: checkpoint true, now (absent)".to_string(),
                "new: checkpoint (absent), now 1".to_string(),
                "percentile: checkpoint 10.0, now 5.0".to_string(),
            ]
        );
        assert!(identity_differences(&a, &a).is_empty());
    }
}
