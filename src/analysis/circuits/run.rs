//! The whole circuit analysis of one task on a live model (feature `torch`): clean and
//! corrupted runs, EP codes and their node and edge scores, exact per-head patching, ROC-AUC of
//! the scores against the top heads by patching effect, and MIB faithfulness curves.

use super::codes::{ep_codes, CodeConfig, Codes, DictSummary, Sharing};
use super::faithfulness::{faithfulness, kept, Curve, MIB_FRACTIONS};
use super::patch::{mean, run_task, Pool, TaskRuns};
use super::score::{edge_scores, node_scores, random_scores, ranking, roc_auc, EdgeScore};
use super::task::{EncodedItem, Head};
use crate::error::{Error, Result};
use crate::model::Gemma;
use serde::Serialize;
use std::time::Instant;

/// What to compute.
#[derive(Debug, Clone)]
pub struct CircuitOptions {
    pub pool: Pool,
    /// Code dictionaries: per head, shared, or both (one report each).
    pub sharings: Vec<Sharing>,
    pub percentile: f64,
    pub build_prompts: usize,
    pub seed: u64,
    /// Normalise node and edge scores by the number of distinct codes (pairs).
    pub normalize: bool,
    /// Edges kept per report (`None`: every positive one).
    pub top_edges: Option<usize>,
    /// Run exact per-head patching (ROC-AUC and the patching ranking need it).
    pub patching: bool,
    /// The ground truth of the ROC-AUC: the top heads by patching effect.
    pub top_heads: usize,
    /// Random rankings averaged for the random ROC-AUC.
    pub random_trials: usize,
    /// Faithfulness curves (11 patched forwards per ranking).
    pub faithfulness: bool,
    /// A hand-given circuit whose faithfulness is reported.
    pub circuit: Option<Vec<Head>>,
    /// Prompt pairs per forward.
    pub batch: usize,
}

/// One prompt pair's logit differences.
#[derive(Debug, Clone, Serialize)]
pub struct PromptLd {
    pub line: usize,
    pub clean: f64,
    pub corrupted: f64,
}

/// The task on the model, unpatched.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary {
    pub prompts: usize,
    pub clean_ld_mean: f64,
    pub corrupted_ld_mean: f64,
    /// Prompts whose clean logit difference is positive.
    pub clean_ld_positive: usize,
    /// Prompts whose corrupted logit difference is positive.
    pub corrupted_ld_positive: usize,
    pub per_prompt: Vec<PromptLd>,
}

/// One edge, named.
#[derive(Debug, Clone, Serialize)]
pub struct NamedEdge {
    pub from: String,
    pub to: String,
    pub positive_only: usize,
    pub distinct: usize,
    pub score: f64,
}

/// The EP-code scores of one sharing.
#[derive(Debug, Clone, Serialize)]
pub struct CodeReport {
    pub sharing: Sharing,
    pub dictionaries: Vec<DictSummary>,
    /// Per head (flat order): the node score.
    pub node_scores: Vec<f64>,
    /// Per head: codes seen on positives only, and distinct codes.
    pub positive_only: Vec<usize>,
    pub distinct: Vec<usize>,
    /// Heads by descending node score.
    pub ranking: Vec<String>,
    pub edges: Vec<NamedEdge>,
    /// Head pairs with a positive edge score (before `top_edges`).
    pub edges_positive: usize,
    /// `[prompt][head]` codes of the clean and corrupted prompts.
    pub codes_clean: Vec<Vec<u32>>,
    pub codes_corrupted: Vec<Vec<u32>>,
    /// ROC-AUC of the node scores against the top heads by patching effect.
    pub auroc: Option<f64>,
    /// Seconds: building the dictionaries, assigning codes, node and edge scores.
    pub seconds: f64,
    #[serde(skip)]
    pub edge_scores: Vec<EdgeScore>,
}

/// Exact patching.
#[derive(Debug, Clone, Serialize)]
pub struct PatchingReport {
    /// Per head (flat order): mean clean LD − mean LD with the head patched.
    pub effects: Vec<f64>,
    /// Heads by descending effect.
    pub ranking: Vec<String>,
    /// The ROC-AUC ground truth.
    pub top_heads: Vec<String>,
    /// ROC-AUC of seeded random rankings: the mean, standard deviation and the first one.
    pub auroc_random_mean: Option<f64>,
    pub auroc_random_std: Option<f64>,
    pub auroc_random_first: Option<f64>,
    pub random_trials: usize,
    pub seconds: f64,
}

/// The faithfulness of a hand-given circuit.
#[derive(Debug, Clone, Serialize)]
pub struct GivenCircuit {
    pub heads: Vec<String>,
    pub metric: f64,
    pub faithfulness: f64,
}

