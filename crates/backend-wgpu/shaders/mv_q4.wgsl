// 4-bit codes for matvec.wgsl: a chunk is one vec4<u32> of 32 codes (code
// j of a word at bits 4j), 32 columns, 8 vec4 of x.
const VALS: u32 = 32u;
const XV: u32 = 8u;

// Σ val(code)·x over the chunk: the even columns of a word are its low
// nibbles, the odd ones its high nibbles.
fn cdot(w: vec4<u32>, xs: ptr<function, array<vec4<f32>, 8>>) -> f32 {
    var s = 0.0;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let e = val4(unpack4xU8(w[j] & 0x0F0F0F0Fu));
        let o = val4(unpack4xU8((w[j] >> 4u) & 0x0F0F0F0Fu));
        let a = (*xs)[2u * j];
        let b = (*xs)[2u * j + 1u];
        s = s + dot(e, vec4<f32>(a.x, a.z, b.x, b.z)) + dot(o, vec4<f32>(a.y, a.w, b.y, b.w));
    }
    return s;
}
