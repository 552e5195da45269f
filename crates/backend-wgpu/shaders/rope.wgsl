// Rotary embedding, rotate-half layout: within each head of width d of
// x[n, width], element i pairs with i + d/2 and turns by the angle of
// (row, i). The host computes cs[row, i] = (cos, sin)·mscale in f32 the
// way the CPU backend does (GPU sin/cos of large angles are not accurate
// enough), so this kernel only rotates. One thread per pair.

struct P {
    total: u32,
    width: u32,
    d: u32,
    gx: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cs: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * p.gx + wid.x) * {{WG}}u + lid;
    if (t >= p.total) {
        return;
    }
    let half = p.d / 2u;
    let i = t % half;
    let rest = t / half;
    let heads = p.width / p.d;
    let h = rest % heads;
    let r = rest / heads;
    let base = r * p.width + h * p.d;
    let c = cs[2u * (r * half + i)];
    let s = cs[2u * (r * half + i) + 1u];
    let x1 = x[base + i];
    let x2 = x[base + i + half];
    y[base + i] = x1 * c - x2 * s;
    y[base + i + half] = x2 * c + x1 * s;
}