/// MIB faithfulness.
#[derive(Debug, Clone, Serialize)]
pub struct FaithfulnessReport {
    /// Mean clean LD: every head kept.
    pub m_full: f64,
    /// Mean LD with every head patched from the corrupted run.
    pub m_empty: f64,
    pub curves: Vec<Curve>,
    pub circuit: Option<GivenCircuit>,
    pub seconds: f64,
}

/// Wall-clock seconds of each part.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// The clean and corrupted forwards (shared by EP and patching).
    pub forwards: f64,
    /// Per sharing: codes and scores.
    pub ep: Vec<(Sharing, f64)>,
    pub patching: Option<f64>,
    pub faithfulness: Option<f64>,
}

/// The report of [`analyze`].
#[derive(Debug, Clone, Serialize)]
pub struct CircuitReport {
    pub layers: usize,
    pub heads_per_layer: usize,
    pub pool: Pool,
    pub percentile: f64,
    pub build_prompts: usize,
    pub seed: u64,
    pub normalize: bool,
    pub task: TaskSummary,
    pub codes: Vec<CodeReport>,
    pub patching: Option<PatchingReport>,
    pub faithfulness: Option<FaithfulnessReport>,
    pub timing: Timing,
}

impl CircuitReport {
    /// The name of flat head `i`.
    pub fn head_name(&self, i: usize) -> String {
        Head {
            layer: i / self.heads_per_layer,
            head: i % self.heads_per_layer,
        }
        .name()
    }
}

fn rows_of(t: &[u32], nh: usize) -> Vec<Vec<u32>> {
    t.chunks_exact(nh).map(|r| r.to_vec()).collect()
}

