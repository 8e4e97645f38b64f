//! `exemplar quality`: chance-corrected exemplar agreement of a dictionary's regions on rows
//! with provenance (`eval::quality`).

use super::args::ReportOut;
use anyhow::{Context, Result};
use clap::Args;
use exemplar::data::{ActivationStream, StreamOptions};
use exemplar::eval::quality::{exemplar_agreement, Agreement};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct QualityArgs {
    /// The dictionary.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dictionary: PathBuf,
    /// Activation files with provenance sidecars (`exemplar activations` writes them); held-out
    /// rows, or the build's own (then `document` agreement means something).
    #[arg(long = "activations", short = 'a', required = true, num_args = 1.., value_name = "FILE")]
    pub activations: Vec<PathBuf>,
    /// Tensor to read from .safetensors files.
    #[arg(long, value_name = "NAME")]
    pub tensor: Option<String>,
    #[command(flatten)]
    pub report: ReportOut,
}

pub fn quality(a: QualityArgs) -> Result<()> {
    a.report.check()?;
    let dict = exemplar::Dictionary::load(&a.dictionary)?;
    let mut stream = ActivationStream::open(
        &a.activations,
        StreamOptions {
            tensor: a.tensor.clone(),
            ..Default::default()
        },
    )?;
    let r = exemplar_agreement(&dict, &mut stream)?;
    let mut report = serde_json::to_value(&r)?;
    report["dictionary"] = a.dictionary.display().to_string().into();
    report["activations"] = a
        .activations
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .into();
    report["hook"] = dict.info().hook.clone().into();
    report["standardized"] = dict.scaling().is_some().into();
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &a.report.out {
        exemplar::output::write_atomic(out, text.as_bytes(), a.report.force)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if a.report.json {
        println!("{text}");
        return Ok(());
    }
    println!(
        "{}: K = {}, {} rows, {:.1}% within θ, {} scored in {} regions ({:.1} rows each)",
        a.dictionary.display(),
        r.partitions,
        r.rows,
        100.0 * r.within_theta as f64 / r.rows.max(1) as f64,
        r.scored,
        r.regions_used,
        r.mean_region_rows
    );
    println!(
        "{:<16} {:>9} {:>9} {:>8}",
        "agreement", "observed", "chance", "κ"
    );
    let line = |name: &str, g: &Agreement| {
        println!(
            "{name:<16} {:>9.4} {:>9.4} {:>8.4}",
            g.observed, g.chance, g.kappa
        )
    };
    line("token", &r.token);
    line("next token", &r.next);
    line("token or next", &r.token_or_next);
    line("document", &r.document);
    println!("top-20 token purity {:.4}", r.top20_token_purity);
    Ok(())
}
