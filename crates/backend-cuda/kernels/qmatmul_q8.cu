// y[n, m] = x[n, k] · W[m, k]ᵀ (+ bias[m]) for quantized weights with an
// affine value table (lut[c] = la + lb·c: the integer formats and the
// GGUF ones), the activations quantized to 8 bits per block of 32 values
// first, as the CPU's default kernels and llama.cpp's MMVQ do. Decode rows
// in the default mode; the exact mode keeps qmatmul.cu's f32 kernels.
//
// The quantization and the GEMV are in q8_gemv.cuh (prepended by
// compile.rs, shared with moe.cu), which describes the layouts and the
// strategy. `rows`, optional, lists which rows of x and y a launch
// computes (row i of the quantized activations is rows[i]'s).

// One warp per block of 32 values of a row: blockIdx.y is the row (of
// those listed in `rows`, when given).
extern "C" __global__ void __launch_bounds__(256)
quantize_x_q8(const float* __restrict__ x, const u32* __restrict__ rows, int n, int k, int kp,
              int passes, int nib, signed char* __restrict__ xq, int4* __restrict__ xm) {
    const int lane = threadIdx.x & 31;
    const int blk = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int a = blockIdx.y;
    if (blk * 32 >= kp || a >= n) return;
    const int c = blk * 32 + lane;
    const float v = c < k ? x[(u64)(rows ? rows[a] : a) * k + c] : 0.f;
    quantize_block_q8(v, lane, blk, a, n, kp, passes, nib, xq, xm);
}

// The rows r0 = blockIdx.y·NR.. of the quantized activations (row i is
// x's rows[i], or i) times the warp's weight rows.
template <int BITS, int P, int R, int NR, int PASSES>
__device__ void qgemv_q8(const unsigned char* __restrict__ codes, const void* __restrict__ prm,
                         const signed char* __restrict__ xq, const int4* __restrict__ xm,
                         const u32* __restrict__ rows,
                         const float* __restrict__ bias, float* __restrict__ y, int n, int m,
                         int kp, int group, float la, float lb) {
    const int warp = threadIdx.x >> 5;
    const int j0 = (blockIdx.x * Q8WARPS + warp) * R;
    if (j0 >= m) return;
    const int r0 = blockIdx.y * NR;
    const int nr = min(NR, n - r0);
    int xrow[NR];
    u64 yoff[NR];
#pragma unroll
    for (int a = 0; a < NR; a++) {
        xrow[a] = r0 + a;
        yoff[a] = a < nr ? (u64)(rows ? rows[r0 + a] : r0 + a) * m : 0;
    }
    q8_rows<BITS, P, R, NR, PASSES>(codes, prm, j0, m, kp, group, la, lb, xq, xm, n, xrow, nr,
                                    bias, y, yoff);
}

// qmatmul_q8<PASSES>_b<BITS>_p<P>_r<R>_n<NR>: R weight rows per warp (2 or
// 4: more rows share each activation load).
#define QMATMUL_Q8(PASSES, BITS, P, R, NR)                                                      \
    extern "C" __global__ void __launch_bounds__(Q8WARPS * 32)                                  \
        qmatmul_q8##PASSES##_b##BITS##_p##P##_r##R##_n##NR(                                     \
            const unsigned char* codes, const void* prm, const signed char* xq, const int4* xm,  \
            const u32* rows, const float* bias, float* y, int n, int m, int kp, int group,      \
            float la, float lb) {                                                               \
        if constexpr (mm_selected("qmatmul_q8" #PASSES "_b" #BITS "_p" #P "_r" #R "_n" #NR))    \
            qgemv_q8<BITS, P, R, NR, PASSES>(codes, prm, xq, xm, rows, bias, y, n, m, kp, group, \
                                             la, lb);                                           \
    }

#define QMATMUL_Q8_NR(PASSES, BITS, P, R) \
    QMATMUL_Q8(PASSES, BITS, P, R, 1)     \
    QMATMUL_Q8(PASSES, BITS, P, R, 4)     \
    QMATMUL_Q8(PASSES, BITS, P, R, 8)

#define QMATMUL_Q8_ROWS(BITS, P)   \
    QMATMUL_Q8_NR(1, BITS, P, 2)   \
    QMATMUL_Q8_NR(1, BITS, P, 4)   \
    QMATMUL_Q8_NR(2, BITS, P, 2)   \
    QMATMUL_Q8_NR(2, BITS, P, 4)

QMATMUL_Q8_ROWS(4, 0)
QMATMUL_Q8_ROWS(4, 1)
QMATMUL_Q8_ROWS(4, 2)
QMATMUL_Q8_ROWS(4, 3)
QMATMUL_Q8_ROWS(4, 4)
QMATMUL_Q8_ROWS(8, 0)
QMATMUL_Q8_ROWS(8, 1)
QMATMUL_Q8_ROWS(8, 2)
QMATMUL_Q8_ROWS(8, 3)
QMATMUL_Q8_ROWS(8, 4)
