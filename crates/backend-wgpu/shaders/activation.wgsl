// Elementwise ops over n values: y = silu(a)·b (SwiGLU) and y = a + b.
// One thread per value; workgroups spread over x and y past the
// per-dimension limit (index = (y·gx + x)·WG + thread).

struct P {
    n: u32,
    gx: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn silu_mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * p.gx + wid.x) * {{WG}}u + lid;
    if (i < p.n) {
        let g = a[i];
        y[i] = g / (1.0 + exp(-g)) * b[i];
    }
}

@compute @workgroup_size({{WG}})
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * p.gx + wid.x) * {{WG}}u + lid;
    if (i < p.n) {
        y[i] = a[i] + b[i];
    }
}
