// A window of every group's columns: x [n, groups*gw] row-major gives
// y [n, groups*len] with y[r, g*len + j] = x[r, g*gw + offset + src(j)],
// zero where offset + src(j) >= gw (padding); src(j) = j, or with `pairs`
// the window's interleaved pairs taken apart (evens, then odds). Multi-
// head latent attention and partial RoPE take heads apart with it, so a
// decode step needs no host copy. One thread per output value (coalesced
// writes; reads of one group's window are contiguous), grid-stride.

extern "C" __global__ void slice_cols_f32(const float* __restrict__ x, float* __restrict__ y,
                                          u64 n, int groups, int gw, int offset, int len,
                                          int pairs) {
    const u64 total = n * groups * len;
    const int half = len / 2;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        const u64 rg = i / len;  // row * groups + group
        const int j = (int)(i - rg * len);
        const int w = !pairs ? j : (j < half ? 2 * j : 2 * (j - half) + 1);
        const int c = offset + w;
        y[i] = c < gw ? x[rg * gw + c] : 0.f;
    }
}
