//! Rectangular linear-sum assignment (the Hungarian problem), with the contract of
//! `scipy.optimize.linear_sum_assignment`: for an `n × m` cost matrix, `min(n, m)` pairs
//! `(row, col)`, each row and column used at most once, rows ascending, minimising (or
//! maximising) the total cost. The algorithm is the shortest-augmenting-path method of
//! Jonker–Volgenant as formulated by Crouse (2016), the one scipy implements: O(min·n·m) time
//! after transposing so that rows ≤ columns.
//!
//! Used by the EP ↔ SAE comparison (Hungarian on F1) and by dictionary ↔ dictionary matching
//! (Hungarian on cosine).

use crate::error::{Error, Result};

/// Solves the assignment on `cost` (`n × m`, row-major). Entries may be `+inf` when minimising
/// (`−inf` when maximising) to forbid a pair; NaN, and `−inf` when minimising (`+inf` when
/// maximising), are rejected. Returns `(rows, cols)` with `rows` ascending and
/// `min(n, m)` pairs; with ties the chosen pairs may differ from scipy's, the optimal total
/// does not.
pub fn linear_sum_assignment(
    cost: &[f64],
    n: usize,
    m: usize,
    maximize: bool,
) -> Result<(Vec<usize>, Vec<usize>)> {
    check(cost, n, m, maximize)?;
    linear_sum_assignment_owned(cost.to_vec(), n, m, maximize)
}

/// [`linear_sum_assignment`] on a matrix it may reuse: with `n ≤ m` no second `n × m` buffer is
/// allocated (for large matrices, pass the smaller side as rows).
pub fn linear_sum_assignment_owned(
    mut cost: Vec<f64>,
    n: usize,
    m: usize,
    maximize: bool,
) -> Result<(Vec<usize>, Vec<usize>)> {
    check(&cost, n, m, maximize)?;
    if n == 0 || m == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    if maximize {
        cost.iter_mut().for_each(|v| *v = -*v);
    }
    // Work on rows ≤ columns, minimising.
    let transpose = m < n;
    let (nr, nc) = if transpose { (m, n) } else { (n, m) };
    if transpose {
        cost = crate::linalg::transpose(&cost, n, m);
    }
    let col4row = solve(nr, nc, |i, j| cost[i * nc + j]).ok_or_else(|| {
        Error::param(
            "cost",
            "the forbidden (infinite) entries leave no complete assignment",
        )
    })?;
    let mut pairs: Vec<(usize, usize)> = if transpose {
        col4row.iter().enumerate().map(|(i, &j)| (j, i)).collect()
    } else {
        col4row.iter().enumerate().map(|(i, &j)| (i, j)).collect()
    };
    pairs.sort_unstable();
    Ok(pairs.into_iter().unzip())
}

/// [`linear_sum_assignment`] minimising the costs `cost(i, j)` of an `n × m` problem with
/// `n ≤ m`, for a problem whose dense f64 matrix would not fit in memory (the caller computes
/// each entry from something smaller). Every entry must be finite. The same pairs as
/// [`linear_sum_assignment`] on the matrix of those entries.
pub fn linear_sum_assignment_by(
    n: usize,
    m: usize,
    cost: impl Fn(usize, usize) -> f64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if n > m {
        return Err(Error::param(
            "cost",
            format!("{n} rows for {m} columns; pass the smaller side as rows"),
        ));
    }
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let col4row = solve(n, m, cost).ok_or_else(|| {
        Error::param(
            "cost",
            "the forbidden (infinite) entries leave no complete assignment",
        )
    })?;
    Ok(col4row.into_iter().enumerate().unzip())
}

fn check(cost: &[f64], n: usize, m: usize, maximize: bool) -> Result<()> {
    if cost.len() != n * m {
        return Err(Error::param(
            "cost",
            format!("has {} entries, expected {n} × {m}", cost.len()),
        ));
    }
    for (idx, &c) in cost.iter().enumerate() {
        let bad =
            c.is_nan() || (maximize && c == f64::INFINITY) || (!maximize && c == f64::NEG_INFINITY);
        if bad {
            return Err(Error::param(
                "cost",
                format!(
                    "entry ({}, {}) is {c}, which no assignment can use",
                    idx / m,
                    idx % m
                ),
            ));
        }
    }
    Ok(())
}

