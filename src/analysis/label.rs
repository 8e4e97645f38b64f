//! Labels for regions, from the model itself: the logit-lens tokens of each region's exemplar
//! and of its mean direction ([`super::lens`]), next to its closest member contexts (the
//! dictionary's kept examples, the example's token in `[[…]]`).

use super::lens::{self, LensToken};
use super::target::check_regions;
use crate::dictionary::Dictionary;
use crate::error::Result;
use crate::model::{Gemma, Tokenizer};
use serde::Serialize;
use std::fmt::Write;

/// One member context.
#[derive(Debug, Clone, Serialize)]
pub struct MemberContext {
    pub distance: f32,
    pub doc_id: Option<i64>,
    pub position: Option<i64>,
    /// `None` when the dictionary kept no text for it.
    pub context: Option<String>,
}

/// One region's label record.
#[derive(Debug, Clone, Serialize)]
pub struct RegionLabel {
    pub region: usize,
    pub members: u64,
    pub coherence: f64,
    pub exemplar_lens: Vec<LensToken>,
    pub mean_lens: Vec<LensToken>,
    pub examples: Vec<MemberContext>,
}

/// The regions to label: `explicit` ones (checked), or the `top` largest by members (ties to
/// the lower id) among those with at least `min_members`.
pub fn choose_regions(
    dict: &Dictionary,
    explicit: Option<&[usize]>,
    top: usize,
    min_members: u64,
) -> Result<Vec<usize>> {
    if let Some(r) = explicit {
        check_regions(dict, r, "region")?;
        return Ok(r.to_vec());
    }
    let mut ids: Vec<usize> = (0..dict.len())
        .filter(|&k| dict.member_count(k) >= min_members)
        .collect();
    ids.sort_by(|&a, &b| {
        dict.member_count(b)
            .cmp(&dict.member_count(a))
            .then(a.cmp(&b))
    });
    ids.truncate(top);
    Ok(ids)
}

/// Labels `regions`: `lens_tokens` lens tokens per direction, `examples` closest member
/// contexts of ±`window` tokens.
pub fn label_regions(
    model: &Gemma,
    tok: &Tokenizer,
    dict: &Dictionary,
    regions: &[usize],
    lens_tokens: usize,
    examples: usize,
    window: usize,
) -> Result<Vec<RegionLabel>> {
    check_regions(dict, regions, "region")?;
    let d = dict.dim();
    let mut ex = Vec::with_capacity(regions.len() * d);
    let mut mean = Vec::with_capacity(regions.len() * d);
    for &r in regions {
        ex.extend_from_slice(dict.exemplar(r));
        mean.extend(dict.mean_direction(r));
    }
    let ex_lens = lens::top_tokens(model, tok, &ex, d, lens_tokens)?;
    let mean_lens = lens::top_tokens(model, tok, &mean, d, lens_tokens)?;
    Ok(regions
        .iter()
        .zip(ex_lens.into_iter().zip(mean_lens))
        .map(|(&r, (e, m))| RegionLabel {
            region: r,
            members: dict.member_count(r),
            coherence: dict.coherence(r),
            exemplar_lens: e,
            mean_lens: m,
            examples: dict
                .closest_examples(r)
                .iter()
                .take(examples)
                .map(|x| MemberContext {
                    distance: x.distance,
                    doc_id: x.token.map(|t| t.doc_id),
                    position: x.token.map(|t| t.position),
                    context: dict.example_context(x, window),
                })
                .collect(),
        })
        .collect())
}

/// A token for a markdown table cell: visible whitespace, pipes and backticks escaped.
fn cell(s: &str) -> String {
    s.replace('\n', "⏎").replace('|', "\\|").replace('`', "'")
}

/// The labels as a markdown report.
pub fn markdown(title: &str, dict: &Dictionary, labels: &[RegionLabel]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Region labels: {title}\n");
    let info = dict.info();
    let _ = writeln!(
        s,
        "K = {}, θ = {:.6}, percentile {}, hook {}, model {}\n",
        dict.len(),
        dict.theta(),
        info.percentile.map_or("?".into(), |p| p.to_string()),
        info.hook.as_deref().unwrap_or("?"),
        info.model_path
            .as_deref()
            .or(info.model.as_deref())
            .unwrap_or("?")
    );
    let toks = |v: &[LensToken]| {
        v.iter()
            .map(|t| format!("`{}`", cell(&t.token)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for l in labels {
        let _ = writeln!(
            s,
            "## Region {} ({} members, coherence {:.3})\n",
            l.region, l.members, l.coherence
        );
        let _ = writeln!(s, "* exemplar lens: {}", toks(&l.exemplar_lens));
        let _ = writeln!(s, "* mean lens: {}\n", toks(&l.mean_lens));
        for e in &l.examples {
            if let Some(c) = &e.context {
                let _ = writeln!(s, "  * d={:.3} {}", e.distance, cell(c));
            }
        }
        s.push('\n');
    }
    s
}
