// Writes row i of src[rows, width] into slot slots[i] of a KV store of
// `width` values per slot, held as u32 words: an f16 store (slot F16 =
// true) packs two values per word, low half first, one thread per pair
// (width even), rounded to nearest even as the CPU backend rounds; an f32
// store holds each value's bits, one thread per value.

struct P {
    total: u32,
    width: u32,
    gx: u32,
    pad: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> slots: array<u32>;
@group(0) @binding(3) var<storage, read_write> store: array<u32>;

// f32 → f16 bits, round to nearest even, overflow to infinity, NaN kept.
fn f16_bits(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    let sign = (x >> 16u) & 0x8000u;
    let ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) {
        return sign | 0x7e00u;
    }
    if (ax >= 0x477ff000u) {
        return sign | 0x7c00u;
    }
    if (ax < 0x38800000u) {
        // Below f16's smallest normal: adding 0.5 rounds to a multiple of
        // 2^-24 (the f16 subnormal step) in f32 arithmetic.
        return sign | (bitcast<u32>(bitcast<f32>(ax) + 0.5) - 0x3f000000u);
    }
    let r = ax - 0x38000000u;
    return sign | ((r + 0x0fffu + ((r >> 13u) & 1u)) >> 13u);
}

@compute @workgroup_size({{WG}})
fn write_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * p.gx + wid.x) * {{WG}}u + lid;
    if (t >= p.total) {
        return;
    }
    if ({{F16}}) {
        let half = p.width / 2u;
        let r = t / half;
        let c = (t % half) * 2u;
        let lo = f16_bits(src[r * p.width + c]);
        let hi = f16_bits(src[r * p.width + c + 1u]);
        store[(slots[r] * p.width + c) / 2u] = lo | (hi << 16u);
    } else {
        let r = t / p.width;
        let c = t % p.width;
        store[slots[r] * p.width + c] = bitcast<u32>(src[t]);
    }
}
