// Rotary embedding, rotate-half layout, in place on x[n, width] (width =
// heads · head_dim). One thread per (row, head, i < head_dim/2): the angle
// is pos · inv_freq[i] rounded to f32 (as the CPU op and the model do),
// cos and sin scaled by mscale, then the pair (i, i + head_dim/2) rotated.

extern "C" __global__ void rope_f32(float* __restrict__ x, const u32* __restrict__ pos,
                                    const float* __restrict__ inv_freq, int n,
                                    int width, int head_dim, float mscale) {
    const int half = head_dim / 2;
    const u64 per_row = (u64)width / 2;
    const u64 t = blockIdx.x * (u64)blockDim.x + threadIdx.x;
    if (t >= (u64)n * per_row) return;
    const u64 row = t / per_row;
    const int r = (int)(t % per_row), h = r / half, i = r % half;
    const float a = (float)pos[row] * inv_freq[i];
    float s, c;
    sincosf(a, &s, &c);
    c *= mscale;
    s *= mscale;
    float* hp = x + row * width + (u64)h * head_dim;
    const float x1 = hp[i], x2 = hp[i + half];
    hp[i] = x1 * c - x2 * s;
    hp[i + half] = x2 * c + x1 * s;
}
