//! Region quality without a person: chance-corrected agreement between rows and their region's
//! exemplar on what the text says (docs/evaluation.md, "Region quality").
//!
//! Each row of an activation file with provenance is assigned to its nearest exemplar. A scored
//! row (within θ of it, and not the exemplar's own token) *agrees* with its exemplar on
//! * `token`: the same token string;
//! * `next`: the same next token (both rows have one);
//! * `token_or_next`: either;
//! * `document`: the same document id (meaningful only when the rows are the build's own).
//!
//! Agreement `A` is the share of scored rows that agree. Its chance level `C` is what a random
//! relabelling of the scored rows' regions would give (region sizes kept): with `p` the
//! distribution of the rows' values and `q` that of their exemplars' values (each row
//! contributing its region's), `C = Σ_v p(v)·q(v)`; for `token_or_next`,
//! `C = C_token + C_next − C_(token, next)`. `κ = (A − C) / (1 − C)`: 0 is chance, 1 is every
//! row agreeing. κ falls as regions grow, so compare dictionaries of similar K. The top-20
//! purity is the token agreement among the rows of the 20 largest regions (by build-time
//! members): low values flag catch-all regions.

use crate::data::{ActivationStream, TokenRef};
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use std::collections::HashMap;

/// One agreement measure.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Agreement {
    /// Share of scored rows that agree with their exemplar.
    pub observed: f64,
    /// The chance level under a random relabelling.
    pub chance: f64,
    /// `(observed − chance) / (1 − chance)`.
    pub kappa: f64,
}

impl Agreement {
    fn new(observed: f64, chance: f64) -> Self {
        let kappa = if chance < 1.0 {
            (observed - chance) / (1.0 - chance)
        } else {
            0.0
        };
        Agreement {
            observed,
            chance,
            kappa,
        }
    }
}

/// What [`exemplar_agreement`] reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QualityReport {
    /// Regions of the dictionary.
    pub partitions: usize,
    /// Rows read, and rows with provenance.
    pub rows: u64,
    /// Rows within θ of their nearest exemplar (the coverage is `within_theta / rows`).
    pub within_theta: u64,
    /// Scored rows: within θ, with provenance, not the exemplar's own token.
    pub scored: u64,
    /// Regions with at least one scored row, and the mean scored rows per such region.
    pub regions_used: usize,
    pub mean_region_rows: f64,
    pub token: Agreement,
    pub next: Agreement,
    pub token_or_next: Agreement,
    pub document: Agreement,
    /// Token agreement over the scored rows of the 20 largest regions.
    pub top20_token_purity: f64,
}

/// An exemplar's token, next token and document, from the dictionary's stored text.
#[derive(Debug, Clone)]
struct ExemplarText {
    token: Option<String>,
    next: Option<String>,
    tokref: Option<TokenRef>,
}

/// Counts of values (`p` over rows, `q` over their exemplars).
#[derive(Default)]
struct Tally<K: std::hash::Hash + Eq> {
    rows: HashMap<K, u64>,
    exemplars: HashMap<K, u64>,
}

impl<K: std::hash::Hash + Eq + Clone> Tally<K> {
    fn add(&mut self, row: Option<&K>, exemplar: Option<&K>) {
        if let Some(r) = row {
            *self.rows.entry(r.clone()).or_default() += 1;
        }
        if let Some(e) = exemplar {
            *self.exemplars.entry(e.clone()).or_default() += 1;
        }
    }

    /// `Σ_v p(v) q(v)` with both distributions over `n` scored rows (values a row lacks count
    /// as never agreeing).
    fn chance(&self, n: u64) -> f64 {
        let n = n.max(1) as f64;
        self.rows
            .iter()
            .map(|(v, &a)| a as f64 * *self.exemplars.get(v).unwrap_or(&0) as f64)
            .sum::<f64>()
            / (n * n)
    }
}

