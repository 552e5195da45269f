// The routed experts' matmuls, one expert per dispatch (its own weight,
// any format: slot WEIGHT as in matmul.wgsl). The dispatch's pairs
// (token t, choice j; pair p = t·topk + j) are idx[base .. base + count],
// all routed to this expert: y[p, o] = w[o] · x[row(p)], row(p) = t for
// the gate and up projections (x holds the tokens), p for down (x holds
// the pairs' SwiGLU activations).
//
// A workgroup of WG threads computes R = 4 weight rows for 4 of the pairs
// (one weight read serves four pairs), threads striding over chunks of 8
// columns; partials reduced through workgroup memory in a fixed order.

struct P {
    count: u32,
    base: u32,
    k: u32,
    m: u32,
    kp: u32,
    group: u32,
    topk: u32,
    by_pair: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

{{WEIGHT}}

const R: u32 = 4u;
const NB: u32 = 4u;

var<workgroup> part: array<f32, {{WG}} * 16>;

{{X8}}

@compute @workgroup_size({{WG}})
fn expert_matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m0 = wid.x * R;
    let q0 = wid.y * NB;
    var pair = array<u32, 4>(0u, 0u, 0u, 0u);
    var row = array<u32, 4>(0u, 0u, 0u, 0u);
    var live = array<bool, 4>(false, false, false, false);
    for (var b = 0u; b < NB; b = b + 1u) {
        if (q0 + b < p.count) {
            let pr = idx[p.base + q0 + b];
            pair[b] = pr;
            row[b] = select(pr / p.topk, pr, p.by_pair != 0u);
            live[b] = true;
        }
    }
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i = i + 1u) {
        acc[i] = 0.0;
    }
    let chunks = (p.k + 7u) / 8u;
    for (var c8 = lid; c8 < chunks; c8 = c8 + {{WG}}u) {
        var xl: array<vec4<f32>, 4>;
        var xh: array<vec4<f32>, 4>;
        for (var b = 0u; b < NB; b = b + 1u) {
            var lo = vec4<f32>(0.0);
            var hi = vec4<f32>(0.0);
            if (live[b]) {
                x8(row[b], c8 * 8u, &lo, &hi);
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
    for (var i = 0u; i < 16u; i = i + 1u) {
        part[i * {{WG}}u + lid] = acc[i];
    }
    workgroupBarrier();
    if (lid < 16u) {
        let r = lid / NB;
        let b = lid % NB;
        if (m0 + r < p.m && live[b]) {
            var s = 0.0;
            for (var t = 0u; t < {{WG}}u; t = t + 1u) {
                s = s + part[lid * {{WG}}u + t];
            }
            y[pair[b] * p.m + m0 + r] = s;
        }
    }
}
