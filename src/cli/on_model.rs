//! What the model-backed subcommands share: a dictionary checked against a model's
//! `config.json` and hook before any weight is read, the model and tokenizer, texts run to a
//! hook, and region sets written by `explain-labels`.

use anyhow::{bail, Context, Result};
use clap::Args;
use exemplar::analysis::target;
use exemplar::Dictionary;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Checks the dictionary against the model's `config.json` and the hook (no weights read).
pub(super) fn model_target(
    dict: &Dictionary,
    dict_path: &Path,
    model_dir: &Path,
    hook: Option<&str>,
    other_hook: bool,
) -> Result<(
    exemplar::model::GemmaConfig,
    exemplar::analysis::target::Target,
)> {
    let config = exemplar::model::GemmaConfig::from_file(&model_dir.join("config.json"))?;
    let t = exemplar::analysis::target::resolve_target(
        dict, dict_path, model_dir, &config, hook, other_hook,
    )
    .map_err(|e| {
        let hint = match &e {
            exemplar::Error::InvalidParameter {
                name: "hook",
                message,
            } if message.contains("another hook") => {
                "; pass --other-hook to apply it there anyway (the output records it)"
            }
            _ => "",
        };
        anyhow::anyhow!("{e}{hint}")
    })?;
    Ok((config, t))
}

/// The checkpoint in `dir` on the CPU in f32, and its tokenizer.
pub(super) fn load_model(
    dir: &Path,
) -> Result<(exemplar::model::Gemma, exemplar::model::Tokenizer)> {
    let model = exemplar::model::Gemma::load(dir, tch::Kind::Float, tch::Device::Cpu)?;
    let tok = exemplar::model::Tokenizer::from_file(
        &dir.join("tokenizer.json"),
        model.config.bos_token_id,
    )?;
    Ok((model, tok))
}

/// Every non-BOS position's activation at `hook` of each text (BOS + at most `ctx` tokens).
pub(super) fn texts_to_rows(
    model: &exemplar::model::Gemma,
    tok: &exemplar::model::Tokenizer,
    hook: exemplar::model::HookPoint,
    texts: &[String],
    ctx: usize,
) -> Result<Vec<f32>> {
    use exemplar::model::rows::{forward_rows, RowSelection};
    let _guard = tch::no_grad_guard();
    let mut ids = vec![];
    for t in texts {
        let mut v = tok.encode(t)?;
        v.truncate(ctx + 1);
        if v.len() >= 2 {
            ids.push(v);
        }
    }
    if ids.is_empty() {
        bail!("no text has a token after the BOS");
    }
    let pb = exemplar::progress::progress_bar(ids.len() as u64, "forward");
    let mut out = vec![];
    for chunk in ids.chunks(16) {
        let refs: Vec<&[i64]> = chunk.iter().map(|v| v.as_slice()).collect();
        let (rows, _, _) = forward_rows(model, hook, &refs, &RowSelection::AfterBos)?;
        out.extend(rows);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// `--dictionary`, `--model`, `--hook` and `--other-hook`: a dictionary applied to a model
/// at a hook (steer, ablate, explain-steer), checked against the model's `config.json` before
/// any weight is read.
#[derive(Args, Debug)]
pub struct ModelTarget {
    /// The dictionary.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dictionary: PathBuf,
    /// Hugging Face checkpoint directory (runs on the CPU in f32).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Hook to apply the dictionary at (default: the dictionary's).
    #[arg(long)]
    pub hook: Option<String>,
    /// Apply the dictionary at --hook although it was built at another (recorded in the output).
    #[arg(long, requires = "hook")]
    pub other_hook: bool,
}

impl ModelTarget {
    /// The dictionary, and where it applies in the model.
    pub(crate) fn resolve(&self) -> Result<(Dictionary, target::Target)> {
        let dict = Dictionary::load(&self.dictionary)?;
        let (_, t) = model_target(
            &dict,
            &self.dictionary,
            &self.model,
            self.hook.as_deref(),
            self.other_hook,
        )?;
        Ok((dict, t))
    }
}

/// The regions of `FILE:LABEL` (a file of `explain-labels`).
pub(crate) fn region_set(spec: &str) -> Result<Vec<usize>> {
    let (file, label) = spec
        .rsplit_once(':')
        .with_context(|| format!("--region-set {spec}: give FILE:LABEL"))?;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--region-set: cannot read {file}"))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("--region-set: {file} is not JSON"))?;
    let Some(sets) = v.get("sets").and_then(Value::as_object) else {
        bail!("--region-set: {file} has no `sets` object (write it with `explain-labels`)");
    };
    let Some(regions) = sets.get(label).and_then(Value::as_array) else {
        let names: Vec<&str> = sets.keys().map(String::as_str).collect();
        bail!(
            "--region-set: {file} has no set `{label}` (it has: {})",
            names.join(", ")
        );
    };
    regions
        .iter()
        .map(|r| {
            r.as_u64().map(|r| r as usize).with_context(|| {
                format!("--region-set: {file}: set `{label}` holds {r}, not a region id")
            })
        })
        .collect()
}
