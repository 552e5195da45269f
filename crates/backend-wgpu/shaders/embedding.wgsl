// y[r, c] = table[ids[r], c] for a table of any format (slot WEIGHT, as
// in matmul.wgsl). One thread per output value.

struct P {
    total: u32,
    k: u32,
    kp: u32,
    group: u32,
    gx: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

{{WEIGHT}}

@compute @workgroup_size({{WG}})
fn embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * p.gx + wid.x) * {{WG}}u + lid;
    if (t >= p.total) {
        return;
    }
    y[t] = wval(ids[t / p.k], t % p.k);
}
