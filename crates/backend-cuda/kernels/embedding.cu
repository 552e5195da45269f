// Rows of a dense table[vocab, k] (f32, f16 or bf16) for token ids, widened
// to f32: one block per id. The host checks every id against the vocabulary.

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
