//! `iia`: interchange-intervention accuracy per layer and featurizer on a counterfactual task
//! (`exemplar::analysis::iia`): JSON report, per-intervention records, a table and a plot.

use super::args::check_output;
use super::on_model::load_model;
use anyhow::{bail, Context, Result};
use clap::Args;
use exemplar::analysis::iia::{self, IiaResult, IiaRun, Method};
use exemplar::eval::plot::{write_png_with, Panel, Series, XScale};
use exemplar::model::{HookKind, HookPoint};
use exemplar::output::write_atomic;
use exemplar::Dictionary;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct IiaArgs {
    /// Hugging Face checkpoint directory of the model.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The task: JSON Lines with base, source, base_answer, source_answer, counterfactual
    /// (answers one token each), base_variable, source_variable, split (train or test), id.
    #[arg(long, value_name = "FILE")]
    pub task: PathBuf,
    /// EP dictionaries built at `blocks.L.hook_resid_post` (the layer is read from their
    /// metadata), one per layer; repeat or comma-separate.
    #[arg(long, short = 'd', value_delimiter = ',', value_name = "FILE")]
    pub dictionary: Vec<PathBuf>,
    /// Layers to evaluate (default: the dictionaries' layers).
    #[arg(long, value_delimiter = ',', value_name = "L")]
    pub layers: Vec<usize>,
    /// Neuron counts of the identity featurizer's train-chosen subsets.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,8,64",
        value_name = "K"
    )]
    pub neurons: Vec<usize>,
    /// Features per row of the soft EP featurizer.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub soft_top_n: usize,
    /// Region counts of the EP featurizers' train-chosen subsets.
    #[arg(long, value_delimiter = ',', default_value = "8", value_name = "M")]
    pub regions: Vec<usize>,
    /// The position intervened on, counted from the end of each prompt: 1 = the last token.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub position_from_end: usize,
    /// Run only these methods (by name: full, neurons-K, ep-hard, ep-hard-M, ep-softN,
    /// ep-softN-M; default: all).
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub method: Vec<String>,
    /// Keep every pair (MIB keeps only pairs whose base and source the model answers correctly).
    #[arg(long)]
    pub keep_all: bool,
    /// Per-intervention records (JSON Lines: pair, layer, method, prediction, logits).
    #[arg(long, value_name = "FILE")]
    pub records: PathBuf,
    /// The table as Markdown.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// IIA against layer, one line per method (PNG).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// The JSON report.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite outputs.
    #[arg(long)]
    pub force: bool,
}

/// Layers as rows, methods as columns (IIA, or `–` without test pairs).
fn table(r: &IiaResult, layers: &[usize], markdown: bool) -> String {
    let mut s = String::new();
    let names: Vec<&str> = r.methods.iter().map(|m| m.name.as_str()).collect();
    let cell = |l: usize, m: &str| -> String {
        r.cells
            .iter()
            .find(|c| c.layer == l && c.method == m)
            .filter(|c| c.total > 0)
            .map_or("–".into(), |c| format!("{:.3}", c.iia))
    };
    if markdown {
        let _ = writeln!(s, "| layer | {} |", names.join(" | "));
        let _ = writeln!(s, "|---:|{}", "---:|".repeat(names.len()));
        for &l in layers {
            let row: Vec<String> = names.iter().map(|m| cell(l, m)).collect();
            let _ = writeln!(s, "| {l} | {} |", row.join(" | "));
        }
    } else {
        let _ = write!(s, "{:>5}", "layer");
        for n in &names {
            let _ = write!(s, " {:>11}", n);
        }
        s.push('\n');
        for &l in layers {
            let _ = write!(s, "{l:>5}");
            for n in &names {
                let _ = write!(s, " {:>11}", cell(l, n));
            }
            s.push('\n');
        }
    }
    s
}