/// Scores `dict` on the rows of `stream` (which needs provenance sidecars): the
/// chance-corrected agreement of every scored row with its region's exemplar.
pub fn exemplar_agreement(
    dict: &Dictionary,
    stream: &mut ActivationStream,
) -> Result<QualityReport> {
    if stream.dim() != dict.dim() {
        return Err(Error::DimensionMismatch {
            what: format!("activations ({})", stream.paths()[0].display()),
            expected: dict.dim(),
            found: stream.dim(),
        });
    }
    if dict.is_empty() {
        return Err(Error::EmptyInput("the dictionary has no region".into()));
    }
    let k = dict.len();
    let exemplars: Vec<ExemplarText> = (0..k)
        .map(|i| {
            let (_, t) = dict.exemplar_source(i);
            let toks = t.and_then(|t| dict.document_tokens(t.doc_id));
            let at =
                |p: i64| toks.and_then(|v| usize::try_from(p).ok().and_then(|p| v.get(p)).cloned());
            ExemplarText {
                token: t.and_then(|t| at(t.position)),
                next: t.and_then(|t| at(t.position + 1)),
                tokref: t,
            }
        })
        .collect();
    if exemplars.iter().all(|e| e.token.is_none()) {
        return Err(Error::param(
            "dictionary",
            "its exemplars have no token provenance (it was built from files without sidecars)",
        ));
    }
    let mut largest: Vec<usize> = (0..k).collect();
    largest.sort_by_key(|&i| (std::cmp::Reverse(dict.member_count(i)), i));
    let top20: std::collections::HashSet<usize> = largest.into_iter().take(20).collect();
    let mut docs: HashMap<i64, Vec<String>> = HashMap::new();
    let (mut rows, mut within, mut scored) = (0u64, 0u64, 0u64);
    let (mut agree_tok, mut agree_next, mut agree_tn, mut agree_doc) = (0u64, 0u64, 0u64, 0u64);
    let (mut top_rows, mut top_agree) = (0u64, 0u64);
    let mut tok = Tally::<String>::default();
    let mut next = Tally::<String>::default();
    let mut both = Tally::<(String, String)>::default();
    let mut doc = Tally::<i64>::default();
    let mut per_region = vec![0u64; k];
    while let Some(b) = stream.next_batch(4096)? {
        let Some(refs) = b.tokens.as_ref() else {
            return Err(Error::param(
                "activations",
                format!(
                    "{} has no provenance sidecar (<file>.provenance.jsonl): rows need their tokens",
                    stream.paths()[0].display()
                ),
            ));
        };
        for d in &b.documents {
            docs.entry(d.doc_id).or_insert_with(|| d.tokens.clone());
        }
        let (ids, dist) = dict.assign(&b.data)?;
        for ((&id, &dd), r) in ids.iter().zip(&dist).zip(refs) {
            rows += 1;
            if id < 0 || dd as f64 > dict.theta() {
                continue;
            }
            within += 1;
            let e = &exemplars[id as usize];
            let toks = docs.get(&r.doc_id);
            let at =
                |p: i64| toks.and_then(|v| usize::try_from(p).ok().and_then(|p| v.get(p)).cloned());
            let (t, n) = (at(r.position), at(r.position + 1));
            if t.is_none() || (e.tokref == Some(*r) && t == e.token) {
                continue; // no text, or the exemplar's own token
            }
            scored += 1;
            per_region[id as usize] += 1;
            let same_tok = t.is_some() && t == e.token;
            let same_next = n.is_some() && n == e.next;
            agree_tok += same_tok as u64;
            agree_next += same_next as u64;
            agree_tn += (same_tok || same_next) as u64;
            let same_doc = e.tokref.is_some_and(|x| x.doc_id == r.doc_id);
            agree_doc += same_doc as u64;
            if top20.contains(&(id as usize)) {
                top_rows += 1;
                top_agree += same_tok as u64;
            }
            tok.add(t.as_ref(), e.token.as_ref());
            next.add(n.as_ref(), e.next.as_ref());
            let pair = |a: &Option<String>, b: &Option<String>| match (a, b) {
                (Some(a), Some(b)) => Some((a.clone(), b.clone())),
                _ => None,
            };
            both.add(pair(&t, &n).as_ref(), pair(&e.token, &e.next).as_ref());
            doc.add(Some(&r.doc_id), e.tokref.map(|x| x.doc_id).as_ref());
        }
    }
    if scored == 0 {
        return Err(Error::EmptyInput(
            "no row is within θ of an exemplar with text to compare".into(),
        ));
    }
    let share = |a: u64| a as f64 / scored as f64;
    let (c_tok, c_next, c_both) = (tok.chance(scored), next.chance(scored), both.chance(scored));
    let used = per_region.iter().filter(|&&c| c > 0).count();
    Ok(QualityReport {
        partitions: k,
        rows,
        within_theta: within,
        scored,
        regions_used: used,
        mean_region_rows: scored as f64 / used.max(1) as f64,
        token: Agreement::new(share(agree_tok), c_tok),
        next: Agreement::new(share(agree_next), c_next),
        token_or_next: Agreement::new(share(agree_tn), c_tok + c_next - c_both),
        document: Agreement::new(share(agree_doc), doc.chance(scored)),
        top20_token_purity: if top_rows > 0 {
            top_agree as f64 / top_rows as f64
        } else {
            f64::NAN
        },
    })
}
