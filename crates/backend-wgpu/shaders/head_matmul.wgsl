// Per-head matmul, f32: y[r, h·m + j] = Σ_c x[r, h·k + c] · w[h, j, c]
// (multi-head latent attention's absorbed projections). A workgroup
// computes four consecutive outputs j of one (row, head): threads stride
// over c, then each output's partial sums go through the workgroup
// reduction (prelude) in a fixed order, so a row's values do not depend
// on the other rows. Workgroups: x over blocks of 4 outputs, y over
// (row, head) pairs (spread over z past the per-dimension limit).

struct P {
    heads: u32,
    k: u32,
    m: u32,
    gy: u32,
    rh: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn head_matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, {{SG}}) {
    {{SG_INIT}}
    let rh = wid.z * p.gy + wid.y;
    if (rh >= p.rh) {
        return;
    }
    let head = rh % p.heads;
    let j0 = wid.x * 4u;
    let xb = rh * p.k;
    var acc = vec4<f32>(0.0);
    for (var c = lid; c < p.k; c = c + {{WG}}u) {
        let xv = x[xb + c];
        for (var t = 0u; t < 4u; t = t + 1u) {
            if (j0 + t < p.m) {
                acc[t] = acc[t] + xv * w[(head * p.m + j0 + t) * p.k + c];
            }
        }
    }
    for (var t = 0u; t < 4u; t = t + 1u) {
        let s = wg_sum(acc[t], lid);
        if (lid == 0u && j0 + t < p.m) {
            y[rh * p.m + j0 + t] = s;
        }
    }
}
