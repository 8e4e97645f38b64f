//! The resolution hierarchy of dictionaries built at several percentiles (several θ) from the
//! same activations (`build --percentile 1,2,5` reads them from one forward).
//!
//! Levels are ordered coarsest first (largest θ). A region `r` of a finer level `i` has, in
//! every coarser level `j`, a **parent**: the coarse region its own exemplar falls in, i.e. the
//! nearest coarse exemplar to `e_r` (exact f64 decision, ties to the lowest id, as
//! [`Dictionary::assign`]), with the cosine distance, whether it is within the coarse θ, and
//! the **purity**: the share of `r`'s reservoir members whose nearest coarse exemplar is that
//! parent (how cleanly the fine region nests). The tree links each region to its parent in the
//! next coarser level; **consistency** says how often the parent two or more levels up equals
//! the chain of next-level parents. Directions are compared as they are: the dictionaries of
//! one build share their center (the same calibration rows), and
//! [`Hierarchy::center_max_abs_diff`] records how far apart the centers are.
//!
//! Paths between two regions: [`Hierarchy::tree_path`] walks up the tree from both to their
//! lowest common ancestor; [`knn_paths`] is the reference's `exp_resolution_paths` view: in
//! each level's symmetric k-nearest-neighbour graph of exemplars, the shortest path between
//! the regions' counterparts (the nearest exemplars there to the two regions' exemplars).

use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::linalg::matmul_abt;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::VecDeque;

/// One dictionary of the hierarchy.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    /// The name it was given (its file, usually).
    pub name: String,
    pub theta: f64,
    pub percentile: Option<f64>,
    pub regions: usize,
    /// Position in the caller's list.
    pub input_index: usize,
}

/// A fine region's parent in a coarser level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Parent {
    /// The coarse region.
    pub region: usize,
    /// Cosine distance between the two exemplars.
    pub distance: f64,
    /// `distance ≤ θ` of the coarse level: the fine exemplar lies inside the parent.
    pub within_theta: bool,
    /// Share of the fine region's reservoir members assigned to the parent (`None`: empty
    /// reservoir).
    pub purity: Option<f64>,
}

/// The hierarchy of several dictionaries.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    /// Coarsest (largest θ) first.
    pub levels: Vec<Level>,
    /// `parents[i][j][r]`, for `j < i`: region `r` of level `i`'s parent in level `j`.
    pub parents: Vec<Vec<Vec<Parent>>>,
    /// Largest `|c_a − c_b|` over the levels' centers (0 for one build's dictionaries).
    pub center_max_abs_diff: f64,
}

