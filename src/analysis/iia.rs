//! Interchange-intervention accuracy (IIA, MIB's causal-variable track) computed here: on a
//! counterfactual task of base/source prompt pairs, at each layer's `resid_post` at the last
//! token (or a stated position from the end), the activation of the base is replaced by the interchange of a featurizer's features
//! (`f_b[idx] = f_s[idx]`, `x' = inverse(f_b, error_b)`, [`Featurizer::interchange`]) and the
//! intervened greedy next token is compared with the causal model's counterfactual answer.
//!
//! Methods: the full vector (identity featurizer, every dimension: the upper bound at a
//! layer), neurons (identity, the `k` dimensions chosen on the train split), and EP hard / soft
//! featurizers with every region swapped or the `m` regions chosen on the train split. The
//! choice rule, for neurons and regions alike: per feature, the range of its class means over
//! the causal variable's values divided by its standard deviation, on the features of the
//! train pairs' base and source activations (each labelled with its own variable value); the
//! largest scores win (ties to the lower index). IIA is measured on the test split, over the
//! pairs whose base and source the model answers correctly (as MIB keeps them).

use super::featurizer::Featurizer;
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::model::{Edit, Gemma, HookKind, HookPoint, Intervention, Logits, Tokenizer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// One base/source pair of the task file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pair {
    pub id: String,
    pub base: String,
    pub source: String,
    pub base_answer: String,
    pub source_answer: String,
    pub counterfactual: String,
    /// The causal variable's value in the base and in the source (for the train-split choice
    /// of features).
    pub base_variable: String,
    pub source_variable: String,
    /// `train` or `test`.
    pub split: String,
}

/// A pair's prompts and answers as tokens.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub base: Vec<i64>,
    pub source: Vec<i64>,
    pub base_answer: i64,
    pub source_answer: i64,
    pub counterfactual: i64,
}

const FIELDS: [&str; 8] = [
    "base",
    "source",
    "base_answer",
    "source_answer",
    "counterfactual",
    "base_variable",
    "source_variable",
    "split",
];