fn code_report(
    codes: Codes,
    opts: &CircuitOptions,
    name: &dyn Fn(usize) -> String,
    started: Instant,
) -> Result<CodeReport> {
    let nh = codes.n_heads;
    let nodes = node_scores(&codes.positive, &codes.negative, nh, opts.normalize)?;
    let all_edges = edge_scores(&codes.positive, &codes.negative, nh, opts.normalize, None)?;
    let scores: Vec<f64> = nodes.iter().map(|n| n.score).collect();
    let edges_positive = all_edges.len();
    let mut kept_edges = all_edges;
    if let Some(t) = opts.top_edges {
        kept_edges.truncate(t);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(CodeReport {
        sharing: codes.sharing,
        dictionaries: codes.dictionaries,
        ranking: ranking(&scores).into_iter().map(name).collect(),
        positive_only: nodes.iter().map(|n| n.positive_only).collect(),
        distinct: nodes.iter().map(|n| n.distinct).collect(),
        node_scores: scores,
        edges: kept_edges
            .iter()
            .map(|e| NamedEdge {
                from: name(e.a),
                to: name(e.b),
                positive_only: e.positive_only,
                distinct: e.distinct,
                score: e.score,
            })
            .collect(),
        edges_positive,
        codes_clean: rows_of(&codes.positive, nh),
        codes_corrupted: rows_of(&codes.negative, nh),
        auroc: None,
        seconds,
        edge_scores: kept_edges,
    })
}

/// The mean curve of a ranking: keep the top `⌊k·n⌋` heads of `order` at each MIB size.
fn curve(
    runs: &TaskRuns,
    model: &Gemma,
    name: &str,
    order: &[usize],
    m_full: f64,
    m_empty: f64,
    step: &mut dyn FnMut(),
) -> Result<Curve> {
    let n = order.len();
    let mut metric = vec![];
    for &k in &MIB_FRACTIONS {
        let c = kept(k, n);
        let m = if c == 0 {
            m_empty
        } else if c == n {
            m_full
        } else {
            let mut keep = vec![false; n];
            for &i in &order[..c] {
                keep[i] = true;
            }
            runs.circuit_metric(model, &keep)?
        };
        metric.push(m);
        step();
    }
    Curve::new(name, &MIB_FRACTIONS, n, metric, m_full, m_empty)
}

/// Runs the analysis. `progress(what, total)` starts a stage of `total` steps; `step()` ends
/// one.
pub fn analyze(
    model: &Gemma,
    items: &[EncodedItem],
    opts: &CircuitOptions,
    progress: &mut dyn FnMut(&str, u64),
    step: &mut dyn FnMut(),
) -> Result<CircuitReport> {
    if opts.sharings.is_empty() {
        return Err(Error::param("codes", "choose per-head, shared or both"));
    }
    let c = &model.config;
    let (nl, nhl) = (c.num_hidden_layers, c.num_attention_heads);
    if let Some(circ) = &opts.circuit {
        for h in circ {
            Head::parse(&h.name(), nl, nhl)?;
        }
    }
    let name = |i: usize| {
        Head {
            layer: i / nhl,
            head: i % nhl,
        }
        .name()
    };
    let t0 = Instant::now();
    let runs = run_task(model, items, opts.batch, opts.pool)?;
    let forwards = t0.elapsed().as_secs_f64();
    let n = runs.total_heads();
    let task = TaskSummary {
        prompts: items.len(),
        clean_ld_mean: mean(&runs.clean_ld),
        corrupted_ld_mean: mean(&runs.corrupted_ld),
        clean_ld_positive: runs.clean_ld.iter().filter(|v| **v > 0.0).count(),
        corrupted_ld_positive: runs.corrupted_ld.iter().filter(|v| **v > 0.0).count(),
        per_prompt: items
            .iter()
            .zip(runs.clean_ld.iter().zip(&runs.corrupted_ld))
            .map(|(it, (a, b))| PromptLd {
                line: it.line,
                clean: *a,
                corrupted: *b,
            })
            .collect(),
    };
    let mut codes = vec![];
    let mut ep_timing = vec![];
    for &sharing in &opts.sharings {
        let t = Instant::now();
        let cfg = CodeConfig {
            sharing,
            percentile: opts.percentile,
            build_prompts: opts.build_prompts,
            seed: opts.seed,
        };
        let cb = ep_codes(&runs.rows, &cfg)?;
        let r = code_report(cb, opts, &name, t)?;
        ep_timing.push((sharing, r.seconds));
        codes.push(r);
    }
    let mut patching = None;
    if opts.patching {
        progress("patching", n as u64);
        let t = Instant::now();
        let effects = runs.head_effects(model, step)?;
        let seconds = t.elapsed().as_secs_f64();
        let order = ranking(&effects);
        let top = opts.top_heads.min(n);
        let mut labels = vec![false; n];
        for &i in &order[..top] {
            labels[i] = true;
        }
        for r in &mut codes {
            r.auroc = roc_auc(&r.node_scores, &labels);
        }
        let trials = opts.random_trials;
        let aucs: Vec<f64> = (0..trials as u64)
            .filter_map(|tr| roc_auc(&random_scores(n, opts.seed, tr), &labels))
            .collect();
        let (m, sd) = if aucs.is_empty() {
            (None, None)
        } else {
            let m = mean(&aucs);
            let v = aucs.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / aucs.len() as f64;
            (Some(m), Some(v.sqrt()))
        };
        patching = Some(PatchingReport {
            ranking: order.iter().map(|&i| name(i)).collect(),
            top_heads: order[..top].iter().map(|&i| name(i)).collect(),
            auroc_random_mean: m,
            auroc_random_std: sd,
            auroc_random_first: aucs.first().copied(),
            random_trials: trials,
            effects,
            seconds,
        });
    }
    let mut faith = None;
    if opts.faithfulness {
        let t = Instant::now();
        let m_full = mean(&runs.clean_ld);
        let m_empty = runs.circuit_metric(model, &vec![false; n])?;
        let mut rankings: Vec<(String, Vec<usize>)> = codes
            .iter()
            .map(|r| {
                (
                    format!("ep-{}", r.sharing.as_str()),
                    ranking(&r.node_scores),
                )
            })
            .collect();
        if let Some(p) = &patching {
            rankings.push(("patching".into(), ranking(&p.effects)));
        }
        rankings.push(("random".into(), ranking(&random_scores(n, opts.seed, 0))));
        progress(
            "faithfulness",
            (rankings.len() * MIB_FRACTIONS.len()) as u64,
        );
        let mut curves = vec![];
        for (rname, order) in &rankings {
            curves.push(curve(&runs, model, rname, order, m_full, m_empty, step)?);
        }
        let circuit = match &opts.circuit {
            None => None,
            Some(hs) => {
                let mut keep = vec![false; n];
                for h in hs {
                    keep[h.flat(nhl)] = true;
                }
                let metric = runs.circuit_metric(model, &keep)?;
                Some(GivenCircuit {
                    heads: hs.iter().map(|h| h.name()).collect(),
                    metric,
                    faithfulness: faithfulness(metric, m_full, m_empty)?,
                })
            }
        };
        faith = Some(FaithfulnessReport {
            m_full,
            m_empty,
            curves,
            circuit,
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    Ok(CircuitReport {
        layers: nl,
        heads_per_layer: nhl,
        pool: opts.pool,
        percentile: opts.percentile,
        build_prompts: opts.build_prompts,
        seed: opts.seed,
        normalize: opts.normalize,
        task,
        codes,
        timing: Timing {
            forwards,
            ep: ep_timing,
            patching: patching.as_ref().map(|p| p.seconds),
            faithfulness: faith.as_ref().map(|f| f.seconds),
        },
        patching,
        faithfulness: faith,
    })
}
