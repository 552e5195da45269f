// y[n, m] = x[n, k] · w[m, k]ᵀ (+ bias[m]) for weights of any format: the
// slot WEIGHT holds the format's load functions (w_*.wgsl: w8 gives eight
// consecutive columns of a row as f32).
//
// A workgroup of WG threads computes R = 4 weight rows for NB rows of x
// (NB = 1 for a decode step, 4 otherwise). Each thread walks the columns
// in chunks of 8 at a stride of WG chunks, keeping R·NB partial sums;
// the partials go through workgroup memory and R·NB threads add them up
// (a fixed order: a row's result does not depend on the batch).
// Workgroups: x over blocks of R weight rows (spread over z past the
// per-dimension limit), y over blocks of NB rows of x.

struct P {
    n: u32,
    k: u32,
    m: u32,
    kp: u32,
    group: u32,
    bias: u32,
    gx: u32,
    // This weight shard's first row among y's columns, and y's row length
    // (weight.rs: a weight past the binding limit runs shard by shard).
    yo: u32,
    ys: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

{{WEIGHT}}

const R: u32 = 4u;
const NB: u32 = {{NB}}u;

var<workgroup> part: array<f32, {{WG}} * 4 * {{NB}}>;

{{X8}}

@compute @workgroup_size({{WG}})
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m0 = (wid.z * p.gx + wid.x) * R;
    let n0 = wid.y * NB;
    var acc: array<f32, 4 * {{NB}}>;
    for (var i = 0u; i < R * NB; i = i + 1u) {
        acc[i] = 0.0;
    }
    let chunks = (p.k + 7u) / 8u;
    for (var c8 = lid; c8 < chunks; c8 = c8 + {{WG}}u) {
        var xl: array<vec4<f32>, {{NB}}>;
        var xh: array<vec4<f32>, {{NB}}>;
        for (var b = 0u; b < NB; b = b + 1u) {
            var lo = vec4<f32>(0.0);
            var hi = vec4<f32>(0.0);
            if (n0 + b < p.n) {
                x8(n0 + b, c8 * 8u, &lo, &hi);
            }
            xl[b] = lo;
            xh[b] = hi;
        }
        for (var r = 0u; r < R; r = r + 1u) {
            if (m0 + r < p.m) {
                var lo: vec4<f32>;
                var hi: vec4<f32>;
                w8(m0 + r, c8, &lo, &hi);
                for (var b = 0u; b < NB; b = b + 1u) {
                    acc[r * NB + b] = acc[r * NB + b] + dot(lo, xl[b]) + dot(hi, xh[b]);
                }
            }
        }
    }
    for (var i = 0u; i < R * NB; i = i + 1u) {
        part[i * {{WG}}u + lid] = acc[i];
    }
    workgroupBarrier();
    if (lid < R * NB) {
        let r = lid / NB;
        let b = lid % NB;
        if (m0 + r < p.m && n0 + b < p.n) {
            var s = 0.0;
            for (var t = 0u; t < {{WG}}u; t = t + 1u) {
                s = s + part[lid * {{WG}}u + t];
            }
            if (p.bias != 0u) {
                s = s + bias[p.yo + m0 + r];
            }
            y[(n0 + b) * p.ys + p.yo + m0 + r] = s;
        }
    }
}
