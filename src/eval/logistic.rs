//! L2 logistic regression, the probes' classifier: scikit-learn's objective
//! `C·Σ logloss + ½‖W‖²` (intercept not penalised), binomial for two classes (one weight vector,
//! the second class positive), multinomial (softmax, `K × D` weights, intercepts centred to sum 0)
//! for more — what `LogisticRegression(solver="lbfgs")` fits — solved by L-BFGS in f64 to a tight
//! gradient tolerance, on features standardised by a [`Standardizer`] (mean 0, population
//! standard deviation 1; constant features only centred).
//!
//! Two designs. Dense rows are fitted as given (the caller standardises them). Sparse rows
//! ([`SparseRows`], e.g. pooled EP or SAE codes of documents, a few hundred nonzeros among up to
//! 10⁵ features) are standardised on the fly: `(s − μ)/σ · w = s · (w/σ) − μ · (w/σ)`, so an
//! objective evaluation costs `O(nnz + K·D)` instead of `O(n·K·D)` and the standardised matrix,
//! which is dense, is never formed. The two agree to rounding (`tests/eval_metrics.rs` checks
//! them against each other and scikit-learn).

use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::Serialize;

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
        if d == 0 {
            return Standardizer {
                mean: Vec::new(),
                scale: Vec::new(),
            };
        }
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
        let scale = var.iter().map(|v| scale_of(v / n)).collect();
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

    /// [`Standardizer::fit`] of sparse rows, without densifying them: the absent entries are
    /// zeros, each adding `μ²` to its column's squared deviations.
    pub fn fit_sparse(x: &SparseRows) -> Self {
        let (n, d) = (x.n_rows() as f64, x.dim);
        let mut sum = vec![0.0; d];
        let mut present = vec![0usize; d];
        for r in 0..x.n_rows() {
            let (cols, vals) = x.row(r);
            for (&j, v) in cols.iter().zip(vals) {
                sum[j] += v;
                present[j] += 1;
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let mut var: Vec<f64> = (0..d)
            .map(|j| (x.n_rows() - present[j]) as f64 * mean[j] * mean[j])
            .collect();
        for r in 0..x.n_rows() {
            let (cols, vals) = x.row(r);
            for (&j, v) in cols.iter().zip(vals) {
                var[j] += (v - mean[j]).powi(2);
            }
        }
        let scale = var.iter().map(|v| scale_of(v / n)).collect();
        Standardizer { mean, scale }
    }
}

/// The standard deviation of a column of variance `var`, or 1 for a constant column (as
/// scikit-learn's `StandardScaler`).
fn scale_of(var: f64) -> f64 {
    let s = var.sqrt();
    if s > 1e-12 {
        s
    } else {
        1.0
    }
}

/// Rows of `dim` features stored by their nonzero entries (compressed sparse rows).
#[derive(Debug, Clone, PartialEq)]
pub struct SparseRows {
    pub dim: usize,
    /// Row `r`'s entries are `start[r]..start[r + 1]` of `col` and `value`.
    start: Vec<usize>,
    col: Vec<usize>,
    value: Vec<f64>,
}

impl SparseRows {
    /// The nonzero entries of `x` (`n × d`, row-major).
    pub fn from_dense(x: &[f64], d: usize) -> Self {
        let mut rows = SparseRows {
            dim: d,
            start: vec![0],
            col: Vec::new(),
            value: Vec::new(),
        };
        for r in x.chunks(d.max(1)) {
            for (j, &v) in r.iter().enumerate() {
                if v != 0.0 {
                    rows.col.push(j);
                    rows.value.push(v);
                }
            }
            rows.start.push(rows.col.len());
        }
        rows
    }

    pub fn n_rows(&self) -> usize {
        self.start.len() - 1
    }

    /// Number of stored (nonzero) entries.
    pub fn nnz(&self) -> usize {
        self.col.len()
    }

    /// Row `r`: the columns of its nonzero entries (increasing) and their values.
    pub fn row(&self, r: usize) -> (&[usize], &[f64]) {
        let span = self.start[r]..self.start[r + 1];
        (&self.col[span.clone()], &self.value[span])
    }

    /// The rows `idx`, in that order.
    pub fn take_rows(&self, idx: &[usize]) -> SparseRows {
        let mut out = SparseRows {
            dim: self.dim,
            start: vec![0],
            col: Vec::new(),
            value: Vec::new(),
        };
        for &i in idx {
            let (c, v) = self.row(i);
            out.col.extend_from_slice(c);
            out.value.extend_from_slice(v);
            out.start.push(out.col.len());
        }
        out
    }
}

/// The rows a regression is fitted on.
#[derive(Debug, Clone, Copy)]
enum Design<'a> {
    /// `n × d` row-major values, used as given.
    Dense { x: &'a [f64], d: usize },
    /// Sparse rows, standardised by `st` on the fly.
    Sparse {
        x: &'a SparseRows,
        st: &'a Standardizer,
    },
}

impl Design<'_> {
    fn dim(&self) -> usize {
        match self {
            Design::Dense { d, .. } => *d,
            Design::Sparse { x, .. } => x.dim,
        }
    }
}

