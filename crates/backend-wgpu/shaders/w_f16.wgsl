// Weight loads, f16 weights: two values per u32 (low half first), rows of
// p.kp values (padded with zeros to a multiple of 8).
@group(0) @binding(8) var<storage, read> wd: array<u32>;

fn wval(row: u32, col: u32) -> f32 {
    let i = row * p.kp + col;
    let h = unpack2x16float(wd[i / 2u]);
    return select(h.x, h.y, (i & 1u) == 1u);
}

fn w8(row: u32, c8: u32, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    let i = (row * p.kp + c8 * 8u) / 2u;
    *lo = vec4<f32>(unpack2x16float(wd[i]), unpack2x16float(wd[i + 1u]));
    *hi = vec4<f32>(unpack2x16float(wd[i + 2u]), unpack2x16float(wd[i + 3u]));
}
