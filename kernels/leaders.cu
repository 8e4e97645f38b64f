// leaders: in-batch stream-order resolution (phase B of the two-phase rule; the in-batch part of
// the strict-order rule) and insertion of the new exemplars into the device exemplar buffer.
//
// The unmatched rows W (m x d, unit, stream order) are processed in chunks of c rows. For a
// chunk, the launcher first finds each row's exact nearest among the leaders of earlier chunks
// (the nearest kernels: screen + f64 resolve/recheck), then:
//   1. pair_sims_f64: the exact f64 similarity (common.cuh's warp_dot_f64, as linalg::dot_f64) of
//      every pair b < a of the chunk; warp per pair;
//   2. leaders_scan: one warp walks the chunk in stream order. Row a's candidates are the
//      earlier leaders (best exact similarity prev_sim[a] at ordinal prev_ord[a]) and the
//      chunk's leaders so far (pair sims); the best is the f64 maximum, lowest ordinal on ties.
//      It follows that leader when 1 - sim (clamped to [0, 2]) <= theta, else it becomes the
//      next leader: the decision the CPU twin makes (backend::leaders::leaders_cpu);
//   3. append_leaders: copies the chunk's new leaders to the exemplar buffer after its current
//      rows; the row counter is advanced atomically.
//
// Sequential dependencies inside a chunk are resolved by the single scanning warp on
// precomputed exact values, so the scan costs O(c * leaders) comparisons, not dot products.

#include "common.cuh"

// Pair p (0 <= p < c(c-1)/2) in the order (1,0), (2,0), (2,1), (3,0), ...
__device__ __forceinline__ void pair_of(long long p, int* a, int* b) {
    int r = (int)((1.0 + sqrt(1.0 + 8.0 * (double)p)) * 0.5);
    while ((long long)r * (r - 1) / 2 > p) --r;
    while ((long long)(r + 1) * r / 2 <= p) ++r;
    *a = r;
    *b = (int)(p - (long long)r * (r - 1) / 2);
}

extern "C" __global__ void pair_sims_f64(const float* __restrict__ W, int c, int d,
                                         double* __restrict__ sims) {
    const long long warp = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const long long pairs = (long long)c * (c - 1) / 2;
    if (warp >= pairs) return;
    int a, b;
    pair_of(warp, &a, &b);
    const double s = warp_dot_f64(W + (long long)a * d, W + (long long)b * d, d, lane);
    if (lane == 0) sims[(long long)a * c + b] = s;
}

// One warp (blockDim.x == 32). prev_ord[a] < 0: no earlier leader. base: ordinal of the chunk's
// first new leader (= leaders of earlier chunks). Outputs per chunk row: ord (leader or
// followed ordinal), sim (f64 similarity with the followed leader; 1.0 for a leader: distance
// 0), is_leader. leader_rows lists the chunk rows that became leaders; count[0] += their number.
extern "C" __global__ void __launch_bounds__(32)
leaders_scan(int c, double theta, int base, const int* __restrict__ prev_ord,
             const double* __restrict__ prev_sim, const double* __restrict__ sims,
             int* __restrict__ ord, double* __restrict__ sim, int* __restrict__ is_leader,
             int* __restrict__ leader_rows, int* __restrict__ count) {
    const int lane = threadIdx.x;
    int nl = 0;
    for (int a = 0; a < c; ++a) {
        double best = NEG_INF_D;
        int arg = -1;
        // This lane's share of the chunk's leaders, ascending: the first maximum.
        for (int l = lane; l < nl; l += 32) {
            const double s = sims[(long long)a * c + leader_rows[l]];
            if (s > best) {
                best = s;
                arg = l;
            }
        }
        // Warp argmax: larger similarity, then lower leader index.
        for (int off = 16; off > 0; off >>= 1) {
            const double ob = __shfl_down_sync(0xffffffffu, best, off);
            const int oa = __shfl_down_sync(0xffffffffu, arg, off);
            if (oa >= 0 && (arg < 0 || ob > best || (ob == best && oa < arg))) {
                best = ob;
                arg = oa;
            }
        }
        best = __shfl_sync(0xffffffffu, best, 0);
        arg = __shfl_sync(0xffffffffu, arg, 0);
        // Earlier chunks' leaders have lower ordinals: a chunk leader must be strictly better.
        int o = prev_ord[a];
        double s = prev_sim[a];
        if (arg >= 0 && (o < 0 || best > s)) {
            o = base + arg;
            s = best;
        }
        double dist = 1.0 - s;
        dist = dist < 0.0 ? 0.0 : (dist > 2.0 ? 2.0 : dist);
        const bool follow = o >= 0 && dist <= theta;
        if (lane == 0) {
            if (follow) {
                ord[a] = o;
                sim[a] = s;
                is_leader[a] = 0;
            } else {
                ord[a] = base + nl;
                sim[a] = 1.0;
                is_leader[a] = 1;
                leader_rows[nl] = a;
            }
        }
        __syncwarp();
        if (!follow) ++nl;
    }
    if (lane == 0) atomicAdd(count, nl);
}

// Copies the new leaders (chunk rows leader_rows[0 .. count[0] - first)) into the exemplar
// buffer at rows dst_row0 + i. Grid: (ceil(d / blockDim.x), c).
extern "C" __global__ void append_leaders(const float* __restrict__ W, int d,
                                          const int* __restrict__ leader_rows,
                                          const int* __restrict__ count, int first,
                                          float* __restrict__ dst, long long dst_row0) {
    const int i = blockIdx.y;
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count[0] - first || col >= d) return;
    dst[(dst_row0 + i) * d + col] = W[(long long)leader_rows[i] * d + col];
}

// Rows W (n x d) gathered from U by index: W[r] = U[rows[r]] (the launcher checks the indices).
// Rows stride over grid.y (at most 65535 blocks high).
extern "C" __global__ void gather_rows(const float* __restrict__ U, int d,
                                       const int* __restrict__ rows, int n, float* __restrict__ W) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= d) return;
    for (int r = blockIdx.y; r < n; r += gridDim.y)
        W[(long long)r * d + col] = U[(long long)rows[r] * d + col];
}
