//! Linear probes on document features (MOSAIC-style, related-systems (a)): token rows are turned
//! into features (raw activations, EP one-hot or top-k codes, SAE codes), pooled per document
//! (mean, max, last token, or the count of each feature in the tokens' top-n), optionally
//! binarised, and classified by an L2 logistic regression whose C is chosen by stratified k-fold
//! cross-validation.
//!
//! The regression minimises scikit-learn's objective `C·Σ logloss + ½‖W‖²` (intercept not
//! penalised): binomial for two classes (one weight vector, the second class positive),
//! multinomial (softmax, `K × D` weights, intercepts centred to sum 0) for more — what
//! `LogisticRegression(solver="lbfgs")` fits. It is solved by L-BFGS in f64 to a tight gradient
//! tolerance. Features are standardised (mean 0, population standard deviation 1; constant
//! features only centred) with statistics fitted on the training rows only — inside each CV fold
//! on the fold's training rows — so C means the same for every feature kind.

use crate::dictionary::{Basis, Readout};
use crate::error::{Error, Result};
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

/// Members of each class; errors when one has fewer than `min` or fewer than 2 classes exist.
fn class_members(y: &[usize], n_classes: usize, min: usize) -> Result<Vec<Vec<usize>>> {
    let mut by_class = vec![Vec::new(); n_classes];
    for (i, &c) in y.iter().enumerate() {
        by_class[c].push(i);
    }
    if n_classes < 2 {
        return Err(Error::param("labels", "a probe needs at least 2 classes"));
    }
    if let Some(c) = by_class.iter().position(|m| m.len() < min) {
        return Err(Error::param(
            "labels",
            format!(
                "class {c} has {} item(s) here; at least {min} are needed",
                by_class[c].len()
            ),
        ));
    }
    Ok(by_class)
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

// ---------------------------------------------------------------------------------------------
// Standardisation and logistic regression

/// Per-feature mean and scale fitted on training rows.
#[derive(Debug, Clone)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Standardizer {
    /// Mean and population standard deviation of each column of `x` (`n × d`); a zero
    /// deviation gets scale 1 (as scikit-learn's `StandardScaler`).
    pub fn fit(x: &[f64], d: usize) -> Self {
        let n = (x.len() / d) as f64;
        let mut mean = vec![0.0; d];
        for r in x.chunks(d) {
            mean.iter_mut().zip(r).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; d];
        for r in x.chunks(d) {
            for j in 0..d {
                var[j] += (r[j] - mean[j]).powi(2);
            }
        }
        let scale = var
            .iter()
            .map(|v| {
                let s = (v / n).sqrt();
                if s > 1e-12 {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        Standardizer { mean, scale }
    }

    /// Standardised copy of `x` (`n × d`).
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        let d = self.mean.len();
        let mut out = x.to_vec();
        for r in out.chunks_mut(d) {
            for ((v, m), s) in r.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) / s;
            }
        }
        out
    }
}

/// A fitted logistic regression.
#[derive(Debug, Clone, Serialize)]
pub struct LogisticModel {
    pub n_classes: usize,
    pub dim: usize,
    /// `1 × dim` (binary: the weights of class 1) or `n_classes × dim`, row-major.
    pub coef: Vec<f64>,
    /// 1 (binary) or `n_classes` values.
    pub intercept: Vec<f64>,
    /// L-BFGS iterations used.
    pub iterations: usize,
    /// Whether the largest gradient entry ended below `1e-6 · max(1, C·n)` (the solver aims at
    /// 1e-9; this looser bar flags fits that stopped far from the optimum).
    pub converged: bool,
}

