// Weight loads, f32 weights: rows of p.kp values (columns padded with
// zeros to a multiple of 8). The kernel's parameter block names `kp`.
@group(0) @binding(8) var<storage, read> wd: array<f32>;

fn wval(row: u32, col: u32) -> f32 {
    return wd[row * p.kp + col];
}

// Columns 8·c8 .. 8·c8 + 8 of a row.
fn w8(row: u32, c8: u32, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    let i = row * p.kp + c8 * 8u;
    *lo = vec4<f32>(wd[i], wd[i + 1u], wd[i + 2u], wd[i + 3u]);
    *hi = vec4<f32>(wd[i + 4u], wd[i + 5u], wd[i + 6u], wd[i + 7u]);
}
