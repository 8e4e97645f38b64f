//! `exemplar circuits`: circuits from EP codes of attention heads (O'Neill & Bui's method),
//! checked by exact per-head patching, with MIB's faithfulness metrics and importance-score
//! export (`exemplar::analysis::circuits`).

use super::args::{check_output, fixed_or_dash, ReportOut};
use anyhow::{bail, Context, Result};
use clap::Args;
use exemplar::analysis::circuits::codes::Sharing;
use exemplar::analysis::circuits::mib::importance_graph;
use exemplar::analysis::circuits::patch::Pool;
use exemplar::analysis::circuits::run::{analyze, CircuitOptions, CircuitReport};
use exemplar::analysis::circuits::task::{encode_task, read_task, Head};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CircuitsArgs {
    /// Hugging Face checkpoint directory (runs on the CPU in f32).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The task: JSON Lines with prompt, answer, corrupted_prompt, wrong_answer (the answers one
    /// token each; clean and corrupted prompts of one length in tokens).
    #[arg(long, value_name = "FILE")]
    pub task: PathBuf,
    /// How a head's hook_z output becomes one vector per prompt.
    #[arg(long, default_value = "last", value_parser = ["mean", "last"])]
    pub pool: String,
    /// EP dictionaries: one per head, one shared by all heads, or both (a report each).
    #[arg(long, default_value = "both", value_parser = ["per-head", "shared", "both"])]
    pub codes: String,
    /// θ's percentile of the pairwise distances among the build rows.
    #[arg(long, short = 'p', default_value_t = 5.0, value_name = "P")]
    pub percentile: f64,
    /// Prompt pairs (the first ones) whose clean and corrupted outputs build the dictionaries.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub build_prompts: usize,
    /// Seed of the build rows' order and of the random rankings.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Divide node (edge) scores by the head's distinct codes (the pair's distinct code pairs).
    #[arg(long)]
    pub normalize: bool,
    /// Edges reported (default: heads²/2, the reference's k).
    #[arg(long, value_name = "N")]
    pub top_edges: Option<usize>,
    /// The ROC-AUC's ground truth: this many top heads by patching effect (default: 10% of
    /// the heads).
    #[arg(long, value_name = "N")]
    pub top_heads: Option<usize>,
    /// Random rankings averaged for the random ROC-AUC.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub random_trials: usize,
    /// Skip exact patching (no ROC-AUC, no patching ranking): EP codes and scores only.
    #[arg(long)]
    pub no_patching: bool,
    /// Skip the MIB faithfulness curves.
    #[arg(long)]
    pub no_faithfulness: bool,
    /// A circuit to evaluate too, comma-separated heads (a3.h1 or 3.1).
    #[arg(long, value_delimiter = ',', value_name = "HEAD")]
    pub circuit: Vec<String>,
    /// Prompt pairs per forward.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub batch: usize,
    /// Write the node and edge scores of the first --codes report (per-head with both) in MIB's
    /// circuit-track importance-score JSON layout here.
    #[arg(long, value_name = "FILE")]
    pub mib: Option<PathBuf>,
    /// Heads listed in the table.
    #[arg(long, default_value_t = 12, value_name = "N")]
    pub show: usize,
    #[command(flatten)]
    pub report: ReportOut,
}

