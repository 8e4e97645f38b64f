//! Analyses that use a dictionary: on its own ([`hierarchy`], [`stability`], [`saturation`],
//! [`ood_baseline`]) or on a live model (feature `torch`: [`target`], [`lens`], [`steer`],
//! [`ablate`], [`label`], [`explain`], [`iia`] with its [`featurizer`]s), and [`circuits`] from discrete codes (its model-backed parts need
//! `torch`). Each is a library function first; `src/cli/analysis.rs` wraps them as
//! subcommands, and `docs/analyses.md` states every definition and what it was checked against.

pub mod circuits;
pub mod hierarchy;
pub mod ood_baseline;
pub mod saturation;
pub mod stability;

#[cfg(feature = "torch")]
pub mod ablate;
#[cfg(feature = "torch")]
pub mod explain;
#[cfg(feature = "torch")]
pub mod explain_steer;
#[cfg(feature = "torch")]
pub mod featurizer;
#[cfg(feature = "torch")]
pub mod iia;
#[cfg(feature = "torch")]
pub mod label;
#[cfg(feature = "torch")]
pub mod lens;
#[cfg(feature = "torch")]
pub mod steer;
#[cfg(feature = "torch")]
pub mod target;

use crate::data::corpus::{CorpusOptions, CorpusReader};
use crate::error::{Error, Result};
use std::path::Path;

/// The documents of a text file: `.txt` one per non-empty line, `.jsonl` (and every other
/// format [`CorpusReader`] reads) the string in `field` of each record. An empty file is an
/// error naming it.
pub fn read_texts(path: &Path, field: &str) -> Result<Vec<String>> {
    let options = CorpusOptions {
        text_field: field.to_string(),
        ..CorpusOptions::default()
    };
    let mut reader = CorpusReader::open(&[path.to_path_buf()], options)?;
    let mut out = Vec::new();
    while let Some(d) = reader.next_document()? {
        out.push(d.text);
    }
    if out.is_empty() {
        return Err(Error::EmptyInput(format!(
            "{}: no text in it (one per non-empty line in .txt; `{field}` in .jsonl)",
            path.display()
        )));
    }
    Ok(out)
}

/// A seeded standard-normal vector of length `d` (Box–Muller over the counter-based generator
/// of the build, [`crate::build::uniform_below`]; `stream` separates independent vectors).
pub fn gaussian(d: usize, seed: u64, stream: u64) -> Vec<f64> {
    const SCALE: u64 = 1 << 53;
    let u = |i: u64| {
        // (0, 1]: never 0, so the logarithm is finite.
        (crate::build::uniform_below(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03), i, SCALE)
            + 1) as f64
            / SCALE as f64
    };
    (0..d)
        .map(|i| {
            let (a, b) = (u(2 * i as u64), u(2 * i as u64 + 1));
            (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
        })
        .collect()
}

/// A seeded random unit vector of length `d` (the direction of [`gaussian`]), f32.
pub fn random_unit(d: usize, seed: u64, stream: u64) -> Vec<f32> {
    let g = gaussian(d, seed, stream);
    let n = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    g.iter().map(|v| (v / n) as f32).collect()
}

/// Average ranks (1-based; ties get the mean of their ranks), as scipy's `rankdata`.
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Pearson correlation; `None` when either side is constant or there are fewer than 2 points.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len();
    if n < 2 || y.len() != n {
        return None;
    }
    let (mx, my) = (
        x.iter().sum::<f64>() / n as f64,
        y.iter().sum::<f64>() / n as f64,
    );
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

/// Spearman's rank correlation (Pearson on average ranks, scipy's `spearmanr`).
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    pearson(&ranks(x), &ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_correlations_like_scipy() {
        // scipy.stats.rankdata([3, 1, 3, 2]) = [3.5, 1, 3.5, 2]
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        // scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) = 0.8207826816681233
        let s = spearman(&[1., 2., 3., 4., 5.], &[5., 6., 7., 8., 7.]).unwrap();
        assert!((s - 0.8207826816681233).abs() < 1e-12, "{s}");
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_none());
    }

    #[test]
    fn random_units_are_seeded_unit_and_spread() {
        let a = random_unit(64, 3, 0);
        assert_eq!(a, random_unit(64, 3, 0));
        assert_ne!(a, random_unit(64, 3, 1));
        assert_ne!(a, random_unit(64, 4, 0));
        let n: f64 = a.iter().map(|&v| v as f64 * v as f64).sum();
        assert!((n - 1.0).abs() < 1e-6);
        // Standard normal moments over many draws.
        let g = gaussian(20_000, 9, 0);
        let m = g.iter().sum::<f64>() / g.len() as f64;
        let v = g.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / g.len() as f64;
        assert!(m.abs() < 0.03 && (v - 1.0).abs() < 0.05, "{m} {v}");
    }
}
