//! `label`: logit-lens tokens of exemplar and mean direction, top member contexts.

use super::args::{check_output, name_of};
use super::on_model::load_model;
use anyhow::{bail, Result};
use clap::Args;
use exemplar::analysis::label as lab;
use exemplar::analysis::target;
use exemplar::output::write_atomic;
use exemplar::Dictionary;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct LabelArgs {
    /// The dictionary.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dictionary: PathBuf,
    /// Hugging Face checkpoint directory of the model the dictionary was built on.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Regions to label, comma-separated (default: the --top largest).
    #[arg(long, short = 'r', value_delimiter = ',', value_name = "R")]
    pub region: Vec<usize>,
    /// Label the N largest regions.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub top: usize,
    /// Only regions with at least this many members (with --top).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub min_members: u64,
    /// Logit-lens tokens per direction.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub lens_tokens: usize,
    /// Closest member contexts per region.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub examples: usize,
    /// Tokens either side of an example's token.
    #[arg(long, default_value_t = 12, value_name = "N")]
    pub window: usize,
    /// Also write a markdown report here.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Output JSON Lines: one line per region.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite outputs.
    #[arg(long)]
    pub force: bool,
}

pub fn label(a: LabelArgs) -> Result<()> {
    check_output(&a.out, a.force)?;
    if let Some(m) = &a.markdown {
        check_output(m, a.force)?;
    }
    if a.lens_tokens == 0 {
        bail!("--lens-tokens must be at least 1");
    }
    let dict = Dictionary::load(&a.dictionary)?;
    let config = exemplar::model::GemmaConfig::from_file(&a.model.join("config.json"))?;
    let check = target::check_model(&dict, &a.dictionary, &a.model, &config)?;
    let explicit = (!a.region.is_empty()).then_some(a.region.as_slice());
    let regions = lab::choose_regions(&dict, explicit, a.top, a.min_members)?;
    if regions.is_empty() {
        bail!("no region to label (none has ≥ {} members)", a.min_members);
    }
    let (model, tok) = load_model(&a.model)?;
    let labels = lab::label_regions(
        &model,
        &tok,
        &dict,
        &regions,
        a.lens_tokens,
        a.examples,
        a.window,
    )?;
    let mut s = String::new();
    for l in &labels {
        let mut v = serde_json::to_value(l)?;
        v["model_check"] = serde_json::to_value(check)?;
        writeln!(s, "{v}")?;
    }
    write_atomic(&a.out, s.as_bytes(), a.force)?;
    let md = lab::markdown(&name_of(&a.dictionary), &dict, &labels);
    if let Some(m) = &a.markdown {
        write_atomic(m, md.as_bytes(), a.force)?;
    }
    for l in labels.iter().take(10) {
        let toks: Vec<&str> = l
            .exemplar_lens
            .iter()
            .take(8)
            .map(|t| t.token.as_str())
            .collect();
        println!(
            "r{:<6} {:>7} members  lens: {}",
            l.region,
            l.members,
            toks.join(" ").replace('\n', "⏎")
        );
    }
    println!("{} regions labelled → {}", labels.len(), a.out.display());
    Ok(())
}
