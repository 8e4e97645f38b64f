//! Concept detection, AxBench's latent track (spec §7.4, related-systems (e)).
//!
//! Input: Concept500-style rows (JSON Lines or Parquet) with `concept_id`, `concept` (or
//! `output_concept`), the text (`output`, or `input` + `output` joined by a newline), a
//! `category` (`positive`, `negative`, or any `hard negative …`), and optionally `split`
//! (`train` / `eval`; else a seeded split per concept and category). Rows with `concept_id` −1
//! are negatives shared by every concept.
//!
//! Per concept, the region is chosen on the training rows: `contrast_k` = mean cosine code
//! `u(x)·w_k` over all positive tokens − the same over all negative and hard-negative tokens
//! (centered, normalised, dotted with the unit basis), `k* = argmax`. Eval rows are then scored
//! by the max over their tokens, in two clearly labelled ways:
//! * `reference`: `⟨x_t, w_k*⟩` on the raw, uncentered activation, rounded to 3 decimals — what
//!   AxBench computes for the EP methods (the §7.4 quirk: selection by cosine, scoring by a
//!   projection whose magnitude varies by token);
//! * `cosine`: `cos(x_t − c, w_k*)`, consistent with how the region was chosen.
//!
//! Reported per concept and as means: ROC-AUC (positive vs negative + hard negative) and
//! AxBench's hard-negative accuracy (Youden-J threshold on positive vs negative).

use crate::dictionary::{Basis, Readout};
use crate::error::{Error, Result};
use crate::eval::documents::{doc_id_field, read_jsonl_objects, text_field, DocumentActivations};
use crate::eval::metrics::{hard_negative_accuracy, roc_auc};
use crate::rng::SplitMix64;
use crate::Dictionary;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The role of an example for its concept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Category {
    Positive,
    Negative,
    HardNegative,
}

/// Which text of a row is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    /// `output` alone (the concept is in the response).
    Output,
    /// `input` + "\n" + `output`.
    InputOutput,
}

/// One example.
#[derive(Debug, Clone, PartialEq)]
pub struct ConceptRow {
    /// 1-based line (JSON Lines) or row (Parquet) number.
    pub line: usize,
    pub concept_id: i64,
    pub concept: Option<String>,
    pub category: Category,
    pub text: Option<String>,
    /// The activation document of this row: `doc_id`, or the row's index.
    pub doc_id: i64,
    /// `Some(true)` for eval, `Some(false)` for train, `None` when the file has no split.
    pub eval: Option<bool>,
}

fn parse_category(path: &Path, line: usize, s: &str) -> Result<Category> {
    let l = s.trim().to_lowercase().replace('_', " ");
    if l == "positive" {
        Ok(Category::Positive)
    } else if l == "negative" {
        Ok(Category::Negative)
    } else if l.starts_with("hard negative") {
        Ok(Category::HardNegative)
    } else {
        Err(Error::format(
            path,
            format!(
                "line {line}: unknown category {s:?} (expected positive, negative or hard negative …)"
            ),
        ))
    }
}

fn parse_split(path: &Path, line: usize, s: &str) -> Result<bool> {
    match s.trim().to_lowercase().as_str() {
        "train" => Ok(false),
        "eval" | "test" => Ok(true),
        _ => Err(Error::format(
            path,
            format!("line {line}: unknown split {s:?} (expected train or eval)"),
        )),
    }
}

