//! `mib-export`: dictionaries as MIB causal-variable featurizers
//! (`exemplar::dictionary::mib`).

use super::args::check_output_dir;
use anyhow::{bail, Context, Result};
use clap::Args;
use exemplar::dictionary::mib::{self, MibUnit};
use exemplar::Dictionary;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct MibExportArgs {
    /// A model unit and its dictionary: `NAME=DICT` (NAME is MIB's unit id, the file prefix);
    /// repeat for several units.
    #[arg(long, required = true, value_name = "NAME=DICT")]
    pub unit: Vec<String>,
    /// Features per row: 1 = hard (the nearest region's projection), n > 1 = soft (least-squares
    /// coefficients on the n regions of largest projection).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub top_n: usize,
    /// The selected features written to every `{unit}_indices` file (default: `null`, all).
    #[arg(long, value_delimiter = ',', value_name = "R")]
    pub indices: Vec<usize>,
    /// Output directory (refused when it exists, unless --force).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,
    /// Write into an existing directory, replacing the export's files.
    #[arg(long)]
    pub force: bool,
}

pub fn mib_export(a: MibExportArgs) -> Result<()> {
    if a.out.exists() && !a.force {
        bail!(
            "{} already exists; a featurizer export is not written into an existing directory\nhint: pass --force to replace the export's files in it",
            a.out.display()
        );
    }
    check_output_dir(&a.out)?;
    let mut dicts = vec![];
    for u in &a.unit {
        let (name, path) = u
            .rsplit_once('=')
            .with_context(|| format!("--unit {u}: give NAME=DICT"))?;
        let path = PathBuf::from(path);
        let d = Dictionary::load(&path)?;
        dicts.push((name.to_string(), path, d));
    }
    let units: Vec<MibUnit> = dicts
        .iter()
        .map(|(name, path, d)| MibUnit {
            name: name.clone(),
            dictionary: d,
            path: path.clone(),
            indices: (!a.indices.is_empty()).then(|| a.indices.clone()),
        })
        .collect();
    let files = mib::export(&a.out, &units, a.top_n, a.force)?;
    for (name, path, d) in &dicts {
        println!(
            "{name:<40} K {:>6}  d {:>5}  {}",
            d.len(),
            d.dim(),
            path.display()
        );
    }
    println!(
        "{} files ({} featurizer, top_n {}) → {}",
        files.len(),
        if a.top_n == 1 { "hard" } else { "soft" },
        a.top_n,
        a.out.display()
    );
    Ok(())
}
