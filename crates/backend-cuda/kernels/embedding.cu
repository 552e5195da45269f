// Rows of a table[vocab, k] for token ids, as f32: one block per id, threads
// over the row's columns. The host checks every id against the vocabulary.
// Dense tables (f32, f16, bf16) as stored; quantized ones in the GPU layout
// of src/qlayout.rs (see qmatmul.cu: BITS-bit codes, value table, group
// parameters in mode P), each value s·lut[code] + o.

template <int T>
__device__ void embedding(const void* table, const u32* ids, float* y, int k) {
    const u64 src = (u64)ids[blockIdx.x] * k;
    float* yr = y + (u64)blockIdx.x * k;
    for (int i = threadIdx.x; i < k; i += blockDim.x) yr[i] = load_w<T>(table, src + i);
}

extern "C" __global__ void embedding_f32(const void* t, const u32* ids, float* y, int k) {
    embedding<0>(t, ids, y, k);
}
extern "C" __global__ void embedding_f16(const void* t, const u32* ids, float* y, int k) {
    embedding<1>(t, ids, y, k);
}
extern "C" __global__ void embedding_bf16(const void* t, const u32* ids, float* y, int k) {
    embedding<2>(t, ids, y, k);
}

template <int BITS, int P>
__device__ void qembedding(const unsigned char* codes, const void* prm, const float* lut,
                           const u32* ids, float* y, int k, int kp, int group) {
    const u64 row = ids[blockIdx.x];
    const unsigned char* cr = codes + row * (u64)kp * BITS / 8;
    const u64 g0 = row * (u64)(kp / group);
    float* yr = y + (u64)blockIdx.x * k;
    for (int c = threadIdx.x; c < k; c += blockDim.x) {
        const u32 code = BITS == 8 ? cr[c] : (cr[c >> 1] >> ((c & 1) * 4)) & 15u;
        float s, o;
        group_params<P>(prm, g0 + c / group, s, o);
        yr[c] = s * lut[code] + o;
    }
}

#define QEMBEDDING(BITS, P)                                                                   \
    extern "C" __global__ void qembedding_b##BITS##_p##P(const unsigned char* codes,          \
                                                         const void* prm, const float* lut,   \
                                                         const u32* ids, float* y, int k,     \
                                                         int kp, int group) {                 \
        qembedding<BITS, P>(codes, prm, lut, ids, y, k, kp, group);                           \
    }

QEMBEDDING(4, 0)
QEMBEDDING(4, 1)
QEMBEDDING(4, 2)
QEMBEDDING(4, 3)
QEMBEDDING(4, 4)
QEMBEDDING(8, 0)
QEMBEDDING(8, 1)
QEMBEDDING(8, 2)
QEMBEDDING(8, 3)
QEMBEDDING(8, 4)
