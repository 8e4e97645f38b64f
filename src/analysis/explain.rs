//! Mutual-information explanations of regions (Wu et al., arXiv 2502.15576): each region is
//! explained by the words of a fixed vocabulary that maximise Σ p(w|c)·log p(c|w), where
//!
//! * a word's vector is the mean of its tokens' unembedding rows (the tokens of `" " + word`);
//! * A = (region directions after the model's final norm) · (word vectors)ᵀ, `K × M`;
//! * p(w|c) = softmax over words of A/α, p(c|w) = softmax over **all K regions** of A/β (the
//!   softmax across regions removes the frequency bias of the logit lens);
//! * score(c, w) = p(w|c)·log p(c|w), the `top` highest per region (ties to the more frequent
//!   word).
//!
//! Two baselines on the same vocabulary: the logit lens (the `top` highest A, i.e. p(w|c)
//! alone) and the top members (vocabulary words counted in the region's closest member
//! contexts). [`quality`] gives Wu et al.'s Diversity / Lexical / Dominate statistics of any of
//! them. [`read_region_labels`] reads labels an external labeller gave back as region sets.

use super::target::check_regions;
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::model::{Gemma, Tokenizer};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Words that count as superficial: the first this many of the vocabulary (by rank)…
pub const SUPERFICIAL_RANK: usize = 250;
/// …or shorter than this many characters.
pub const SUPERFICIAL_CHARS: usize = 4;
/// A word dominates when more than this share of the explained regions use it.
pub const DOMINATE_SHARE: f64 = 0.1;

/// A word of the list that is not in the vocabulary, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SkippedWord {
    /// 1-based line of the word list (0 for words taken from a corpus).
    pub line: usize,
    pub word: String,
    pub reason: String,
}

/// The vocabulary: words by rank (most frequent first) and the token ids of each.
#[derive(Debug, Clone, Serialize)]
pub struct Vocabulary {
    pub words: Vec<String>,
    pub tokens: Vec<Vec<i64>>,
    pub skipped: Vec<SkippedWord>,
}

impl Vocabulary {
    /// Each word's position in [`Vocabulary::words`].
    pub fn index(&self) -> HashMap<&str, usize> {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.as_str(), i))
            .collect()
    }

    /// Superficial words: rank below [`SUPERFICIAL_RANK`] or fewer than [`SUPERFICIAL_CHARS`]
    /// characters (Wu et al.'s definition, on the vocabulary after skipping).
    pub fn superficial(&self) -> Vec<bool> {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| i < SUPERFICIAL_RANK || w.chars().count() < SUPERFICIAL_CHARS)
            .collect()
    }
}

/// The words of a frequency-ranked list: one per non-empty line, the first whitespace-separated
/// field (a frequency column after it is ignored: the line order is the rank), with its line.
pub fn read_word_list(path: &Path) -> Result<Vec<(usize, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let words: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| l.split_whitespace().next().map(|w| (i + 1, w.to_string())))
        .collect();
    if words.is_empty() {
        return Err(Error::EmptyInput(format!(
            "{}: no word in it (one word per line, most frequent first)",
            path.display()
        )));
    }
    Ok(words)
}

/// The words of a text: maximal runs of alphabetic characters.
pub fn split_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
}

/// A frequency-ranked word list from texts: the `max_words` most frequent words
/// ([`split_words`], case kept) seen at least `min_count` times, ties in first-seen order.
pub fn corpus_words(texts: &[String], max_words: usize, min_count: u64) -> Vec<(usize, String)> {
    let mut count: HashMap<&str, (u64, usize)> = HashMap::new();
    let mut seen = 0usize;
    for t in texts {
        for w in split_words(t) {
            let e = count.entry(w).or_insert_with(|| {
                seen += 1;
                (0, seen)
            });
            e.0 += 1;
        }
    }
    let mut v: Vec<(&str, u64, usize)> = count
        .into_iter()
        .filter(|(_, (c, _))| *c >= min_count)
        .map(|(w, (c, first))| (w, c, first))
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
    v.truncate(max_words);
    v.into_iter().map(|(w, _, _)| (0, w.to_string())).collect()
}

