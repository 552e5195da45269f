// Two tensors' columns side by side per group: a [n, groups*la] and
// b [n, b_groups*lb] (b_groups = groups, or 1: one part every group
// repeats) give y [n, groups*(la + lb)], group g of a row [a_g | b_g]
// (multi-head latent attention's cache rows [c | k_pe] and absorbed
// queries [q_lat | q_pe], partial RoPE's heads put back together). One
// thread per output value (coalesced writes), grid-stride.

extern "C" __global__ void concat_cols_f32(const float* __restrict__ a,
                                           const float* __restrict__ b, float* __restrict__ y,
                                           u64 n, int groups, int b_groups, int la, int lb) {
    const int gw = la + lb;
    const u64 total = n * groups * gw;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        const u64 rg = i / gw;  // row * groups + group
        const int j = (int)(i - rg * gw);
        if (j < la) {
            y[i] = a[rg * la + j];
        } else {
            const u64 r = rg / groups, g = rg - r * groups;
            const u64 bg = b_groups == 1 ? r : r * b_groups + g;
            y[i] = b[bg * lb + (j - la)];
        }
    }
}
