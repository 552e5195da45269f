// Greedy sampling on the GPU: each listed logits row's (rows[i] of
// logits[.., vocab]) token as the host's argmax picks it (a running best
// from index 0, replaced only by a strictly larger value): 0 when the
// row's first value is NaN, else the first index of the largest non-NaN
// value. One workgroup per listed row: each thread scans a strided part
// in index order, then a tree over the workgroup keeps the larger value,
// the smaller index on ties. Rows with penalties, biases or draws are
// sampled on the host.

struct P {
    count: u32,
    vocab: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;

const NONE: u32 = 0xffffffffu;

// NaN by its bits: shader compilers may fold `x != x` to false.
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

var<workgroup> best_v: array<f32, {{WG}}>;
var<workgroup> best_i: array<u32, {{WG}}>;

@compute @workgroup_size({{WG}})
fn argmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let slot = wid.x;
    let base = rows[slot] * p.vocab;
    var v = 0.0;
    var bi = NONE;
    for (var c = lid; c < p.vocab; c = c + {{WG}}u) {
        let x = logits[base + c];
        if (!is_nan(x) && (bi == NONE || x > v)) {
            v = x;
            bi = c;
        }
    }
    best_v[lid] = v;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var s = {{WG}}u / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let ov = best_v[lid + s];
            let oi = best_i[lid + s];
            let mine = best_i[lid];
            if (oi != NONE && (mine == NONE || ov > best_v[lid] || (ov == best_v[lid] && oi < mine))) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let first = logits[base];
        ids[slot] = select(best_i[0], 0u, best_i[0] == NONE || is_nan(first));
    }
}
