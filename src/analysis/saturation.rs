//! Saturation curves: K against tokens (or activations) streamed, as every build records it
//! after each batch (`BuildInfo::saturation_curve`), several dictionaries (corpora) on one plot.

use crate::dictionary::{Dictionary, SaturationPoint};
use crate::error::{Error, Result};
use crate::eval::plot::{write_png, Panel, Series};
use serde::Serialize;
use std::path::Path;

/// One dictionary's curve.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    pub name: String,
    pub theta: f64,
    pub percentile: Option<f64>,
    pub hook: Option<String>,
    pub corpus: Vec<String>,
    pub saturated: bool,
    /// K of the finished dictionary (after `min_members`).
    pub final_regions: usize,
    pub points: Vec<SaturationPoint>,
    /// New regions per 1,000 activations over the last batch (the curve's final slope).
    pub final_rate_per_1k: Option<f64>,
}

/// The curve of `dict`, named `name`. A dictionary without a recorded curve (built before the
/// record existed, or with no batch) is an error naming it.
pub fn curve(name: &str, dict: &Dictionary) -> Result<Curve> {
    let info = dict.info();
    let points = info.saturation_curve.clone();
    if points.is_empty() {
        return Err(Error::param(
            "saturation",
            format!("{name} records no saturation curve (built before exemplar recorded one?)"),
        ));
    }
    let final_rate_per_1k = (points.len() >= 2).then(|| {
        let (a, b) = (points[points.len() - 2], points[points.len() - 1]);
        let da = b.activations.saturating_sub(a.activations).max(1) as f64;
        (b.partitions as f64 - a.partitions as f64) / da * 1000.0
    });
    Ok(Curve {
        name: name.to_string(),
        theta: dict.theta(),
        percentile: info.percentile,
        hook: info.hook.clone(),
        corpus: info.corpus.clone(),
        saturated: info.saturated,
        final_regions: dict.len(),
        points,
        final_rate_per_1k,
    })
}

/// What the x axis counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    Tokens,
    Activations,
}

/// Draws the curves on one chart (K against `axis`, log x) into a PNG.
pub fn plot(curves: &[Curve], axis: Axis, path: &Path, force: bool) -> Result<()> {
    let x_of = |p: &SaturationPoint| match axis {
        Axis::Tokens => p.tokens as f64,
        Axis::Activations => p.activations as f64,
    };
    let series = curves
        .iter()
        .map(|c| Series {
            name: c.name.clone(),
            points: c
                .points
                .iter()
                .filter(|p| x_of(p) > 0.0)
                .map(|p| (x_of(p), p.partitions as f64, String::new()))
                .collect(),
        })
        .collect();
    let x_label = match axis {
        Axis::Tokens => "tokens streamed (BOS included)",
        Axis::Activations => "activations streamed",
    };
    write_png(
        path,
        &[Panel {
            title: "saturation: regions K after each batch".into(),
            x_label: x_label.into(),
            y_label: "K".into(),
            series,
        }],
        force,
    )
}
