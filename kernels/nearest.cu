// nearest: for every row of U (n x d) the best and runner-up f32 similarity among the
// candidate rows E (k x d), with the best's index (lowest index on ties), WITHOUT writing the
// n x k similarity matrix: a tiled SGEMM (64 x 64 output tile, 16-deep k-slices, 4 x 4 per
// thread) whose epilogue folds each 64-candidate tile into a running top-2 per row.
//
// limits (nullable): row r considers only candidates j < limits[r] (the strict-order rule's
// "leaders created before this row").
//
// This is the f32 *screen*: decisions are settled by resolve_f64 / recheck_f64 (exact f64 in
// the canonical order of common.cuh), so the screen only needs its documented error bound (d * 2^-24 per
// similarity of unit vectors; the margin used is d * 2^-22).

#include "common.cuh"

#define BM 64
#define BN 64
#define BK 16

extern "C" __global__ void __launch_bounds__(256)
nearest_top2_f32(const float* __restrict__ U, const float* __restrict__ E, int n, int k, int d,
                 const int* __restrict__ limits, int* __restrict__ best_index,
                 float* __restrict__ best, float* __restrict__ second) {
    __shared__ float As[BK][BM];
    __shared__ float Bs[BK][BN];
    __shared__ Top2 partial[BM][BN / 4];  // per row, one partial per column-thread
    __shared__ Top2 running[BM];

    const int tx = threadIdx.x % 16;  // column group: candidates tx*4 .. tx*4+3
    const int ty = threadIdx.x / 16;  // row group: rows ty*4 .. ty*4+3
    const int m0 = blockIdx.x * BM;
    if (threadIdx.x < BM) running[threadIdx.x] = top2_empty();
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
            Top2 t = top2_empty();
#pragma unroll
            const int gr = m0 + ty * 4 + i;
            const int lim = (limits && gr < n) ? min(k, limits[gr]) : k;
            for (int j = 0; j < 4; ++j) {
                const int c = n0 + tx * 4 + j;
                if (c < lim) top2_offer(t, c, acc[i][j]);
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

// Exact similarity of each row with its screened winner (warp per row, warp_dot_f64),
// and a flag for rows whose screen cannot separate best from runner-up (second > best - margin).
extern "C" __global__ void resolve_f64(const float* __restrict__ U, const float* __restrict__ E,
                                       int n, int d, const int* __restrict__ best_index,
                                       const float* __restrict__ best,
                                       const float* __restrict__ second, float margin,
                                       double* __restrict__ sim, int* __restrict__ ambiguous) {
    const int warp = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (warp >= n) return;
    const int j = best_index[warp];  // the same in every lane of the warp
    const double acc = (j >= 0) ? warp_dot_f64(U + (long long)warp * d, E + (long long)j * d, d, lane)
                                : 0.0;
    if (lane == 0) {
        sim[warp] = (j >= 0) ? acc : NEG_INF_D;
        ambiguous[warp] = (j >= 0 && second[warp] > best[warp] - margin) ? 1 : 0;
    }
}

// Exact re-check of the listed ambiguous rows, split over candidates: block (x, y) takes row
// rows[y] and candidates j = x*8 + warp, stepping gridDim.x*8; each warp keeps its first f64
// maximum (warp_dot_f64), the block the best of its 8 warps. recheck_reduce then picks
// the best block per row. The result is the f64 maximum over all (or the first limits[row])
// candidates with the lowest index on ties: the CPU's exact maximum.
extern "C" __global__ void __launch_bounds__(256)
recheck_partial_f64(const float* __restrict__ U, const float* __restrict__ E, int k, int d,
                    const int* __restrict__ rows, int n_rows, const int* __restrict__ limits,
                    int* __restrict__ part_index, double* __restrict__ part_sim) {
    __shared__ double ws[8];
    __shared__ int wj[8];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    // Rows stride over grid.y (at most 65535 blocks high).
    for (int y = blockIdx.y; y < n_rows; y += gridDim.y) {
        const int row = rows[y];
        const int kl = limits ? min(k, limits[row]) : k;
        const float* u = U + (long long)row * d;
        double best = NEG_INF_D;
        int arg = -1;
        for (int j = blockIdx.x * 8 + warp; j < kl; j += gridDim.x * 8) {
            const double acc =
                __shfl_sync(0xffffffffu, warp_dot_f64(u, E + (long long)j * d, d, lane), 0);
            if (acc > best) {
                best = acc;
                arg = j;
            }
        }
        __syncthreads();  // the previous row's reduction has read ws / wj
        if (lane == 0) {
            ws[warp] = best;
            wj[warp] = arg;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            double b = NEG_INF_D;
            int a = -1;
            for (int w = 0; w < 8; ++w)
                if (better_f64(ws[w], wj[w], b, a)) {
                    b = ws[w];
                    a = wj[w];
                }
            part_index[(long long)y * gridDim.x + blockIdx.x] = a;
            part_sim[(long long)y * gridDim.x + blockIdx.x] = b;
        }
    }
}

extern "C" __global__ void recheck_reduce(const int* __restrict__ rows, int n_rows, int parts,
                                          const int* __restrict__ part_index,
                                          const double* __restrict__ part_sim,
                                          int* __restrict__ best_index, double* __restrict__ sim) {
    const int y = blockIdx.x * blockDim.x + threadIdx.x;
    if (y >= n_rows) return;
    double b = NEG_INF_D;
    int a = -1;
    for (int p = 0; p < parts; ++p) {
        const int j = part_index[(long long)y * parts + p];
        const double s = part_sim[(long long)y * parts + p];
        if (better_f64(s, j, b, a)) {
            b = s;
            a = j;
        }
    }
    best_index[rows[y]] = a;
    sim[rows[y]] = b;
}

// ---------------------------------------------------------------------------------------------
// Tensor-core screen: bf16 mma.sync (m16n8k16, f32 accumulate) with a fused per-row top-2.
//
// Inputs are bf16 copies (round to nearest even) of the unit rows, padded with zeros to a width
// dp that is a multiple of 32. The screen value of a pair differs from the exact similarity by
// at most eps(d) = 2^-7 + 2^-15 + d * 2^-22: rounding both unit vectors to bf16 (8 significant
// bits, unit roundoff 2^-8) changes each product by at most (2^-7 + 2^-16) |u_i e_i|, and
// sum |u_i e_i| <= |u| |e| ~ 1 (Cauchy-Schwarz); the f32 accumulation adds at most d * 2^-23,
// doubled for tensor-core accumulation that may truncate. resolve_f64 flags a row when
// second > best - margin with margin > 2 eps (backend::cuda::bf16_screen_margin), so an
// unflagged row's screen winner is the exact argmax, and flagged rows are re-checked in f64.
// ---------------------------------------------------------------------------------------------

// f32 -> bf16 bits, round to nearest even (inputs are finite); W is n x dp, zero padded.
extern "C" __global__ void to_bf16_padded(const float* __restrict__ X, int n, int d, int dp,
                                          unsigned short* __restrict__ W) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= dp) return;
    for (int r = blockIdx.y; r < n; r += gridDim.y) {
        unsigned short out = 0;
        if (col < d) {
            const unsigned int u = __float_as_uint(X[(long long)r * d + col]);
            out = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
        W[(long long)r * dp + col] = out;
    }
}

#define TBM 128
#define TBN 128
#define TBK 32
#define TPAD 40  // shared row stride in bf16 (80 bytes): conflict-free fragment loads

__device__ __forceinline__ unsigned int lds32(const unsigned short* p) {
    return *reinterpret_cast<const unsigned int*>(p);
}

// Block (x, y): rows x*128 .. +128 against candidate tiles of split y (gridDim.y splits of the
// 128-candidate tiles, contiguous). Writes the split's top-2 of each row to
// part_{index,best,second}[y * n + row]; top2_merge_splits combines the splits.
// CONT = false: the screen (top-2 per row and split). CONT = true: the contender pass for rows
// the screen left ambiguous (gathered, n of them): every candidate whose bf16 value is at least
// floor[row] (the screen's best minus the margin) is listed in cont_index[row * max_cont + i]
// (any order; cont_count[row] counts them, and a count above max_cont means "re-check all").
// The exact maximum is always listed: a candidate with exact value >= the screen winner's has
// screen value >= best - 2 eps > floor.
template <bool CONT>
__device__ __forceinline__ void mma_screen(const unsigned short* __restrict__ Ub,
                                           const unsigned short* __restrict__ Eb, int n, int k,
                                           int dp, const int* __restrict__ limits,
                                           int* __restrict__ part_index,
                                           float* __restrict__ part_best,
                                           float* __restrict__ part_second,
                                           const float* __restrict__ floor_, int max_cont,
                                           int* __restrict__ cont_count,
                                           int* __restrict__ cont_index) {
    __shared__ __align__(16) unsigned short As[TBM * TPAD];
    __shared__ __align__(16) unsigned short Bs[TBN * TPAD];
    __shared__ Top2 red[4][TBM];

    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31;
    const int wm = warp >> 2;  // 0..1: 64-row half
    const int wn = warp & 3;   // 0..3: 32-candidate quarter
    const int g = lane >> 2, t4 = lane & 3;
    const int m0 = blockIdx.x * TBM;
    const int tiles = (k + TBN - 1) / TBN;
    const int per = (tiles + gridDim.y - 1) / gridDim.y;
    const int t_begin = blockIdx.y * per;
    const int t_end = min(tiles, t_begin + per);

    // The 8 rows this thread accumulates, and their candidate limits.
    int lim[8];
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = m0 + wm * 64 + mt * 16 + g + 8 * h;
            lim[mt * 2 + h] = (r < n) ? (limits ? min(k, limits[r]) : k) : 0;
        }
    Top2 run[8];
    float flo[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        run[i] = top2_empty();
        flo[i] = 0.0f;
    }
    if (CONT) {
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = m0 + wm * 64 + mt * 16 + g + 8 * h;
                flo[mt * 2 + h] = (r < n) ? floor_[r] : 0.0f;
            }
    }

    for (int tile = t_begin; tile < t_end; ++tile) {
        const int n0 = tile * TBN;
        float acc[4][4][4];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b)
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.0f;

        // Register prefetch of the first k-slice: 2 x 16 bytes of A and of B per thread.
        uint4 ra[2], rb[2];
        auto load = [&](int k0) {
#pragma unroll
            for (int it = 0; it < 2; ++it) {
                const int idx = tid + it * 256;
                const int r = idx >> 2, q = idx & 3;
                const uint4 z = make_uint4(0, 0, 0, 0);
                ra[it] = (m0 + r < n)
                             ? *reinterpret_cast<const uint4*>(Ub + (long long)(m0 + r) * dp + k0 + q * 8)
                             : z;
                rb[it] = (n0 + r < k)
                             ? *reinterpret_cast<const uint4*>(Eb + (long long)(n0 + r) * dp + k0 + q * 8)
                             : z;
            }
        };
        load(0);
        for (int k0 = 0; k0 < dp; k0 += TBK) {
            __syncthreads();
#pragma unroll
            for (int it = 0; it < 2; ++it) {
                const int idx = tid + it * 256;
                const int r = idx >> 2, q = idx & 3;
                *reinterpret_cast<uint4*>(&As[r * TPAD + q * 8]) = ra[it];
                *reinterpret_cast<uint4*>(&Bs[r * TPAD + q * 8]) = rb[it];
            }
            __syncthreads();
            if (k0 + TBK < dp) load(k0 + TBK);
#pragma unroll
            for (int kk = 0; kk < TBK; kk += 16) {
                unsigned int af[4][4], bf[4][2];
#pragma unroll
                for (int mt = 0; mt < 4; ++mt) {
                    const unsigned short* p = &As[(wm * 64 + mt * 16 + g) * TPAD + kk + 2 * t4];
                    af[mt][0] = lds32(p);
                    af[mt][1] = lds32(p + 8 * TPAD);
                    af[mt][2] = lds32(p + 8);
                    af[mt][3] = lds32(p + 8 * TPAD + 8);
                }
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) {
                    const unsigned short* p = &Bs[(wn * 32 + nt * 8 + g) * TPAD + kk + 2 * t4];
                    bf[nt][0] = lds32(p);
                    bf[nt][1] = lds32(p + 8);
                }
#pragma unroll
                for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                    for (int nt = 0; nt < 4; ++nt)
                        asm volatile(
                            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                            : "+f"(acc[mt][nt][0]), "+f"(acc[mt][nt][1]), "+f"(acc[mt][nt][2]),
                              "+f"(acc[mt][nt][3])
                            : "r"(af[mt][0]), "r"(af[mt][1]), "r"(af[mt][2]), "r"(af[mt][3]),
                              "r"(bf[nt][0]), "r"(bf[nt][1]));
            }
        }
        // Fused epilogue: offer this thread's candidates of the tile, ascending, to its rows.
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const int c = n0 + wn * 32 + nt * 8 + 2 * t4 + j;
                        if (c >= lim[mt * 2 + h]) continue;
                        const float v = acc[mt][nt][h * 2 + j];
                        if (CONT) {
                            if (v >= flo[mt * 2 + h]) {
                                const int r = m0 + wm * 64 + mt * 16 + g + 8 * h;
                                const int slot = atomicAdd(&cont_count[r], 1);
                                if (slot < max_cont) cont_index[(long long)r * max_cont + slot] = c;
                            }
                        } else {
                            top2_offer(run[mt * 2 + h], c, v);
                        }
                    }
    }
    if (CONT) return;
    // Merge the 4 threads of a quad (same rows), then the 4 candidate quarters via shared memory.