/// Validates one row's fields (`index`: its 0-based position, the default `doc_id`).
fn make_row(
    path: &Path,
    line: usize,
    index: usize,
    m: &Map<String, Value>,
    field: TextField,
    require_text: bool,
) -> Result<ConceptRow> {
    let concept_id = match m.get("concept_id") {
        Some(v) => v.as_i64().ok_or_else(|| {
            Error::format(
                path,
                format!("line {line}: \"concept_id\" must be an integer, got {v}"),
            )
        })?,
        None => {
            return Err(Error::format(
                path,
                format!("line {line}: missing \"concept_id\""),
            ))
        }
    };
    let concept = ["concept", "output_concept"]
        .iter()
        .find_map(|k| {
            m.get(*k)
                .and_then(|v| v.as_str())
                .filter(|s| !s.trim().is_empty())
        })
        .map(String::from);
    let category = match m.get("category") {
        Some(Value::String(s)) => parse_category(path, line, s)?,
        Some(v) => {
            return Err(Error::format(
                path,
                format!("line {line}: \"category\" must be a string, got {v}"),
            ))
        }
        None => {
            return Err(Error::format(
                path,
                format!("line {line}: missing \"category\""),
            ))
        }
    };
    let output = text_field(path, line, m, "output", require_text)?;
    let text = match field {
        TextField::Output => output,
        TextField::InputOutput => {
            let input = text_field(path, line, m, "input", require_text)?;
            match (input, output) {
                (Some(i), Some(o)) => Some(format!("{i}\n{o}")),
                _ => None,
            }
        }
    };
    let eval = match m.get("split") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_split(path, line, s)?),
        Some(v) => {
            return Err(Error::format(
                path,
                format!("line {line}: \"split\" must be a string, got {v}"),
            ))
        }
    };
    if concept_id >= 0 && category == Category::Positive && concept.is_none() {
        return Err(Error::format(
            path,
            format!("line {line}: a positive example needs \"concept\" (or \"output_concept\")"),
        ));
    }
    if concept_id < 0 && category != Category::Negative {
        return Err(Error::format(
            path,
            format!("line {line}: concept_id {concept_id} (shared) is only allowed for negatives"),
        ));
    }
    Ok(ConceptRow {
        line,
        concept_id,
        concept,
        category,
        text,
        doc_id: doc_id_field(path, line, m)?.unwrap_or(index as i64),
        eval,
    })
}

/// Reads a Concept500-style file: `.parquet`, else JSON Lines. `require_text`: text mode (every
/// row needs a non-empty text); otherwise rows are tied to activation documents by `doc_id`.
pub fn read_concepts(path: &Path, field: TextField, require_text: bool) -> Result<Vec<ConceptRow>> {
    let objects = if path.extension().is_some_and(|e| e == "parquet") {
        read_parquet_objects(path)?
    } else {
        read_jsonl_objects(path)?
    };
    let rows: Vec<ConceptRow> = objects
        .iter()
        .enumerate()
        .map(|(i, (line, m))| make_row(path, *line, i, m, field, require_text))
        .collect::<Result<_>>()?;
    let with_split = rows.iter().filter(|r| r.eval.is_some()).count();
    if with_split != 0 && with_split != rows.len() {
        let r = rows
            .iter()
            .find(|r| r.eval.is_none())
            .expect("some row lacks a split");
        return Err(Error::format(
            path,
            format!(
                "line {}: no \"split\", but other rows have one (all or none)",
                r.line
            ),
        ));
    }
    // A document may serve several concepts (a positive of one, a negative of another), but
    // only once per concept; a shared negative (concept -1) serves every concept, so its
    // document serves nothing else.
    let mut uses: HashMap<i64, Vec<(i64, usize)>> = HashMap::new();
    for r in &rows {
        uses.entry(r.doc_id)
            .or_default()
            .push((r.concept_id, r.line));
    }
    let mut clash: Option<(usize, usize, i64)> = None;
    for (doc, u) in &uses {
        for (x, &(cx, lx)) in u.iter().enumerate() {
            for &(cy, ly) in &u[..x] {
                if cx == cy || cx < 0 || cy < 0 {
                    let c = (ly.min(lx), ly.max(lx), *doc);
                    if clash.is_none_or(|o| c.1 < o.1) {
                        clash = Some(c);
                    }
                }
            }
        }
    }
    if let Some((a, b, doc)) = clash {
        return Err(Error::format(
            path,
            format!("line {b}: doc_id {doc} already used on line {a} for the same concept"),
        ));
    }
    Ok(rows)
}

/// Rows of a Parquet file as JSON objects (string and integer columns; others are skipped).
/// Row numbers are 1-based.
fn read_parquet_objects(path: &Path) -> Result<Vec<(usize, Map<String, Value>)>> {
    use parquet::file::reader::FileReader;
    use parquet::file::serialized_reader::SerializedFileReader;
    use parquet::record::Field;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Error::format(path, format!("not a readable Parquet file: {e}")))?;
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| Error::format(path, format!("reading rows: {e}")))?;
    let mut out = Vec::new();
    for (i, row) in iter.enumerate() {
        let row = row.map_err(|e| Error::format(path, format!("row {}: {e}", i + 1)))?;
        let mut m = Map::new();
        for (name, f) in row.get_column_iter() {
            let v = match f {
                Field::Str(s) => Value::String(s.clone()),
                Field::Byte(v) => Value::from(*v),
                Field::Short(v) => Value::from(*v),
                Field::Int(v) => Value::from(*v),
                Field::Long(v) => Value::from(*v),
                Field::UByte(v) => Value::from(*v),
                Field::UShort(v) => Value::from(*v),
                Field::UInt(v) => Value::from(*v),
                Field::ULong(v) => Value::from(*v),
                Field::Null => Value::Null,
                _ => continue,
            };
            m.insert(name.clone(), v);
        }
        out.push((i + 1, m));
    }
    if out.is_empty() {
        return Err(Error::EmptyInput(format!("{}: no rows", path.display())));
    }
    Ok(out)
}

