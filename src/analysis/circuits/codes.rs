//! EP codes of attention heads: an EP dictionary per head, or one shared by every head, built
//! from the pooled head outputs of a handful of prompt pairs (EP needs no training); a prompt's
//! code at a head is the region of its nearest exemplar (no θ: every prompt gets a code, as an
//! SAE's argmax feature does).

use crate::build::{BuildConfig, Builder, Semantics};
use crate::calibrate::{calibrate_batches, CalibrationError, PercentileMethod};
use crate::data::ActivationBatch;
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use serde::Serialize;

/// Pooled head outputs: for each prompt (clean and corrupted), each head's `d`-wide vector,
/// prompt-major (`[prompt][head][d]`).
#[derive(Debug, Clone)]
pub struct HeadRows {
    pub n_prompts: usize,
    pub n_heads: usize,
    pub d: usize,
    pub clean: Vec<f32>,
    pub corrupted: Vec<f32>,
}

impl HeadRows {
    fn row<'a>(&self, t: &'a [f32], p: usize, h: usize) -> &'a [f32] {
        let i = (p * self.n_heads + h) * self.d;
        &t[i..i + self.d]
    }
}

/// One dictionary for each head, or one for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    PerHead,
    Shared,
}

impl Sharing {
    pub fn as_str(self) -> &'static str {
        match self {
            Sharing::PerHead => "per-head",
            Sharing::Shared => "shared",
        }
    }
}

/// How the dictionaries are built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodeConfig {
    pub sharing: Sharing,
    /// θ's percentile of the pairwise distances among the build rows.
    pub percentile: f64,
    /// Prompt pairs whose clean and corrupted outputs build the dictionaries (the first ones).
    pub build_prompts: usize,
    /// Seed of the build rows' stream order (leader clustering depends on it).
    pub seed: u64,
}

/// One dictionary's summary.
#[derive(Debug, Clone, Serialize)]
pub struct DictSummary {
    /// The head (flat index), or `None` for the shared dictionary.
    pub head: Option<usize>,
    pub regions: usize,
    pub theta: f64,
    pub build_rows: usize,
    /// Calibration found the build rows (nearly) identical: every prompt gets code 0.
    pub degenerate: bool,
}

/// Codes of every prompt at every head.
#[derive(Debug, Clone, Serialize)]
pub struct Codes {
    pub sharing: Sharing,
    pub n_heads: usize,
    /// `[prompt][head]`, clean prompts.
    pub positive: Vec<u32>,
    /// `[prompt][head]`, corrupted prompts.
    pub negative: Vec<u32>,
    pub dictionaries: Vec<DictSummary>,
}

