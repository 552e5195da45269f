// The routed experts' outputs summed per token in choice order:
// y[t, c] = Σ_j weight[t·topk + j] · d[t·topk + j, c]. One thread per
// output value.

struct P {
    total: u32,
    hidden: u32,
    topk: u32,
    gx: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> d: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn moe_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * p.gx + wid.x) * {{WG}}u + lid;
    if (i >= p.total) {
        return;
    }
    let t = i / p.hidden;
    let c = i % p.hidden;
    var s = 0.0;
    for (var j = 0u; j < p.topk; j = j + 1u) {
        let pr = t * p.topk + j;
        s = s + weight[pr] * d[pr * p.hidden + c];
    }
    y[i] = s;
}