/// Builds the hierarchy of `dicts` (name, dictionary), in any order; at least two, of one
/// width, none empty.
pub fn build_hierarchy(dicts: &[(String, &Dictionary)]) -> Result<Hierarchy> {
    if dicts.len() < 2 {
        return Err(Error::param(
            "hierarchy",
            "needs at least two dictionaries (built at different percentiles)",
        ));
    }
    let d = dicts[0].1.dim();
    for (name, dict) in dicts {
        if dict.dim() != d {
            return Err(Error::DimensionMismatch {
                what: format!("dictionary {name}"),
                expected: d,
                found: dict.dim(),
            });
        }
        if dict.is_empty() {
            return Err(Error::EmptyInput(format!(
                "dictionary {name} has no region"
            )));
        }
    }
    let mut order: Vec<usize> = (0..dicts.len()).collect();
    // Coarsest first; equal θs keep the input order.
    order.sort_by(|&a, &b| dicts[b].1.theta().total_cmp(&dicts[a].1.theta()));
    let levels: Vec<Level> = order
        .iter()
        .map(|&i| Level {
            name: dicts[i].0.clone(),
            theta: dicts[i].1.theta(),
            percentile: dicts[i].1.info().percentile,
            regions: dicts[i].1.len(),
            input_index: i,
        })
        .collect();
    let mut center_max_abs_diff = 0.0f64;
    for (_, a) in dicts {
        for (_, b) in dicts {
            for (x, y) in a.center().iter().zip(b.center()) {
                center_max_abs_diff = center_max_abs_diff.max((x - y).abs() as f64);
            }
        }
    }
    let dict_of = |level: usize| dicts[order[level]].1;
    let mut parents = Vec::with_capacity(levels.len());
    for i in 0..levels.len() {
        let fine = dict_of(i);
        let mut per_coarse = Vec::with_capacity(i);
        for j in 0..i {
            let coarse = dict_of(j);
            let (ids, dist) = coarse.assign_directions(fine.exemplars());
            let ps = (0..fine.len())
                .map(|r| {
                    let res = fine.reservoir(r);
                    let purity = (!res.is_empty()).then(|| {
                        let (rid, _) = coarse.assign_directions(res);
                        rid.iter().filter(|&&p| p == ids[r]).count() as f64 / rid.len() as f64
                    });
                    Parent {
                        region: ids[r] as usize,
                        distance: dist[r] as f64,
                        within_theta: (dist[r] as f64) <= coarse.theta(),
                        purity,
                    }
                })
                .collect();
            per_coarse.push(ps);
        }
        parents.push(per_coarse);
    }
    Ok(Hierarchy {
        levels,
        parents,
        center_max_abs_diff,
    })
}

impl Hierarchy {
    /// The parent of `(level, region)` in the next coarser level (`None` at the coarsest).
    pub fn tree_parent(&self, level: usize, region: usize) -> Option<usize> {
        (level > 0).then(|| self.parents[level][level - 1][region].region)
    }

    /// The ancestor of `(level, region)` in level `up_to` (≤ level) by following the tree.
    pub fn chain_ancestor(&self, level: usize, region: usize, up_to: usize) -> usize {
        let (mut l, mut r) = (level, region);
        while l > up_to {
            r = self.parents[l][l - 1][r].region;
            l -= 1;
        }
        r
    }

    /// For levels `i` and `j ≤ i − 2`: the share of level `i`'s regions whose direct parent in
    /// `j` equals their chain ancestor there.
    pub fn consistency(&self) -> Vec<(usize, usize, f64)> {
        let mut out = vec![];
        for i in 2..self.levels.len() {
            for j in 0..i - 1 {
                let n = self.levels[i].regions;
                let same = (0..n)
                    .filter(|&r| self.parents[i][j][r].region == self.chain_ancestor(i, r, j))
                    .count();
                out.push((i, j, same as f64 / n as f64));
            }
        }
        out
    }

    /// The tree path between `(level a, region a)` and `(level b, region b)`: up from each
    /// (following next-level parents) to the lowest common ancestor, which appears once. The
    /// nodes are `(level, region)`, from `a` to `b`; `None` when they share no ancestor (their
    /// chains end at different coarsest regions).
    pub fn tree_path(&self, a: (usize, usize), b: (usize, usize)) -> Option<Vec<(usize, usize)>> {
        let chain = |(l, r): (usize, usize)| {
            let mut v = vec![(l, r)];
            let (mut l, mut r) = (l, r);
            while l > 0 {
                r = self.parents[l][l - 1][r].region;
                l -= 1;
                v.push((l, r));
            }
            v
        };
        let (ca, cb) = (chain(a), chain(b));
        // The deepest node on both chains.
        let (ia, ib) = ca
            .iter()
            .enumerate()
            .find_map(|(ia, n)| cb.iter().position(|m| m == n).map(|ib| (ia, ib)))?;
        let mut path: Vec<(usize, usize)> = ca[..=ia].to_vec();
        path.extend(cb[..ib].iter().rev());
        Some(path)
    }