/// Encodes each word as the tokens of `" " + word` (no BOS). A word is skipped, with its reason,
/// when it repeats an earlier word, is empty or holds whitespace or control characters, the
/// tokenizer fails on it or gives no token, a token is `<unk>`, or its tokens decode to
/// something else.
pub fn encode_words(tok: &Tokenizer, words: Vec<(usize, String)>) -> Vocabulary {
    let unk = tok.unknown_id();
    let mut seen = HashSet::new();
    let mut v = Vocabulary {
        words: vec![],
        tokens: vec![],
        skipped: vec![],
    };
    for (line, word) in words {
        let reason = if word.is_empty() || word.chars().any(|c| c.is_whitespace()) {
            Some("empty or holds whitespace".to_string())
        } else if word.chars().any(char::is_control) {
            Some("holds a control character".to_string())
        } else if seen.contains(&word) {
            Some("repeats an earlier word".to_string())
        } else {
            match tok.encode_plain(&format!(" {word}")) {
                Err(e) => Some(format!("the tokenizer fails on it: {e}")),
                Ok(ids) if ids.is_empty() => Some("no token".to_string()),
                Ok(ids) if unk.is_some_and(|u| ids.contains(&u)) => {
                    Some("the tokenizer cannot encode it (an <unk> token)".to_string())
                }
                Ok(ids) => match tok.decode(&ids) {
                    Ok(s) if s.trim_start() == word => {
                        seen.insert(word.clone());
                        v.words.push(word.clone());
                        v.tokens.push(ids);
                        None
                    }
                    Ok(s) => Some(format!("its tokens decode to {s:?}")),
                    Err(e) => Some(format!("its tokens do not decode: {e}")),
                },
            }
        };
        if let Some(reason) = reason {
            v.skipped.push(SkippedWord { line, word, reason });
        }
    }
    v
}

/// Word vectors `[M, D]` (f32, on the model's device): the mean of each word's tokens'
/// unembedding rows.
pub fn word_vectors(model: &Gemma, vocab: &Vocabulary) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let u = model.unembedding();
    let v = u.size()[0];
    let (mut ids, mut seg, mut counts) = (vec![], vec![], vec![]);
    for (i, t) in vocab.tokens.iter().enumerate() {
        if let Some(&bad) = t.iter().find(|&&id| id < 0 || id >= v) {
            return Err(Error::param(
                "vocabulary",
                format!(
                    "word {:?}: token id {bad} is outside the model's {v}-row unembedding (a tokenizer of another model?)",
                    vocab.words[i]
                ),
            ));
        }
        ids.extend_from_slice(t);
        seg.extend(std::iter::repeat_n(i as i64, t.len()));
        counts.push(t.len() as f32);
    }
    let dev = model.device();
    let rows = u
        .index_select(0, &Tensor::from_slice(&ids).to_device(dev))
        .to_kind(Kind::Float);
    let m = vocab.words.len() as i64;
    let sum = Tensor::zeros([m, u.size()[1]], (Kind::Float, dev)).index_add(
        0,
        &Tensor::from_slice(&seg).to_device(dev),
        &rows,
    );
    Ok(sum / Tensor::from_slice(&counts).to_device(dev).unsqueeze(1))
}

/// Which direction stands for a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionDirection {
    /// The exemplar (unit, centered space).
    Exemplar,
    /// The mean of the region's member directions.
    Mean,
}

/// The region directions `[K, D]` of `dict`.
pub fn region_directions(dict: &Dictionary, which: RegionDirection) -> Vec<f32> {
    match which {
        RegionDirection::Exemplar => (0..dict.len())
            .flat_map(|k| dict.exemplar(k).to_vec())
            .collect(),
        RegionDirection::Mean => dict.mean_directions(),
    }
}

