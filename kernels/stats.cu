// stats: per-partition running sums for the rows of one batch, in stream order.
//
// The batch's memberships arrive grouped by partition (CSR): partition parts[t] received the
// rows members[offsets[t] .. offsets[t+1]) in stream order, with member->exemplar distances
// dists[...] (f64). Each thread owns one (partition, column) and adds that column of its rows
// in order, so every f64 sum sees exactly the additions of the CPU twin (build.rs,
// record_member), in the same order: the sums are bit-identical (common.cuh states the contract).

#include "common.cuh"

extern "C" __global__ void stats_direction_sums(const float* __restrict__ U, int d,
                                                const int* __restrict__ parts,
                                                const int* __restrict__ offsets,
                                                const int* __restrict__ members, int n_parts,
                                                double* __restrict__ sums) {
    const int t = blockIdx.y;
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_parts || col >= d) return;
    double* s = sums + (long long)parts[t] * d + col;
    double acc = *s;
    for (int m = offsets[t]; m < offsets[t + 1]; ++m) {
        acc += (double)U[(long long)members[m] * d + col];
    }
    *s = acc;
}

extern "C" __global__ void stats_counts_and_distances(const int* __restrict__ parts,
                                                      const int* __restrict__ offsets,
                                                      const double* __restrict__ dists, int n_parts,
                                                      long long* __restrict__ counts,
                                                      double* __restrict__ sum_d,
                                                      double* __restrict__ sum_d2) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_parts) return;
    const int p = parts[t];
    double s = sum_d[p], s2 = sum_d2[p];
    for (int m = offsets[t]; m < offsets[t + 1]; ++m) {
        const double x = dists[m];
        // Explicit round-to-nearest ops: no FMA contraction, so the sums match the CPU's.
        s = __dadd_rn(s, x);
        s2 = __dadd_rn(s2, __dmul_rn(x, x));
    }
    sum_d[p] = s;
    sum_d2[p] = s2;
    counts[p] += offsets[t + 1] - offsets[t];
}