    /// Checks `(level, region)`.
    pub fn check_node(&self, level: usize, region: usize) -> Result<()> {
        let l = self.levels.get(level).ok_or_else(|| {
            Error::param(
                "path",
                format!(
                    "level {level} does not exist (levels 0..{}, 0 the coarsest)",
                    self.levels.len() - 1
                ),
            )
        })?;
        if region >= l.regions {
            return Err(Error::param(
                "path",
                format!(
                    "region {region} is out of range: level {level} ({}) has {} regions",
                    l.name, l.regions
                ),
            ));
        }
        Ok(())
    }

    /// The tree as JSON: the levels, then per level its nodes (`id`, `members`, `parent` in
    /// the next coarser level with its distance and purity, `children` in the next finer),
    /// every region's parents in every coarser level, and the consistency.
    pub fn to_json(&self, dicts: &[(String, &Dictionary)]) -> Value {
        let n = self.levels.len();
        let mut nodes = Vec::with_capacity(n);
        for (i, level) in self.levels.iter().enumerate() {
            let dict = dicts[level.input_index].1;
            let mut children: Vec<Vec<usize>> = vec![vec![]; level.regions];
            if i + 1 < n {
                for (r, p) in self.parents[i + 1][i].iter().enumerate() {
                    children[p.region].push(r);
                }
            }
            let level_nodes: Vec<Value> = (0..level.regions)
                .map(|r| {
                    let ancestors: Vec<Value> = (0..i)
                        .map(|j| {
                            let p = &self.parents[i][j][r];
                            json!({"level": j, "region": p.region, "distance": p.distance,
                                   "within_theta": p.within_theta, "purity": p.purity})
                        })
                        .collect();
                    json!({
                        "id": r,
                        "members": dict.member_count(r),
                        "coherence": dict.coherence(r),
                        "parent": self.tree_parent(i, r),
                        "children": children[r],
                        "parents": ancestors,
                    })
                })
                .collect();
            nodes.push(json!({"level": i, "name": level.name, "theta": level.theta,
                              "percentile": level.percentile, "regions": level.regions,
                              "nodes": level_nodes}));
        }
        let mut summary = vec![];
        for i in 1..n {
            for j in 0..i {
                let ps = &self.parents[i][j];
                let within = ps.iter().filter(|p| p.within_theta).count() as f64 / ps.len() as f64;
                let pur: Vec<f64> = ps.iter().filter_map(|p| p.purity).collect();
                let mean_purity =
                    (!pur.is_empty()).then(|| pur.iter().sum::<f64>() / pur.len() as f64);
                let mut distinct: Vec<usize> = ps.iter().map(|p| p.region).collect();
                distinct.sort_unstable();
                distinct.dedup();
                summary.push(json!({"fine": i, "coarse": j,
                    "parent_within_theta": within, "mean_purity": mean_purity,
                    "coarse_regions_used": distinct.len()}));
            }
        }
        let consistency: Vec<Value> = self
            .consistency()
            .into_iter()
            .map(|(i, j, c)| json!({"fine": i, "coarse": j, "chain_consistent": c}))
            .collect();
        json!({
            "levels": self.levels,
            "center_max_abs_diff": self.center_max_abs_diff,
            "summary": summary,
            "consistency": consistency,
            "tree": nodes,
        })
    }
}

/// The symmetric `k`-nearest-neighbour graph of a dictionary's exemplars: `i` and `j` are
/// linked when either is among the other's `k` most similar exemplars (cosine; self excluded;
/// ties to the lower id). Adjacency lists ascending.
pub fn knn_graph(dict: &Dictionary, k: usize) -> Vec<Vec<usize>> {
    let n = dict.len();
    let d = dict.dim();
    let e = dict.exemplars();
    let mut adj: Vec<Vec<usize>> = vec![vec![]; n];
    // Blocks of rows, so the similarity matrix is never n × n at once.
    let block = 512usize;
    let mut sims = vec![0.0f32; block.min(n) * n];
    for start in (0..n).step_by(block) {
        let m = block.min(n - start);
        let s = &mut sims[..m * n];
        matmul_abt(&e[start * d..(start + m) * d], e, d, s);
        for bi in 0..m {
            let i = start + bi;
            let row = &s[bi * n..(bi + 1) * n];
            let mut cand: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            // The k first in (similarity descending, id ascending): a total order.
            let order = |&a: &usize, &b: &usize| row[b].total_cmp(&row[a]).then(a.cmp(&b));
            if k < cand.len() {
                cand.select_nth_unstable_by(k, order);
                cand.truncate(k);
            }
            for &j in cand.iter() {
                adj[i].push(j);
                adj[j].push(i);
            }
        }
    }
    for a in &mut adj {
        a.sort_unstable();
        a.dedup();
    }
    adj
}

