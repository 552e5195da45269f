// y[n, m] = x[n, k] · w[m, k]ᵀ (+ bias[m]) for many rows of x (a prompt,
// a large batch), weights of any format (slot WEIGHT: the w_*.wgsl load
// functions matmul.wgsl uses).
//
// A tiled GEMM on the shader cores: a workgroup of 256 threads computes a
// 64 × 64 tile of y (64 rows of x, 64 weight rows) in steps of 32
// columns. Each step stages the x tile and the weight tile, dequantized
// to f32 by w8 (one call per thread: a weight row's 8 columns), in
// workgroup memory, column-major so that a thread reads four x rows and
// four weight rows as two vec4; each thread then accumulates its 4 × 4
// outputs, 512 multiply-adds per step against two barriers. Every weight
// is read (and dequantized) once per 64 rows of x instead of once per
// 4 (matmul.wgsl). Sums run over k in order: a row's result does not
// depend on the rest of the batch.

struct P {
    n: u32,
    k: u32,
    m: u32,
    kp: u32,
    group: u32,
    bias: u32,
    gx: u32,
    // This weight shard's first row among y's columns, and y's row length.
    yo: u32,
    ys: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

{{WEIGHT}}

{{X8}}

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 32u;

// Tiles, column-major: element (c, row) at [c · 16 + row / 4][row % 4].
var<workgroup> xs_: array<vec4<f32>, 512>;
var<workgroup> ws_: array<vec4<f32>, 512>;

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m0 = wid.x * BN;
    let n0 = wid.y * BM;
    // Loading: thread lid stages row lid / 4, columns 8·(lid % 4) .. +8.
    let lr = lid / 4u;
    let lc = (lid % 4u) * 8u;
    // Computing: x rows 4·ty .. +4, weight rows 4·tx .. +4.
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i = i + 1u) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var k0 = 0u; k0 < p.k; k0 = k0 + BK) {
        var lo = vec4<f32>(0.0);
        var hi = vec4<f32>(0.0);
        if (n0 + lr < p.n) {
            x8(n0 + lr, k0 + lc, &lo, &hi);
        }
        var wlo = vec4<f32>(0.0);
        var whi = vec4<f32>(0.0);
        if (m0 + lr < p.m && k0 + lc < p.kp) {
            w8(m0 + lr, (k0 + lc) / 8u, &wlo, &whi);
        }
        let at = lc * 16u + lr / 4u;
        let j = lr % 4u;
        for (var c = 0u; c < 4u; c = c + 1u) {
            xs_[at + c * 16u][j] = lo[c];
            xs_[at + (c + 4u) * 16u][j] = hi[c];
            ws_[at + c * 16u][j] = wlo[c];
            ws_[at + (c + 4u) * 16u][j] = whi[c];
        }
        workgroupBarrier();
        for (var c = 0u; c < BK; c = c + 1u) {
            let a = xs_[c * 16u + ty];
            let b = ws_[c * 16u + tx];
            acc[0] = acc[0] + a.x * b;
            acc[1] = acc[1] + a.y * b;
            acc[2] = acc[2] + a.z * b;
            acc[3] = acc[3] + a.w * b;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = n0 + ty * 4u + i;
        if (row < p.n) {
            for (var c = 0u; c < 4u; c = c + 1u) {
                let col = m0 + tx * 4u + c;
                if (col < p.m) {
                    var s = acc[i][c];
                    if (p.bias != 0u) {
                        s = s + bias[p.yo + col];
                    }
                    y[row * p.ys + p.yo + col] = s;
                }
            }
        }
    }
}