impl LogisticModel {
    /// The class of each row of `x` (`n × dim`): binary, 1 when the decision is > 0;
    /// multinomial, the argmax (lowest class on ties).
    pub fn predict(&self, x: &[f64]) -> Vec<usize> {
        let rows = self.intercept.len();
        x.chunks(self.dim)
            .map(|r| {
                let z: Vec<f64> = (0..rows)
                    .map(|k| {
                        dot(&self.coef[k * self.dim..(k + 1) * self.dim], r) + self.intercept[k]
                    })
                    .collect();
                if rows == 1 {
                    usize::from(z[0] > 0.0)
                } else {
                    let mut best = 0;
                    for k in 1..rows {
                        if z[k] > z[best] {
                            best = k;
                        }
                    }
                    best
                }
            })
            .collect()
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// At most this many row blocks (of at least 64 rows) per objective evaluation: the blocks are
/// summed in order and their size depends only on `n`, so the result does not depend on the
/// number of threads.
const OBJECTIVE_BLOCKS: usize = 64;

/// Objective and gradient of the regression at `theta` (`rows × d` weights, then `rows`
/// intercepts); the data term is computed over blocks of rows in parallel.
fn objective(
    theta: &[f64],
    x: &[f64],
    y: &[usize],
    d: usize,
    rows: usize,
    c: f64,
    grad: &mut [f64],
) -> f64 {
    use rayon::prelude::*;
    let (w, b) = theta.split_at(rows * d);
    let block = y.len().div_ceil(OBJECTIVE_BLOCKS).max(64);
    let parts: Vec<(f64, Vec<f64>)> = x
        .par_chunks(block * d)
        .zip(y.par_chunks(block))
        .map(|(xb, yb)| data_term(w, b, xb, yb, d, rows))
        .collect();
    grad.fill(0.0);
    let mut loss = 0.0;
    for (l, g) in parts {
        loss += l;
        grad.iter_mut().zip(&g).for_each(|(o, v)| *o += c * v);
    }
    let mut reg = 0.0;
    for (gi, wi) in grad[..rows * d].iter_mut().zip(w) {
        *gi += wi;
        reg += wi * wi;
    }
    c * loss + 0.5 * reg
}

/// The log-loss of rows `x` (labels `y`) and its gradient (weights, then intercepts).
fn data_term(
    w: &[f64],
    b: &[f64],
    x: &[f64],
    y: &[usize],
    d: usize,
    rows: usize,
) -> (f64, Vec<f64>) {
    let mut grad = vec![0.0; rows * d + rows];
    let mut loss = 0.0;
    let mut z = vec![0.0; rows];
    let mut g = vec![0.0; rows];
    for (r, &yi) in x.chunks(d).zip(y) {
        for k in 0..rows {
            z[k] = dot(&w[k * d..(k + 1) * d], r) + b[k];
        }
        if rows == 1 {
            let s = if yi == 1 { 1.0 } else { -1.0 };
            let m = -s * z[0];
            // log(1 + e^m), stably; d/dz = −s·σ(m).
            loss += if m > 0.0 {
                m + (-m).exp().ln_1p()
            } else {
                m.exp().ln_1p()
            };
            let sig = if m > 0.0 {
                1.0 / (1.0 + (-m).exp())
            } else {
                m.exp() / (1.0 + m.exp())
            };
            g[0] = -s * sig;
        } else {
            let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|v| (v - mx).exp()).sum();
            let lse = mx + sum.ln();
            loss += lse - z[yi];
            for k in 0..rows {
                g[k] = (z[k] - lse).exp() - f64::from(u8::from(k == yi));
            }
        }
        for k in 0..rows {
            if g[k] != 0.0 {
                grad[k * d..(k + 1) * d]
                    .iter_mut()
                    .zip(r)
                    .for_each(|(o, v)| *o += g[k] * v);
                grad[rows * d + k] += g[k];
            }
        }
    }
    (loss, grad)
}

/// Fits the L2 logistic regression (see the module documentation) on `x` (`n × d`, f64) and
/// labels `y` in `0..n_classes` (every class present). Converged when the largest gradient
/// entry is below `1e-9 · max(1, C·n)`, or when a line search can no longer decrease the
/// objective (its numerical floor).
pub fn fit_logistic(
    x: &[f64],
    d: usize,
    y: &[usize],
    n_classes: usize,
    c: f64,
) -> Result<LogisticModel> {
    let n = y.len();
    if n == 0 || x.len() != n * d {
        return Err(Error::param(
            "features",
            format!("{} values for {n} rows of width {d}", x.len()),
        ));
    }
    if !(c > 0.0 && c.is_finite()) {
        return Err(Error::param(
            "C",
            format!("must be positive and finite, got {c}"),
        ));
    }
    class_members(y, n_classes, 1)?;
    let rows = if n_classes == 2 { 1 } else { n_classes };
    let p = rows * d + rows;
    let mut theta = vec![0.0; p];
    let mut grad = vec![0.0; p];
    let mut f = objective(&theta, x, y, d, rows, c, &mut grad);
    let tol = 1e-9 * (c * n as f64).max(1.0);
    let m = 10;
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut rho: Vec<f64> = Vec::new();
    let mut iterations = 0;
    let mut new_grad = vec![0.0; p];
    for it in 0..20_000 {
        iterations = it;
        let gmax = grad.iter().fold(0.0f64, |a, g| a.max(g.abs()));
        if gmax <= tol {
            break;
        }
        // Two-loop recursion: direction = −H·g.
        let mut q = grad.clone();
        let mut alpha = vec![0.0; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            alpha[i] = rho[i] * dot(&s_hist[i], &q);
            q.iter_mut()
                .zip(&y_hist[i])
                .for_each(|(qj, yj)| *qj -= alpha[i] * yj);
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(yv)) => dot(s, yv) / dot(yv, yv),
            _ => 1.0 / grad.iter().map(|g| g * g).sum::<f64>().sqrt().max(1.0),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for i in 0..s_hist.len() {
            let beta = rho[i] * dot(&y_hist[i], &q);
            q.iter_mut()
                .zip(&s_hist[i])
                .for_each(|(qj, sj)| *qj += (alpha[i] - beta) * sj);
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&dir, &grad);
        if slope >= 0.0 {
            // Not a descent direction (rounding): restart from the scaled steepest descent.
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            let norm = dot(&grad, &grad).sqrt().max(1.0);
            dir = grad.iter().map(|g| -g / norm).collect();
            slope = dot(&dir, &grad);
        }
        // Backtracking Armijo line search.
        let mut step = 1.0;
        let mut accepted = None;
        for _ in 0..60 {
            let trial: Vec<f64> = theta.iter().zip(&dir).map(|(t, d)| t + step * d).collect();
            let ft = objective(&trial, x, y, d, rows, c, &mut new_grad);
            if ft <= f + 1e-4 * step * slope {
                accepted = Some((trial, ft));
                break;
            }
            step *= 0.5;
        }
        let Some((trial, ft)) = accepted else { break };
        let s: Vec<f64> = trial.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = new_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        if sy > 1e-300 {
            if s_hist.len() == m {
                s_hist.remove(0);
                y_hist.remove(0);
                rho.remove(0);
            }
            s_hist.push(s);
            y_hist.push(yv);
            rho.push(1.0 / sy);
        }
        let stalled = f - ft <= 1e-16 * f.abs().max(1.0) && step < 1e-10;
        theta = trial;
        f = ft;
        std::mem::swap(&mut grad, &mut new_grad);
        if stalled {
            break;
        }
    }
    let converged = grad.iter().fold(0.0f64, |a, g| a.max(g.abs())) <= 1e3 * tol;
    let (w, b) = theta.split_at(rows * d);
    let mut intercept = b.to_vec();
    if rows > 1 {
        let mean = intercept.iter().sum::<f64>() / rows as f64;
        intercept.iter_mut().for_each(|v| *v -= mean);
    }
    Ok(LogisticModel {
        n_classes,
        dim: d,
        coef: w.to_vec(),
        intercept,
        iterations,
        converged,
    })
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
    #[serde(skip)]
    pub model: LogisticModel,
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
            let xtr = take_rows(x, d, &tr);
            let st = Standardizer::fit(&xtr, d);
            let ytr: Vec<usize> = tr.iter().map(|&i| y[i]).collect();
            let model = fit_logistic(&st.apply(&xtr), d, &ytr, n_classes, c)?;
            let pred = model.predict(&st.apply(&take_rows(x, d, &te)));
            let yte: Vec<usize> = te.iter().map(|&i| y[i]).collect();
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
/// test part.
pub fn run_probe(
    x: &[f64],
    d: usize,
    y: &[usize],
    n_classes: usize,
    options: &ProbeOptions,
) -> Result<ProbeResult> {
    let (train, test) = stratified_split(y, n_classes, options.test_fraction, options.seed)?;
    let xtr = take_rows(x, d, &train);
    let ytr: Vec<usize> = train.iter().map(|&i| y[i]).collect();
    let fold = stratified_folds(&ytr, n_classes, options.folds, options.seed)?;
    let (c, cv) = cross_validate(&xtr, d, &ytr, n_classes, &fold, &options.c_grid)?;
    let st = Standardizer::fit(&xtr, d);
    let model = fit_logistic(&st.apply(&xtr), d, &ytr, n_classes, c)?;
    let pred = model.predict(&st.apply(&take_rows(x, d, &test)));
    let yte: Vec<usize> = test.iter().map(|&i| y[i]).collect();
    Ok(ProbeResult {
        n_features: d,
        n_train: train.len(),
        n_test: test.len(),
        chosen_c: c,
        cv,
        test: classification_report(&yte, &pred)?,
        converged: model.converged,
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
