// Rows of a KV store read back by slot: out[i, :] = store[slots[i], :] as
// f32 (an f16 store widened exactly; slot F16). The store holds u32
// words: f32 bits, or two f16 per word, low half first. One thread per
// value; the host checked every slot.

struct P {
    total: u32,
    width: u32,
    gx: u32,
    pad: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> store: array<u32>;
@group(0) @binding(2) var<storage, read> slots: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn gather_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * p.gx + wid.x) * {{WG}}u + lid;
    if (i >= p.total) {
        return;
    }
    let e = slots[i / p.width] * p.width + i % p.width;
    if ({{F16}}) {
        let h = unpack2x16float(store[e / 2u]);
        y[i] = select(h.x, h.y, (e & 1u) == 1u);
    } else {
        y[i] = bitcast<f32>(store[e]);
    }
}
