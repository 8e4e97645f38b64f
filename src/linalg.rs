//! Dense linear algebra on row-major f32 matrices: the multithreaded GEMM every hot loop uses
//! (nearest exemplar, in-batch leaders, calibration percentiles, merge, evaluation), and the
//! exact f64 dot product that every clustering *decision* is made on, in the canonical order
//! the CUDA kernels share (`kernels/common.cuh`). The screens and selections built on them are
//! the CPU backend's (`backend::cpu`). [`transpose`] turns row-major layouts around (SAE weights,
//! code matrices, cost matrices).
//!
//! This file holds the crate's only call into raw-pointer GEMM; shapes are checked before it.

/// `out[m × n] = a[m × d] · b[n × d]ᵀ`, all row-major, multithreaded.
///
/// # Panics
/// If a slice length disagrees with the shape (`a.len() != m·d`, `b.len() != n·d`,
/// `out.len() != m·n`). Callers inside the crate pass shapes they computed themselves.
pub fn matmul_abt(a: &[f32], b: &[f32], d: usize, out: &mut [f32]) {
    assert!(d > 0, "matmul_abt: d must be positive");
    assert_eq!(a.len() % d, 0, "matmul_abt: a is not m × d");
    assert_eq!(b.len() % d, 0, "matmul_abt: b is not n × d");
    let m = a.len() / d;
    let n = b.len() / d;
    assert_eq!(out.len(), m * n, "matmul_abt: out is not m × n");
    if m == 0 || n == 0 {
        return;
    }
    let (n_i, d_i) = (n as isize, d as isize);
    // SAFETY: the asserts above establish that `a` holds m·d, `b` holds n·d and `out` holds
    // m·n f32 values; the strides below address exactly those elements (a row-major with row
    // stride d, bᵀ read through b's row stride d, out row-major with row stride n). `out` is a
    // unique borrow, so nothing aliases the destination, and `read_dst = false` means its
    // previous contents are never read.
    unsafe {
        gemm::gemm(
            m,
            n,
            d,
            out.as_mut_ptr(),
            1,
            n_i,
            false,
            a.as_ptr(),
            1,
            d_i,
            b.as_ptr(),
            d_i,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// Lanes of the canonical f64 reduction (a CUDA warp).
pub const REDUCTION_LANES: usize = 32;

/// The canonical f64 reduction of `f(i)` over `0..n`: lane `l` sums the terms `i ≡ l (mod 32)`
/// in ascending order, then lanes combine as a warp's shuffle-down tree does
/// (`acc[l] += acc[l + o]` for o = 16, 8, 4, 2, 1). A GPU warp computes bit-identical values,
/// so norms and decision dot products agree between backends.
#[inline]
pub fn lane_sum_f64(n: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0.0f64; REDUCTION_LANES];
    let mut base = 0;
    while base + REDUCTION_LANES <= n {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(base + l);
        }
        base += REDUCTION_LANES;
    }
    for (l, a) in acc.iter_mut().enumerate().take(n - base) {
        *a += f(base + l);
    }
    let mut o = REDUCTION_LANES / 2;
    while o > 0 {
        for l in 0..o {
            acc[l] += acc[l + o];
        }
        o /= 2;
    }
    acc[0]
}

/// The dot product of two f32 vectors accumulated in f64 in the canonical lane order
/// ([`lane_sum_f64`]). Products of two f32 values are exact in f64, so the result is within
/// ~1e-16 relative of the exact real number and does not depend on threads, tiling or batch
/// size. Clustering decisions use this value.
#[inline]
pub fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    lane_sum_f64(a.len(), |i| a[i] as f64 * b[i] as f64)
}

/// Rows per GEMM tile so that a tile of similarities against `k` candidates stays near 64 MiB.
pub fn tile_rows(k: usize) -> usize {
    ((16usize << 20) / k.max(1)).clamp(64, 8192)
}

/// `m × n` row-major → `n × m` row-major (multithreaded over the output's rows).
///
/// # Panics
/// If `a.len() != m·n`.
pub fn transpose<T: Copy + Default + Send + Sync>(a: &[T], m: usize, n: usize) -> Vec<T> {
    use rayon::prelude::*;
    assert_eq!(a.len(), m * n, "transpose: length is not m × n");
    let mut out = vec![T::default(); m * n];
    out.par_chunks_mut(m.max(1))
        .enumerate()
        .for_each(|(j, col)| {
            for (i, v) in col.iter_mut().enumerate() {
                *v = a[i * n + j];
            }
        });
    out
}

/// Indices of the `k` largest values (ties to the lowest index), largest first: a selection in
/// O(len) on that total order, then a sort of the `k` (a dictionary's top-k readout and an
/// SAE's TopK both run this once per row over 10⁴–10⁵ features).
pub fn top_k_indices(v: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(v.len());
    let mut idx: Vec<usize> = (0..v.len()).collect();
    let cmp = |a: &usize, b: &usize| v[*b].total_cmp(&v[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_ties_go_to_the_lowest_index() {
        assert_eq!(top_k_indices(&[1.0, 3.0, 3.0, 2.0], 2), vec![1, 2]);
        assert_eq!(top_k_indices(&[5.0, 5.0, 5.0], 1), vec![0]);
    }

    #[test]
    fn matmul_matches_naive() {
        let d = 37;
        let a: Vec<f32> = (0..5 * d)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..9 * d)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let mut out = vec![0.0; 45];
        matmul_abt(&a, &b, d, &mut out);
        for i in 0..5 {
            for j in 0..9 {
                let e = dot_f64(&a[i * d..(i + 1) * d], &b[j * d..(j + 1) * d]);
                assert!((out[i * 9 + j] as f64 - e).abs() < 1e-4, "{i},{j}");
            }
        }
    }

    #[test]
    fn transpose_any_shape() {
        let a: Vec<i64> = (0..6).collect();
        assert_eq!(transpose(&a, 2, 3), vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(transpose(&transpose(&a, 2, 3), 3, 2), a);
        assert!(transpose::<f32>(&[], 0, 5).is_empty());
        assert!(transpose::<f64>(&[], 4, 0).is_empty());
    }

    #[test]
    fn lane_sum_is_the_warp_tree_order() {
        // 40 terms: lanes 0..7 get two terms, the rest one; then the shuffle-down tree.
        let f = |i: usize| (i as f64 + 1.0).recip();
        let mut acc = [0.0f64; 32];
        for i in 0..40 {
            acc[i % 32] += f(i);
        }
        for o in [16, 8, 4, 2, 1] {
            for l in 0..o {
                acc[l] += acc[l + o];
            }
        }
        assert_eq!(lane_sum_f64(40, f).to_bits(), acc[0].to_bits());
        assert_eq!(lane_sum_f64(0, f), 0.0);
    }
}