/// A JSON scalar as a string (strings as they are, numbers and booleans as JSON writes them).
fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads a task file (JSON Lines, one pair per line; `id` optional, the line number by
/// default). Errors name the file, the line and the field.
pub fn read_task(path: &Path) -> Result<Vec<Pair>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |m: String| Error::format(path, format!("line {}: {m}", i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let mut f = BTreeMap::new();
        for name in FIELDS {
            let s = v
                .get(name)
                .and_then(scalar)
                .ok_or_else(|| at(format!("no field `{name}` (a string or number)")))?;
            f.insert(name, s);
        }
        let split = f["split"].clone();
        if split != "train" && split != "test" {
            return Err(at(format!("`split` is {split:?}: train or test")));
        }
        out.push(Pair {
            id: v
                .get("id")
                .and_then(scalar)
                .unwrap_or_else(|| (i + 1).to_string()),
            base: f["base"].clone(),
            source: f["source"].clone(),
            base_answer: f["base_answer"].clone(),
            source_answer: f["source_answer"].clone(),
            counterfactual: f["counterfactual"].clone(),
            base_variable: f["base_variable"].clone(),
            source_variable: f["source_variable"].clone(),
            split,
        });
    }
    if out.is_empty() {
        return Err(Error::EmptyInput(format!(
            "{}: no pair in it",
            path.display()
        )));
    }
    Ok(out)
}

/// Tokenizes every pair; an answer that is not exactly one token is an error naming the file,
/// the pair and the field.
pub fn tokenize(tok: &Tokenizer, pairs: &[Pair], path: &Path) -> Result<Vec<TokenPair>> {
    let mut out = vec![];
    for p in pairs {
        let one = |field: &str, s: &str| -> Result<i64> {
            let ids = tok.encode_plain(s)?;
            if ids.len() != 1 {
                return Err(Error::format(
                    path,
                    format!(
                        "pair {}: `{field}` {s:?} is {} tokens {ids:?}; an answer must be one token (mind the leading space)",
                        p.id,
                        ids.len()
                    ),
                ));
            }
            Ok(ids[0])
        };
        out.push(TokenPair {
            base: tok.encode(&p.base)?,
            source: tok.encode(&p.source)?,
            base_answer: one("base_answer", &p.base_answer)?,
            source_answer: one("source_answer", &p.source_answer)?,
            counterfactual: one("counterfactual", &p.counterfactual)?,
        });
    }
    Ok(out)
}

/// How a method's features are chosen.
#[derive(Debug, Clone, Serialize)]
pub enum Selection {
    /// Every feature.
    All,
    /// The `k` features of largest score on the train split.
    Top(usize),
}

/// A method: a featurizer kind and a selection.
#[derive(Debug, Clone, Serialize)]
pub struct Method {
    pub name: String,
    /// `identity` or `ep`.
    pub featurizer: String,
    /// EP features per row (1 = hard); `None` for the identity.
    pub top_n: Option<usize>,
    pub selection: Selection,
}

impl Method {
    /// The usual set: full vector, neurons top-k for each of `neurons`, EP hard and soft
    /// (`soft_top_n`) with every region and with the top `regions` each.
    pub fn standard(neurons: &[usize], soft_top_n: usize, regions: &[usize]) -> Vec<Method> {
        let mut m = vec![Method {
            name: "full".into(),
            featurizer: "identity".into(),
            top_n: None,
            selection: Selection::All,
        }];
        for &k in neurons {
            m.push(Method {
                name: format!("neurons-{k}"),
                featurizer: "identity".into(),
                top_n: None,
                selection: Selection::Top(k),
            });
        }
        for (n, label) in [
            (1, "ep-hard".to_string()),
            (soft_top_n, format!("ep-soft{soft_top_n}")),
        ] {
            m.push(Method {
                name: label.clone(),
                featurizer: "ep".into(),
                top_n: Some(n),
                selection: Selection::All,
            });
            for &r in regions {
                m.push(Method {
                    name: format!("{label}-{r}"),
                    featurizer: "ep".into(),
                    top_n: Some(n),
                    selection: Selection::Top(r),
                });
            }
        }
        m
    }
}

/// What to run.
pub struct IiaRun<'a> {
    pub pairs: &'a [Pair],
    pub tokens: &'a [TokenPair],
    /// Layer → its dictionary (`blocks.L.hook_resid_post`).
    pub dictionaries: &'a BTreeMap<usize, Dictionary>,
    pub layers: &'a [usize],
    pub methods: &'a [Method],
    /// Keep every pair, not only those the model answers correctly.
    pub keep_all: bool,
    /// The position edited in the base and read in the source, counted from the end
    /// (1 = the last token, 2 = the one before it, ...).
    pub from_end: usize,
}

/// The model's answers to one pair, unedited.
#[derive(Debug, Clone, Serialize)]
pub struct PairRecord {
    pub id: String,
    pub split: String,
    /// The prompts' tokens (BOS first).
    pub base_ids: Vec<i64>,
    pub source_ids: Vec<i64>,
    pub base_prediction: i64,
    pub source_prediction: i64,
    pub base_correct: bool,
    pub source_correct: bool,
    pub kept: bool,
}

/// One intervention: a test pair at a layer with a method.
#[derive(Debug, Clone, Serialize)]
pub struct InterventionRecord {
    pub id: String,
    pub layer: usize,
    pub method: String,
    /// The position edited in the base and read in the source (token index, BOS = 0).
    pub base_position: usize,
    pub source_position: usize,
    pub counterfactual: i64,
    /// The intervened greedy next token and its logit; the counterfactual answer's logit.
    pub prediction: i64,
    pub prediction_logit: f64,
    pub counterfactual_logit: f64,
    pub correct: bool,
}

/// IIA of a method at a layer.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub layer: usize,
    pub method: String,
    pub correct: usize,
    pub total: usize,
    pub iia: f64,
}

/// The model's accuracy on the task before any intervention.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Accuracy {
    pub pairs: usize,
    pub base_correct: usize,
    pub source_correct: usize,
    pub both_correct: usize,
    pub kept: usize,
}

