//! Linear probes on document features (MOSAIC-style, related-systems (a)): token rows are turned
//! into features (raw activations, EP one-hot or top-k codes, SAE codes), pooled per document
//! (mean, max, last token, or the count of each feature in the tokens' top-n), optionally
//! binarised, and classified by an L2 logistic regression whose C is chosen by stratified k-fold
//! cross-validation.
//!
//! The regression ([`crate::eval::logistic`]) is fitted on features standardised with
//! statistics of the training rows only — inside each CV fold on the fold's training rows — so C
//! means the same for every feature kind. Document features that are mostly zeros (pooled EP or
//! SAE codes: a few hundred nonzeros among up to 10⁵ features) are fitted sparsely, the same
//! model to rounding at a fraction of the cost; which design a probe used is in its result.

use crate::dictionary::{Basis, Readout};
use crate::error::{Error, Result};
use crate::eval::logistic::class_members;
pub use crate::eval::logistic::{
    fit_logistic, fit_logistic_sparse, LogisticModel, SparseRows, Standardizer,
};
use crate::eval::metrics::{classification_report, ClassificationReport};
use crate::rng::SplitMix64;
use crate::sae::{top_k_indices, Sae};
use crate::Dictionary;
use serde::Serialize;

/// How the token features of a document become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Max,
    /// The last token's features.
    Last,
    /// For each token, a one-hot of the indices of its `n` largest positive features; summed
    /// over tokens (MOSAIC's count of top-n features). Zero or negative values never count.
    Count(usize),
}

impl Pooling {
    /// Name as written on the command line.
    pub fn name(&self) -> String {
        match self {
            Pooling::Mean => "mean".into(),
            Pooling::Max => "max".into(),
            Pooling::Last => "last".into(),
            Pooling::Count(n) => format!("count(top-{n})"),
        }
    }
}

/// Pools `tokens` (`n × width`, `n ≥ 1`) into one `width`-vector; `binarize` clips every value
/// to at most 1 (counts become presence).
pub fn pool(tokens: &[f32], width: usize, pooling: Pooling, binarize: bool) -> Vec<f64> {
    let n = tokens.len() / width;
    assert!(n > 0 && tokens.len() == n * width, "pool: no tokens");
    let rows = tokens.chunks(width);
    let mut out = vec![0.0f64; width];
    match pooling {
        Pooling::Mean => {
            for r in rows {
                out.iter_mut().zip(r).for_each(|(o, &v)| *o += v as f64);
            }
            out.iter_mut().for_each(|o| *o /= n as f64);
        }
        Pooling::Max => {
            out.fill(f64::NEG_INFINITY);
            for r in rows {
                out.iter_mut()
                    .zip(r)
                    .for_each(|(o, &v)| *o = o.max(v as f64));
            }
        }
        Pooling::Last => {
            let r = &tokens[(n - 1) * width..];
            out.iter_mut().zip(r).for_each(|(o, &v)| *o = v as f64);
        }
        Pooling::Count(top) => {
            for r in rows {
                for j in top_k_indices(r, top) {
                    if r[j] > 0.0 {
                        out[j] += 1.0;
                    }
                }
            }
        }
    }
    if binarize {
        out.iter_mut().for_each(|o| *o = o.min(1.0));
    }
    out
}

/// What the token features are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    /// The activations themselves (`D` features).
    Raw,
    /// 1 at the nearest exemplar (`Dictionary::assign`), `K` features.
    EpOneHot,
    /// The dictionary's top-k readout (`Dictionary::encode`, ReLU'd `(x−c)·w`), `K` features.
    EpTopK(usize, Basis),
    /// The SAE's codes (`Sae::encode`), `d_sae` features.
    Sae,
}

impl FeatureKind {
    /// Name used in reports.
    pub fn name(&self) -> String {
        match self {
            FeatureKind::Raw => "raw".into(),
            FeatureKind::EpOneHot => "ep-onehot".into(),
            FeatureKind::EpTopK(k, Basis::Exemplar) => format!("ep-topk(k={k}, exemplar)"),
            FeatureKind::EpTopK(k, Basis::Mean) => format!("ep-topk(k={k}, mean)"),
            FeatureKind::Sae => "sae".into(),
        }
    }
}

