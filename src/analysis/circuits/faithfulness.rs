//! MIB's circuit-track faithfulness metrics (Mueller et al., arXiv 2504.13151;
//! `MIB_circuit_track/evaluation.py`), on any metric values.
//!
//! A circuit `C` keeps the top `⌊k·n⌋` of `n` scored components at their clean values and
//! patches every other one from the corrupted run. With `m(N)` the metric of the whole model on
//! the clean prompts and `m(∅)` that of the empty circuit (every component patched):
//!
//! * faithfulness `f(k) = (m(C_k) − m(∅)) / (m(N) − m(∅))`;
//! * **CPR** = the area under `f` over `k ∈ [0, 1]` (trapezoid; higher is better);
//! * **CMD** = the area between `|1 − f|` and 0 (trapezoid; lower is better).
//!
//! MIB's own list of sizes starts at 0.1%; the sizes here add `k = 0` (`f = 0` by definition),
//! as the issue asks, which adds the segment `[0, 0.001]`: at most 0.0005·|f(0.001)| to CPR.

use crate::error::{Error, Result};
use serde::Serialize;

/// Circuit sizes as fractions of the components: 0, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100%.
pub const MIB_FRACTIONS: [f64; 11] = [
    0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
];

/// Components kept at fraction `k` of `n`: `⌊k·n⌋` (Python's `int(pct * n)`).
pub fn kept(k: f64, n: usize) -> usize {
    ((k * n as f64).floor() as usize).min(n)
}

/// `(m_c − m_empty) / (m_full − m_empty)`; an error when the whole model and the empty
/// circuit give the same metric (no effect to recover).
pub fn faithfulness(m_c: f64, m_full: f64, m_empty: f64) -> Result<f64> {
    let den = m_full - m_empty;
    if den == 0.0 || !den.is_finite() {
        return Err(Error::param(
            "faithfulness",
            format!("m(N) = {m_full} and m(∅) = {m_empty}: corrupting every component changes nothing, so faithfulness is undefined"),
        ));
    }
    Ok((m_c - m_empty) / den)
}

/// Trapezoid area of `y` over `x`, with `x` scaled so that its last value is 1 (MIB's
/// `area_under_curve`).
fn trapezoid(x: &[f64], y: &[f64]) -> f64 {
    let xmax = *x.last().expect("checked");
    (0..x.len() - 1)
        .map(|i| (x[i + 1] - x[i]) / xmax * (y[i] + y[i + 1]) / 2.0)
        .sum()
}

fn check(x: &[f64], f: &[f64]) -> Result<()> {
    if x.len() != f.len() || x.len() < 2 {
        return Err(Error::param(
            "faithfulness",
            format!(
                "{} sizes and {} values: need as many, at least 2",
                x.len(),
                f.len()
            ),
        ));
    }
    if x.windows(2).any(|w| w[1] <= w[0]) || *x.last().expect("checked") <= 0.0 {
        return Err(Error::param(
            "faithfulness",
            "the circuit sizes must increase and end above 0",
        ));
    }
    Ok(())
}

/// CPR: the area under the faithfulness curve `f` at sizes `x`.
pub fn cpr(x: &[f64], f: &[f64]) -> Result<f64> {
    check(x, f)?;
    Ok(trapezoid(x, f))
}

/// CMD: the area between `|1 − f|` and 0 at sizes `x`.
pub fn cmd(x: &[f64], f: &[f64]) -> Result<f64> {
    check(x, f)?;
    let d: Vec<f64> = f.iter().map(|v| (1.0 - v).abs()).collect();
    Ok(trapezoid(x, &d))
}

/// A faithfulness curve of one ranking, with its areas.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    /// The ranking's name (`ep`, `patching`, `random`, …).
    pub ranking: String,
    /// Sizes (fractions of the components).
    pub fractions: Vec<f64>,
    /// Components kept at each size.
    pub kept: Vec<usize>,
    /// `m(C)` at each size.
    pub metric: Vec<f64>,
    /// `f` at each size.
    pub faithfulness: Vec<f64>,
    pub cpr: f64,
    pub cmd: f64,
}

impl Curve {
    /// The curve of metric values `metric` (one per fraction) given `m(N)` and `m(∅)`.
    pub fn new(
        ranking: &str,
        fractions: &[f64],
        n: usize,
        metric: Vec<f64>,
        m_full: f64,
        m_empty: f64,
    ) -> Result<Curve> {
        let f = metric
            .iter()
            .map(|&m| faithfulness(m, m_full, m_empty))
            .collect::<Result<Vec<f64>>>()?;
        Ok(Curve {
            ranking: ranking.to_string(),
            fractions: fractions.to_vec(),
            kept: fractions.iter().map(|&k| kept(k, n)).collect(),
            cpr: cpr(fractions, &f)?,
            cmd: cmd(fractions, &f)?,
            metric,
            faithfulness: f,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_of_simple_curves() {
        let x = [0.0, 0.5, 1.0];
        assert!((cpr(&x, &[0.0, 1.0, 1.0]).unwrap() - 0.75).abs() < 1e-12);
        assert!((cmd(&x, &[0.0, 1.0, 1.0]).unwrap() - 0.25).abs() < 1e-12);
        // Overshoot counts in CMD as distance from 1.
        assert!((cmd(&x, &[2.0, 2.0, 2.0]).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(kept(0.1, 72), 7);
        assert_eq!(kept(0.2, 72), 14);
        assert_eq!(kept(0.01, 72), 0);
        assert_eq!(kept(1.0, 72), 72);
        assert!(faithfulness(1.0, 2.0, 2.0).is_err());
        assert!(cpr(&[0.0, 0.0], &[1.0, 1.0]).is_err());
    }
}