/// A = final_norm(directions) · wordsᵀ, `[K, M]` f64 on the CPU.
pub fn association(model: &Gemma, directions: &[f32], d: usize, words: &Tensor) -> Tensor {
    let _guard = tch::no_grad_guard();
    let k = (directions.len() / d) as i64;
    let x = Tensor::from_slice(directions)
        .view([k, d as i64])
        .to_kind(model.kind())
        .to_device(model.device());
    model
        .final_norm(&x)
        .to_kind(Kind::Float)
        .matmul(&words.tr())
        .to_kind(Kind::Double)
        .to_device(Device::Cpu)
}

/// One word of an MI explanation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MiWord {
    pub word: String,
    /// p(w|c)·log p(c|w).
    pub score: f64,
    /// log p(w|c) and log p(c|w).
    pub log_p_word: f64,
    pub log_p_region: f64,
}

/// One word of the logit-lens baseline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LensWord {
    pub word: String,
    /// A(c, w).
    pub a: f64,
}

/// One word of the top-members baseline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemberWord {
    pub word: String,
    /// Occurrences in the region's member contexts.
    pub count: u64,
}

/// One region's explanations.
#[derive(Debug, Clone, Serialize)]
pub struct RegionExplanation {
    pub region: usize,
    pub members: u64,
    pub mi: Vec<MiWord>,
    pub lens: Vec<LensWord>,
    pub top_members: Vec<MemberWord>,
    /// The closest member contexts (the example's token in `[[…]]`).
    pub snippets: Vec<String>,
}

/// Settings of [`explain`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ExplainOptions {
    pub alpha: f64,
    pub beta: f64,
    /// Words per region.
    pub top: usize,
    /// Closest member contexts per region, and tokens either side of the member.
    pub snippets: usize,
    pub window: usize,
}

/// Row-wise top `top` of `m` `[K, M]` (f64), highest first, ties to the lower column.
fn top_columns(m: &Tensor, top: usize) -> Vec<Vec<i64>> {
    let k = top.min(m.size()[1] as usize) as i64;
    let (_, idx) = m.sort_stable(true, -1, true);
    let idx = idx.narrow(1, 0, k).contiguous();
    (0..m.size()[0])
        .map(|i| Vec::<i64>::try_from(idx.get(i)).expect("i64 indices"))
        .collect()
}

fn row(t: &Tensor, i: i64) -> Vec<f64> {
    Vec::<f64>::try_from(t.get(i).contiguous()).expect("f64 row")
}

/// The top-members baseline of one region: vocabulary words counted in `snippets`, most
/// frequent first (ties to the higher-ranked word).
pub fn member_words(
    snippets: &[String],
    index: &HashMap<&str, usize>,
    vocab: &Vocabulary,
    top: usize,
) -> Vec<MemberWord> {
    let mut count: BTreeMap<usize, u64> = BTreeMap::new();
    for s in snippets {
        for w in split_words(s) {
            if let Some(&i) = index.get(w) {
                *count.entry(i).or_default() += 1;
            }
        }
    }
    let mut v: Vec<(usize, u64)> = count.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.into_iter()
        .take(top)
        .map(|(i, count)| MemberWord {
            word: vocab.words[i].clone(),
            count,
        })
        .collect()
}

