// RMSNorm: y[r, c] = x[r, c] · w[c] / sqrt(mean_c(x[r, c]²) + eps).
// One workgroup per row (rows spread over x and y); each thread sums the
// squares of a strided part of the row, the workgroup reduction
// (prelude) adds the parts, then each thread scales its part.

struct P {
    n: u32,
    k: u32,
    eps: f32,
    gx: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, {{SG}}) {
    {{SG_INIT}}
    let row = wid.y * p.gx + wid.x;
    if (row >= p.n) {
        return;
    }
    let base = row * p.k;
    var s = 0.0;
    for (var c = lid; c < p.k; c = c + {{WG}}u) {
        let v = x[base + c];
        s = s + v * v;
    }
    let total = wg_sum(s, lid);
    let inv = 1.0 / sqrt(total / f32(p.k) + p.eps);
    for (var c = lid; c < p.k; c = c + {{WG}}u) {
        y[base + c] = x[base + c] * inv * w[c];
    }
}
