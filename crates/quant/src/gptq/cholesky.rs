//! Dense f64 Cholesky factorisation and the inverse factors GPTQ needs.
//!
//! Matrices are square, row-major, `n × n`. The three steps mirror the
//! reference implementation's
//! `torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)`:
//! [`cholesky_lower`] (`H = L·Lᵀ`), [`cholesky_inverse`] (`H⁻¹ = L⁻ᵀ·L⁻¹`)
//! and [`inverse_cholesky_upper`] (the upper factor `U` of `H⁻¹ = Uᵀ·U`).
//! Inner loops are dot products of contiguous row segments; independent
//! rows or columns run in parallel.

use rayon::prelude::*;

/// A matrix that is not (numerically) positive definite: the pivot of
/// column `index` was `pivot` (not finite, or not above `n·ε` times the
/// diagonal entry it was reduced from).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NotPositiveDefinite {
    pub index: usize,
    pub pivot: f64,
}

impl std::fmt::Display for NotPositiveDefinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "matrix is not positive definite (pivot {} at column {})",
            self.pivot, self.index
        )
    }
}

/// Dot product with four accumulators (vectorizes).
#[inline]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Rows per parallel task so that a task does at least ~16k multiply-adds.
fn min_rows(dot_len: usize) -> usize {
    (1 << 14) / (dot_len + 1) + 1
}