#pragma unroll
    for (int i = 0; i < 8; ++i) {
#pragma unroll
        for (int x = 1; x <= 2; x <<= 1) {
            const int oj = __shfl_xor_sync(0xffffffffu, run[i].index, x);
            const float ob = __shfl_xor_sync(0xffffffffu, run[i].best, x);
            const float os = __shfl_xor_sync(0xffffffffu, run[i].second, x);
            top2_merge(run[i], oj, ob, os);
        }
    }
    if (t4 == 0) {
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) red[wn][wm * 64 + mt * 16 + g + 8 * h] = run[mt * 2 + h];
    }
    __syncthreads();
    if (tid < TBM && m0 + tid < n) {
        Top2 r = red[0][tid];
        for (int q = 1; q < 4; ++q) top2_merge(r, red[q][tid].index, red[q][tid].best, red[q][tid].second);
        const long long o = (long long)blockIdx.y * n + m0 + tid;
        part_index[o] = r.index;
        part_best[o] = r.best;
        part_second[o] = r.second;
    }
}

extern "C" __global__ void __launch_bounds__(256)
nearest_top2_bf16_mma(const unsigned short* __restrict__ Ub, const unsigned short* __restrict__ Eb,
                      int n, int k, int dp, const int* __restrict__ limits,
                      int* __restrict__ part_index, float* __restrict__ part_best,
                      float* __restrict__ part_second) {
    mma_screen<false>(Ub, Eb, n, k, dp, limits, part_index, part_best, part_second, nullptr, 0,
                      nullptr, nullptr);
}

