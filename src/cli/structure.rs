//! Structure of dictionaries as subcommands (`hierarchy`, `stability`, `saturation`):
//! argument definitions and run functions over `exemplar::analysis`. No model is read.

use super::args::{basis, check_output, fixed_or_dash, name_of, ReportOut};
use anyhow::{bail, Context, Result};
use clap::Args;
use exemplar::analysis::{hierarchy, saturation, stability};
use exemplar::output::write_atomic;
use exemplar::Dictionary;
use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;

fn load_all(paths: &[PathBuf]) -> Result<Vec<(String, Dictionary)>> {
    paths
        .iter()
        .map(|p| Ok((name_of(p), Dictionary::load(p)?)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// hierarchy

#[derive(Args, Debug)]
pub struct HierarchyArgs {
    /// Dictionaries of one build at several percentiles (any order; sorted coarsest first).
    #[arg(required = true, num_args = 2.., value_name = "DICT")]
    pub dictionaries: Vec<PathBuf>,
    /// A path between two regions of --path-level: `A,B` (repeatable).
    #[arg(long, value_name = "A,B")]
    pub path: Vec<String>,
    /// The level of the --path regions (0 = the coarsest).
    #[arg(long, default_value_t = 0, value_name = "L")]
    pub path_level: usize,
    /// k of the k-nearest-neighbour graphs the paths are traced in.
    #[arg(long, default_value_t = 3, value_name = "K")]
    pub knn: usize,
    #[command(flatten)]
    pub report: ReportOut,
}

fn parse_pair(s: &str) -> Result<(usize, usize)> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    match parts.as_slice() {
        [a, b] => Ok((
            a.parse()
                .with_context(|| format!("--path {s}: `{a}` is not a region id"))?,
            b.parse()
                .with_context(|| format!("--path {s}: `{b}` is not a region id"))?,
        )),
        _ => bail!("--path {s}: expected two region ids, A,B"),
    }
}

pub fn hierarchy(a: HierarchyArgs) -> Result<()> {
    if let Some(o) = &a.report.out {
        check_output(o, a.report.force)?;
    }
    let pairs: Vec<(usize, usize)> = a
        .path
        .iter()
        .map(|p| parse_pair(p))
        .collect::<Result<_>>()?;
    let owned = load_all(&a.dictionaries)?;
    let dicts: Vec<(String, &Dictionary)> = owned.iter().map(|(n, d)| (n.clone(), d)).collect();
    let h = hierarchy::build_hierarchy(&dicts)?;
    let mut value = h.to_json(&dicts);
    let mut table = String::new();
    writeln!(
        table,
        "{:<6} {:<44} {:>10} {:>8} {:>8}",
        "level", "dictionary", "θ", "p", "K"
    )?;
    for (i, l) in h.levels.iter().enumerate() {
        writeln!(
            table,
            "{:<6} {:<44} {:>10.6} {:>8} {:>8}",
            i,
            l.name,
            l.theta,
            l.percentile.map_or("-".into(), |p| p.to_string()),
            l.regions
        )?;
    }
    writeln!(
        table,
        "\nfine → coarse   parent within θ   mean purity   coarse regions used"
    )?;
    for s in value["summary"].as_array().into_iter().flatten() {
        writeln!(
            table,
            "{:>4} → {:<8} {:>15.3}   {:>11}   {:>19}",
            s["fine"],
            s["coarse"],
            s["parent_within_theta"].as_f64().unwrap_or(f64::NAN),
            fixed_or_dash(s["mean_purity"].as_f64(), 3),
            s["coarse_regions_used"]
        )?;
    }
    let mut paths = vec![];
    for (x, y) in pairs {
        h.check_node(a.path_level, x)?;
        h.check_node(a.path_level, y)?;
        let tree = h.tree_path((a.path_level, x), (a.path_level, y));
        let knn = hierarchy::knn_paths(&h, &dicts, a.path_level, x, y, a.knn)?;
        let show = |v: &[(usize, usize)]| {
            v.iter()
                .map(|(l, r)| format!("L{l}:r{r}"))
                .collect::<Vec<_>>()
                .join(" → ")
        };
        writeln!(
            table,
            "\npath L{}:r{x} ↔ L{}:r{y}",
            a.path_level, a.path_level
        )?;
        writeln!(
            table,
            "  tree: {}",
            tree.as_deref().map_or("no common ancestor".into(), show)
        )?;
        for p in &knn {
            writeln!(
                table,
                "  {}-NN graph of level {}: {}",
                a.knn,
                p.level,
                p.path.as_ref().map_or("not connected".into(), |v| {
                    v.iter()
                        .map(|r| format!("r{r}"))
                        .collect::<Vec<_>>()
                        .join(" → ")
                })
            )?;
        }
        paths.push(json!({
            "level": a.path_level, "from": x, "to": y,
            "tree_path": tree.map(|v| v.iter().map(|(l, r)| json!({"level": l, "region": r})).collect::<Vec<_>>()),
            "knn": a.knn,
            "knn_paths": knn,
        }));
    }
    value["paths"] = json!(paths);
    a.report.emit(&value, &table)
}

// ---------------------------------------------------------------------------------------------
// stability

#[derive(Args, Debug)]
pub struct StabilityArgs {
    /// Dictionaries built on the same corpus with different seeds (`build --shuffle-seed S`).
    #[arg(required = true, num_args = 2.., value_name = "DICT")]
    pub dictionaries: Vec<PathBuf>,
    /// Directions matched: mean member directions (default, the reference's seed-stability
    /// view) or exemplars.
    #[arg(long, default_value = "mean", value_parser = ["mean", "exemplar"])]
    pub basis: String,
    /// A region persists in another dictionary when its Hungarian partner's cosine is at least this.
    #[arg(
        long,
        default_value_t = 0.7,
        value_name = "COS",
        allow_negative_numbers = true
    )]
    pub cutoff: f64,
    /// Also write one CSV line per region (dictionary, region, N, c, D, mean matched cos, persisted).
    #[arg(long, value_name = "FILE")]
    pub regions_csv: Option<PathBuf>,
    #[command(flatten)]
    pub report: ReportOut,
}

