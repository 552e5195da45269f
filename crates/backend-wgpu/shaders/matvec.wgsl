// y[m] = x[k] · w[m, k]ᵀ (+ bias[m]) for one row of x (a decode step),
// weights in the quantized GPU layout (mm_quant's gpu_layout: per group
// of p.group columns a scale s and offset o, w = s·lut[code] + o).
//
// The design of llama.cpp's Vulkan mat-vec and MLX's qmv_fast: a
// workgroup of WG threads owns R = 4 weight rows; each thread takes
// 16-byte chunks of codes (32 columns at 4 bits, 16 at 8; slot CODES) at
// a stride of WG chunks, so a workgroup reads each row in contiguous
// 16·WG-byte sweeps. A chunk's activations (8 or 4 vec4) are loaded once
// for the four rows, with their sum Σx. Per row and chunk the kernel
// forms Σ lut[c]·x and applies the group's two numbers once:
// s·Σ lut[c]·x + o·Σx. Formats whose table is affine (every integer and
// GGUF format: lut[c] = lut0 + step·c) sum c·x instead, with codes
// widened by unpack4xU8 (slot VAL4 = plain conversion, FOLD applies lut0
// and step); the others (NF4, FP4, FP8) look codes up in a copy of the
// table in workgroup memory. The four rows' partials meet in one
// reduction (wg_sum4 of the tier's prelude).
//
// Needs k a multiple of 4 (x read as vec4) and group a multiple of the
// chunk's columns; the host uses matmul.wgsl otherwise.

struct P {
    k: u32,
    m: u32,
    kp: u32,
    group: u32,
    bias: u32,
    gx: u32,
    lut0: f32,
    step: f32,
    // This weight shard's first row among y's values.
    yo: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(8) var<storage, read> wq: array<vec4<u32>>;
@group(0) @binding(9) var<storage, read> wpar: array<u32>;
@group(0) @binding(10) var<storage, read> wlut: array<f32>;

const R: u32 = 4u;
const LUTN: u32 = {{LUTN}}u;

var<workgroup> lut_: array<f32, LUTN>;

fn wparam(g: u32) -> vec2<f32> {
    {{PARAM}}
}

// Four codes as the values the chunk sum multiplies.
fn val4(c: vec4<u32>) -> vec4<f32> {
    {{VAL4}}
}

{{CODES}}

@compute @workgroup_size({{WG}})
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, {{SG}}) {
    {{SG_INIT}}
    if ({{LOOKUP}}) {
        for (var i = lid; i < LUTN; i = i + {{WG}}u) {
            lut_[i] = wlut[i];
        }
        workgroupBarrier();
    }
    let m0 = (wid.z * p.gx + wid.x) * R;
    let chunks = p.kp / VALS;
    let xlen = p.k / 4u;
    let gpr = p.kp / p.group;
    var acc = vec4<f32>(0.0);
    for (var c = lid; c < chunks; c = c + {{WG}}u) {
        var xs: array<vec4<f32>, XV>;
        var sx = 0.0;
        for (var j = 0u; j < XV; j = j + 1u) {
            let i = c * XV + j;
            var v = vec4<f32>(0.0);
            if (i < xlen) {
                v = x[i];
            }
            xs[j] = v;
            sx = sx + (v.x + v.y) + (v.z + v.w);
        }
        let g = c * VALS / p.group;
        for (var r = 0u; r < R; r = r + 1u) {
            let row = min(m0 + r, p.m - 1u);
            let d = cdot(wq[row * chunks + c], &xs);
            let pr = wparam(row * gpr + g);
            acc[r] = acc[r] + pr.x * ({{FOLD}}) + pr.y * sx;
        }
    }
    let tot = wg_sum4(acc, lid);
    if (lid < R && m0 + lid < p.m) {
        var s = tot[lid];
        if (p.bias != 0u) {
            s = s + bias[p.yo + m0 + lid];
        }
        y[p.yo + m0 + lid] = s;
    }
}