/// The weights `w/σ` and intercepts `b − μ·(w/σ)` that give, applied to raw rows, the logits
/// the standardised rows give with `w` and `b`.
fn fold_standardization(w: &[f64], b: &[f64], st: &Standardizer, d: usize) -> (Vec<f64>, Vec<f64>) {
    let u: Vec<f64> = w
        .chunks(d)
        .flat_map(|wk| wk.iter().zip(&st.scale).map(|(a, s)| a / s))
        .collect();
    let shift = b
        .iter()
        .enumerate()
        .map(|(k, bk)| bk - dot(&st.mean, &u[k * d..(k + 1) * d]))
        .collect();
    (u, shift)
}

/// `Σ_{j ∈ row} value_j · u_j`.
fn sparse_dot(cols: &[usize], vals: &[f64], u: &[f64]) -> f64 {
    cols.iter().zip(vals).map(|(&j, v)| u[j] * v).sum()
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
                class_of(&z)
            })
            .collect()
    }

    /// [`LogisticModel::predict`] of raw sparse rows `x`, standardised by `st` (the
    /// standardiser of the training rows).
    pub fn predict_sparse(&self, x: &SparseRows, st: &Standardizer) -> Result<Vec<usize>> {
        if x.dim != self.dim || st.mean.len() != self.dim {
            return Err(Error::DimensionMismatch {
                what: "sparse rows to classify".into(),
                expected: self.dim,
                found: if x.dim != self.dim {
                    x.dim
                } else {
                    st.mean.len()
                },
            });
        }
        let (u, shift) = fold_standardization(&self.coef, &self.intercept, st, self.dim);
        Ok((0..x.n_rows())
            .map(|r| {
                let (cols, vals) = x.row(r);
                let z: Vec<f64> = shift
                    .iter()
                    .enumerate()
                    .map(|(k, s)| sparse_dot(cols, vals, &u[k * self.dim..(k + 1) * self.dim]) + s)
                    .collect();
                class_of(&z)
            })
            .collect())
    }
}

/// Binary (one logit): class 1 when it is > 0; multinomial: the argmax (lowest class on ties).
fn class_of(z: &[f64]) -> usize {
    if z.len() == 1 {
        return usize::from(z[0] > 0.0);
    }
    let mut best = 0;
    for k in 1..z.len() {
        if z[k] > z[best] {
            best = k;
        }
    }
    best
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
    design: Design,
    y: &[usize],
    rows: usize,
    c: f64,
    grad: &mut [f64],
) -> f64 {
    let d = design.dim();
    let (w, b) = theta.split_at(rows * d);
    grad.fill(0.0);
    let mut loss = 0.0;
    match design {
        Design::Dense { x, d } => {
            let block = y.len().div_ceil(OBJECTIVE_BLOCKS).max(64);
            let parts: Vec<(f64, Vec<f64>)> = x
                .par_chunks(block * d)
                .zip(y.par_chunks(block))
                .map(|(xb, yb)| data_term(w, b, xb, yb, d, rows))
                .collect();
            for (l, g) in parts {
                loss += l;
                grad.iter_mut().zip(&g).for_each(|(o, v)| *o += c * v);
            }
        }
        Design::Sparse { x, st } => {
            let (l, g) = sparse_data_term(w, b, x, st, y, rows);
            loss = l;
            grad.iter_mut().zip(&g).for_each(|(o, v)| *o = c * v);
        }
    }
    let mut reg = 0.0;
    for (gi, wi) in grad[..rows * d].iter_mut().zip(w) {
        *gi += wi;
        reg += wi * wi;
    }
    c * loss + 0.5 * reg
}

/// Rows per block of [`sparse_data_term`]: a block's work is its rows' nonzeros, but summing a
/// block's gradient costs `rows × d`, so blocks are large. Fixed, so the result does not depend
/// on the number of threads.
const SPARSE_BLOCK_ROWS: usize = 2048;

