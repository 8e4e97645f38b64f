//! Human-readable and JSON summaries of dictionaries and metrics.

use exemplar::dictionary::Dictionary;
use exemplar::eval::IntrinsicMetrics;
use serde_json::json;
use std::fmt::Write;
use std::path::Path;

/// Partition ids by member count, largest first (lowest id on ties).
fn largest(dict: &Dictionary, top: usize) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..dict.len()).collect();
    ids.sort_by(|&a, &b| {
        dict.member_count(b)
            .cmp(&dict.member_count(a))
            .then(a.cmp(&b))
    });
    ids.truncate(top);
    ids
}

fn example_line(dict: &Dictionary, ex: &exemplar::dictionary::Example) -> String {
    match dict.example_context(ex, 8) {
        Some(ctx) => ctx,
        None => format!("stream row {}", ex.stream_row),
    }
}

/// The table of the largest regions with their closest examples.
pub fn regions_text(dict: &Dictionary, top: usize, examples: usize) -> String {
    regions_table(dict, &largest(dict, top), examples)
}

/// The table of `ids` (in that order) with their closest examples.
pub fn regions_table(dict: &Dictionary, ids: &[usize], examples: usize) -> String {
    let mut s = String::new();
    let total: u64 = dict.member_counts().iter().sum();
    writeln!(
        s,
        "{:>4}  {:>6}  {:>8}  {:>6}  {:>9}  {:>6}",
        "rank", "id", "members", "share", "coherence", "mean d"
    )
    .unwrap();
    let mut by_size: Vec<usize> = (0..dict.len()).collect();
    by_size.sort_by(|&a, &b| {
        dict.member_count(b)
            .cmp(&dict.member_count(a))
            .then(a.cmp(&b))
    });
    let mut rank_of = vec![0usize; dict.len()];
    for (r, &k) in by_size.iter().enumerate() {
        rank_of[k] = r;
    }
    for &k in ids {
        let rank = rank_of[k];
        writeln!(
            s,
            "{:>4}  {:>6}  {:>8}  {:>5.1}%  {:>9.3}  {:>6.3}",
            rank + 1,
            k,
            dict.member_count(k),
            100.0 * dict.member_count(k) as f64 / total.max(1) as f64,
            dict.coherence(k),
            dict.mean_distance(k)
        )
        .unwrap();
        for ex in dict.closest_examples(k).iter().take(examples) {
            writeln!(
                s,
                "{:>14} d={:.3}  {}",
                "",
                ex.distance,
                example_line(dict, ex)
            )
            .unwrap();
        }
    }
    s
}

/// `exemplar inspect` as text.
pub fn summary_text(dict: &Dictionary, path: &Path, top: usize, examples: usize) -> String {
    let info = dict.info();
    let counts = dict.member_counts();
    let nontrivial = counts.iter().filter(|&&c| c >= 2).count();
    let singletons = counts.iter().filter(|&&c| c == 1).count();
    let mut s = String::new();
    writeln!(s, "{}", path.display()).unwrap();
    writeln!(s, "  {dict}").unwrap();
    writeln!(
        s,
        "  partitions (K)   {} ({} with ≥ 2 members, {} singletons)",
        dict.len(),
        nontrivial,
        singletons
    )
    .unwrap();
    writeln!(
        s,
        "  threshold θ      {:.6} (percentile {}, {})",
        dict.theta(),
        info.percentile.map_or("?".into(), |p| p.to_string()),
        info.percentile_method.as_deref().unwrap_or("?")
    )
    .unwrap();
    writeln!(
        s,
        "  center norm      {:.4}   D = {}{}",
        exemplar::geometry::norm(dict.center()),
        dict.dim(),
        if dict.scaling().is_some() {
            "   (rows standardised per dimension first)"
        } else {
            ""
        }
    )
    .unwrap();
    writeln!(
        s,
        "  streamed         {} activations, {} tokens, {} batches of {}; {}",
        info.activations_streamed,
        info.tokens_streamed,
        info.batches,
        match info.batch_documents {
            Some(n) if info.batch_size == 0 => {
                format!("{n} {}", if info.packed { "windows" } else { "documents" })
            }
            _ => format!("{} rows", info.batch_size),
        },
        if info.saturated {
            "saturated"
        } else {
            "not saturated"
        }
    )
    .unwrap();
    writeln!(
        s,
        "  semantics        {}, seed {}, backend {}",
        info.semantics, info.seed, info.backend
    )
    .unwrap();
    if let Some(m) = &info.model {
        writeln!(
            s,
            "  model            {m}{}",
            info.hook
                .as_ref()
                .map_or(String::new(), |h| format!(" @ {h}"))
        )
        .unwrap();
    }
    if info.corpus.is_empty() {
        writeln!(s, "  inputs           {}", info.inputs.join(", ")).unwrap();
    } else {
        writeln!(
            s,
            "  corpus           {} (ctx {}{})",
            info.corpus.join(", "),
            info.ctx.map_or("?".into(), |c| c.to_string()),
            if info.packed { ", packed" } else { "" }
        )
        .unwrap();
    }
    writeln!(s, "\nLargest regions:").unwrap();
    s.push_str(&regions_text(dict, top, examples));
    s
}

/// `exemplar inspect --json`.
pub fn summary_json(dict: &Dictionary, top: usize, examples: usize) -> serde_json::Value {
    let regions = regions_json(dict, &largest(dict, top), examples);
    json!({
        "partitions": dict.len(),
        "nontrivial_partitions": dict.member_counts().iter().filter(|&&c| c >= 2).count(),
        "theta": dict.theta(),
        "center_norm": exemplar::geometry::norm(dict.center()),
        "standardized": dict.scaling().is_some(),
        "dim": dict.dim(),
        "build": dict.info(),
        "largest_regions": regions,
    })
}

/// Regions `ids` with their closest examples, as JSON.
pub fn regions_json(dict: &Dictionary, ids: &[usize], examples: usize) -> serde_json::Value {
    let regions: Vec<_> = ids
        .iter()
        .map(|&k| {
            let exs: Vec<_> = dict
                .closest_examples(k)
                .iter()
                .take(examples)
                .map(|e| {
                    json!({
                        "distance": e.distance,
                        "stream_row": e.stream_row,
                        "doc_id": e.token.map(|t| t.doc_id),
                        "position": e.token.map(|t| t.position),
                        "context": dict.example_context(e, 8),
                    })
                })
                .collect();
            json!({
                "id": k,
                "members": dict.member_count(k),
                "coherence": dict.coherence(k),
                "mean_distance": dict.mean_distance(k),
                "closest_examples": exs,
            })
        })
        .collect();
    regions.into()
}

/// `exemplar eval` as text.
pub fn metrics_text(m: &IntrinsicMetrics) -> String {
    let v = serde_json::to_value(m).expect("metrics serialise");
    let mut s = String::new();
    writeln!(
        s,
        "Partitions: {} ({} with ≥ {} members)",
        m.n_partitions, m.n_partitions_nontrivial, m.min_members
    )
    .unwrap();
    if let serde_json::Value::Object(map) = v {
        for (k, v) in map {
            let shown = match v {
                serde_json::Value::Null => "n/a".to_string(),
                serde_json::Value::Number(n) if n.is_f64() => format!("{:.6}", n.as_f64().unwrap()),
                other => other.to_string(),
            };
            writeln!(s, "  {k:<28} {shown}").unwrap();
        }
    }
    s
}