pub fn circuits(a: CircuitsArgs) -> Result<()> {
    for o in a.report.out.iter().chain(&a.mib) {
        check_output(o, a.report.force)?;
    }
    if a.mib.is_some() && a.mib == a.report.out {
        bail!("--mib and --out name the same file");
    }
    if !(a.percentile > 0.0 && a.percentile < 100.0) {
        bail!("--percentile must be in (0, 100), got {}", a.percentile);
    }
    if a.build_prompts == 0 || a.batch == 0 {
        bail!("--build-prompts and --batch must be at least 1");
    }
    if a.no_patching && (a.top_heads.is_some()) {
        bail!("--top-heads needs patching (drop --no-patching)");
    }
    let config = exemplar::model::GemmaConfig::from_file(&a.model.join("config.json"))
        .with_context(|| {
            format!(
                "{} is not a Hugging Face checkpoint directory",
                a.model.display()
            )
        })?;
    let (nl, nhl) = (config.num_hidden_layers, config.num_attention_heads);
    let circuit = if a.circuit.is_empty() {
        None
    } else {
        if a.no_faithfulness {
            bail!("--circuit is evaluated with the faithfulness curves (drop --no-faithfulness)");
        }
        Some(
            a.circuit
                .iter()
                .map(|s| Head::parse(s, nl, nhl))
                .collect::<exemplar::Result<Vec<Head>>>()?,
        )
    };
    let items = read_task(&a.task)?;
    let tok = exemplar::model::Tokenizer::from_file(
        &a.model.join("tokenizer.json"),
        config.bos_token_id,
    )?;
    let encoded = encode_task(&a.task, &items, |t| tok.encode(t))?;
    let n = nl * nhl;
    if let Some(t) = a.top_heads {
        if t == 0 || t >= n {
            bail!(
                "--top-heads must be between 1 and {} (the model has {n} heads)",
                n - 1
            );
        }
    }
    let opts = CircuitOptions {
        pool: if a.pool == "mean" {
            Pool::Mean
        } else {
            Pool::Last
        },
        sharings: match a.codes.as_str() {
            "per-head" => vec![Sharing::PerHead],
            "shared" => vec![Sharing::Shared],
            _ => vec![Sharing::PerHead, Sharing::Shared],
        },
        percentile: a.percentile,
        build_prompts: a.build_prompts,
        seed: a.seed,
        normalize: a.normalize,
        top_edges: Some(a.top_edges.unwrap_or(n * n / 2)),
        patching: !a.no_patching,
        top_heads: a.top_heads.unwrap_or((n / 10).max(1)),
        random_trials: a.random_trials,
        faithfulness: !a.no_faithfulness,
        circuit,
        batch: a.batch,
    };
    let model = exemplar::model::Gemma::load(&a.model, tch::Kind::Float, tch::Device::Cpu)?;
    let mut pb: Option<indicatif::ProgressBar> = None;
    let report = {
        let pb_cell = std::cell::RefCell::new(&mut pb);
        analyze(
            &model,
            &encoded,
            &opts,
            &mut |what, total| {
                let mut slot = pb_cell.borrow_mut();
                if let Some(old) = slot.take() {
                    old.finish_and_clear();
                }
                **slot = Some(exemplar::progress::progress_bar(total, what));
            },
            &mut || {
                if let Some(p) = pb_cell.borrow().as_ref() {
                    p.inc(1);
                }
            },
        )?
    };
    if let Some(p) = pb {
        p.finish_and_clear();
    }
    if let Some(path) = &a.mib {
        let r = &report.codes[0];
        let g = importance_graph(
            nl,
            nhl,
            config.hidden_size,
            config.num_key_value_heads,
            &r.node_scores,
            &r.edge_scores,
        );
        exemplar::output::write_atomic(
            path,
            (serde_json::to_string(&g)? + "\n").as_bytes(),
            a.report.force,
        )?;
    }
    let mut value = serde_json::to_value(&report)?;
    value["task_file"] = a.task.display().to_string().into();
    value["model"] = a.model.display().to_string().into();
    if let Some(p) = &a.mib {
        value["mib_file"] = p.display().to_string().into();
    }
    let mut table = table(&report, a.show);
    if let Some(p) = &a.mib {
        writeln!(table, "MIB importance scores written to {}", p.display())?;
    }
    a.report.emit(&value, &table)
}