/// [`data_term`] of sparse rows standardised by `st`: the logits come from the folded weights
/// (see [`fold_standardization`]); the weight gradient `Σ_r g_r (s_r − μ)/σ` is gathered as
/// `(Σ_r g_r s_r − μ Σ_r g_r)/σ`, touching only the nonzeros.
fn sparse_data_term(
    w: &[f64],
    b: &[f64],
    x: &SparseRows,
    st: &Standardizer,
    y: &[usize],
    rows: usize,
) -> (f64, Vec<f64>) {
    let d = x.dim;
    let (u, shift) = fold_standardization(w, b, st, d);
    let n = x.n_rows();
    let parts: Vec<(f64, Vec<f64>, Vec<f64>)> = (0..n.div_ceil(SPARSE_BLOCK_ROWS))
        .into_par_iter()
        .map(|block| {
            let mut raw_grad = vec![0.0; rows * d];
            let mut g_sum = vec![0.0; rows];
            let mut loss = 0.0;
            let mut z = vec![0.0; rows];
            let mut g = vec![0.0; rows];
            let first = block * SPARSE_BLOCK_ROWS;
            let labels = &y[first..(first + SPARSE_BLOCK_ROWS).min(n)];
            for (r, &label) in (first..).zip(labels) {
                let (cols, vals) = x.row(r);
                for k in 0..rows {
                    z[k] = sparse_dot(cols, vals, &u[k * d..(k + 1) * d]) + shift[k];
                }
                loss += row_loss(&z, label, &mut g);
                for k in 0..rows {
                    g_sum[k] += g[k];
                    let gk = &mut raw_grad[k * d..(k + 1) * d];
                    for (&j, v) in cols.iter().zip(vals) {
                        gk[j] += g[k] * v;
                    }
                }
            }
            (loss, raw_grad, g_sum)
        })
        .collect();
    let mut loss = 0.0;
    let mut raw_grad = vec![0.0; rows * d];
    let mut g_sum = vec![0.0; rows];
    for (l, rg, gs) in parts {
        loss += l;
        raw_grad.iter_mut().zip(&rg).for_each(|(o, v)| *o += v);
        g_sum.iter_mut().zip(&gs).for_each(|(o, v)| *o += v);
    }
    let mut grad = vec![0.0; rows * d + rows];
    for k in 0..rows {
        for j in 0..d {
            grad[k * d + j] = (raw_grad[k * d + j] - st.mean[j] * g_sum[k]) / st.scale[j];
        }
        grad[rows * d + k] = g_sum[k];
    }
    (loss, grad)
}

/// The log-loss of one row with logits `z` and label `yi`; writes its derivative in each
/// logit to `g`.
fn row_loss(z: &[f64], yi: usize, g: &mut [f64]) -> f64 {
    if z.len() == 1 {
        let s = if yi == 1 { 1.0 } else { -1.0 };
        let m = -s * z[0];
        // log(1 + e^m), stably; d/dz = −s·σ(m).
        let sig = if m > 0.0 {
            1.0 / (1.0 + (-m).exp())
        } else {
            m.exp() / (1.0 + m.exp())
        };
        g[0] = -s * sig;
        if m > 0.0 {
            m + (-m).exp().ln_1p()
        } else {
            m.exp().ln_1p()
        }
    } else {
        let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|v| (v - mx).exp()).sum();
        let lse = mx + sum.ln();
        for (k, gk) in g.iter_mut().enumerate() {
            *gk = (z[k] - lse).exp() - f64::from(u8::from(k == yi));
        }
        lse - z[yi]
    }
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
        loss += row_loss(&z, yi, &mut g);
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

/// Fits the L2 logistic regression (see the module documentation) on `x` (`n × d`, f64, used as
/// given) and labels `y` in `0..n_classes` (every class present). Converged when the largest
/// gradient entry is below `1e-9 · max(1, C·n)`, or when a line search can no longer decrease
/// the objective (its numerical floor).
pub fn fit_logistic(
    x: &[f64],
    d: usize,
    y: &[usize],
    n_classes: usize,
    c: f64,
) -> Result<LogisticModel> {
    let n = y.len();
    if n == 0 || d == 0 || x.len() != n * d {
        return Err(Error::param(
            "features",
            format!("{} values for {n} rows of width {d}", x.len()),
        ));
    }
    fit(Design::Dense { x, d }, y, n_classes, c)
}

/// [`fit_logistic`] of sparse rows `x` standardised by `st` (fitted on `x`): the same model
/// as `fit_logistic(st.apply(dense x))`, to rounding.
pub fn fit_logistic_sparse(
    x: &SparseRows,
    st: &Standardizer,
    y: &[usize],
    n_classes: usize,
    c: f64,
) -> Result<LogisticModel> {
    if y.is_empty() || x.dim == 0 || x.n_rows() != y.len() || st.mean.len() != x.dim {
        return Err(Error::param(
            "features",
            format!(
                "{} sparse rows of width {} with {} labels and a standardiser of width {}",
                x.n_rows(),
                x.dim,
                y.len(),
                st.mean.len()
            ),
        ));
    }
    fit(Design::Sparse { x, st }, y, n_classes, c)
}

/// L-BFGS on the regression's objective over `design`.
fn fit(design: Design, y: &[usize], n_classes: usize, c: f64) -> Result<LogisticModel> {
    let (n, d) = (y.len(), design.dim());
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
    let mut f = objective(&theta, design, y, rows, c, &mut grad);
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
            let ft = objective(&trial, design, y, rows, c, &mut new_grad);
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

/// The members of each class of `y`; errors unless every label is below `n_classes` and there
/// are at least 2 classes, each with at least `min` members.
pub(crate) fn class_members(y: &[usize], n_classes: usize, min: usize) -> Result<Vec<Vec<usize>>> {
    let mut by_class = vec![Vec::new(); n_classes];
    for (i, &c) in y.iter().enumerate() {
        by_class
            .get_mut(c)
            .ok_or_else(|| Error::param("labels", format!("label {c} outside 0..{n_classes}")))?
            .push(i);
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
