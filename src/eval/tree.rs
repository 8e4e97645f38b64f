//! A CART decision tree classifier (Gini impurity, best split), the second probe of the MOSAIC
//! protocol next to logistic regression, built as scikit-learn's `DecisionTreeClassifier` builds
//! one (depth-first, `splitter="best"`, no class weights, `min_impurity_decrease = 0`):
//!
//! * a node is a leaf when it is at `max_depth`, holds fewer than `min_samples_split` rows or
//!   fewer than `2 · min_samples_leaf`, or is pure (Gini ≤ machine epsilon);
//! * otherwise every feature is tried: its values sorted, a split between two consecutive values
//!   that differ by more than 1e-7 (scikit-learn's `FEATURE_THRESHOLD`), at the midpoint
//!   `a/2 + b/2`, leaving at least `min_samples_leaf` rows on each side; the split of the least
//!   weighted child impurity `n_l·G_l + n_r·G_r` wins (ties: the first feature, then the lowest
//!   threshold — scikit-learn visits features in a random order, so ties may go elsewhere
//!   there); rows with `x ≤ threshold` go left; a node without any valid split is a leaf;
//! * a leaf predicts its most frequent training class (ties: the lowest class index).
//!
//! Feature values are compared in `f32` as scikit-learn does (it converts `X` to float32), so the
//! same data gives the same thresholds.

use crate::error::{Error, Result};
use serde::Serialize;

/// Settings of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TreeConfig {
    pub max_depth: usize,
    pub min_samples_split: usize,
    pub min_samples_leaf: usize,
}

impl Default for TreeConfig {
    /// Depth 5, min split 2, min leaf 1 (the MOSAIC probe's tree).
    fn default() -> Self {
        TreeConfig {
            max_depth: 5,
            min_samples_split: 2,
            min_samples_leaf: 1,
        }
    }
}

/// A node: a split (rows with `x[feature] ≤ threshold` go to `left`) or a leaf.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Node {
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
    Leaf {
        class: usize,
        counts: Vec<usize>,
    },
}

/// A fitted tree; `nodes[0]` is the root, children are numbered depth first (left subtree first),
/// as in scikit-learn's `tree_`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionTree {
    pub n_features: usize,
    pub n_classes: usize,
    pub nodes: Vec<Node>,
}

const FEATURE_THRESHOLD: f32 = 1e-7;

fn gini(counts: &[usize], n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    1.0 - counts.iter().map(|&c| (c as f64 / n).powi(2)).sum::<f64>()
}

/// Fits a tree to `x` (`n × d`, row-major) and labels `y` in `0..n_classes`.
pub fn fit_tree(
    x: &[f64],
    d: usize,
    y: &[usize],
    n_classes: usize,
    cfg: &TreeConfig,
) -> Result<DecisionTree> {
    let n = y.len();
    if n == 0 {
        return Err(Error::EmptyInput("no rows to fit the tree on".into()));
    }
    if d == 0 || x.len() != n * d {
        return Err(Error::param(
            "tree",
            format!("{} values are not {n} rows of {d} features", x.len()),
        ));
    }
    if cfg.min_samples_split < 2 || cfg.min_samples_leaf < 1 {
        return Err(Error::param(
            "tree",
            "min_samples_split must be at least 2 and min_samples_leaf at least 1",
        ));
    }
    if let Some(&c) = y.iter().find(|&&c| c >= n_classes) {
        return Err(Error::param(
            "tree",
            format!("label {c} outside 0..{n_classes}"),
        ));
    }
    // A feature constant over the rows is constant in every node and never splits one, so the
    // tree is grown on the others alone (the same tree: features keep their order, so ties still
    // go to the first) and their indices are mapped back. Pooled codes of documents are mostly
    // such all-zero columns.
    let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let mut varies = vec![false; d];
    for r in xf.chunks(d).skip(1) {
        varies
            .iter_mut()
            .zip(r.iter().zip(&xf[..d]))
            .for_each(|(m, (a, b))| *m |= a != b);
    }
    let mut kept: Vec<usize> = (0..d).filter(|&j| varies[j]).collect();
    if kept.is_empty() {
        kept.push(0);
    }
    let xk: Vec<f32> = if kept.len() == d {
        xf
    } else {
        xf.chunks(d)
            .flat_map(|r| kept.iter().map(move |&j| r[j]))
            .collect()
    };
    let mut tree = DecisionTree {
        n_features: kept.len(),
        n_classes,
        nodes: Vec::new(),
    };
    let rows: Vec<usize> = (0..n).collect();
    grow(&mut tree, &xk, kept.len(), y, rows, 0, cfg);
    for node in &mut tree.nodes {
        if let Node::Split { feature, .. } = node {
            *feature = kept[*feature];
        }
    }
    tree.n_features = d;
    Ok(tree)
}