/// Everything the report holds.
#[derive(Debug, Clone, Serialize)]
pub struct IiaResult {
    pub train: Accuracy,
    pub test: Accuracy,
    pub methods: Vec<Method>,
    /// Method → layer → the chosen features (absent for `All`).
    pub indices: BTreeMap<String, BTreeMap<usize, Vec<i64>>>,
    pub cells: Vec<Cell>,
    pub pairs: Vec<PairRecord>,
}

/// Checks dictionaries, layers and methods against the model before any forward.
pub fn check(model: &Gemma, run: &IiaRun) -> Result<()> {
    let c = &model.config;
    if run.layers.is_empty() {
        return Err(Error::param("layer", "no layer to evaluate"));
    }
    for &l in run.layers {
        if l >= c.num_hidden_layers {
            return Err(Error::param(
                "layer",
                format!(
                    "{l}: the model has {} blocks (0..{})",
                    c.num_hidden_layers,
                    c.num_hidden_layers - 1
                ),
            ));
        }
        let needs_ep = run.methods.iter().any(|m| m.featurizer == "ep");
        match run.dictionaries.get(&l) {
            None if needs_ep => {
                return Err(Error::param(
                    "dictionary",
                    format!(
                    "layer {l} has no dictionary (give one built at blocks.{l}.hook_resid_post)"
                ),
                ))
            }
            Some(d) if d.dim() != c.hidden_size => {
                return Err(Error::param(
                    "dictionary",
                    format!(
                        "the dictionary of layer {l} is {} wide; the model's residual stream is {}",
                        d.dim(),
                        c.hidden_size
                    ),
                ))
            }
            Some(d) => {
                for m in run.methods {
                    if let Some(n) = m.top_n {
                        Featurizer::ep(d, n).map_err(|e| {
                            Error::param("dictionary", format!("layer {l}, method {}: {e}", m.name))
                        })?;
                    }
                }
            }
            None => {}
        }
    }
    for m in run.methods {
        if let Selection::Top(0) = m.selection {
            return Err(Error::param(
                "method",
                format!("{}: choose at least one feature", m.name),
            ));
        }
    }
    if run.pairs.len() != run.tokens.len() {
        return Err(Error::param("pairs", "one token pair per pair"));
    }
    Ok(())
}

/// The position `from_end` tokens before the end of `ids` (1 = the last), never the BOS.
fn position(ids: &[i64], from_end: usize, id: &str, which: &str) -> Result<i64> {
    if from_end == 0 || from_end >= ids.len() {
        return Err(Error::param(
            "position",
            format!(
                "pair {id}: the {which} prompt has {} tokens after the BOS; position {from_end} from the end is not one of them",
                ids.len() - 1
            ),
        ));
    }
    Ok((ids.len() - from_end) as i64)
}

fn hook(layer: usize) -> HookPoint {
    HookPoint {
        layer,
        kind: HookKind::ResidPost,
    }
}

/// Forward of one prompt: the activation at position `pos` at every layer (`[layers, d]`) and
/// the greedy next token.
fn read(model: &Gemma, ids: &[i64], layers: &[usize], pos: i64) -> Result<(Tensor, i64)> {
    let x = Tensor::from_slice(ids)
        .view([1, -1])
        .to_device(model.device());
    let hooks: Vec<HookPoint> = layers.iter().map(|&l| hook(l)).collect();
    let out = model.forward_with(&x, &x.ones_like(), &hooks, &[], Logits::Last)?;
    let acts: Vec<Tensor> = hooks
        .iter()
        .map(|h| {
            out.hooks[h]
                .get(0)
                .get(pos)
                .to_kind(Kind::Float)
                .to_device(Device::Cpu)
        })
        .collect();
    let pred = out
        .logits
        .expect("logits asked for")
        .get(0)
        .argmax(-1, false)
        .int64_value(&[]);
    Ok((Tensor::stack(&acts, 0), pred))
}

