//! Where a dictionary is applied: a model and a hook, checked against what the dictionary
//! records before any weight is read. The rules (docs/analyses.md):
//!
//! * the hook is the one asked for, or the dictionary's own; it must be a `d_model`-wide hook
//!   of a block the model has;
//! * the dictionary's width must be the model's `hidden_size`;
//! * the model must be the one the dictionary was built on: the SHA-256 of its `config.json`
//!   when the dictionary records one (a build from text), else the directory name when it
//!   records a model name (`build --model-name`); a dictionary that records neither is
//!   accepted, and the output says the model was not verified;
//! * a hook other than the dictionary's is refused unless `allow_other_hook`, and then
//!   recorded.

use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::model::{GemmaConfig, HookPoint};
use serde::Serialize;
use std::path::Path;

/// How the model was matched to the dictionary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelCheck {
    /// The SHA-256 of `config.json` equals the dictionary's `model_config_hash`.
    ConfigHash,
    /// The directory's name equals the last path component of the dictionary's `model`.
    Name,
    /// The dictionary records no model: nothing to check.
    Unverified,
}

/// The checked target.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The hook the dictionary is applied at.
    #[serde(serialize_with = "hook_name")]
    pub hook: HookPoint,
    /// The hook the dictionary was built at (`None`: it records none).
    pub dictionary_hook: Option<String>,
    /// Applied at a hook other than the dictionary's (allowed explicitly).
    pub other_hook: bool,
    pub model_check: ModelCheck,
    pub model: String,
    pub dictionary: String,
}

fn hook_name<S: serde::Serializer>(h: &HookPoint, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&h.name())
}

/// SHA-256 (hex) of `dir/config.json`.
pub fn config_hash(dir: &Path) -> Result<String> {
    use sha2::Digest;
    let p = dir.join("config.json");
    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    Ok(sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn last_component(s: &str) -> &str {
    s.trim_end_matches(['/', '\\'])
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(s)
}

/// Checks that `dict` (read from `dict_path`) may be applied to the model in `model_dir`
/// (whose `config.json` gave `config`) at `hook` (`None`: the dictionary's own). Reads only
/// `config.json`.
pub fn resolve_target(
    dict: &Dictionary,
    dict_path: &Path,
    model_dir: &Path,
    config: &GemmaConfig,
    hook: Option<&str>,
    allow_other_hook: bool,
) -> Result<Target> {
    let info = dict.info();
    let dname = dict_path.display().to_string();
    let name = match (hook, info.hook.as_deref()) {
        (Some(h), _) => h.to_string(),
        (None, Some(h)) => h.to_string(),
        (None, None) => {
            return Err(Error::param(
                "hook",
                format!("{dname} records no hook: name the hook to apply it at"),
            ))
        }
    };
    let hp = HookPoint::parse(&name)?;
    if !hp.kind.is_residual_width() {
        return Err(Error::param(
            "hook",
            format!("{name}: a dictionary is applied at a d_model-wide hook (resid_pre/mid/post, attn_out, mlp_out)"),
        ));
    }
    if hp.layer >= config.num_hidden_layers {
        return Err(Error::param(
            "hook",
            format!(
                "{name}: {} has {} blocks (0..{})",
                model_dir.display(),
                config.num_hidden_layers,
                config.num_hidden_layers - 1
            ),
        ));
    }
    let other_hook = matches!(&info.hook, Some(h) if *h != name);
    if other_hook && !allow_other_hook {
        return Err(Error::param(
            "hook",
            format!(
                "{dname} was built at {} and is applied at {name}: a dictionary is applied at another hook only when that is asked for explicitly",
                info.hook.as_deref().unwrap_or_default()
            ),
        ));
    }
    let model_check = check_model(dict, dict_path, model_dir, config)?;
    Ok(Target {
        hook: hp,
        dictionary_hook: info.hook.clone(),
        other_hook,
        model_check,
        model: model_dir.display().to_string(),
        dictionary: dname,
    })
}

/// Checks that `dict` was built on the model in `model_dir` (whose `config.json` gave
/// `config`) and has its width; whatever the hook (the logit lens needs no hook).
pub fn check_model(
    dict: &Dictionary,
    dict_path: &Path,
    model_dir: &Path,
    config: &GemmaConfig,
) -> Result<ModelCheck> {
    let info = dict.info();
    let dname = dict_path.display().to_string();
    // Steering directions, gates and lenses here are computed in the activations' space from
    // the raw exemplars; a standardised dictionary's live in another space, and using them as
    // they are would steer along the wrong directions without a word.
    if dict.scaling().is_some() {
        return Err(Error::param(
            "dictionary",
            format!("{dname} was built on standardised rows (metadata `scaling`): steering, ablation and labels on a model support dictionaries of unstandardised rows only, for now"),
        ));
    }
    if dict.dim() != config.hidden_size {
        return Err(Error::DimensionMismatch {
            what: format!(
                "dictionary {dname} (applied to {}, hidden_size {})",
                model_dir.display(),
                config.hidden_size
            ),
            expected: config.hidden_size,
            found: dict.dim(),
        });
    }
    if let Some(h) = &info.model_config_hash {
        let here = config_hash(model_dir)?;
        if *h != here {
            return Err(Error::param(
                "model",
                format!(
                    "{dname} was built on {} (config.json SHA-256 {h}), not on {} (config.json SHA-256 {here})",
                    info.model_path.as_deref().or(info.model.as_deref()).unwrap_or("another model"),
                    model_dir.display()
                ),
            ));
        }
        return Ok(ModelCheck::ConfigHash);
    }
    if let Some(m) = &info.model {
        let dir = model_dir.display().to_string();
        if last_component(m) != last_component(&dir) {
            return Err(Error::param(
                "model",
                format!("{dname} was built on model `{m}`, not on {dir} (the names differ)"),
            ));
        }
        return Ok(ModelCheck::Name);
    }
    Ok(ModelCheck::Unverified)
}

/// Region ids in range of `dict`, named in the error as `what`.
pub fn check_regions(dict: &Dictionary, regions: &[usize], what: &str) -> Result<()> {
    if let Some(&r) = regions.iter().find(|&&r| r >= dict.len()) {
        return Err(Error::param(
            "region",
            format!(
                "{what} {r} is out of range: the dictionary has {} regions (0..{})",
                dict.len(),
                dict.len().saturating_sub(1)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::last_component;

    #[test]
    fn last_components() {
        assert_eq!(last_component("google/gemma-3-270m"), "gemma-3-270m");
        assert_eq!(
            last_component(".cache/models/gemma-3-270m/"),
            "gemma-3-270m"
        );
        assert_eq!(last_component("gemma"), "gemma");
    }
}
