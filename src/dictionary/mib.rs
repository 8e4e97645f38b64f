//! Dictionaries as MIB causal-variable-track featurizers (`verify_submission.py`'s layout): a
//! directory with `featurizer.py` (the EP featurizer modules and a `Featurizer` subclass) and,
//! per model unit, `{unit}_featurizer` and `{unit}_inverse_featurizer` (torch pickles
//! `{"model_info": {featurizer_class, inverse_featurizer_class, n_features, additional_config},
//! "state_dict": {"center", "exemplars"}}`) and `{unit}_indices` (a Python list of the selected
//! feature indices, or `null`). The featurizer is stated in `featurizer.py`'s docstring.

use super::torch_save::{self, PyValue};
use super::Dictionary;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The Python side, written as `featurizer.py`.
pub const FEATURIZER_PY: &str = include_str!("mib_featurizer.py");

/// One model unit: its MIB id (the file prefix), its dictionary and the selected features.
pub struct MibUnit<'a> {
    pub name: String,
    pub dictionary: &'a Dictionary,
    /// The dictionary's file, for errors.
    pub path: PathBuf,
    /// `None`: every feature (`null`).
    pub indices: Option<Vec<usize>>,
}

/// The files of an export of `units` into `dir` (relative to it).
pub fn files(units: &[MibUnit]) -> Vec<String> {
    let mut f = vec!["featurizer.py".to_string()];
    for u in units {
        for s in ["featurizer", "inverse_featurizer", "indices"] {
            f.push(format!("{}_{s}", u.name));
        }
    }
    f
}

/// Checks the units before anything is written: names usable as file prefixes and distinct,
/// unstandardised dictionaries, indices in range, `top_n` between 1 and K.
pub fn check(units: &[MibUnit], top_n: usize) -> Result<()> {
    if units.is_empty() {
        return Err(Error::param("unit", "no unit to export"));
    }
    let mut seen = std::collections::HashSet::new();
    for u in units {
        if u.name.is_empty() || u.name.contains(['/', '\\', '\n']) || u.name == "featurizer.py" {
            return Err(Error::param(
                "unit",
                format!(
                    "{:?} is not usable as a file prefix (no slashes, not empty)",
                    u.name
                ),
            ));
        }
        if !seen.insert(&u.name) {
            return Err(Error::param("unit", format!("{} is named twice", u.name)));
        }
        let d = u.path.display();
        if u.dictionary.scaling().is_some() {
            return Err(Error::param(
                "dictionary",
                format!("{d} was built on standardised rows (metadata `scaling`): its exemplars are not directions of the activations, and a featurizer of them would not invert"),
            ));
        }
        let k = u.dictionary.len();
        if top_n == 0 || top_n > k {
            return Err(Error::param(
                "top_n",
                format!("{top_n} features per row: {d} has {k} regions"),
            ));
        }
        if let Some(&bad) = u.indices.iter().flatten().find(|&&i| i >= k) {
            return Err(Error::param(
                "indices",
                format!(
                    "feature {bad} of unit {}: {d} has {k} regions (0..{})",
                    u.name,
                    k - 1
                ),
            ));
        }
    }
    Ok(())
}

fn state(dict: &Dictionary) -> PyValue {
    let (k, d) = (dict.len(), dict.dim());
    PyValue::OrderedDict(vec![
        (
            "center".into(),
            PyValue::Tensor {
                shape: vec![d],
                data: dict.center().to_vec(),
            },
        ),
        (
            "exemplars".into(),
            PyValue::Tensor {
                shape: vec![k, d],
                data: (0..k).flat_map(|r| dict.exemplar(r).to_vec()).collect(),
            },
        ),
    ])
}

/// Writes the export of `units` into `dir` (made if missing). `top_n` = 1 is the hard
/// featurizer, more the soft one. An existing `dir` is refused unless `force` (then the
/// export's files in it are replaced).
pub fn export(dir: &Path, units: &[MibUnit], top_n: usize, force: bool) -> Result<Vec<PathBuf>> {
    check(units, top_n)?;
    if dir.exists() && !force {
        return Err(Error::OutputExists(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = vec![];
    let p = dir.join("featurizer.py");
    crate::output::write_atomic(&p, FEATURIZER_PY.as_bytes(), true)?;
    out.push(p);
    for u in units {
        let dict = u.dictionary;
        let info = PyValue::Dict(vec![
            (
                "featurizer_class".into(),
                PyValue::str("EPFeaturizerModule"),
            ),
            (
                "inverse_featurizer_class".into(),
                PyValue::str("EPInverseFeaturizerModule"),
            ),
            ("n_features".into(), PyValue::Int(dict.len() as i32)),
            (
                "additional_config".into(),
                PyValue::Dict(vec![
                    ("top_n".into(), PyValue::Int(top_n as i32)),
                    ("theta".into(), PyValue::Float(dict.theta())),
                    (
                        "hook".into(),
                        dict.info().hook.clone().map_or(PyValue::None, PyValue::Str),
                    ),
                    (
                        "dictionary".into(),
                        PyValue::str(u.path.display().to_string()),
                    ),
                ]),
            ),
        ]);
        for suffix in ["featurizer", "inverse_featurizer"] {
            let p = dir.join(format!("{}_{suffix}", u.name));
            let v = PyValue::Dict(vec![
                ("model_info".into(), info.clone()),
                ("state_dict".into(), state(dict)),
            ]);
            torch_save::write(&p, &v, true)?;
            out.push(p);
        }
        let p = dir.join(format!("{}_indices", u.name));
        let text = match &u.indices {
            None => "null".to_string(),
            Some(v) => format!(
                "[{}]",
                v.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        crate::output::write_atomic(&p, text.as_bytes(), true)?;
        out.push(p);
    }
    Ok(out)
}