/// Token features of `rows` (`n × dim`): `(n × width, width)`.
pub fn token_features(
    rows: &[f32],
    dim: usize,
    kind: FeatureKind,
    dict: Option<&Dictionary>,
    sae: Option<&Sae>,
) -> Result<(Vec<f32>, usize)> {
    let need_dict =
        || dict.ok_or_else(|| Error::param("features", "EP features need a dictionary"));
    match kind {
        FeatureKind::Raw => Ok((rows.to_vec(), dim)),
        FeatureKind::EpOneHot => {
            let dict = need_dict()?;
            let (ids, _) = dict.assign(rows)?;
            let k = dict.len();
            let mut out = vec![0.0f32; ids.len() * k];
            for (i, &id) in ids.iter().enumerate() {
                out[i * k + id as usize] = 1.0;
            }
            Ok((out, k))
        }
        FeatureKind::EpTopK(t, basis) => {
            let dict = need_dict()?;
            Ok((dict.encode(rows, basis, Readout::TopK(t))?, dict.len()))
        }
        FeatureKind::Sae => {
            let sae = sae.ok_or_else(|| Error::param("features", "SAE features need an SAE"))?;
            Ok((sae.encode(rows)?, sae.d_sae))
        }
    }
}

/// Document features: for each of `doc_ids`, its token rows through [`token_features`], then
/// [`pool`]. Returns `(n_docs × width, width)`.
pub fn document_features(
    docs: &crate::eval::documents::DocumentActivations,
    doc_ids: &[i64],
    kind: FeatureKind,
    pooling: Pooling,
    binarize: bool,
    dict: Option<&Dictionary>,
    sae: Option<&Sae>,
) -> Result<(Vec<f64>, usize)> {
    let mut out = Vec::new();
    let mut width = 0;
    for &id in doc_ids {
        let (t, w) = token_features(docs.get(id)?, docs.dim, kind, dict, sae)?;
        width = w;
        out.extend(pool(&t, w, pooling, binarize));
    }
    Ok((out, width))
}

// ---------------------------------------------------------------------------------------------
// Splits

/// A seeded stratified train/test split: within each class, a shuffled `round(n_c · fraction)`
/// (at least 1 and at most `n_c − 1`) go to the test set. Returns sorted `(train, test)` indices.
/// Errors when a class has fewer than 2 items or fewer than 2 classes are present.
pub fn stratified_split(
    y: &[usize],
    n_classes: usize,
    test_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(Error::param(
            "test-fraction",
            format!("must lie in (0, 1), got {test_fraction}"),
        ));
    }
    let by_class = class_members(y, n_classes, 2)?;
    let mut rng = SplitMix64::new(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for mut members in by_class {
        rng.shuffle(&mut members);
        let n = members.len();
        let n_test = ((n as f64 * test_fraction).round() as usize).clamp(1, n - 1);
        test.extend_from_slice(&members[..n_test]);
        train.extend_from_slice(&members[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok((train, test))
}

/// Seeded stratified k-fold assignment: each class's members, shuffled, are dealt to the folds
/// in turn (continuing where the previous class stopped, so fold sizes differ by at most one).
/// Every class needs at least 2 members (so every fold's training part holds every class).
pub fn stratified_folds(
    y: &[usize],
    n_classes: usize,
    folds: usize,
    seed: u64,
) -> Result<Vec<usize>> {
    if folds < 2 {
        return Err(Error::param(
            "folds",
            format!("need at least 2, got {folds}"),
        ));
    }
    let by_class = class_members(y, n_classes, 2)?;
    let mut rng = SplitMix64::new(seed ^ 0x5EED_F01D);
    let mut fold = vec![0usize; y.len()];
    let mut next = 0;
    for mut members in by_class {
        rng.shuffle(&mut members);
        for i in members {
            fold[i] = next % folds;
            next += 1;
        }
    }
    Ok(fold)
}

fn take_rows(x: &[f64], d: usize, idx: &[usize]) -> Vec<f64> {
    idx.iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
        .collect()
}

/// Settings of [`run_probe`].
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub test_fraction: f64,
    pub folds: usize,
    pub c_grid: Vec<f64>,
    pub seed: u64,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            test_fraction: 0.2,
            folds: 5,
            c_grid: vec![0.01, 0.1, 1.0, 10.0, 100.0],
            seed: 0,
        }
    }
}

/// Cross-validated accuracy of each C.
#[derive(Debug, Clone, Serialize)]
pub struct CvScore {
    pub c: f64,
    pub mean_accuracy: f64,
}

/// The outcome of one probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub n_features: usize,
    pub n_train: usize,
    pub n_test: usize,
    pub chosen_c: f64,
    pub cv: Vec<CvScore>,
    /// Accuracy, macro-F1 and per-class metrics on the test split.
    pub test: ClassificationReport,
    /// Whether the final fit converged (see [`LogisticModel::converged`]).
    pub converged: bool,
    /// Whether the features were fitted sparsely (see [`SPARSE_DENSITY`]).
    pub sparse: bool,
    #[serde(skip)]
    pub model: LogisticModel,
}

/// Document features as a probe fits them: the dense rows, or their nonzeros when at most
/// [`SPARSE_DENSITY`] of the values are nonzero.
enum Features<'a> {
    Dense(&'a [f64], usize),
    Sparse(SparseRows),
}