fn table(r: &CircuitReport, show: usize) -> String {
    let mut s = String::new();
    let t = &r.task;
    let _ = writeln!(
        s,
        "task: {} prompt pairs; logit difference clean {:.3} ({} > 0), corrupted {:.3} ({} > 0)",
        t.prompts,
        t.clean_ld_mean,
        t.clean_ld_positive,
        t.corrupted_ld_mean,
        t.corrupted_ld_positive
    );
    for c in &r.codes {
        let ks: Vec<usize> = c.dictionaries.iter().map(|d| d.regions).collect();
        let degenerate = c.dictionaries.iter().filter(|d| d.degenerate).count();
        let _ = writeln!(
            s,
            "EP codes {}: {} dictionar{} (K {}..{}{}), {} edges with a positive score; ROC-AUC vs patching {}",
            c.sharing.as_str(),
            ks.len(),
            if ks.len() == 1 { "y" } else { "ies" },
            ks.iter().min().unwrap_or(&0),
            ks.iter().max().unwrap_or(&0),
            if degenerate > 0 {
                format!(", {degenerate} degenerate")
            } else {
                String::new()
            },
            c.edges_positive,
            fixed_or_dash(c.auroc, 3)
        );
    }
    if let Some(p) = &r.patching {
        let _ = writeln!(
            s,
            "patching: ground truth = top {} heads by effect ({}); random ranking ROC-AUC {} ± {} over {} rankings",
            p.top_heads.len(),
            p.top_heads.join(" "),
            fixed_or_dash(p.auroc_random_mean, 3),
            fixed_or_dash(p.auroc_random_std, 3),
            p.random_trials
        );
    }
    // Heads: by patching effect when measured, else by the first code report.
    let order: Vec<usize> = match &r.patching {
        Some(p) => exemplar::analysis::circuits::score::ranking(&p.effects),
        None => exemplar::analysis::circuits::score::ranking(&r.codes[0].node_scores),
    };
    let _ = write!(s, "{:>5}  {:<8}", "rank", "head");
    for c in &r.codes {
        let _ = write!(s, "  {:>12}", format!("ep-{}", c.sharing.as_str()));
    }
    let _ = writeln!(s, "  {:>12}", "patch effect");
    for (i, &h) in order.iter().take(show).enumerate() {
        let _ = write!(s, "{:>5}  {:<8}", i + 1, r.head_name(h));
        for c in &r.codes {
            let _ = write!(s, "  {:>12.3}", c.node_scores[h]);
        }
        let _ = writeln!(
            s,
            "  {:>12}",
            fixed_or_dash(r.patching.as_ref().map(|p| p.effects[h]), 3)
        );
    }
    if let Some(fr) = &r.faithfulness {
        let _ = writeln!(
            s,
            "faithfulness (MIB, heads): m(N) = {:.3}, m(∅) = {:.3}",
            fr.m_full, fr.m_empty
        );
        let _ = write!(s, "{:>16}", "k%");
        for k in &fr.curves[0].fractions {
            let _ = write!(s, " {:>6}", format!("{}", k * 100.0));
        }
        let _ = writeln!(s, " {:>7} {:>7}", "CPR", "CMD");
        for c in &fr.curves {
            let _ = write!(s, "{:>16}", c.ranking);
            for v in &c.faithfulness {
                let _ = write!(s, " {v:>6.2}");
            }
            let _ = writeln!(s, " {:>7.3} {:>7.3}", c.cpr, c.cmd);
        }
        if let Some(g) = &fr.circuit {
            let _ = writeln!(
                s,
                "circuit {}: m(C) = {:.3}, f = {:.3}",
                g.heads.join(","),
                g.metric,
                g.faithfulness
            );
        }
    }
    let tm = &r.timing;
    let _ = write!(s, "seconds: forwards {:.2}", tm.forwards);
    for (sh, t) in &tm.ep {
        let _ = write!(s, ", EP {} {:.2}", sh.as_str(), t);
    }
    if let Some(p) = tm.patching {
        let _ = write!(s, ", patching {p:.2}");
    }
    if let Some(p) = tm.faithfulness {
        let _ = write!(s, ", faithfulness {p:.2}");
    }
    let _ = writeln!(s);
    s
}
