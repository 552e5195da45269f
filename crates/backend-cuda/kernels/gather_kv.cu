// Reads rows of a paged KV store back by slot: out[i, :] = store[slots[i], :]
// widened to f32 (f16 exactly), out [rows, width]. One thread per value,
// a grid-stride loop; the host checked every slot (multi-head latent
// attention expands its compressed cache through this).

template <int T>
__device__ void gather_rows(const void* __restrict__ store, const u32* __restrict__ slots,
                            float* __restrict__ out, int rows, int width) {
    const u64 n = (u64)rows * width;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        const u64 r = i / width, e = i - r * width;
        const u64 at = (u64)slots[r] * width + e;
        out[i] = T == 0 ? ((const float*)store)[at] : f16_to_f32(((const u16*)store)[at]);
    }
}

extern "C" __global__ void gather_kv_f32(const void* store, const u32* slots, float* out,
                                         int rows, int width) {
    gather_rows<0>(store, slots, out, rows, width);
}
extern "C" __global__ void gather_kv_f16(const void* store, const u32* slots, float* out,
                                         int rows, int width) {
    gather_rows<1>(store, slots, out, rows, width);
}