/// The largest share of nonzero values at which a probe fits sparsely.
pub const SPARSE_DENSITY: f64 = 0.25;

impl<'a> Features<'a> {
    fn of(x: &'a [f64], d: usize) -> Self {
        let nnz = x.iter().filter(|v| **v != 0.0).count();
        if (nnz as f64) <= SPARSE_DENSITY * x.len() as f64 {
            Features::Sparse(SparseRows::from_dense(x, d))
        } else {
            Features::Dense(x, d)
        }
    }

    fn is_sparse(&self) -> bool {
        matches!(self, Features::Sparse(_))
    }

    /// Standardises on the rows `train` (labels `y_train`), fits the regression at `c` and
    /// predicts the rows `test`.
    fn fit_predict(
        &self,
        train: &[usize],
        y_train: &[usize],
        test: &[usize],
        n_classes: usize,
        c: f64,
    ) -> Result<(LogisticModel, Vec<usize>)> {
        match self {
            Features::Dense(x, d) => {
                let xtr = take_rows(x, *d, train);
                let st = Standardizer::fit(&xtr, *d);
                let model = fit_logistic(&st.apply(&xtr), *d, y_train, n_classes, c)?;
                let pred = model.predict(&st.apply(&take_rows(x, *d, test)));
                Ok((model, pred))
            }
            Features::Sparse(x) => {
                let xtr = x.take_rows(train);
                let st = Standardizer::fit_sparse(&xtr);
                let model = fit_logistic_sparse(&xtr, &st, y_train, n_classes, c)?;
                let pred = model.predict_sparse(&x.take_rows(test), &st)?;
                Ok((model, pred))
            }
        }
    }
}

/// Mean CV accuracy of each C of `grid` on (`x`, `y`) with the fold assignment `fold`
/// (standardising within each fold), and the best C (the first of the grid on ties).
pub fn cross_validate(
    x: &[f64],
    d: usize,
    y: &[usize],
    n_classes: usize,
    fold: &[usize],
    grid: &[f64],
) -> Result<(f64, Vec<CvScore>)> {
    let all: Vec<usize> = (0..y.len()).collect();
    cross_validate_rows(&Features::of(x, d), &all, y, n_classes, fold, grid)
}

/// [`cross_validate`] on the rows `rows` of `x` (labels `y`, folds `fold`, both of `rows`).
fn cross_validate_rows(
    x: &Features,
    rows: &[usize],
    y: &[usize],
    n_classes: usize,
    fold: &[usize],
    grid: &[f64],
) -> Result<(f64, Vec<CvScore>)> {
    if grid.is_empty() {
        return Err(Error::param("c-grid", "no value of C to try"));
    }
    let folds = fold.iter().max().map_or(0, |m| m + 1);
    let mut scores = Vec::new();
    for &c in grid {
        let mut acc = 0.0;
        for f in 0..folds {
            let tr: Vec<usize> = (0..y.len()).filter(|&i| fold[i] != f).collect();
            let te: Vec<usize> = (0..y.len()).filter(|&i| fold[i] == f).collect();
            let ytr: Vec<usize> = tr.iter().map(|&i| y[i]).collect();
            let yte: Vec<usize> = te.iter().map(|&i| y[i]).collect();
            let (rows_tr, rows_te): (Vec<usize>, Vec<usize>) = (
                tr.iter().map(|&i| rows[i]).collect(),
                te.iter().map(|&i| rows[i]).collect(),
            );
            let (_, pred) = x.fit_predict(&rows_tr, &ytr, &rows_te, n_classes, c)?;
            acc += crate::eval::metrics::accuracy(&yte, &pred)?;
        }
        scores.push(CvScore {
            c,
            mean_accuracy: acc / folds as f64,
        });
    }
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if s.mean_accuracy > scores[best].mean_accuracy + 1e-12 {
            best = i;
        }
    }
    Ok((scores[best].c, scores))
}

/// The full probe on document features `x` (`n × d`) with labels `y`: seeded stratified split,
/// C by stratified k-fold CV on the training part, refit on the training part, metrics on the
/// test part. Fitted sparsely when at most [`SPARSE_DENSITY`] of `x` is nonzero.
pub fn run_probe(
    x: &[f64],
    d: usize,
    y: &[usize],
    n_classes: usize,
    options: &ProbeOptions,
) -> Result<ProbeResult> {
    if d == 0 || x.len() != y.len() * d {
        return Err(Error::param(
            "features",
            format!("{} values for {} rows of width {d}", x.len(), y.len()),
        ));
    }
    let (train, test) = stratified_split(y, n_classes, options.test_fraction, options.seed)?;
    let features = Features::of(x, d);
    let ytr: Vec<usize> = train.iter().map(|&i| y[i]).collect();
    let fold = stratified_folds(&ytr, n_classes, options.folds, options.seed)?;
    let (c, cv) = cross_validate_rows(&features, &train, &ytr, n_classes, &fold, &options.c_grid)?;
    let (model, pred) = features.fit_predict(&train, &ytr, &test, n_classes, c)?;
    let yte: Vec<usize> = test.iter().map(|&i| y[i]).collect();
    Ok(ProbeResult {
        n_features: d,
        n_train: train.len(),
        n_test: test.len(),
        chosen_c: c,
        cv,
        test: classification_report(&yte, &pred)?,
        converged: model.converged,
        sparse: features.is_sparse(),
        model,
    })
}