pub fn iia(a: IiaArgs) -> Result<()> {
    for o in [
        Some(&a.out),
        Some(&a.records),
        a.markdown.as_ref(),
        a.plot.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        check_output(o, a.force)?;
    }
    let pairs = iia::read_task(&a.task)?;
    let mut dicts: BTreeMap<usize, Dictionary> = BTreeMap::new();
    let mut dict_info = BTreeMap::new();
    for p in &a.dictionary {
        let d = Dictionary::load(p)?;
        let Some(h) = d.info().hook.clone() else {
            bail!(
                "{}: no hook in its metadata; build it with --hook blocks.L.hook_resid_post",
                p.display()
            );
        };
        let hp = HookPoint::parse(&h).with_context(|| format!("{}: its hook", p.display()))?;
        if hp.kind != HookKind::ResidPost {
            bail!(
                "{}: built at {h}; iia intervenes at blocks.L.hook_resid_post",
                p.display()
            );
        }
        if dicts.contains_key(&hp.layer) {
            bail!(
                "{}: a second dictionary for layer {}",
                p.display(),
                hp.layer
            );
        }
        dict_info.insert(
            hp.layer,
            json!({"path": p.display().to_string(), "k": d.len(), "dim": d.dim(), "theta": d.theta()}),
        );
        dicts.insert(hp.layer, d);
    }
    let layers: Vec<usize> = if a.layers.is_empty() {
        dicts.keys().copied().collect()
    } else {
        a.layers.clone()
    };
    let (model, tok) = load_model(&a.model)?;
    for (l, d) in &dicts {
        if d.dim() != model.config.hidden_size {
            bail!(
                "{}: {} wide, but {}'s residual stream is {} (a dictionary of another model?)",
                dict_info[l]["path"].as_str().unwrap_or_default(),
                d.dim(),
                a.model.display(),
                model.config.hidden_size
            );
        }
    }
    let tokens = iia::tokenize(&tok, &pairs, &a.task)?;
    let mut methods = Method::standard(&a.neurons, a.soft_top_n, &a.regions);
    if let Some(bad) = a
        .method
        .iter()
        .find(|n| !methods.iter().any(|m| &m.name == *n))
    {
        let names: Vec<&str> = methods.iter().map(|m| m.name.as_str()).collect();
        bail!("--method {bad}: not one of {}", names.join(", "));
    }
    if !a.method.is_empty() {
        methods.retain(|m| a.method.contains(&m.name));
    }
    let run = IiaRun {
        pairs: &pairs,
        tokens: &tokens,
        dictionaries: &dicts,
        layers: &layers,
        methods: &methods,
        keep_all: a.keep_all,
        from_end: a.position_from_end,
    };
    iia::check(&model, &run)?;
    let mut file = exemplar::output::AtomicFile::create(&a.records, a.force)?;
    let n_test = pairs.iter().filter(|p| p.split == "test").count();
    let pb = exemplar::progress::progress_bar((pairs.len() + n_test) as u64, "pairs");
    let res = iia::run(
        &model,
        &run,
        |r| {
            let line = serde_json::to_string(r)
                .map_err(|e| exemplar::Error::param("record", e.to_string()))?;
            use std::io::Write;
            writeln!(file, "{line}").map_err(|e| exemplar::Error::io(&a.records, e))
        },
        || pb.inc(1),
    )?;
    pb.finish_and_clear();
    file.commit()?;
    let report = json!({
        "model": a.model.display().to_string(),
        "task": a.task.display().to_string(),
        "hook": "blocks.L.hook_resid_post",
        "position_from_end": a.position_from_end,
        "position": format!("token {} from the end of base (edited) and of source (read); 1 = the last", a.position_from_end),
        "selection_rule": "per feature, (max − min over the causal variable's values of the class mean) / standard deviation, on the features of the kept train pairs' base and source activations; the largest win, ties to the lower index",
        "keep_all": a.keep_all,
        "layers": layers,
        "dictionaries": dict_info,
        "result": res,
    });
    write_atomic(
        &a.out,
        serde_json::to_string_pretty(&report)?.as_bytes(),
        a.force,
    )?;
    let acc = |s: &str, x: &iia::Accuracy| {
        format!(
            "{s}: {} pairs, base correct {}, source correct {}, both {}, kept {}",
            x.pairs, x.base_correct, x.source_correct, x.both_correct, x.kept
        )
    };
    println!("{}", acc("train", &res.train));
    println!("{}", acc("test", &res.test));
    println!(
        "IIA on the kept test pairs ({} per cell), token {} from the end, blocks.L.hook_resid_post:",
        res.test.kept, a.position_from_end
    );
    print!("{}", table(&res, &layers, false));
    if let Some(p) = &a.markdown {
        write_atomic(p, table(&res, &layers, true).as_bytes(), a.force)?;
    }
    if let Some(p) = &a.plot {
        let series = res
            .methods
            .iter()
            .map(|m| Series {
                name: m.name.clone(),
                points: res
                    .cells
                    .iter()
                    .filter(|c| c.method == m.name && c.total > 0)
                    .map(|c| (c.layer as f64, c.iia, String::new()))
                    .collect(),
            })
            .collect();
        let panel = Panel {
            title: format!("IIA on {} test pairs", res.test.kept),
            x_label: "layer (resid_post)".into(),
            y_label: "IIA".into(),
            series,
        };
        write_png_with(p, &[panel], XScale::Linear, a.force)?;
    }
    println!(
        "records → {}, report → {}",
        a.records.display(),
        a.out.display()
    );
    Ok(())
}