/// Detection results of one concept.
#[derive(Debug, Clone, Serialize)]
pub struct ConceptResult {
    pub concept_id: i64,
    pub concept: String,
    /// The chosen region k*.
    pub region: usize,
    /// Its contrast (mean positive − mean negative cosine code).
    pub contrast: f64,
    pub train_positive: usize,
    pub train_negative: usize,
    pub eval_positive: usize,
    pub eval_negative: usize,
    pub eval_hard_negative: usize,
    pub auroc_reference: f64,
    pub auroc_cosine: f64,
    /// `None` without eval hard negatives.
    pub hard_negative_accuracy_reference: Option<f64>,
    pub hard_negative_accuracy_cosine: Option<f64>,
}

/// Means over concepts (hard-negative accuracy over the concepts that have it).
#[derive(Debug, Clone, Serialize)]
pub struct DetectReport {
    pub basis: &'static str,
    pub scoring_reference: &'static str,
    pub scoring_cosine: &'static str,
    pub mean_auroc_reference: f64,
    pub mean_auroc_cosine: f64,
    pub mean_hard_negative_accuracy_reference: Option<f64>,
    pub mean_hard_negative_accuracy_cosine: Option<f64>,
    pub concepts: Vec<ConceptResult>,
}

/// Assigns the seeded split to rows without one: within each (concept, category) group,
/// shuffled, `round(n · eval_fraction)` rows (at least 1 and at most n − 1 when n ≥ 2; a lone
/// row goes to train) are eval rows.
pub fn assign_split(rows: &mut [ConceptRow], eval_fraction: f64, seed: u64) -> Result<()> {
    if rows.iter().all(|r| r.eval.is_some()) {
        return Ok(());
    }
    if !(eval_fraction > 0.0 && eval_fraction < 1.0) {
        return Err(Error::param(
            "eval-fraction",
            format!("must lie in (0, 1), got {eval_fraction}"),
        ));
    }
    let mut groups: BTreeMap<(i64, u8), Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        groups
            .entry((r.concept_id, r.category as u8))
            .or_default()
            .push(i);
    }
    let mut rng = SplitMix64::new(seed);
    for (_, mut g) in groups {
        rng.shuffle(&mut g);
        let n = g.len();
        let n_eval = if n < 2 {
            0
        } else {
            ((n as f64 * eval_fraction).round() as usize).clamp(1, n - 1)
        };
        for (j, &i) in g.iter().enumerate() {
            rows[i].eval = Some(j < n_eval);
        }
    }
    Ok(())
}