/// The outcome of a decision-tree probe.
#[derive(Debug, Clone, Serialize)]
pub struct TreeProbeResult {
    pub n_features: usize,
    pub n_train: usize,
    pub n_test: usize,
    pub config: crate::eval::tree::TreeConfig,
    pub depth: usize,
    pub leaves: usize,
    /// Accuracy, macro-F1 and per-class metrics on the test split.
    pub test: ClassificationReport,
    #[serde(skip)]
    pub tree: crate::eval::tree::DecisionTree,
}

/// The decision-tree probe on document features `x` (`n × d`): the same seeded stratified split
/// as [`run_probe`], a tree fitted on the raw (unstandardised) training features, metrics on the
/// test part.
pub fn run_tree_probe(
    x: &[f64],
    d: usize,
    y: &[usize],
    n_classes: usize,
    options: &ProbeOptions,
    config: &crate::eval::tree::TreeConfig,
) -> Result<TreeProbeResult> {
    let (train, test) = stratified_split(y, n_classes, options.test_fraction, options.seed)?;
    let ytr: Vec<usize> = train.iter().map(|&i| y[i]).collect();
    let tree = crate::eval::tree::fit_tree(&take_rows(x, d, &train), d, &ytr, n_classes, config)?;
    let pred = tree.predict(&take_rows(x, d, &test))?;
    let yte: Vec<usize> = test.iter().map(|&i| y[i]).collect();
    Ok(TreeProbeResult {
        n_features: d,
        n_train: train.len(),
        n_test: test.len(),
        config: *config,
        depth: tree.depth(),
        leaves: tree.leaves(),
        test: classification_report(&yte, &pred)?,
        tree,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_by_hand() {
        // Two tokens, width 3.
        let t = [1.0, 0.0, 3.0, 3.0, -1.0, 1.0];
        assert_eq!(pool(&t, 3, Pooling::Mean, false), vec![2.0, -0.5, 2.0]);
        assert_eq!(pool(&t, 3, Pooling::Max, false), vec![3.0, 0.0, 3.0]);
        assert_eq!(pool(&t, 3, Pooling::Last, false), vec![3.0, -1.0, 1.0]);
        // top-2 of token 0: {2, 0}; of token 1: {0, 2} → counts 2, 0, 2.
        assert_eq!(pool(&t, 3, Pooling::Count(2), false), vec![2.0, 0.0, 2.0]);
        assert_eq!(pool(&t, 3, Pooling::Count(2), true), vec![1.0, 0.0, 1.0]);
        // A zero value is never counted (top-3 of token 0 includes index 1 = 0.0).
        assert_eq!(
            pool(&t[..3], 3, Pooling::Count(3), false),
            vec![1.0, 0.0, 1.0]
        );
    }

    /// The split shuffles each class with `rng::SplitMix64::shuffle`: Fisher–Yates with exactly
    /// uniform draws (Lemire's multiply-shift with rejection). It replaced a shuffle that drew
    /// `next_u64() % (i + 1)`, biased toward small indices, so a seed's split (and the probe's and
    /// `detect`'s results) differ from those of versions before the change.
    #[test]
    fn split_is_stratified_and_seeded() {
        let y: Vec<usize> = (0..50).map(|i| usize::from(i % 5 == 0)).collect();
        let (tr, te) = stratified_split(&y, 2, 0.2, 3).unwrap();
        assert_eq!(te.iter().filter(|&&i| y[i] == 1).count(), 2);
        assert_eq!(te.len(), 10);
        assert_eq!(tr.len() + te.len(), 50);
        assert_eq!(stratified_split(&y, 2, 0.2, 3).unwrap().1, te);
        // The same split by hand: class 0 (40 members, 8 to test), then class 1 (10, 2 to test),
        // one generator seeded with the seed.
        let mut rng = SplitMix64::new(3);
        let mut want = Vec::new();
        for (class, n_test) in [(0, 8), (1, 2)] {
            let mut members: Vec<usize> = (0..50).filter(|&i| y[i] == class).collect();
            rng.shuffle(&mut members);
            want.extend_from_slice(&members[..n_test]);
        }
        want.sort_unstable();
        assert_eq!(te, want);
        assert!(stratified_split(&[0, 1, 1], 2, 0.2, 0).is_err());
    }
}