/// Grows the subtree of `rows` at `depth`; returns its node index.
fn grow(
    tree: &mut DecisionTree,
    x: &[f32],
    d: usize,
    y: &[usize],
    rows: Vec<usize>,
    depth: usize,
    cfg: &TreeConfig,
) -> usize {
    let k = tree.n_classes;
    let n = rows.len();
    let mut counts = vec![0usize; k];
    rows.iter().for_each(|&i| counts[y[i]] += 1);
    let id = tree.nodes.len();
    let leaf = |counts: Vec<usize>| {
        let mut class = 0;
        for (c, &v) in counts.iter().enumerate() {
            if v > counts[class] {
                class = c;
            }
        }
        Node::Leaf { class, counts }
    };
    if depth >= cfg.max_depth
        || n < cfg.min_samples_split
        || n < 2 * cfg.min_samples_leaf
        || gini(&counts, n) <= f64::EPSILON
    {
        tree.nodes.push(leaf(counts));
        return id;
    }
    // Best split: least n_l·G_l + n_r·G_r.
    let mut best: Option<(f64, usize, f64)> = None;
    let mut order = rows.clone();
    let mut left = vec![0usize; k];
    for j in 0..d {
        order.sort_by(|&a, &b| x[a * d + j].total_cmp(&x[b * d + j]));
        let v = |i: usize| x[order[i] * d + j];
        if v(n - 1) <= v(0) + FEATURE_THRESHOLD {
            continue;
        }
        left.iter_mut().for_each(|c| *c = 0);
        for p in 1..n {
            left[y[order[p - 1]]] += 1;
            if v(p) <= v(p - 1) + FEATURE_THRESHOLD {
                continue;
            }
            if p < cfg.min_samples_leaf || n - p < cfg.min_samples_leaf {
                continue;
            }
            let right: Vec<usize> = counts.iter().zip(&left).map(|(a, b)| a - b).collect();
            let w = p as f64 * gini(&left, p) + (n - p) as f64 * gini(&right, n - p);
            if best.is_none_or(|(bw, _, _)| w < bw) {
                let (a, b) = (v(p - 1) as f64, v(p) as f64);
                let mut t = a / 2.0 + b / 2.0;
                if t == b || !t.is_finite() {
                    t = a;
                }
                best = Some((w, j, t));
            }
        }
    }
    let Some((_, feature, threshold)) = best else {
        tree.nodes.push(leaf(counts));
        return id;
    };
    tree.nodes.push(Node::Leaf {
        class: 0,
        counts: Vec::new(),
    });
    let (l, r): (Vec<usize>, Vec<usize>) = rows
        .into_iter()
        .partition(|&i| (x[i * d + feature] as f64) <= threshold);
    let left = grow(tree, x, d, y, l, depth + 1, cfg);
    let right = grow(tree, x, d, y, r, depth + 1, cfg);
    tree.nodes[id] = Node::Split {
        feature,
        threshold,
        left,
        right,
    };
    id
}

impl DecisionTree {
    /// The class of each row of `x` (`n × n_features`).
    pub fn predict(&self, x: &[f64]) -> Result<Vec<usize>> {
        let d = self.n_features;
        if x.len() % d != 0 {
            return Err(Error::DimensionMismatch {
                what: "rows to classify with the tree".into(),
                expected: d,
                found: x.len() % d,
            });
        }
        Ok(x.chunks(d)
            .map(|row| {
                let mut i = 0;
                loop {
                    match &self.nodes[i] {
                        Node::Leaf { class, .. } => return *class,
                        Node::Split {
                            feature,
                            threshold,
                            left,
                            right,
                        } => {
                            i = if (row[*feature] as f32 as f64) <= *threshold {
                                *left
                            } else {
                                *right
                            };
                        }
                    }
                }
            })
            .collect())
    }

