// y[r, c] = table[ids[r], c] for a table of any format (slot WEIGHT, as
// in matmul.wgsl). One thread per output value. A table past the binding
// limit runs shard by shard (weight.rs): this shard holds table rows
// row0 .. row0 + rows and writes the outputs of the ids among them.

struct P {
    total: u32,
    k: u32,
    kp: u32,
    group: u32,
    gx: u32,
    row0: u32,
    rows: u32,
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
    let id = ids[t / p.k];
    if (id >= p.row0 && id - p.row0 < p.rows) {
        y[t] = wval(id - p.row0, t % p.k);
    }
}
