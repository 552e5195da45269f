// 8-bit codes for matvec.wgsl: a chunk is one vec4<u32> of 16 codes (code
// j of a word at bits 8j), 16 columns, 4 vec4 of x.
const VALS: u32 = 16u;
const XV: u32 = 4u;

// Σ val(code)·x over the chunk.
fn cdot(w: vec4<u32>, xs: ptr<function, array<vec4<f32>, 4>>) -> f32 {
    var s = 0.0;
    for (var j = 0u; j < 4u; j = j + 1u) {
        s = s + dot(val4(unpack4xU8(w[j])), (*xs)[j]);
    }
    return s;
}