/// Crouse's shortest augmenting path on `nr ≤ nc`, minimising; `None` when infeasible.
fn solve(nr: usize, nc: usize, cost: impl Fn(usize, usize) -> f64) -> Option<Vec<usize>> {
    const NONE: usize = usize::MAX;
    let mut u = vec![0.0f64; nr];
    let mut v = vec![0.0f64; nc];
    let mut spc = vec![f64::INFINITY; nc];
    let mut path = vec![NONE; nc];
    let mut col4row = vec![NONE; nr];
    let mut row4col = vec![NONE; nc];
    let mut sr = vec![false; nr];
    let mut sc = vec![false; nc];
    let mut remaining = vec![0usize; nc];
    for cur in 0..nr {
        // Dijkstra-like search for the shortest augmenting path from row `cur`.
        let mut min_val = 0.0f64;
        let mut num_remaining = nc;
        for (it, r) in remaining.iter_mut().enumerate() {
            *r = nc - it - 1;
        }
        sr.iter_mut().for_each(|x| *x = false);
        sc.iter_mut().for_each(|x| *x = false);
        spc.iter_mut().for_each(|x| *x = f64::INFINITY);
        let mut sink = NONE;
        let mut i = cur;
        while sink == NONE {
            let mut index = NONE;
            let mut lowest = f64::INFINITY;
            sr[i] = true;
            for (it, &j) in remaining[..num_remaining].iter().enumerate() {
                let r = min_val + cost(i, j) - u[i] - v[j];
                if r < spc[j] {
                    path[j] = i;
                    spc[j] = r;
                }
                if spc[j] < lowest || (spc[j] == lowest && row4col[j] == NONE) {
                    lowest = spc[j];
                    index = it;
                }
            }
            min_val = lowest;
            if min_val == f64::INFINITY {
                return None;
            }
            let j = remaining[index];
            if row4col[j] == NONE {
                sink = j;
            } else {
                i = row4col[j];
            }
            sc[j] = true;
            num_remaining -= 1;
            remaining[index] = remaining[num_remaining];
        }
        // Update the dual variables.
        u[cur] += min_val;
        for r in 0..nr {
            if sr[r] && r != cur {
                u[r] += min_val - spc[col4row[r]];
            }
        }
        for j in 0..nc {
            if sc[j] {
                v[j] -= min_val - spc[j];
            }
        }
        // Augment along the path.
        let mut j = sink;
        loop {
            let r = path[j];
            row4col[j] = r;
            std::mem::swap(&mut col4row[r], &mut j);
            if r == cur {
                break;
            }
        }
    }
    Some(col4row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(cost: &[f64], m: usize, r: &[usize], c: &[usize]) -> f64 {
        r.iter().zip(c).map(|(&i, &j)| cost[i * m + j]).sum()
    }

    #[test]
    fn square_hand_case() {
        // scipy's docstring example: optimum rows [0 1 2], cols [1 0 2], cost 5.
        let cost = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
        let (r, c) = linear_sum_assignment(&cost, 3, 3, false).unwrap();
        assert_eq!(r, vec![0, 1, 2]);
        assert_eq!(c, vec![1, 0, 2]);
        assert_eq!(total(&cost, 3, &r, &c), 5.0);
        // Maximising: 4 (0,0) + 5 (1,2) + 2 (2,1) = 11 is the best of the 6 permutations.
        let (r, c) = linear_sum_assignment(&cost, 3, 3, true).unwrap();
        assert_eq!((r, c.clone()), (vec![0, 1, 2], vec![0, 2, 1]));
    }

    #[test]
    fn rectangular_both_ways() {
        // 2 × 3: best is (0,2)=1 + (1,0)=2 = 3 (of 6 choices).
        let cost = [5.0, 9.0, 1.0, 2.0, 4.0, 3.0];
        let (r, c) = linear_sum_assignment(&cost, 2, 3, false).unwrap();
        assert_eq!((r, c), (vec![0, 1], vec![2, 0]));
        // Its transpose (3 × 2): rows sorted, same pairs mirrored.
        let t = [5.0, 2.0, 9.0, 4.0, 1.0, 3.0];
        let (r, c) = linear_sum_assignment(&t, 3, 2, false).unwrap();
        assert_eq!((r, c), (vec![0, 2], vec![1, 0]));
        // Maximising the 3 × 2: 9 (1,0) + 3 (2,1) = 12 beats 5+4, 5+3, 2+9, 2+1, 4+1.
        let (r, c) = linear_sum_assignment(&t, 3, 2, true).unwrap();
        assert_eq!((r, c), (vec![1, 2], vec![0, 1]));
    }

    /// Seeded costs in `0..modulo`: small integers, so many ties.
    fn small_integers(seed: u64, modulo: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % modulo) as f64
        }
    }

    #[test]
    fn brute_force_agrees_on_small_random_matrices() {
        let mut next = small_integers(12345, 7);
        for &(n, m) in &[(3usize, 3usize), (2, 4), (4, 2), (4, 4), (3, 5)] {
            for _ in 0..20 {
                let cost: Vec<f64> = (0..n * m).map(|_| next()).collect();
                let (r, c) = linear_sum_assignment(&cost, n, m, false).unwrap();
                assert_eq!(r.len(), n.min(m));
                assert!(r.windows(2).all(|w| w[0] < w[1]));
                let mut cs = c.clone();
                cs.sort_unstable();
                cs.dedup();
                assert_eq!(cs.len(), c.len(), "columns used once");
                assert_eq!(total(&cost, m, &r, &c), brute(&cost, n, m));
            }
        }
    }

    #[test]
    fn costs_by_function_give_the_matrix_pairs() {
        // Many ties (small integers), negated as a maximising caller does: the same pairs as
        // the matrix path, pair for pair.
        let mut next = small_integers(777, 5);
        for &(n, m) in &[(1usize, 1usize), (2, 5), (4, 4), (5, 9), (12, 40)] {
            for _ in 0..10 {
                let cost: Vec<f64> = (0..n * m).map(|_| next()).collect();
                let want = linear_sum_assignment(&cost, n, m, true).unwrap();
                let got = linear_sum_assignment_by(n, m, |i, j| -cost[i * m + j]).unwrap();
                assert_eq!(got, want, "{n} × {m}");
            }
        }
        assert!(linear_sum_assignment_by(3, 2, |_, _| 0.0).is_err());
        assert_eq!(
            linear_sum_assignment_by(0, 4, |_, _| 0.0).unwrap(),
            (vec![], vec![])
        );
    }

    /// Minimum over all injective maps of the smaller side into the larger.
    fn brute(cost: &[f64], n: usize, m: usize) -> f64 {
        fn rec(cost: &[f64], n: usize, m: usize, i: usize, used: &mut Vec<bool>, t: bool) -> f64 {
            let (rows, cols) = if t { (m, n) } else { (n, m) };
            if i == rows {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for j in 0..cols {
                if !used[j] {
                    used[j] = true;
                    let v = if t { cost[j * m + i] } else { cost[i * m + j] };
                    best = best.min(v + rec(cost, n, m, i + 1, used, t));
                    used[j] = false;
                }
            }
            best
        }
        let t = n > m;
        rec(cost, n, m, 0, &mut vec![false; n.max(m)], t)
    }

    #[test]
    fn forbidden_entries_and_bad_input() {
        let inf = f64::INFINITY;
        let cost = [inf, 1.0, 2.0, inf];
        let (r, c) = linear_sum_assignment(&cost, 2, 2, false).unwrap();
        assert_eq!((r, c), (vec![0, 1], vec![1, 0]));
        let e = linear_sum_assignment(&[inf, inf, 1.0, 2.0], 2, 2, false).unwrap_err();
        assert!(e.to_string().contains("no complete assignment"), "{e}");
        let e = linear_sum_assignment(&[1.0, f64::NAN], 1, 2, false).unwrap_err();
        assert!(e.to_string().contains("(0, 1)"), "{e}");
        assert!(linear_sum_assignment(&[1.0], 1, 2, false).is_err());
        assert_eq!(linear_sum_assignment(&[], 0, 3, true).unwrap().0.len(), 0);
    }
}