/// The lower Cholesky factor `L` of a symmetric positive-definite `a`
/// (`a = L·Lᵀ`; only the lower triangle of `a` is read). The strict upper
/// triangle of the result is zero.
pub fn cholesky_lower(a: &[f64], n: usize) -> Result<Vec<f64>, NotPositiveDefinite> {
    assert_eq!(a.len(), n * n, "cholesky_lower: {n}x{n} matrix expected");
    let mut l = a.to_vec();
    // Left-looking by columns: column j needs the finished columns < j of
    // rows j..n, which sit at the start of those rows.
    for j in 0..n {
        let (head, tail) = l.split_at_mut((j + 1) * n);
        let row_j = &mut head[j * n..];
        let d = row_j[j] - dot(&row_j[..j], &row_j[..j]);
        // A pivot lost in the rounding error of its own computation means a
        // (numerically) singular matrix.
        if !(d > row_j[j] * n as f64 * f64::EPSILON && d.is_finite()) {
            return Err(NotPositiveDefinite { index: j, pivot: d });
        }
        let ljj = d.sqrt();
        row_j[j] = ljj;
        let row_j = &row_j[..j];
        tail.par_chunks_mut(n)
            .with_min_len(min_rows(j))
            .for_each(|r| r[j] = (r[j] - dot(&r[..j], row_j)) / ljj);
    }
    for i in 0..n {
        l[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Ok(l)
}

/// `(L·Lᵀ)⁻¹ = L⁻ᵀ·L⁻¹` from a lower Cholesky factor `L` (as
/// `torch.cholesky_inverse`): symmetric, both triangles filled.
pub fn cholesky_inverse(l: &[f64], n: usize) -> Vec<f64> {
    assert_eq!(l.len(), n * n, "cholesky_inverse: {n}x{n} matrix expected");
    // mt[j] = column j of M = L⁻¹ (entries j..n; M is lower triangular),
    // by forward substitution L·x = e_j, columns in parallel.
    let mut mt = vec![0.0f64; n * n];
    mt.par_chunks_mut(n)
        .enumerate()
        .with_min_len(min_rows(n * n / 4))
        .for_each(|(j, x)| {
            x[j] = 1.0 / l[j * n + j];
            for i in j + 1..n {
                let li = &l[i * n..(i + 1) * n];
                x[i] = -dot(&li[j..i], &x[j..i]) / li[i];
            }
        });
    // H⁻¹[a][b] = Σ_k M[k][a]·M[k][b] = Σ_{k ≥ max(a,b)} mt[a][k]·mt[b][k].
    let mut inv = vec![0.0f64; n * n];
    inv.par_chunks_mut(n)
        .enumerate()
        .with_min_len(min_rows(n * n / 4))
        .for_each(|(a, row)| {
            let ma = &mt[a * n..(a + 1) * n];
            for (b, v) in row.iter_mut().enumerate().skip(a) {
                *v = dot(&ma[b..], &mt[b * n + b..(b + 1) * n]);
            }
        });
    for a in 0..n {
        for b in 0..a {
            inv[a * n + b] = inv[b * n + a];
        }
    }
    inv
}

/// The upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = Uᵀ·U`, `U` upper
/// triangular with a positive diagonal), computed as the reference GPTQ does:
/// Cholesky of `H`, its inverse, then the Cholesky of that inverse,
/// transposed. Row `i` of `U` scaled by `1/U[i][i]` is how the rounding error
/// of column `i` propagates to the columns after it.
pub fn inverse_cholesky_upper(h: &[f64], n: usize) -> Result<Vec<f64>, NotPositiveDefinite> {
    let l = cholesky_lower(h, n)?;
    let inv = cholesky_inverse(&l, n);
    drop(l);
    let lu = cholesky_lower(&inv, n)?;
    let mut u = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = lu[j * n + i];
        }
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                c[i * n + j] = (0..n).map(|k| a[i * n + k] * b[k * n + j]).sum();
            }
        }
        c
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        let mut t = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                t[j * n + i] = a[i * n + j];
            }
        }
        t
    }

    fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// The textbook example: [[4,12,-16],[12,37,-43],[-16,-43,98]]
    /// = L·Lᵀ with L = [[2,0,0],[6,1,0],[-8,5,3]].
    const A: [f64; 9] = [4.0, 12.0, -16.0, 12.0, 37.0, -43.0, -16.0, -43.0, 98.0];

    #[test]
    fn known_factor_and_inverse() {
        let l = cholesky_lower(&A, 3).unwrap();
        assert_eq!(l, vec![2.0, 0.0, 0.0, 6.0, 1.0, 0.0, -8.0, 5.0, 3.0]);
        // A⁻¹ = (1/36)·[[1777, -488, 76], [-488, 136, -20], [76, -20, 4]].
        let want: Vec<f64> = [1777.0, -488.0, 76.0, -488.0, 136.0, -20.0, 76.0, -20.0, 4.0]
            .iter()
            .map(|v| v / 36.0)
            .collect();
        let inv = cholesky_inverse(&l, 3);
        assert_close(&inv, &want, 1e-12, "inverse");
        let eye = matmul(&A, &inv, 3);
        assert_close(
            &eye,
            &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            1e-12,
            "A·A⁻¹",
        );
        let u = inverse_cholesky_upper(&A, 3).unwrap();
        for i in 0..3 {
            assert!(u[i * 3 + i] > 0.0);
            for j in 0..i {
                assert_eq!(u[i * 3 + j], 0.0, "U is upper triangular");
            }
        }
        assert_close(&matmul(&transpose(&u, 3), &u, 3), &want, 1e-12, "UᵀU");
        // (UᵀU)[0][0] = U[0][0]² = A⁻¹[0][0] = 1777/36.
        assert!((u[0] - (1777.0f64 / 36.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn random_spd_round_trip() {
        // H = XᵀX + I for a pseudo-random X, n not a multiple of the unroll.
        let n = 37;
        let m = 80;
        let mut s = 12345u64;
        let x: Vec<f64> = (0..m * n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect();
        let mut h = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..m).map(|r| x[r * n + i] * x[r * n + j]).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let l = cholesky_lower(&h, n).unwrap();
        assert_close(&matmul(&l, &transpose(&l, n), n), &h, 1e-12, "L·Lᵀ");
        let inv = cholesky_inverse(&l, n);
        let mut eye = vec![0.0; n * n];
        (0..n).for_each(|i| eye[i * n + i] = 1.0);
        assert_close(&matmul(&h, &inv, n), &eye, 1e-10, "H·H⁻¹");
        let u = inverse_cholesky_upper(&h, n).unwrap();
        assert_close(&matmul(&transpose(&u, n), &u, n), &inv, 1e-10, "UᵀU");
    }

    #[test]
    fn not_positive_definite() {
        // Eigenvalues 3 and -1.
        let e = cholesky_lower(&[1.0, 2.0, 2.0, 1.0], 2).unwrap_err();
        assert_eq!(e.index, 1);
        assert!(e.pivot < 0.0);
        assert!(e.to_string().contains("not positive definite"));
        let e = cholesky_lower(&[0.0, 0.0, 0.0, 1.0], 2).unwrap_err();
        assert_eq!(e.index, 0);
        assert!(cholesky_lower(&[f64::NAN], 1).is_err());
    }
}