pub fn stability(a: StabilityArgs) -> Result<()> {
    for o in a.report.out.iter().chain(&a.regions_csv) {
        check_output(o, a.report.force)?;
    }
    let owned = load_all(&a.dictionaries)?;
    let dicts: Vec<(String, &Dictionary)> = owned.iter().map(|(n, d)| (n.clone(), d)).collect();
    let r = stability::stability(&dicts, basis(&a.basis), a.cutoff)?;
    if let Some(p) = &a.regions_csv {
        let mut csv = String::from(
            "dictionary,region,members,coherence,d,mean_matched_cos,persisted_in,persisted\n",
        );
        for x in &r.regions {
            writeln!(
                csv,
                "{},{},{},{},{},{},{},{}",
                x.dictionary,
                x.region,
                x.members,
                x.coherence,
                x.d.map_or(String::new(), |v| v.to_string()),
                x.mean_matched_cos,
                x.persisted_in,
                x.persisted
            )?;
        }
        write_atomic(p, csv.as_bytes(), a.report.force)?;
    }
    let mut table = String::new();
    writeln!(
        table,
        "{} dictionaries, {} basis, cutoff {}",
        r.dictionaries.len(),
        r.basis,
        r.cutoff
    )?;
    writeln!(
        table,
        "{:<40} {:>8} {:>10} {:>10} {:>10}",
        "dictionary", "K", "order seed", "persisted", "AUROC(D)"
    )?;
    for d in &r.dictionaries {
        writeln!(
            table,
            "{:<40} {:>8} {:>10} {:>10.3} {:>10}",
            d.name,
            d.regions,
            d.order_seed.map_or("-".into(), |s| s.to_string()),
            d.persisted_fraction,
            fixed_or_dash(d.auroc_d, 3)
        )?;
    }
    writeln!(
        table,
        "all {} regions: persisted {:.3}; AUROC for persisting: D = log10(N·c²) {}, log10 N {}, c {}; Spearman(D, mean matched cos) {}",
        r.regions_total,
        r.persisted_fraction,
        fixed_or_dash(r.auroc_d, 3),
        fixed_or_dash(r.auroc_log_members, 3),
        fixed_or_dash(r.auroc_coherence, 3),
        fixed_or_dash(r.spearman_d_mean_cos, 3)
    )?;
    a.report.emit(&serde_json::to_value(&r)?, &table)
}

// ---------------------------------------------------------------------------------------------
// saturation

#[derive(Args, Debug)]
pub struct SaturationArgs {
    /// Dictionaries whose build recorded the curve (any build by this version).
    #[arg(required = true, num_args = 1.., value_name = "DICT")]
    pub dictionaries: Vec<PathBuf>,
    /// A name per dictionary for the legend, comma-separated or repeated (default: the file names).
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub name: Vec<String>,
    /// The x axis: tokens (BOS included) or activations.
    #[arg(long, default_value = "tokens", value_parser = ["tokens", "activations"])]
    pub x: String,
    /// Draw the curves into this PNG.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
    #[command(flatten)]
    pub report: ReportOut,
}

pub fn saturation(a: SaturationArgs) -> Result<()> {
    for o in a.report.out.iter().chain(&a.png) {
        check_output(o, a.report.force)?;
    }
    if !a.name.is_empty() && a.name.len() != a.dictionaries.len() {
        bail!(
            "--name: {} names for {} dictionaries",
            a.name.len(),
            a.dictionaries.len()
        );
    }
    let mut curves = vec![];
    for (i, p) in a.dictionaries.iter().enumerate() {
        let d = Dictionary::load(p)?;
        let name = a.name.get(i).cloned().unwrap_or_else(|| name_of(p));
        curves.push(saturation::curve(&name, &d).with_context(|| p.display().to_string())?);
    }
    let axis = if a.x == "activations" {
        saturation::Axis::Activations
    } else {
        saturation::Axis::Tokens
    };
    if let Some(png) = &a.png {
        saturation::plot(&curves, axis, png, a.report.force)?;
    }
    let mut table = String::new();
    writeln!(
        table,
        "{:<36} {:>8} {:>10} {:>12} {:>12} {:>10} {:>14}",
        "dictionary", "batches", "θ", "tokens", "activations", "K", "new K / 1k act"
    )?;
    for c in &curves {
        let last = c.points.last().expect("a curve has points");
        writeln!(
            table,
            "{:<36} {:>8} {:>10.6} {:>12} {:>12} {:>10} {:>14}{}",
            c.name,
            c.points.len(),
            c.theta,
            last.tokens,
            last.activations,
            last.partitions,
            fixed_or_dash(c.final_rate_per_1k, 3),
            if c.saturated { "  saturated" } else { "" }
        )?;
    }
    if let Some(png) = &a.png {
        writeln!(table, "plot written to {}", png.display())?;
    }
    a.report.emit(&json!({ "curves": curves }), &table)
}
