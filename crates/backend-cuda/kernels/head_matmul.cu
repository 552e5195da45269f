// Per-head matmul: y[r, h*m + j] = Σ_c x[r, h*k + c] · w[h, j, c], f32
// (multi-head latent attention's absorbed projections). One warp per
// output value, lanes over c (coalesced loads of x and w), a shuffle
// reduction; a row's values do not depend on the other rows.

extern "C" __global__ void head_matmul_f32(const float* __restrict__ x, const float* __restrict__ w,
                                           float* __restrict__ y, int n, int h, int k, int m) {
    const u64 total = (u64)n * h * m;
    const int lane = threadIdx.x & 31;
    const u64 warps = ((u64)gridDim.x * blockDim.x) >> 5;
    for (u64 o = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; o < total; o += warps) {
        const u64 r = o / ((u64)h * m), hj = o - r * h * m, head = hj / m, j = hj - head * m;
        const float* xr = x + r * h * k + head * k;
        const float* wr = w + (head * m + j) * k;
        float acc = 0.f;
        for (int c = lane; c < k; c += 32) acc = fmaf(xr[c], wr[c], acc);
        acc = warp_sum(acc);
        if (lane == 0) y[r * h * m + head * m + j] = acc;
    }
}