/// Runs the latent track on `rows` (with a split, see [`assign_split`]) and their token
/// activations `docs`.
pub fn detect_concepts(
    dict: &Dictionary,
    rows: &[ConceptRow],
    docs: &DocumentActivations,
    basis: Basis,
) -> Result<DetectReport> {
    if dict.is_empty() {
        return Err(Error::param("dictionary", "the dictionary has no regions"));
    }
    if docs.dim != dict.dim() {
        return Err(Error::DimensionMismatch {
            what: "activations".into(),
            expected: dict.dim(),
            found: docs.dim,
        });
    }
    let k = dict.len();
    let d = dict.dim();
    let w = dict.basis(basis);
    // Per document: the sum over tokens of the cosine codes, and the token count (cached, as
    // shared negatives serve every concept).
    let mut code_sums: HashMap<i64, (Vec<f64>, usize)> = HashMap::new();
    let mut code_sum = |doc: i64| -> Result<(Vec<f64>, usize)> {
        if let Some(v) = code_sums.get(&doc) {
            return Ok(v.clone());
        }
        let x = docs.get(doc)?;
        let codes = dict.encode(x, basis, Readout::Cosine)?;
        let mut s = vec![0.0f64; k];
        for r in codes.chunks(k) {
            s.iter_mut().zip(r).for_each(|(a, &b)| *a += b as f64);
        }
        let v = (s, x.len() / d);
        code_sums.insert(doc, v.clone());
        Ok(v)
    };
    let mut results = Vec::new();
    for g in concept_groups(rows)? {
        let ConceptGroup {
            cid,
            name,
            train_pos,
            train_neg,
            eval_pos,
            eval_neg,
            eval_hard,
        } = g;
        let mean_code = |group: &[&ConceptRow],
                         f: &mut dyn FnMut(i64) -> Result<(Vec<f64>, usize)>|
         -> Result<Vec<f64>> {
            let mut s = vec![0.0; k];
            let mut n = 0;
            for r in group {
                let (v, t) = f(r.doc_id)?;
                s.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
                n += t;
            }
            Ok(s.into_iter().map(|v| v / n as f64).collect())
        };
        let mp = mean_code(&train_pos, &mut code_sum)?;
        let mn = mean_code(&train_neg, &mut code_sum)?;
        let contrast: Vec<f64> = mp.iter().zip(&mn).map(|(a, b)| a - b).collect();
        let mut best = 0;
        for j in 1..k {
            if contrast[j] > contrast[best] {
                best = j;
            }
        }
        let mut dir: Vec<f32> = w[best * d..(best + 1) * d].to_vec();
        let norm = dir.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        dir.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
        let scores = |group: &[&ConceptRow]| -> Result<(Vec<f64>, Vec<f64>)> {
            let mut reference = Vec::new();
            let mut cosine = Vec::new();
            for r in group {
                let (a, b) = score_document(dict, docs.get(r.doc_id)?, &dir)?;
                reference.push(a);
                cosine.push(b);
            }
            Ok((reference, cosine))
        };
        let (p_ref, p_cos) = scores(&eval_pos)?;
        let (n_ref, n_cos) = scores(&eval_neg)?;
        let (h_ref, h_cos) = scores(&eval_hard)?;
        let auc = |p: &[f64], n: &[f64], h: &[f64]| -> Result<f64> {
            let s: Vec<f64> = p.iter().chain(n).chain(h).copied().collect();
            let l: Vec<bool> = (0..s.len()).map(|i| i < p.len()).collect();
            roc_auc(&s, &l)
        };
        let hna = |p: &[f64], n: &[f64], h: &[f64]| -> Result<Option<f64>> {
            if h.is_empty() || n.is_empty() {
                Ok(None)
            } else {
                hard_negative_accuracy(p, n, h).map(Some)
            }
        };
        results.push(ConceptResult {
            concept_id: cid,
            concept: name,
            region: best,
            contrast: contrast[best],
            train_positive: train_pos.len(),
            train_negative: train_neg.len(),
            eval_positive: eval_pos.len(),
            eval_negative: eval_neg.len(),
            eval_hard_negative: eval_hard.len(),
            auroc_reference: auc(&p_ref, &n_ref, &h_ref)?,
            auroc_cosine: auc(&p_cos, &n_cos, &h_cos)?,
            hard_negative_accuracy_reference: hna(&p_ref, &n_ref, &h_ref)?,
            hard_negative_accuracy_cosine: hna(&p_cos, &n_cos, &h_cos)?,
        });
    }
    let mean = |f: &dyn Fn(&ConceptResult) -> Option<f64>| {
        let v: Vec<f64> = results.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    Ok(DetectReport {
        basis: match basis {
            Basis::Mean => "mean",
            Basis::Exemplar => "exemplar",
        },
        scoring_reference: "max over tokens of <x_t, w_k*> on the raw, uncentered activation, rounded to 3 decimals (AxBench's EP scoring)",
        scoring_cosine: "max over tokens of cos(x_t - c, w_k*) (consistent with the cosine region choice)",
        mean_auroc_reference: mean(&|r| Some(r.auroc_reference)).unwrap_or(f64::NAN),
        mean_auroc_cosine: mean(&|r| Some(r.auroc_cosine)).unwrap_or(f64::NAN),
        mean_hard_negative_accuracy_reference: mean(&|r| r.hard_negative_accuracy_reference),
        mean_hard_negative_accuracy_cosine: mean(&|r| r.hard_negative_accuracy_cosine),
        concepts: results,
    })
}

/// One concept's rows by role.
struct ConceptGroup<'a> {
    cid: i64,
    name: String,
    train_pos: Vec<&'a ConceptRow>,
    train_neg: Vec<&'a ConceptRow>,
    eval_pos: Vec<&'a ConceptRow>,
    eval_neg: Vec<&'a ConceptRow>,
    eval_hard: Vec<&'a ConceptRow>,
}

