// Two tensors' columns side by side per group: a[n, groups·la] and
// b[n, b_groups·lb] (b_groups = groups, or 1: one part every group
// repeats) give y[n, groups·(la + lb)], group g of a row [a_g | b_g].
// One thread per output value.

struct P {
    total: u32,
    groups: u32,
    bgroups: u32,
    la: u32,
    lb: u32,
    gx: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn concat_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * p.gx + wid.x) * {{WG}}u + lid;
    if (i >= p.total) {
        return;
    }
    let gw = p.la + p.lb;
    let rg = i / gw;
    let j = i % gw;
    if (j < p.la) {
        y[i] = a[rg * p.la + j];
    } else {
        let r = rg / p.groups;
        let g = rg % p.groups;
        let bg = select(r * p.bgroups + g, r, p.bgroups == 1u);
        y[i] = b[bg * p.lb + (j - p.la)];
    }
}
