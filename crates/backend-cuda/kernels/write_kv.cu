// Writes row i of src[rows, width] (f32) into slot slots[i] of a paged KV
// store of `width`-wide rows, f32 or f16 (rounded to nearest even, as the
// CPU's write_kv). One thread per value; the host checked every slot.

template <int T>
__device__ void write_rows(void* __restrict__ store, const u32* __restrict__ slots,
                           const float* __restrict__ src, int rows, int width) {
    const u64 n = (u64)rows * width;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        const u64 r = i / width, e = i - r * width;
        const u64 at = (u64)slots[r] * width + e;
        if (T == 0) ((float*)store)[at] = src[i];
        else ((u16*)store)[at] = f32_to_f16(src[i]);
    }
}

extern "C" __global__ void write_kv_f32(void* store, const u32* slots, const float* src,
                                        int rows, int width) {
    write_rows<0>(store, slots, src, rows, width);
}
extern "C" __global__ void write_kv_f16(void* store, const u32* slots, const float* src,
                                        int rows, int width) {
    write_rows<1>(store, slots, src, rows, width);
}