/// A shortest path from `a` to `b` by breadth-first search (neighbours in ascending order; a
/// node's predecessor is the first node that reached it), or `None` when unreachable.
pub fn shortest_path(adj: &[Vec<usize>], a: usize, b: usize) -> Option<Vec<usize>> {
    let mut prev = vec![usize::MAX; adj.len()];
    prev[a] = a;
    let mut q = VecDeque::from([a]);
    while let Some(v) = q.pop_front() {
        if v == b {
            break;
        }
        for &w in &adj[v] {
            if prev[w] == usize::MAX {
                prev[w] = v;
                q.push_back(w);
            }
        }
    }
    if prev[b] == usize::MAX {
        return None;
    }
    let mut path = vec![b];
    while *path.last().unwrap() != a {
        path.push(prev[*path.last().unwrap()]);
    }
    path.reverse();
    Some(path)
}

/// The path between two regions in one level's k-NN graph.
#[derive(Debug, Clone, Serialize)]
pub struct LevelPath {
    pub level: usize,
    /// The counterparts of the two regions here (themselves at their own level).
    pub from: usize,
    pub to: usize,
    /// The regions along the shortest path, `from` to `to` (`None`: not connected).
    pub path: Option<Vec<usize>>,
}

/// For regions `a` and `b` of `level`: in every level, their counterparts (the nearest
/// exemplars there to `e_a` and `e_b`) and the shortest path between them in that level's
/// symmetric `k`-NN graph ([`knn_graph`], [`shortest_path`]).
pub fn knn_paths(
    h: &Hierarchy,
    dicts: &[(String, &Dictionary)],
    level: usize,
    a: usize,
    b: usize,
    k: usize,
) -> Result<Vec<LevelPath>> {
    h.check_node(level, a)?;
    h.check_node(level, b)?;
    if k == 0 {
        return Err(Error::param("knn", "k must be at least 1"));
    }
    let src = dicts[h.levels[level].input_index].1;
    let mut ends = src.exemplar(a).to_vec();
    ends.extend_from_slice(src.exemplar(b));
    let mut out = vec![];
    for (m, lv) in h.levels.iter().enumerate() {
        let dict = dicts[lv.input_index].1;
        let (from, to) = if m == level {
            (a, b)
        } else {
            let (ids, _) = dict.assign_directions(&ends);
            (ids[0] as usize, ids[1] as usize)
        };
        let adj = knn_graph(dict, k);
        out.push(LevelPath {
            level: m,
            from,
            to,
            path: shortest_path(&adj, from, to),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfs_takes_the_first_discovered_predecessor() {
        // 0 - 1 - 3, 0 - 2 - 3: both length 2; the path goes through 1 (reached first).
        let adj = vec![vec![1, 2], vec![0, 3], vec![0, 3], vec![1, 2], vec![]];
        assert_eq!(shortest_path(&adj, 0, 3), Some(vec![0, 1, 3]));
        assert_eq!(shortest_path(&adj, 3, 0), Some(vec![3, 1, 0]));
        assert_eq!(shortest_path(&adj, 0, 0), Some(vec![0]));
        assert_eq!(shortest_path(&adj, 0, 4), None);
    }
}
