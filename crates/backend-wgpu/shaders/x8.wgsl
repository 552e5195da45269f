// Activation loads of the matmul kernels (matmul.wgsl, moe.wgsl): x is
// row-major with p.k columns.

// Columns col .. col + 8 of row `row` of x, zero past the row's end.
fn x8(row: u32, col: u32, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    let b = row * p.k + col;
    if (col + 8u <= p.k) {
        *lo = vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]);
        *hi = vec4<f32>(x[b + 4u], x[b + 5u], x[b + 6u], x[b + 7u]);
        return;
    }
    var v = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var j = 0u; j < 8u; j = j + 1u) {
        if (col + j < p.k) {
            v[j] = x[b + j];
        }
    }
    *lo = vec4<f32>(v[0], v[1], v[2], v[3]);
    *hi = vec4<f32>(v[4], v[5], v[6], v[7]);
}
