// Trellis weights (docs/FORMAT.md §4.8): y = sv ⊙ H(C · H(su ⊙ x)) + bias
// as three dispatches: trellis_had on the activations (pre = su), trellis_mv
// (the codes' product), trellis_had on the result (post = sv, bias).
//
// trellis_had: one workgroup of WG = h threads (the Hadamard block, 16…128)
// per (block, row), butterflies in workgroup memory, 1/sqrt(h) as the CPU;
// y = H(pre ⊙ x) ⊙ post + bias, in place (the op passes ones and zeros for
// absent vectors).
//
// trellis_mv: one workgroup per band of 16 weight rows (bands spread over x
// and y; a weight past the binding limit is cut into shards of whole bands,
// one dispatch each), 64 threads: two tiles at a time, lane l of a tile decoding
// elements 8l..8l+7 (row l/2, columns 8·(l & 1)..+8) from the three
// 32-bit words holding their windows; code = bytesum(s · MUL) − 510. R
// activation rows per workgroup (z covers the rest); sums combined in a
// fixed order, each row on its own (batch-invariant).

struct P {
    a: u32,  // had: d (row width);        mv: rows
    b: u32,  // had: h (block);            mv: cols
    c: u32,  // had: rows of x;            mv: activation rows (R per workgroup z)
    gx: u32, // workgroups along x
    nb: u32, // mv: bands in this shard of the codes
    b0: u32, // mv: the shard's first band
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read_write> xh: array<f32>;
@group(0) @binding(2) var<storage, read> pre: array<f32>;
@group(0) @binding(3) var<storage, read> post: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

var<workgroup> s_: array<f32, 128>;

@compute @workgroup_size({{WG}})
fn trellis_had(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let blocks = p.a / p.b;
    let g = wid.y * p.gx + wid.x;
    if (g >= blocks * p.c) {
        return;
    }
    let row = g / blocks;
    let c = (g % blocks) * p.b + t;
    let at = row * p.a + c;
    s_[t] = xh[at] * pre[c];
    workgroupBarrier();
    for (var len = 1u; len < p.b; len = len << 1u) {
        let a = s_[t];
        let b = s_[t ^ len];
        workgroupBarrier();
        s_[t] = select(a + b, b - a, (t & len) != 0u);
        workgroupBarrier();
    }
    xh[at] = s_[t] * (1.0 / sqrt(f32(p.b))) * post[c] + bias[c];
}

const R: u32 = 4u;
const WORDS: u32 = 8u * {{K}}u;

@group(0) @binding(5) var<storage, read> codes: array<u32>;
@group(0) @binding(6) var<storage, read> x: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;

var<workgroup> part_: array<f32, 256>;

// Bits q..q+31 of the 64-bit pair (lo, hi), q < 32.
fn funnel(lo: u32, hi: u32, q: u32) -> u32 {
    return select((lo >> q) | (hi << (32u - q)), lo, q == 0u);
}

fn tcode(s: u32) -> f32 {
    let b = unpack4xU8(s * 0x83DCD12Du);
    return f32(i32(b.x + b.y + b.z + b.w) - 510);
}

@compute @workgroup_size({{WG}})
fn trellis_mv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let bands = p.nb;
    let band = wid.y * p.gx + wid.x;
    let lane = t & 31u;
    let slot = t >> 5u;
    let tcols = p.b / 16u;
    let p0 = 8u * lane * {{K}}u;
    let w0 = p0 >> 5u;
    let sh = p0 & 31u;
    let col = (lane & 1u) * 8u;
    let r0 = wid.z * R;
    let nr = min(R, p.c - r0);
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    if (band < bands) {
        for (var tc = slot; tc < tcols; tc = tc + 2u) {
            let base = (band * tcols + tc) * WORDS;
            let a = codes[base + w0];
            let b = codes[base + (w0 + 1u) % WORDS];
            let c = codes[base + (w0 + 2u) % WORDS];
            var cv: array<f32, 8>;
            for (var j = 0u; j < 8u; j = j + 1u) {
                let q = sh + j * {{K}}u;
                let st = select(funnel(b, c, q - 32u), funnel(a, b, q), q < 32u) & 0xFFFFu;
                cv[j] = tcode(st);
            }
            for (var i = 0u; i < R; i = i + 1u) {
                if (i < nr) {
                    let xo = (r0 + i) * p.b + tc * 16u + col;
                    var s = acc[i];
                    for (var j = 0u; j < 8u; j = j + 1u) {
                        s = s + cv[j] * x[xo + j];
                    }
                    acc[i] = s;
                }
            }
        }
    }
    for (var i = 0u; i < R; i = i + 1u) {
        part_[i * 64u + t] = acc[i];
    }
    workgroupBarrier();
    if (band < bands && t < 16u * R) {
        let r = t & 15u;
        let i = t >> 4u;
        if (i < nr) {
            // Lanes 2r and 2r+1 of both tile slots, in a fixed order.
            let s = (part_[i * 64u + 2u * r] + part_[i * 64u + 2u * r + 1u])
                + (part_[i * 64u + 32u + 2u * r] + part_[i * 64u + 33u + 2u * r]);
            y[(r0 + i) * p.a + (p.b0 + band) * 16u + r] = s;
        }
    }
}
