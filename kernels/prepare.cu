// prepare: raw activations -> centered unit directions, one warp per output row.
//
// u = (x - c) * (1 / (||x - c|| + 1e-12)), the difference in f32, the squared norm in f64 in
// the canonical lane order of common.cuh (warp_sum_f64), the scale applied in f64 and rounded
// to f32. This is exactly what the CPU twin (geometry::directions, linalg::lane_sum_f64)
// computes, bit for bit.
//
// rows: optional gather list (output row r reads input row rows[r]); null = identity. This is
// how BOS and padding positions are dropped: only the kept positions are listed.
// first_zero_row: atomicMin'ed with the index of any output row whose x - c is exactly zero.
// first_bad_row: atomicMin'ed with the index of any output row whose gather index lies outside
// x (0 <= rows[r] < x_rows); such rows are not read, and the launcher returns an error.

#include "common.cuh"

__device__ __forceinline__ float bf16_bits_to_f32(unsigned short b) {
    return __uint_as_float(((unsigned int)b) << 16);
}

template <typename Load>
__device__ __forceinline__ void prepare_row(Load load, int d, const float* __restrict__ center,
                                            float* __restrict__ o, int out_row,
                                            int* __restrict__ first_zero_row) {
    const int lane = threadIdx.x & 31;
    double acc = 0.0;
    for (int i = lane; i < d; i += 32) {
        float v = load(i) - center[i];
        o[i] = v;
        acc += (double)v * (double)v;
    }
    acc = __shfl_sync(0xffffffffu, warp_sum_f64(acc), 0);
    if (acc == 0.0) {
        if (lane == 0) atomicMin(first_zero_row, out_row);
        return;
    }
    const double inv = 1.0 / (sqrt(acc) + 1e-12);
    __syncwarp();
    for (int i = lane; i < d; i += 32) {
        o[i] = (float)((double)o[i] * inv);
    }
}

extern "C" __global__ void prepare_f32(const float* __restrict__ x, long long row_stride,
                                       long long x_rows, const long long* __restrict__ rows, int n, int d,
                                       const float* __restrict__ center, float* __restrict__ out,
                                       int* __restrict__ first_zero_row, int* __restrict__ first_bad_row) {
    const int warp = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5);
    if (warp >= n) return;
    const long long src = rows ? rows[warp] : (long long)warp;
    if (src < 0 || src >= x_rows) {
        if ((threadIdx.x & 31) == 0) atomicMin(first_bad_row, warp);
        return;
    }
    const float* xr = x + src * row_stride;
    prepare_row([&](int i) { return xr[i]; }, d, center, out + (long long)warp * d, warp,
                first_zero_row);
}

extern "C" __global__ void prepare_bf16(const unsigned short* __restrict__ x, long long row_stride,
                                        long long x_rows, const long long* __restrict__ rows, int n, int d,
                                        const float* __restrict__ center, float* __restrict__ out,
                                        int* __restrict__ first_zero_row, int* __restrict__ first_bad_row) {
    const int warp = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5);
    if (warp >= n) return;
    const long long src = rows ? rows[warp] : (long long)warp;
    if (src < 0 || src >= x_rows) {
        if ((threadIdx.x & 31) == 0) atomicMin(first_bad_row, warp);
        return;
    }
    const unsigned short* xr = x + src * row_stride;
    prepare_row([&](int i) { return bf16_bits_to_f32(xr[i]); }, d, center,
                out + (long long)warp * d, warp, first_zero_row);
}