/// Explains every region of `dict` by `vocab` (A from [`association`] of `directions`).
pub fn explain(
    dict: &Dictionary,
    vocab: &Vocabulary,
    a: &Tensor,
    opts: &ExplainOptions,
) -> Result<Vec<RegionExplanation>> {
    if !(opts.alpha > 0.0 && opts.beta > 0.0) {
        return Err(Error::param(
            "alpha",
            format!(
                "the temperatures must be positive (alpha {}, beta {})",
                opts.alpha, opts.beta
            ),
        ));
    }
    if opts.top == 0 {
        return Err(Error::param("top", "at least one word per region"));
    }
    let regions: Vec<usize> = (0..dict.len()).collect();
    check_regions(dict, &regions, "region")?;
    let lp_word = (a / opts.alpha).log_softmax(1, Kind::Double);
    let lp_region = (a / opts.beta).log_softmax(0, Kind::Double);
    let score = lp_word.exp() * &lp_region;
    let mi_top = top_columns(&score, opts.top);
    let lens_top = top_columns(a, opts.top);
    let index = vocab.index();
    let mut out = Vec::with_capacity(regions.len());
    for &r in &regions {
        let i = r as i64;
        let (s, lw, lr, ar) = (
            row(&score, i),
            row(&lp_word, i),
            row(&lp_region, i),
            row(a, i),
        );
        let snippets: Vec<String> = dict
            .closest_examples(r)
            .iter()
            .take(opts.snippets)
            .filter_map(|x| dict.example_context(x, opts.window))
            .collect();
        out.push(RegionExplanation {
            region: r,
            members: dict.member_count(r),
            mi: mi_top[r]
                .iter()
                .map(|&w| MiWord {
                    word: vocab.words[w as usize].clone(),
                    score: s[w as usize],
                    log_p_word: lw[w as usize],
                    log_p_region: lr[w as usize],
                })
                .collect(),
            lens: lens_top[r]
                .iter()
                .map(|&w| LensWord {
                    word: vocab.words[w as usize].clone(),
                    a: ar[w as usize],
                })
                .collect(),
            top_members: member_words(&snippets, &index, vocab, opts.top),
            snippets,
        });
    }
    Ok(out)
}

/// Wu et al.'s explanation statistics over a set of explanations (word lists, one per region).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Quality {
    /// Distinct non-superficial words used / non-superficial words of the vocabulary (↑).
    pub diversity: Option<f64>,
    /// Distinct superficial words used / superficial words of the vocabulary (↓).
    pub lexical: Option<f64>,
    /// Words used by more than 10% of the regions / distinct words used (↓).
    pub dominate: Option<f64>,
    /// Distinct words used, and how many of them dominate.
    pub words_used: usize,
    pub dominating: usize,
    /// Regions with a non-empty explanation (the denominator of "10% of the regions").
    pub regions: usize,
}

/// [`Quality`] of `lists` (word indices into a vocabulary whose superficial words are
/// `superficial`). Wu et al.'s code divides the use count by the last region index (K − 1);
/// here by the number of regions with an explanation.
pub fn quality(lists: &[Vec<usize>], superficial: &[bool]) -> Quality {
    let mut uses: BTreeMap<usize, usize> = BTreeMap::new();
    for l in lists {
        for &w in l.iter().collect::<HashSet<_>>() {
            *uses.entry(w).or_default() += 1;
        }
    }
    let regions = lists.iter().filter(|l| !l.is_empty()).count();
    let n_sup = superficial.iter().filter(|&&s| s).count();
    let n_deep = superficial.len() - n_sup;
    let used_sup = uses.keys().filter(|&&w| superficial[w]).count();
    let used_deep = uses.len() - used_sup;
    let dominating = uses
        .values()
        .filter(|&&c| c as f64 / regions.max(1) as f64 > DOMINATE_SHARE)
        .count();
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    Quality {
        diversity: ratio(used_deep, n_deep),
        lexical: ratio(used_sup, n_sup),
        dominate: ratio(dominating, uses.len()),
        words_used: uses.len(),
        dominating,
        regions,
    }
}