/// The concepts of `rows` (with a split) and their rows by role; an error names a concept
/// without positives or negatives in a split.
fn concept_groups(rows: &[ConceptRow]) -> Result<Vec<ConceptGroup<'_>>> {
    let mut concepts: BTreeMap<i64, String> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.concept_id >= 0) {
        if let Some(c) = &r.concept {
            concepts.entry(r.concept_id).or_insert_with(|| c.clone());
        }
    }
    if concepts.is_empty() {
        return Err(Error::EmptyInput(
            "no concept has a positive example".into(),
        ));
    }
    let mut out = Vec::new();
    for (cid, name) in concepts {
        let of = |eval: bool, cat: Category| -> Vec<&ConceptRow> {
            rows.iter()
                .filter(|r| {
                    (r.concept_id == cid || (r.concept_id < 0 && cat == Category::Negative))
                        && r.category == cat
                        && r.eval == Some(eval)
                })
                .collect()
        };
        let train_pos = of(false, Category::Positive);
        let train_neg: Vec<&ConceptRow> = of(false, Category::Negative)
            .into_iter()
            .chain(of(false, Category::HardNegative))
            .collect();
        let (eval_pos, eval_neg, eval_hard) = (
            of(true, Category::Positive),
            of(true, Category::Negative),
            of(true, Category::HardNegative),
        );
        let need = |what: &str, n: usize| {
            if n == 0 {
                Err(Error::param(
                    "concepts",
                    format!("concept {cid} ({name}): no {what}"),
                ))
            } else {
                Ok(())
            }
        };
        need("positive training example", train_pos.len())?;
        need("negative training example", train_neg.len())?;
        need("positive eval example", eval_pos.len())?;
        need(
            "negative or hard-negative eval example",
            eval_neg.len() + eval_hard.len(),
        )?;
        out.push(ConceptGroup {
            cid,
            name,
            train_pos,
            train_neg,
            eval_pos,
            eval_neg,
            eval_hard,
        });
    }
    Ok(out)
}

/// Detection results of one concept with an SAE's features.
#[derive(Debug, Clone, Serialize)]
pub struct SaeConceptResult {
    pub concept_id: i64,
    pub concept: String,
    /// The chosen feature f*.
    pub feature: usize,
    /// Its contrast (mean positive − mean negative code per token).
    pub contrast: f64,
    pub train_positive: usize,
    pub train_negative: usize,
    pub eval_positive: usize,
    pub eval_negative: usize,
    pub eval_hard_negative: usize,
    pub auroc: f64,
    /// `None` without eval hard negatives.
    pub hard_negative_accuracy: Option<f64>,
}

/// SAE detection over concepts.
#[derive(Debug, Clone, Serialize)]
pub struct SaeDetectReport {
    pub selection: &'static str,
    pub scoring: &'static str,
    pub d_sae: usize,
    pub mean_auroc: f64,
    pub mean_hard_negative_accuracy: Option<f64>,
    pub concepts: Vec<SaeConceptResult>,
}

