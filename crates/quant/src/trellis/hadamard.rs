//! The block Hadamard transforms of the trellis formats.
//!
//! A dimension `d` (a multiple of 16) is cut into blocks of
//! `block_size(d)` = the largest power of two dividing `d`, at most 128;
//! each block is multiplied by the normalized Sylvester Hadamard matrix
//! `H[i][j] = (-1)^popcount(i & j) / sqrt(h)`, which is symmetric and its own
//! inverse. Computed as a fast Walsh–Hadamard transform (h·log2 h adds).

/// Largest Hadamard block of the formats.
pub const MAX_BLOCK: usize = 128;

/// The Hadamard block size of a dimension `d` (0 for `d` = 0).
pub fn block_size(d: usize) -> usize {
    if d == 0 {
        return 0;
    }
    (1usize << d.trailing_zeros()).min(MAX_BLOCK)
}

/// Transforms `x` in place, block by block (`x.len()` a multiple of 16).
pub fn fwht(x: &mut [f32]) {
    fwht_any(x, |v, n| v * n, |h| 1.0 / (h as f32).sqrt());
}

/// [`fwht`] down every column of a row-major `[rows, cols]` matrix, with
/// `each(row, col, value)` called on every transformed value.
pub fn fwht_cols(m: &[f32], rows: usize, cols: usize, mut each: impl FnMut(usize, usize, f32)) {
    let mut col = vec![0f32; rows];
    for j in 0..cols {
        for (i, c) in col.iter_mut().enumerate() {
            *c = m[i * cols + j];
        }
        fwht(&mut col);
        for (i, &v) in col.iter().enumerate() {
            each(i, j, v);
        }
    }
}

/// [`fwht`] in f64 (Hessians).
pub fn fwht_f64(x: &mut [f64]) {
    fwht_any(x, |v, n| v * n, |h| 1.0 / (h as f64).sqrt());
}

#[inline(always)]
fn fwht_any<T>(x: &mut [T], scale: impl Fn(T, T) -> T, norm: impl Fn(usize) -> T)
where
    T: Copy + std::ops::Add<Output = T> + std::ops::Sub<Output = T>,
{
    let h = block_size(x.len());
    let n = norm(h);
    for blk in x.chunks_exact_mut(h) {
        let mut len = 1;
        while len < h {
            for pair in blk.chunks_exact_mut(2 * len) {
                let (a, b) = pair.split_at_mut(len);
                for (p, q) in a.iter_mut().zip(b) {
                    let (u, v) = (*p, *q);
                    *p = u + v;
                    *q = u - v;
                }
            }
            len *= 2;
        }
        blk.iter_mut().for_each(|v| *v = scale(*v, n));
    }
}

/// The f64 reference: `y = H x` by the matrix's definition, O(d·h).
pub fn hadamard_ref(x: &[f64]) -> Vec<f64> {
    let h = block_size(x.len());
    let norm = 1.0 / (h as f64).sqrt();
    let mut y = vec![0.0; x.len()];
    for (yb, xb) in y.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
        for (i, yi) in yb.iter_mut().enumerate() {
            *yi = xb
                .iter()
                .enumerate()
                .map(|(j, &v)| if (i & j).count_ones() % 2 == 0 { v } else { -v })
                .sum::<f64>()
                * norm;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes() {
        assert_eq!(block_size(576), 64);
        assert_eq!(block_size(1536), 128);
        assert_eq!(block_size(192), 64);
        assert_eq!(block_size(48), 16);
        assert_eq!(block_size(4096), 128);
    }

    #[test]
    fn fast_transform_equals_the_matrix_and_inverts_itself() {
        for d in [16usize, 48, 64, 192, 256, 576] {
            let x: Vec<f32> = (0..d)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let mut y = x.clone();
            fwht(&mut y);
            let r = hadamard_ref(&x.iter().map(|&v| v as f64).collect::<Vec<_>>());
            for (a, b) in y.iter().zip(&r) {
                assert!((*a as f64 - b).abs() < 1e-4, "d {d}: {a} vs {b}");
            }
            fwht(&mut y);
            for (a, b) in y.iter().zip(&x) {
                assert!((a - b).abs() < 1e-4, "d {d}: not an involution");
            }
        }
    }
}
