// 8-bit codes (formats of 5–8-bit codes), four per u32: code c of a row
// at bits 8·c.

fn wval(row: u32, col: u32) -> f32 {
    let i = row * p.kp + col;
    let code = (wq[i / 4u] >> ((i % 4u) * 8u)) & 255u;
    let s = wparam(row * (p.kp / p.group) + col / p.group);
    return s.x * wlut[code] + s.y;
}

fn lut4(w: u32) -> vec4<f32> {
    return vec4<f32>(wlut[w & 255u], wlut[(w >> 8u) & 255u], wlut[(w >> 16u) & 255u], wlut[w >> 24u]);
}

// Columns 8·c8 .. 8·c8 + 8 of a row: two words, one group.
fn w8(row: u32, c8: u32, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    let col = c8 * 8u;
    let i = (row * p.kp + col) / 4u;
    let s = wparam(row * (p.kp / p.group) + col / p.group);
    *lo = s.x * lut4(wq[i]) + s.y;
    *hi = s.x * lut4(wq[i + 1u]) + s.y;
}
