// 4-bit codes (formats of 2–4-bit codes), eight per u32: code c of a row
// at bits 4·c.

fn wval(row: u32, col: u32) -> f32 {
    let i = row * p.kp + col;
    let code = (wq[i / 8u] >> ((i % 8u) * 4u)) & 15u;
    let s = wparam(row * (p.kp / p.group) + col / p.group);
    return s.x * wlut[code] + s.y;
}

// Columns 8·c8 .. 8·c8 + 8 of a row: one word, one group.
fn w8(row: u32, c8: u32, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    let col = c8 * 8u;
    let w = wq[(row * p.kp + col) / 8u];
    let s = wparam(row * (p.kp / p.group) + col / p.group);
    *lo = s.x * vec4<f32>(wlut[w & 15u], wlut[(w >> 4u) & 15u], wlut[(w >> 8u) & 15u], wlut[(w >> 12u) & 15u]) + s.y;
    *hi = s.x * vec4<f32>(wlut[(w >> 16u) & 15u], wlut[(w >> 20u) & 15u], wlut[(w >> 24u) & 15u], wlut[w >> 28u]) + s.y;
}
