// nearest: for every row of U (n x d) the best and runner-up f32 similarity among the
// candidate rows E (k x d), with the best's index (lowest index on ties), WITHOUT writing the
// n x k similarity matrix: a tiled SGEMM (64 x 64 output tile, 16-deep k-slices, 4 x 4 per
// thread) whose epilogue folds each 64-candidate tile into a running top-2 per row.
//
// This is the f32 *screen*: decisions are settled by resolve_f64 / recheck_f64 (exact f64 in
// the canonical lane order), so the screen only needs its documented error bound (d * 2^-24 per
// similarity of unit vectors; the margin used is d * 2^-22).

#define NEG_INF_F __int_as_float(0xff800000)
#define NEG_INF_D __longlong_as_double(0xfff0000000000000LL)

#define BM 64
#define BN 64
#define BK 16

struct Top2 {
    int index;
    float best;
    float second;
};

__device__ __forceinline__ void top2_offer(Top2& t, int j, float s) {
    if (s > t.best) {
        t.second = t.best;
        t.best = s;
        t.index = j;
    } else if (s > t.second) {
        t.second = s;
    }
}

// Merge a top-2 of candidates that all come after t's (ascending-index rule preserved).
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

extern "C" __global__ void __launch_bounds__(256)
nearest_top2_f32(const float* __restrict__ U, const float* __restrict__ E, int n, int k, int d,
                 int* __restrict__ best_index, float* __restrict__ best, float* __restrict__ second) {
    __shared__ float As[BK][BM];
    __shared__ float Bs[BK][BN];
    __shared__ Top2 partial[BM][BN / 4];  // per row, one partial per column-thread
    __shared__ Top2 running[BM];

    const int tx = threadIdx.x % 16;  // column group: candidates tx*4 .. tx*4+3
    const int ty = threadIdx.x / 16;  // row group: rows ty*4 .. ty*4+3
    const int m0 = blockIdx.x * BM;
    if (threadIdx.x < BM) {
        running[threadIdx.x].index = -1;
        running[threadIdx.x].best = NEG_INF_F;
        running[threadIdx.x].second = NEG_INF_F;
    }
    for (int n0 = 0; n0 < k; n0 += BN) {
        float acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
        for (int k0 = 0; k0 < d; k0 += BK) {
            // 256 threads load 64 x 16 of U and of E: 4 elements each.
            for (int e = threadIdx.x; e < BM * BK; e += 256) {
                const int r = e / BK, c = e % BK;
                const int gr = m0 + r, gc = k0 + c;
                As[c][r] = (gr < n && gc < d) ? U[(long long)gr * d + gc] : 0.0f;
                const int gn = n0 + r;
                Bs[c][r] = (gn < k && gc < d) ? E[(long long)gn * d + gc] : 0.0f;
            }
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                float a[4], b[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
#pragma unroll
                for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx * 4 + j];
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
            __syncthreads();
        }
        // Epilogue: per thread, the top-2 of its 4 candidates for each of its 4 rows.
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            Top2 t;
            t.index = -1;
            t.best = NEG_INF_F;
            t.second = NEG_INF_F;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int c = n0 + tx * 4 + j;
                if (c < k) top2_offer(t, c, acc[i][j]);
            }
            partial[ty * 4 + i][tx] = t;
        }
        __syncthreads();
        // One thread per row folds the 16 partials (ascending candidate order) into its running top-2.
        if (threadIdx.x < BM) {
            Top2 r = running[threadIdx.x];
            for (int g = 0; g < BN / 4; ++g) top2_merge_after(r, partial[threadIdx.x][g]);
            running[threadIdx.x] = r;
        }
        __syncthreads();
    }
    if (threadIdx.x < BM) {
        const int row = m0 + threadIdx.x;
        if (row < n) {
            best_index[row] = running[threadIdx.x].index;
            best[row] = running[threadIdx.x].best;
            second[row] = running[threadIdx.x].second;
        }
    }
}

// Exact similarity of each row with its screened winner (warp per row, canonical lane order),
// and a flag for rows whose screen cannot separate best from runner-up (second > best - margin).
extern "C" __global__ void resolve_f64(const float* __restrict__ U, const float* __restrict__ E,
                                       int n, int d, const int* __restrict__ best_index,
                                       const float* __restrict__ best,
                                       const float* __restrict__ second, float margin,
                                       double* __restrict__ sim, int* __restrict__ ambiguous) {
    const int warp = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (warp >= n) return;
    const int j = best_index[warp];
    double acc = 0.0;
    if (j >= 0) {
        const float* u = U + (long long)warp * d;
        const float* e = E + (long long)j * d;
        for (int i = lane; i < d; i += 32) acc += (double)u[i] * (double)e[i];
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) {
        sim[warp] = (j >= 0) ? acc : NEG_INF_D;
        ambiguous[warp] = (j >= 0 && second[warp] > best[warp] - margin) ? 1 : 0;
    }
}

// For the listed ambiguous rows: the exact maximum over ALL candidates (f64, canonical lane
// order per candidate; first maximum wins), which equals the CPU's maximum over its contenders.
extern "C" __global__ void recheck_f64(const float* __restrict__ U, const float* __restrict__ E,
                                       int k, int d, const int* __restrict__ rows, int n_rows,
                                       int* __restrict__ best_index, double* __restrict__ sim) {
    const int warp = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (warp >= n_rows) return;
    const int row = rows[warp];
    const float* u = U + (long long)row * d;
    double best = NEG_INF_D;
    int arg = -1;
    for (int j = 0; j < k; ++j) {
        const float* e = E + (long long)j * d;
        double acc = 0.0;
        for (int i = lane; i < d; i += 32) acc += (double)u[i] * (double)e[i];
        for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
        acc = __shfl_sync(0xffffffffu, acc, 0);
        if (acc > best) {
            best = acc;
            arg = j;
        }
    }
    if (lane == 0) {
        best_index[row] = arg;
        sim[row] = best;
    }
}
