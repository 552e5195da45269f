// Weight loads, bf16 weights: two values per u32 (low half first), rows of
// p.kp values (padded with zeros to a multiple of 8); a bf16 is the top
// half of an f32.
@group(0) @binding(8) var<storage, read> wd: array<u32>;

fn bf2(w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
}

fn wval(row: u32, col: u32) -> f32 {
    let i = row * p.kp + col;
    let h = bf2(wd[i / 2u]);
    return select(h.x, h.y, (i & 1u) == 1u);
}

fn w8(row: u32, c8: u32, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    let i = (row * p.kp + c8 * 8u) / 2u;
    *lo = vec4<f32>(bf2(wd[i]), bf2(wd[i + 1u]));
    *hi = vec4<f32>(bf2(wd[i + 2u]), bf2(wd[i + 3u]));
}