extern "C" __global__ void __launch_bounds__(256)
contenders_bf16_mma(const unsigned short* __restrict__ Ub, const unsigned short* __restrict__ Eb,
                    int n, int k, int dp, const float* __restrict__ floor_, int max_cont,
                    int* __restrict__ cont_count, int* __restrict__ cont_index) {
    mma_screen<true>(Ub, Eb, n, k, dp, nullptr, nullptr, nullptr, nullptr, floor_, max_cont,
                     cont_count, cont_index);
}

// The exact f64 maximum over each gathered row's listed contenders (lowest index on ties):
// block per row (rows stride over grid.x), warp per contender. Rows whose list overflowed
// (count > max_cont) are skipped here and re-checked over all candidates by the launcher.
extern "C" __global__ void __launch_bounds__(256)
contenders_f64(const float* __restrict__ U, const float* __restrict__ E, int d,
               const int* __restrict__ rows, int n_rows, int max_cont,
               const int* __restrict__ cont_count, const int* __restrict__ cont_index,
               int* __restrict__ best_index, double* __restrict__ sim) {
    __shared__ double ws[8];
    __shared__ int wj[8];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int y = blockIdx.x; y < n_rows; y += gridDim.x) {
        const int cnt = cont_count[y];
        if (cnt > max_cont) continue;  // uniform across the block
        const float* u = U + (long long)rows[y] * d;
        double best = NEG_INF_D;
        int arg = -1;
        for (int i = warp; i < cnt; i += 8) {
            const int j = cont_index[(long long)y * max_cont + i];
            const double acc =
                __shfl_sync(0xffffffffu, warp_dot_f64(u, E + (long long)j * d, d, lane), 0);
            if (better_f64(acc, j, best, arg)) {
                best = acc;
                arg = j;
            }
        }
        __syncthreads();
        if (lane == 0) {
            ws[warp] = best;
            wj[warp] = arg;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            double b = NEG_INF_D;
            int a = -1;
            for (int w = 0; w < 8; ++w)
                if (better_f64(ws[w], wj[w], b, a)) {
                    b = ws[w];
                    a = wj[w];
                }
            if (a >= 0) {
                best_index[rows[y]] = a;
                sim[rows[y]] = b;
            }
        }
    }
}