    /// Depth of the deepest leaf (0 for a lone leaf).
    pub fn depth(&self) -> usize {
        fn at(t: &DecisionTree, i: usize) -> usize {
            match &t.nodes[i] {
                Node::Leaf { .. } => 0,
                Node::Split { left, right, .. } => 1 + at(t, *left).max(at(t, *right)),
            }
        }
        at(self, 0)
    }

    /// Number of leaves.
    pub fn leaves(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n, Node::Leaf { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_by_one_threshold() {
        let x = [0.0, 1.0, 2.0, 3.0];
        let y = [0, 0, 1, 1];
        let t = fit_tree(&x, 1, &y, 2, &TreeConfig::default()).unwrap();
        assert_eq!(t.nodes.len(), 3);
        assert!(
            matches!(t.nodes[0], Node::Split { feature: 0, threshold, .. } if threshold == 1.5)
        );
        assert_eq!(t.predict(&[1.4, 1.6]).unwrap(), vec![0, 1]);
        assert_eq!(t.depth(), 1);
    }

    #[test]
    fn depth_and_leaf_limits() {
        // XOR needs depth 2; depth 1 cannot separate it.
        let x = [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0];
        let y = [0, 1, 1, 0];
        let full = fit_tree(&x, 2, &y, 2, &TreeConfig::default()).unwrap();
        assert_eq!(full.predict(&x).unwrap(), y.to_vec());
        let cfg = TreeConfig {
            max_depth: 1,
            ..Default::default()
        };
        assert_eq!(fit_tree(&x, 2, &y, 2, &cfg).unwrap().depth(), 1);
        let cfg = TreeConfig {
            min_samples_leaf: 3,
            ..Default::default()
        };
        assert_eq!(fit_tree(&x, 2, &y, 2, &cfg).unwrap().leaves(), 1);
        assert!(fit_tree(&x, 2, &[0, 1, 2, 0], 2, &TreeConfig::default()).is_err());
        assert!(fit_tree(&x[..7], 2, &y, 2, &TreeConfig::default()).is_err());
    }

    #[test]
    fn constant_features_leave_the_tree_unchanged() {
        // Three informative features; the same rows with constant columns (zeros, ones, 0.5)
        // interleaved grow the same tree, its features renumbered.
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        let (n, d) = (120, 3);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let r = [next(), (next() < 0.4) as u8 as f64, next()];
            y.push(usize::from(r[0] + r[1] > 0.9) + usize::from(r[2] > 0.7));
            x.extend(r);
        }
        let compact = fit_tree(&x, d, &y, 3, &TreeConfig::default()).unwrap();
        // Wide columns: 0 const 0, 1 feature 0, 2 const 1, 3 feature 1, 4 const 0.5, 5 feature 2.
        let place = [1, 3, 5];
        let wide: Vec<f64> = x
            .chunks(d)
            .flat_map(|r| [0.0, r[0], 1.0, r[1], 0.5, r[2]])
            .collect();
        let tree = fit_tree(&wide, 6, &y, 3, &TreeConfig::default()).unwrap();
        assert_eq!(tree.n_features, 6);
        assert!(compact.nodes.len() >= 5);
        assert_eq!(tree.nodes.len(), compact.nodes.len());
        for (a, b) in tree.nodes.iter().zip(&compact.nodes) {
            match (a, b) {
                (
                    Node::Split {
                        feature: fa,
                        threshold: ta,
                        left: la,
                        right: ra,
                    },
                    Node::Split {
                        feature: fb,
                        threshold: tb,
                        left: lb,
                        right: rb,
                    },
                ) => assert_eq!((*fa, ta, la, ra), (place[*fb], tb, lb, rb)),
                _ => assert_eq!(a, b),
            }
        }
        assert_eq!(tree.predict(&wide).unwrap(), compact.predict(&x).unwrap());
        // All columns constant: a lone leaf of the majority class.
        let flat = fit_tree(&[2.0; 12], 3, &[0, 1, 1, 1], 2, &TreeConfig::default()).unwrap();
        assert_eq!(flat.nodes.len(), 1);
        assert_eq!(flat.predict(&[0.0, 9.0, 1.0]).unwrap(), vec![1]);
    }
}
