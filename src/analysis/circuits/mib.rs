//! Export of head and head-pair scores in MIB's circuit-track importance-score layout (the
//! EAP-IG `Graph.to_json` file MIB's `run_evaluation.py` loads): `{"cfg": {...}, "nodes":
//! {name: {"in_graph", "score"}}, "edges": {name: {"score", "in_graph"}}}` over the whole graph
//! of a sequential (not parallel attention/MLP) transformer: `input`, per layer `a{L}.h{H}` and
//! `m{L}`, `logits`; edges from every earlier node into each head (`<q>`, `<k>`, `<v>`), into
//! each MLP and into the logits.
//!
//! Only heads are scored here: a head's node score is its score; an edge from head `a` to a
//! later-layer head `b` carries the pair's edge score on each of its q, k and v inputs. Every
//! other node and edge has score 0. `in_graph` is true where the score is positive.

use super::score::EdgeScore;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The importance-score graph. `node_scores` are per head (flat, layer-major); `edges` are the
/// scored head pairs (flat indices).
pub fn importance_graph(
    n_layers: usize,
    n_heads: usize,
    d_model: usize,
    n_kv_heads: usize,
    node_scores: &[f64],
    edges: &[EdgeScore],
) -> Value {
    let head_name = |i: usize| format!("a{}.h{}", i / n_heads, i % n_heads);
    let mut pair: HashMap<(usize, usize), f64> = HashMap::new();
    for e in edges {
        pair.insert((e.a.min(e.b), e.a.max(e.b)), e.score);
    }
    let mut nodes = Map::new();
    let mut edge_map = Map::new();
    let node = |score: f64| json!({"in_graph": score > 0.0, "score": score});
    let edge = |score: f64| json!({"score": score, "in_graph": score > 0.0});
    nodes.insert("input".into(), node(0.0));
    // The residual stream: (name, flat head index when a head).
    let mut stream: Vec<(String, Option<usize>)> = vec![("input".into(), None)];
    for l in 0..n_layers {
        let heads: Vec<usize> = (l * n_heads..(l + 1) * n_heads).collect();
        for &h in &heads {
            nodes.insert(
                head_name(h),
                node(node_scores.get(h).copied().unwrap_or(0.0)),
            );
            for (parent, ph) in &stream {
                let s = ph
                    .and_then(|p| pair.get(&(p.min(h), p.max(h))).copied())
                    .unwrap_or(0.0);
                for qkv in ["q", "k", "v"] {
                    edge_map.insert(format!("{parent}->{}<{qkv}>", head_name(h)), edge(s));
                }
            }
        }
        stream.extend(heads.iter().map(|&h| (head_name(h), Some(h))));
        let mlp = format!("m{l}");
        nodes.insert(mlp.clone(), node(0.0));
        for (parent, _) in &stream {
            edge_map.insert(format!("{parent}->{mlp}"), edge(0.0));
        }
        stream.push((mlp, None));
    }
    for (parent, _) in &stream {
        edge_map.insert(format!("{parent}->logits"), edge(0.0));
    }
    nodes.insert("logits".into(), node(0.0));
    json!({
        "cfg": {
            "n_layers": n_layers,
            "n_heads": n_heads,
            "n_key_value_heads": n_kv_heads,
            "d_model": d_model,
            "parallel_attn_mlp": false,
        },
        "nodes": Value::Object(nodes),
        "edges": Value::Object(edge_map),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_shape_and_scores() {
        let e = vec![EdgeScore {
            a: 0,
            b: 3,
            positive_only: 2,
            distinct: 4,
            score: 0.5,
        }];
        let g = importance_graph(2, 2, 8, 1, &[1.0, 0.0, 0.0, 2.0], &e);
        let nodes = g["nodes"].as_object().unwrap();
        // input, 2 × (2 heads + mlp), logits
        assert_eq!(nodes.len(), 8);
        assert_eq!(g["nodes"]["a1.h1"]["score"], 2.0);
        assert_eq!(g["edges"]["a0.h0->a1.h1<k>"]["score"], 0.5);
        assert_eq!(g["edges"]["a0.h1->a1.h1<k>"]["score"], 0.0);
        // Edges: layer 0 heads 1·2·3, m0 3, layer 1 heads 4·2·3, m1 6, logits 7.
        assert_eq!(g["edges"].as_object().unwrap().len(), 6 + 3 + 24 + 6 + 7);
    }
}