// Per row, the top-2 over the splits of nearest_top2_bf16_mma.
extern "C" __global__ void top2_merge_splits(int n, int splits, const int* __restrict__ part_index,
                                             const float* __restrict__ part_best,
                                             const float* __restrict__ part_second,
                                             int* __restrict__ best_index, float* __restrict__ best,
                                             float* __restrict__ second) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    Top2 t = top2_empty();
    for (int s = 0; s < splits; ++s) {
        const long long o = (long long)s * n + r;
        top2_merge(t, part_index[o], part_best[o], part_second[o]);
    }
    best_index[r] = t.index;
    best[r] = t.best;
    second[r] = t.second;
}

// Per row of a row-major t x k f32 similarity tile (the cuBLAS screen's GEMM output), the
// top-2 over the first limits[row0 + r] candidates (all k without limits), lowest index on
// ties; one warp per row. Writes rows row0 .. row0 + t of the outputs (index -1 and -inf
// when a row has no candidate).
extern "C" __global__ void top2_rows_f32(const float* __restrict__ C, int t, int k,
                                         const int* __restrict__ limits, int row0,
                                         int* __restrict__ best_index, float* __restrict__ best,
                                         float* __restrict__ second) {
    const int warp = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (warp >= t) return;
    const int row = row0 + warp;
    const int lim = limits ? min(max(limits[row], 0), k) : k;
    const float* c = C + (long long)warp * k;
    Top2 m = top2_empty();
    // Ascending j within a lane: the strict comparison keeps the lane's first maximum.
    for (int j = lane; j < lim; j += 32) top2_offer(m, j, c[j]);
    for (int off = 16; off > 0; off >>= 1) {
        const int oj = __shfl_down_sync(0xffffffffu, m.index, off);
        const float ob = __shfl_down_sync(0xffffffffu, m.best, off);
        const float os = __shfl_down_sync(0xffffffffu, m.second, off);
        top2_merge(m, oj, ob, os);
    }
    if (lane == 0) {
        best_index[row] = m.index;
        best[row] = m.best;
        second[row] = m.second;
    }
}
