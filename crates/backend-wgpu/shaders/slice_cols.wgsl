// A window of every group's columns: x[n, groups·gw] gives
// y[n, groups·len] with y[r, g·len + j] = x[r, g·gw + offset + src(j)],
// zero where offset + src(j) ≥ gw; src(j) = j, or with `pairs` the
// window's interleaved pairs taken apart (evens, then odds). One thread
// per output value.

struct P {
    total: u32,
    gw: u32,
    offset: u32,
    len: u32,
    pairs: u32,
    gx: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn slice_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * p.gx + wid.x) * {{WG}}u + lid;
    if (i >= p.total) {
        return;
    }
    let rg = i / p.len;
    let j = i % p.len;
    let half = p.len / 2u;
    var w = j;
    if (p.pairs != 0u) {
        w = select(2u * (j - half) + 1u, 2u * j, j < half);
    }
    let c = p.offset + w;
    var v = 0.0;
    if (c < p.gw) {
        v = x[rg * p.gw + c];
    }
    y[i] = v;
}