/// The chosen features of `feats` `[n, F]` with class labels `labels`: the `k` largest
/// (class-mean range / standard deviation), ties to the lower index.
pub fn choose(feats: &Tensor, labels: &[String], k: usize) -> Vec<i64> {
    let f = feats.to_kind(Kind::Double);
    let n_feat = f.size()[1];
    let mut classes: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (i, l) in labels.iter().enumerate() {
        classes.entry(l).or_default().push(i as i64);
    }
    let means: Vec<Tensor> = classes
        .values()
        .map(|rows| {
            f.index_select(0, &Tensor::from_slice(rows))
                .mean_dim(0, false, Kind::Double)
        })
        .collect();
    let m = Tensor::stack(&means, 0);
    let range = m.amax(0, false) - m.amin(0, false);
    let sd = f.std_correction([0i64].as_slice(), 0i64, false);
    let score: Vec<f64> = Vec::try_from(&range / (sd + 1e-12)).expect("f64 scores");
    let mut idx: Vec<i64> = (0..n_feat).collect();
    idx.sort_by(|&a, &b| {
        score[b as usize]
            .total_cmp(&score[a as usize])
            .then(a.cmp(&b))
    });
    idx.truncate(k.min(n_feat as usize));
    idx
}

/// Runs the task: unedited answers of every pair, the train-split choices, then every method at
/// every layer on the kept test pairs. `each` sees each intervention record as it is made;
/// `progress` is called once per pair read and per test pair evaluated.
pub fn run(
    model: &Gemma,
    run: &IiaRun,
    mut each: impl FnMut(&InterventionRecord) -> Result<()>,
    mut progress: impl FnMut(),
) -> Result<IiaResult> {
    check(model, run)?;
    let _guard = tch::no_grad_guard();
    let d = model.config.hidden_size;
    // 1. Unedited: the activations at the last token of base and source, and the answers.
    let mut acts = vec![];
    let mut pairs = vec![];
    let (mut train, mut test) = (Accuracy::default(), Accuracy::default());
    for (p, t) in run.pairs.iter().zip(run.tokens) {
        let (xb, pb) = read(
            model,
            &t.base,
            run.layers,
            position(&t.base, run.from_end, &p.id, "base")?,
        )?;
        let (xs, ps) = read(
            model,
            &t.source,
            run.layers,
            position(&t.source, run.from_end, &p.id, "source")?,
        )?;
        let (bc, sc) = (pb == t.base_answer, ps == t.source_answer);
        let kept = run.keep_all || (bc && sc);
        let acc = if p.split == "train" {
            &mut train
        } else {
            &mut test
        };
        acc.pairs += 1;
        acc.base_correct += bc as usize;
        acc.source_correct += sc as usize;
        acc.both_correct += (bc && sc) as usize;
        acc.kept += kept as usize;
        pairs.push(PairRecord {
            id: p.id.clone(),
            split: p.split.clone(),
            base_ids: t.base.clone(),
            source_ids: t.source.clone(),
            base_prediction: pb,
            source_prediction: ps,
            base_correct: bc,
            source_correct: sc,
            kept,
        });
        acts.push((xb, xs));
        progress();
    }
    // 2. Featurizers per (method, layer) and the train-split choices.
    let featurizer = |m: &Method, l: usize| -> Result<Featurizer> {
        match m.top_n {
            None => Ok(Featurizer::Identity { dim: d }),
            Some(n) => Featurizer::ep(&run.dictionaries[&l], n),
        }
    };
    let train_rows: Vec<usize> = (0..run.pairs.len())
        .filter(|&i| run.pairs[i].split == "train" && pairs[i].kept)
        .collect();
    let mut labels = vec![];
    for &i in &train_rows {
        labels.push(run.pairs[i].base_variable.clone());
        labels.push(run.pairs[i].source_variable.clone());
    }
    let mut indices: BTreeMap<String, BTreeMap<usize, Vec<i64>>> = BTreeMap::new();
    let mut fz: BTreeMap<(usize, usize), Featurizer> = BTreeMap::new();
    for (mi, m) in run.methods.iter().enumerate() {
        for (li, &l) in run.layers.iter().enumerate() {
            let f = featurizer(m, l)?;
            if let Selection::Top(k) = m.selection {
                if train_rows.is_empty() {
                    return Err(Error::param(
                        "task",
                        format!(
                            "method {} chooses features on the train split, which has no kept pair",
                            m.name
                        ),
                    ));
                }
                let rows: Vec<Tensor> = train_rows
                    .iter()
                    .flat_map(|&i| [acts[i].0.get(li as i64), acts[i].1.get(li as i64)])
                    .collect();
                let (feats, _) = f.forward(&Tensor::stack(&rows, 0));
                indices
                    .entry(m.name.clone())
                    .or_default()
                    .insert(l, choose(&feats, &labels, k));
            }
            fz.insert((mi, li), f);
        }
    }
    // 3. Every method at every layer on each kept test pair: the methods as the batch; the
    // positions before the edited one are the base's own at every layer and method, so their
    // keys and values are computed once per pair and each (pair, layer) forward runs the rest.
    let mut counts: BTreeMap<(usize, usize), (usize, usize)> = BTreeMap::new();
    let n_methods = run.methods.len() as i64;
    let dev = model.device();
    for (i, (p, t)) in run.pairs.iter().zip(run.tokens).enumerate() {
        if p.split != "test" || !pairs[i].kept {
            continue;
        }
        let pos = position(&t.base, run.from_end, &p.id, "base")?;
        let source_pos = position(&t.source, run.from_end, &p.id, "source")?;
        let batch = |ids: &[i64]| {
            let x = Tensor::from_slice(ids)
                .view([1, -1])
                .repeat([n_methods, 1])
                .to_device(dev);
            let m = x.ones_like();
            (x, m)
        };
        let mut prefix = model.new_cache();
        let (x, m) = batch(&t.base[..pos as usize]);
        model.forward_cached(&x, &m, &mut prefix, &[], &[], Logits::Last)?;
        let (rest, rest_mask) = batch(&t.base[pos as usize..]);
        for (li, &l) in run.layers.iter().enumerate() {
            let (xb, xs) = (
                acts[i].0.get(li as i64).unsqueeze(0),
                acts[i].1.get(li as i64).unsqueeze(0),
            );
            let mut rows = vec![];
            for (mi, m) in run.methods.iter().enumerate() {
                let idx = indices.get(&m.name).map(|v| v[&l].as_slice());
                rows.push(fz[&(mi, li)].interchange(&xb, &xs, idx));
            }
            let value = Tensor::cat(&rows, 0).unsqueeze(1).to_device(dev);
            let iv = Intervention::new(hook(l), Edit::Replace { value }).at_positions(vec![pos]);
            let mut cache = prefix.fork();
            let out =
                model.forward_cached(&rest, &rest_mask, &mut cache, &[], &[iv], Logits::Last)?;
            let logits = out
                .logits
                .expect("logits asked for")
                .to_kind(Kind::Double)
                .to_device(Device::Cpu);
            for (mi, m) in run.methods.iter().enumerate() {
                let row = logits.get(mi as i64);
                let pred = row.argmax(-1, false).int64_value(&[]);
                let rec = InterventionRecord {
                    id: p.id.clone(),
                    layer: l,
                    method: m.name.clone(),
                    base_position: pos as usize,
                    source_position: source_pos as usize,
                    counterfactual: t.counterfactual,
                    prediction: pred,
                    prediction_logit: row.double_value(&[pred]),
                    counterfactual_logit: row.double_value(&[t.counterfactual]),
                    correct: pred == t.counterfactual,
                };
                let c = counts.entry((li, mi)).or_insert((0, 0));
                c.0 += rec.correct as usize;
                c.1 += 1;
                each(&rec)?;
            }
        }
        progress();
    }
    let mut cells = vec![];
    for (li, &l) in run.layers.iter().enumerate() {
        for (mi, m) in run.methods.iter().enumerate() {
            let (correct, total) = counts.get(&(li, mi)).copied().unwrap_or((0, 0));
            cells.push(Cell {
                layer: l,
                method: m.name.clone(),
                correct,
                total,
                iia: if total == 0 {
                    f64::NAN
                } else {
                    correct as f64 / total as f64
                },
            });
        }
    }
    Ok(IiaResult {
        train,
        test,
        methods: run.methods.to_vec(),
        indices,
        cells,
        pairs,
    })
}