/// A seeded permutation of `0..n` (Fisher–Yates on the crate's counter-based draw).
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = crate::build::uniform_below(seed, i as u64, i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

/// Builds a dictionary from `rows` (`n × d`) in a seeded order; `None` when the rows are
/// (nearly) identical after centering.
fn build(rows: Vec<f32>, d: usize, percentile: f64, seed: u64) -> Result<Option<Dictionary>> {
    let n = rows.len() / d;
    let order = permutation(n, seed);
    let mut shuffled = Vec::with_capacity(rows.len());
    for &i in &order {
        shuffled.extend_from_slice(&rows[i * d..(i + 1) * d]);
    }
    let cal = match calibrate_batches(
        std::slice::from_ref(&shuffled),
        d,
        percentile,
        PercentileMethod::Linear,
        n,
    ) {
        Ok(c) => c,
        Err(CalibrationError::Lib(Error::InvalidParameter {
            name: "threshold", ..
        }))
        | Err(CalibrationError::ZeroNorm { .. }) => return Ok(None),
        Err(CalibrationError::Lib(e)) => return Err(e),
    };
    let config = BuildConfig {
        semantics: Semantics::StrictOrder,
        saturation_window: None,
        seed,
        examples_per_partition: 1,
        reservoir_size: 0,
        ..BuildConfig::default()
    };
    let mut b = Builder::new(cal.center, cal.theta, config)?;
    b.add_batch(&ActivationBatch::from_rows(shuffled, d, 0))?;
    Ok(Some(b.try_finish(1)?.dictionary))
}

/// Nearest-exemplar codes of `rows` (`n × d`); all 0 without a dictionary.
fn assign(dict: Option<&Dictionary>, rows: &[f32], d: usize) -> Result<Vec<u32>> {
    match dict {
        None => Ok(vec![0; rows.len() / d]),
        Some(dict) => match dict.assign(rows) {
            Ok((ids, _)) => Ok(ids.into_iter().map(|k| k.max(0) as u32).collect()),
            // A row that equals the center has no direction: give it its own code.
            Err(Error::InvalidParameter {
                name: "activations",
                ..
            }) => {
                let mut out = Vec::with_capacity(rows.len() / d);
                for r in rows.chunks_exact(d) {
                    out.push(match dict.assign(r) {
                        Ok((ids, _)) => ids[0].max(0) as u32,
                        Err(_) => dict.len() as u32,
                    });
                }
                Ok(out)
            }
            Err(e) => Err(e),
        },
    }
}

/// EP codes of every prompt at every head.
pub fn ep_codes(rows: &HeadRows, cfg: &CodeConfig) -> Result<Codes> {
    let (np, nh, d) = (rows.n_prompts, rows.n_heads, rows.d);
    if cfg.build_prompts == 0 {
        return Err(Error::param("build prompts", "must be at least 1"));
    }
    let b = cfg.build_prompts.min(np);
    // Build rows of head h: the clean and corrupted outputs of the first b prompts.
    let build_rows = |heads: &[usize]| -> Vec<f32> {
        let mut v = Vec::with_capacity(2 * b * heads.len() * d);
        for p in 0..b {
            for &h in heads {
                v.extend_from_slice(rows.row(&rows.clean, p, h));
                v.extend_from_slice(rows.row(&rows.corrupted, p, h));
            }
        }
        v
    };
    let all_rows = |t: &[f32], h: usize| -> Vec<f32> {
        (0..np).flat_map(|p| rows.row(t, p, h).to_vec()).collect()
    };
    let mut positive = vec![0u32; np * nh];
    let mut negative = vec![0u32; np * nh];
    let mut dictionaries = vec![];
    let mut fill = |h: usize, dict: Option<&Dictionary>| -> Result<()> {
        let pc = assign(dict, &all_rows(&rows.clean, h), d)?;
        let nc = assign(dict, &all_rows(&rows.corrupted, h), d)?;
        for p in 0..np {
            positive[p * nh + h] = pc[p];
            negative[p * nh + h] = nc[p];
        }
        Ok(())
    };
    let summary = |head: Option<usize>, dict: &Option<Dictionary>, n: usize| DictSummary {
        head,
        regions: dict.as_ref().map_or(1, |x| x.len()),
        theta: dict.as_ref().map_or(0.0, |x| x.theta()),
        build_rows: n,
        degenerate: dict.is_none(),
    };
    match cfg.sharing {
        Sharing::PerHead => {
            for h in 0..nh {
                let br = build_rows(&[h]);
                let n = br.len() / d;
                let dict = build(br, d, cfg.percentile, cfg.seed)?;
                fill(h, dict.as_ref())?;
                dictionaries.push(summary(Some(h), &dict, n));
            }
        }
        Sharing::Shared => {
            let heads: Vec<usize> = (0..nh).collect();
            let br = build_rows(&heads);
            let n = br.len() / d;
            let dict = build(br, d, cfg.percentile, cfg.seed)?;
            for h in 0..nh {
                fill(h, dict.as_ref())?;
            }
            dictionaries.push(summary(None, &dict, n));
        }
    }
    Ok(Codes {
        sharing: cfg.sharing,
        n_heads: nh,
        positive,
        negative,
        dictionaries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_outputs_get_separate_codes() {
        // Two heads, d = 3, four prompts: head 0 separates clean from corrupted, head 1 does not.
        let (np, nh, d) = (4, 2, 3);
        let mut clean = vec![];
        let mut corrupted = vec![];
        for p in 0..np {
            let e = 0.01 * p as f32;
            clean.extend([1.0 + e, 0.0, 0.0, 0.0, 1.0, e]);
            corrupted.extend([0.0, 1.0 + e, 0.0, 0.0, 1.0, -e]);
        }
        let rows = HeadRows {
            n_prompts: np,
            n_heads: nh,
            d,
            clean,
            corrupted,
        };
        let cfg = CodeConfig {
            sharing: Sharing::PerHead,
            percentile: 20.0,
            build_prompts: 4,
            seed: 0,
        };
        let c = ep_codes(&rows, &cfg).unwrap();
        assert_eq!(c.dictionaries.len(), 2);
        for p in 0..np {
            assert_ne!(c.positive[p * nh], c.negative[p * nh]);
        }
        assert_eq!(permutation(5, 3).len(), 5);
        let mut s = permutation(50, 3);
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }
}