/// The word lists of each method, as vocabulary indices: [mi, lens, top members].
pub fn word_lists(vocab: &Vocabulary, ex: &[RegionExplanation]) -> [Vec<Vec<usize>>; 3] {
    let index = vocab.index();
    let ids = |it: Vec<&String>| it.into_iter().map(|w| index[w.as_str()]).collect();
    [
        ex.iter()
            .map(|e| ids(e.mi.iter().map(|w| &w.word).collect()))
            .collect(),
        ex.iter()
            .map(|e| ids(e.lens.iter().map(|w| &w.word).collect()))
            .collect(),
        ex.iter()
            .map(|e| ids(e.top_members.iter().map(|w| &w.word).collect()))
            .collect(),
    ]
}

/// Region sets from an external labeller's JSON Lines: each line `{"region": R, "label": L}`
/// (L a string, or a list of strings; an empty string or `null` leaves the region unlabelled).
/// Returns label → regions (ascending, each once). Errors name the file and line.
pub fn read_region_labels(path: &Path, dict: &Dictionary) -> Result<BTreeMap<String, Vec<usize>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut sets: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let bad = |line: usize, msg: String| Error::format(path, format!("line {line}: {msg}"));
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        if l.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(l).map_err(|e| bad(line, format!("not JSON: {e}")))?;
        let r = v
            .get("region")
            .and_then(|r| r.as_u64())
            .ok_or_else(|| bad(line, "no `region` (a non-negative integer)".into()))?
            as usize;
        if r >= dict.len() {
            return Err(bad(
                line,
                format!(
                    "region {r} is out of range: the dictionary has {} regions (0..{})",
                    dict.len(),
                    dict.len().saturating_sub(1)
                ),
            ));
        }
        let labels: Vec<String> = match v.get("label") {
            None => {
                return Err(bad(
                    line,
                    "no `label` (a string, a list of strings or null)".into(),
                ))
            }
            Some(serde_json::Value::Null) => vec![],
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(line, format!("`label` list holds {x}, not a string")))
                })
                .collect::<Result<_>>()?,
            Some(x) => {
                return Err(bad(
                    line,
                    format!("`label` is {x}: a string, a list of strings or null"),
                ))
            }
        };
        for s in labels {
            let s = s.trim().to_string();
            if !s.is_empty() {
                sets.entry(s).or_default().push(r);
            }
        }
    }
    for v in sets.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    if sets.is_empty() {
        return Err(Error::EmptyInput(format!(
            "{}: no labelled region in it",
            path.display()
        )));
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_words_rank_by_count_then_first_seen() {
        let t = vec!["b a, a! c-b".to_string(), "é a 3x".to_string()];
        let w: Vec<String> = corpus_words(&t, 10, 1).into_iter().map(|x| x.1).collect();
        assert_eq!(w, ["a", "b", "c", "é", "x"]);
        let w: Vec<String> = corpus_words(&t, 10, 2).into_iter().map(|x| x.1).collect();
        assert_eq!(w, ["a", "b"]);
        assert_eq!(corpus_words(&t, 1, 1).len(), 1);
    }

    #[test]
    fn quality_by_hand() {
        // 6 words, superficial: 0, 1 (say). 3 regions.
        let sup = [true, true, false, false, false, false];
        let lists = vec![vec![0, 2], vec![0, 3], vec![0, 2, 2]];
        let q = quality(&lists, &sup);
        // used: {0, 2, 3}; deep used 2 of 4, superficial 1 of 2; every used word is in > 10%.
        assert_eq!(q.diversity, Some(0.5));
        assert_eq!(q.lexical, Some(0.5));
        assert_eq!(q.dominate, Some(1.0));
        assert_eq!((q.words_used, q.dominating, q.regions), (3, 3, 3));
        // 20 regions each with its own word, plus word 0 in two of them (2/20 = 10%: not more).
        let mut lists: Vec<Vec<usize>> = (0..20).map(|i| vec![i + 1]).collect();
        lists[0].push(0);
        lists[1].push(0);
        let sup = vec![false; 21];
        let q = quality(&lists, &sup);
        assert_eq!(q.dominating, 0);
        assert_eq!(q.lexical, None);
        assert_eq!(q.diversity, Some(1.0));
    }
}
