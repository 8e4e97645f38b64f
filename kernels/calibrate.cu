// calibrate: the exact pairwise-distance percentile without n^2 memory, in two passes over the
// upper triangle of U U^T (tiles of 64 x 64, as in nearest.cu):
//   pass 1 (pairs_histogram): histogram of f32 distances 1 - u_i.u_j (i < j) into `bins` bins
//          over [0, 2] (64-bit counters);
//   pass 2 (pairs_window): count the pairs whose f32 distance is below `lo` and collect the
//          (i, j) of those in [lo, hi] (the target bins widened by twice the screen's error);
//   then pairs_exact_f64 recomputes the window's distances in f64 (common.cuh's order) and
//   the host selects the order statistic, as the CPU twin (calibrate.rs) does.

#include "common.cuh"

#define BT 64
#define BKC 16

__device__ __forceinline__ void pair_tile(const float* __restrict__ U, int n, int d, int i0, int j0,
                                          float (&acc)[4][4], float (&As)[BKC][BT],
                                          float (&Bs)[BKC][BT]) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;
    for (int k0 = 0; k0 < d; k0 += BKC) {
        for (int e = threadIdx.x; e < BT * BKC; e += 256) {
            const int r = e / BKC, c = e % BKC;
            const int gc = k0 + c;
            As[c][r] = (i0 + r < n && gc < d) ? U[(long long)(i0 + r) * d + gc] : 0.0f;
            Bs[c][r] = (j0 + r < n && gc < d) ? U[(long long)(j0 + r) * d + gc] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BKC; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                a[q] = As[kk][ty * 4 + q];
                b[q] = Bs[kk][tx * 4 + q];
            }
#pragma unroll
            for (int p = 0; p < 4; ++p)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[p][q] = fmaf(a[p], b[q], acc[p][q]);
        }
        __syncthreads();
    }
}

// Tiles (bi, bj) with bj >= bi cover the upper triangle; blockIdx.x enumerates bj, blockIdx.y bi.
extern "C" __global__ void __launch_bounds__(256)
pairs_histogram(const float* __restrict__ U, int n, int d, int bins,
                unsigned long long* __restrict__ hist) {
    if (blockIdx.x < blockIdx.y) return;
    __shared__ float As[BKC][BT];
    __shared__ float Bs[BKC][BT];
    float acc[4][4];
    const int i0 = blockIdx.y * BT, j0 = blockIdx.x * BT;
    pair_tile(U, n, d, i0, j0, acc, As, Bs);
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    for (int p = 0; p < 4; ++p) {
        for (int q = 0; q < 4; ++q) {
            const int i = i0 + ty * 4 + p, j = j0 + tx * 4 + q;
            if (i < j && j < n) {
                const float dist = 1.0f - acc[p][q];
                int b = (int)fmaxf(dist * (bins * 0.5f), 0.0f);
                b = min(b, bins - 1);
                atomicAdd(&hist[b], 1ull);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
pairs_window(const float* __restrict__ U, int n, int d, float lo, float hi,
             unsigned long long* __restrict__ below, int* __restrict__ window,
             unsigned int capacity, unsigned int* __restrict__ count) {
    if (blockIdx.x < blockIdx.y) return;
    __shared__ float As[BKC][BT];
    __shared__ float Bs[BKC][BT];
    float acc[4][4];
    const int i0 = blockIdx.y * BT, j0 = blockIdx.x * BT;
    pair_tile(U, n, d, i0, j0, acc, As, Bs);
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    unsigned long long local_below = 0;
    for (int p = 0; p < 4; ++p) {
        for (int q = 0; q < 4; ++q) {
            const int i = i0 + ty * 4 + p, j = j0 + tx * 4 + q;
            if (i < j && j < n) {
                const float dist = 1.0f - acc[p][q];
                if (dist < lo) {
                    ++local_below;
                } else if (dist <= hi) {
                    const unsigned int slot = atomicAdd(count, 1u);
                    if (slot < capacity) {
                        window[2 * slot] = i;
                        window[2 * slot + 1] = j;
                    }
                }
            }
        }
    }
    if (local_below) atomicAdd(below, local_below);
}

// f64 distances 1 - u_i.u_j of the window's pairs, one warp per pair (common.cuh's warp_dot_f64).
extern "C" __global__ void pairs_exact_f64(const float* __restrict__ U, int d,
                                           const int* __restrict__ window, int pairs,
                                           double* __restrict__ out) {
    const int warp = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (warp >= pairs) return;
    const double s = warp_dot_f64(U + (long long)window[2 * warp] * d,
                                  U + (long long)window[2 * warp + 1] * d, d, lane);
    if (lane == 0) out[warp] = 1.0 - s;
}
