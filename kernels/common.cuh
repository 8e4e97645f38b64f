// common.cuh: what every kernel module shares, defined once. nvcc finds it next to the .cu file
// that includes it (build.rs); for NVRTC, backend::cuda::compile puts this text in place of the
// `#include "common.cuh"` line, so both compilers see the same definitions.
//
// THE REDUCTION ORDER (the bit-exactness contract with the CPU twins). Every f64 sum that a
// decision or a bit-identical output depends on is formed in one canonical order: lane l of a
// warp adds the terms l, l + 32, l + 64, ... in ascending order, then the lanes combine by the
// shuffle-down tree acc[l] += acc[l + o] for o = 16, 8, 4, 2, 1, leaving the total in lane 0.
// The CPU computes the same sum with linalg::lane_sum_f64 (and linalg::dot_f64 for dot
// products). Products of two f32 values are exact in f64, so FMA contraction cannot change these
// sums; where it could (a product of two f64 values), kernels use __dadd_rn / __dmul_rn.

#ifndef EXEMPLAR_COMMON_CUH
#define EXEMPLAR_COMMON_CUH

#define NEG_INF_F __int_as_float(0xff800000)
#define NEG_INF_D __longlong_as_double(0xfff0000000000000LL)

// The shuffle-down tree over a full warp's lane partials: the total is in lane 0 (other lanes
// hold partial sums). Every lane of the warp must call it.
__device__ __forceinline__ double warp_sum_f64(double acc) {
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    return acc;
}

// The dot product of two f32 vectors of length d in the canonical order: lane partials over
// i = lane, lane + 32, ..., then warp_sum_f64. The exact value is in lane 0; callers that need
// it in every lane broadcast it with __shfl_sync(0xffffffffu, v, 0). Every lane must call it.
__device__ __forceinline__ double warp_dot_f64(const float* __restrict__ a,
                                               const float* __restrict__ b, int d, int lane) {
    double acc = 0.0;
    for (int i = lane; i < d; i += 32) acc += (double)a[i] * (double)b[i];
    return warp_sum_f64(acc);
}

// The best and runner-up f32 screen value of a row, with the best's index (-1: none).
struct Top2 {
    int index;
    float best;
    float second;
};

__device__ __forceinline__ Top2 top2_empty() {
    Top2 t;
    t.index = -1;
    t.best = NEG_INF_F;
    t.second = NEG_INF_F;
    return t;
}

// Offers candidate j with value s; candidates must come in ascending index order so that ties go
// to the lowest index (the CPU twin's linalg Top2::offer).
__device__ __forceinline__ void top2_offer(Top2& t, int j, float s) {
    if (s > t.best) {
        t.second = t.best;
        t.best = s;
        t.index = j;
    } else if (s > t.second) {
        t.second = s;
    }
}

// Merges a top-2 of candidates that all come after t's (the ascending-index rule is kept).
__device__ __forceinline__ void top2_merge_after(Top2& t, const Top2& later) {
    if (later.index < 0) return;
    if (later.best > t.best) {
        t.second = fmaxf(t.best, later.second);
        t.best = later.best;
        t.index = later.index;
    } else {
        t.second = fmaxf(t.second, later.best);
    }
}

// Merges the top-2 (j, b, s) of any other candidate subset (not necessarily later): ties on the
// best value go to the lower index.
__device__ __forceinline__ void top2_merge(Top2& t, int j, float b, float s) {
    if (j < 0) return;
    if (t.index < 0) {
        t.index = j;
        t.best = b;
        t.second = s;
    } else if (b > t.best || (b == t.best && j < t.index)) {
        t.second = fmaxf(s, t.best);
        t.best = b;
        t.index = j;
    } else {
        t.second = fmaxf(t.second, b);
    }
}

// Lexicographic "better" for exact f64 maxima: larger similarity, then lower index (the first
// maximum); index -1 is "none".
__device__ __forceinline__ bool better_f64(double s, int j, double bs, int bj) {
    return j >= 0 && (bj < 0 || s > bs || (s == bs && j < bj));
}

#endif  // EXEMPLAR_COMMON_CUH