/// The latent track with an SAE: per concept the feature `f*` with the largest contrast of its
/// mean code per token (positive training rows − negative and hard-negative training rows), eval
/// rows scored by the max over their tokens of `f*`'s code (AxBench's SAE scoring).
pub fn detect_concepts_sae(
    sae: &crate::sae::Sae,
    rows: &[ConceptRow],
    docs: &DocumentActivations,
) -> Result<SaeDetectReport> {
    if docs.dim != sae.d_in {
        return Err(Error::DimensionMismatch {
            what: "activations (the SAE's input width d_in)".into(),
            expected: sae.d_in,
            found: docs.dim,
        });
    }
    let f = sae.d_sae;
    // Per document, its tokens' non-zero codes (feature, value): SAE codes are sparse, and a
    // dense cache of every document would take tokens × d_sae floats.
    type Sparse = Vec<Vec<(u32, f32)>>;
    let mut codes: HashMap<i64, std::rc::Rc<Sparse>> = HashMap::new();
    let mut code_of = |doc: i64| -> Result<std::rc::Rc<Sparse>> {
        if let Some(v) = codes.get(&doc) {
            return Ok(v.clone());
        }
        let c = sae.encode(docs.get(doc)?)?;
        let sparse: Sparse = c
            .chunks(f)
            .map(|t| {
                t.iter()
                    .enumerate()
                    .filter(|(_, &v)| v != 0.0)
                    .map(|(j, &v)| (j as u32, v))
                    .collect()
            })
            .collect();
        let v = std::rc::Rc::new(sparse);
        codes.insert(doc, v.clone());
        Ok(v)
    };
    let mut results = Vec::new();
    for g in concept_groups(rows)? {
        let mut mean = |group: &[&ConceptRow]| -> Result<Vec<f64>> {
            let (mut s, mut n) = (vec![0.0f64; f], 0usize);
            for r in group {
                for t in code_of(r.doc_id)?.iter() {
                    t.iter().for_each(|&(j, v)| s[j as usize] += v as f64);
                    n += 1;
                }
            }
            Ok(s.into_iter().map(|v| v / n.max(1) as f64).collect())
        };
        let mp = mean(&g.train_pos)?;
        let mn = mean(&g.train_neg)?;
        let mut best = 0;
        let contrast: Vec<f64> = mp.iter().zip(&mn).map(|(a, b)| a - b).collect();
        for j in 1..f {
            if contrast[j] > contrast[best] {
                best = j;
            }
        }
        let mut score = |group: &[&ConceptRow]| -> Result<Vec<f64>> {
            group
                .iter()
                .map(|r| {
                    Ok(code_of(r.doc_id)?
                        .iter()
                        .map(|t| {
                            t.iter()
                                .find(|&&(j, _)| j as usize == best)
                                .map_or(0.0, |&(_, v)| v as f64)
                        })
                        .fold(f64::NEG_INFINITY, f64::max))
                })
                .collect()
        };
        let (p, n, h) = (
            score(&g.eval_pos)?,
            score(&g.eval_neg)?,
            score(&g.eval_hard)?,
        );
        let s: Vec<f64> = p.iter().chain(&n).chain(&h).copied().collect();
        let l: Vec<bool> = (0..s.len()).map(|i| i < p.len()).collect();
        results.push(SaeConceptResult {
            concept_id: g.cid,
            concept: g.name,
            feature: best,
            contrast: contrast[best],
            train_positive: g.train_pos.len(),
            train_negative: g.train_neg.len(),
            eval_positive: p.len(),
            eval_negative: n.len(),
            eval_hard_negative: h.len(),
            auroc: roc_auc(&s, &l)?,
            hard_negative_accuracy: if h.is_empty() || n.is_empty() {
                None
            } else {
                Some(hard_negative_accuracy(&p, &n, &h)?)
            },
        });
    }
    let hn: Vec<f64> = results
        .iter()
        .filter_map(|r| r.hard_negative_accuracy)
        .collect();
    Ok(SaeDetectReport {
        selection:
            "feature with the largest mean code per token on positive minus negative training rows",
        scoring: "max over tokens of the chosen feature's code",
        d_sae: f,
        mean_auroc: results.iter().map(|r| r.auroc).sum::<f64>() / results.len() as f64,
        mean_hard_negative_accuracy: (!hn.is_empty())
            .then(|| hn.iter().sum::<f64>() / hn.len() as f64),
        concepts: results,
    })
}

/// The two document scores for the unit direction `w`: `(reference, cosine)` = (max over tokens
/// of `⟨x_t, w⟩` rounded to 3 decimals, max over tokens of `u(x_t)·w`).
pub fn score_document(dict: &Dictionary, tokens: &[f32], w: &[f32]) -> Result<(f64, f64)> {
    let d = dict.dim();
    let u = dict.directions(tokens)?;
    let dotf = |a: &[f32]| {
        a.iter()
            .zip(w)
            .map(|(x, y)| *x as f64 * *y as f64)
            .sum::<f64>()
    };
    let reference = tokens
        .chunks(d)
        .map(|r| (dotf(r) * 1000.0).round() / 1000.0)
        .fold(f64::NEG_INFINITY, f64::max);
    let cosine = u.chunks(d).map(dotf).fold(f64::NEG_INFINITY, f64::max);
    Ok((reference, cosine))
}
