//! The GPTQ Hessian of a linear layer: `H = 2·XᵀX / n` over the `n`
//! activation rows `x[in]` the layer saw during calibration.

use mm_core::{Error, Result};

/// The Gram matrix `XᵀX` of a batch of `m` activation rows, computed once
/// and added to any number of [`Hessian`]s (linear layers that share an
/// input, such as q/k/v or gate/up projections).
#[derive(Clone, Debug)]
pub struct Gram {
    cols: usize,
    rows: usize,
    /// `XᵀX`, `cols × cols` row-major.
    xtx: Vec<f32>,
}

/// Rows per f32 product; partial sums over at most this many rows are
/// accumulated into the f64 Hessian.
const GRAM_CHUNK: usize = 1024;

impl Gram {
    /// The Gram matrix of `x`, `rows × cols` row-major. The products are
    /// computed with a blocked f32 GEMM over chunks of at most 1024 rows and
    /// summed in f64.
    pub fn new(x: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if cols == 0 || x.len() != rows * cols {
            return Err(Error::Invalid(format!(
                "Gram matrix: {rows}x{cols} activations need {} values, found {}",
                rows * cols,
                x.len()
            )));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "Gram matrix: activation row {}, column {} is the non-finite value {}",
                i / cols,
                i % cols,
                x[i]
            )));
        }
        let mut xtx = vec![0f32; cols * cols];
        if rows > GRAM_CHUNK {
            let mut acc = vec![0f64; cols * cols];
            for chunk in x.chunks(GRAM_CHUNK * cols) {
                syrk(chunk, chunk.len() / cols, cols, &mut xtx);
                acc.iter_mut().zip(&xtx).for_each(|(a, &v)| *a += v as f64);
            }
            xtx.iter_mut().zip(&acc).for_each(|(v, &a)| *v = a as f32);
        } else if rows > 0 {
            syrk(x, rows, cols, &mut xtx);
        }
        // The GEMM need not sum (i, j) and (j, i) in the same order.
        for i in 0..cols {
            for j in 0..i {
                let v = 0.5 * (xtx[i * cols + j] + xtx[j * cols + i]);
                xtx[i * cols + j] = v;
                xtx[j * cols + i] = v;
            }
        }
        Ok(Self { cols, rows, xtx })
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Activation rows the product covers.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `XᵀX`, `cols × cols` row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.xtx
    }
}

/// `out = xᵀ·x` for `x` `[rows, cols]` (multi-threaded SGEMM).
fn syrk(x: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    at_b(x, cols, x, cols, rows, out);
}

/// `out = aᵀ·b` for `a` `[rows, p]` and `b` `[rows, c]`, row-major
/// (`out` `[p, c]`; multi-threaded SGEMM).
pub(super) fn at_b(a: &[f32], p: usize, b: &[f32], c: usize, rows: usize, out: &mut [f32]) {
    assert!(a.len() == rows * p && b.len() == rows * c && out.len() == p * c);
    // SAFETY: out is [p, c] row-major; lhs = aᵀ is a read with swapped
    // strides ([p, rows]: column stride p, row stride 1); rhs = b [rows, c]
    // row-major. The lengths are checked above.
    unsafe {
        gemm::gemm(
            p,
            c,
            rows,
            out.as_mut_ptr(),
            1,
            c as isize,
            false,
            a.as_ptr(),
            p as isize,
            1,
            b.as_ptr(),
            1,
            c as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// `H = 2·XᵀX / n` of a linear layer's inputs, accumulated in f64 over
/// batches of activation rows as the reference GPTQ does:
/// `H ← H·n/(n+m) + 2/(n+m)·XᵀX` for a batch of `m` rows.
///
/// `n` counts activation rows (tokens); the reference counts sequences. The
/// two differ only by a constant factor, which GPTQ is invariant to (its
/// dampening is relative to the mean diagonal).
#[derive(Clone, Debug, PartialEq)]
pub struct Hessian {
    cols: usize,
    /// `cols × cols`, row-major, symmetric.
    h: Vec<f64>,
    n_samples: usize,
}

impl Hessian {
    /// An empty Hessian of a layer with `cols` inputs.
    pub fn new(cols: usize) -> Self {
        Self {
            cols,
            h: vec![0.0; cols * cols],
            n_samples: 0,
        }
    }

    /// A Hessian from its matrix (row-major, symmetric to a relative 1e-6;
    /// stored symmetrised) and sample count.
    pub fn from_matrix(cols: usize, mut h: Vec<f64>, n_samples: usize) -> Result<Self> {
        if h.len() != cols * cols {
            return Err(Error::Invalid(format!(
                "Hessian: a {cols}x{cols} matrix needs {} values, found {}",
                cols * cols,
                h.len()
            )));
        }
        for i in 0..cols {
            for j in 0..i {
                let (a, b) = (h[i * cols + j], h[j * cols + i]);
                let diff = (a - b).abs();
                if diff.is_nan() || diff > 1e-6 * (a.abs() + b.abs()) {
                    return Err(Error::Invalid(format!(
                        "Hessian is not symmetric: H[{i}][{j}] = {a}, H[{j}][{i}] = {b}"
                    )));
                }
                let v = 0.5 * (a + b);
                h[i * cols + j] = v;
                h[j * cols + i] = v;
            }
        }
        Ok(Self { cols, h, n_samples })
    }

    /// Number of inputs (columns of the weight).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Activation rows accumulated.
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }

    /// The matrix, `cols × cols` row-major.
    pub fn matrix(&self) -> &[f64] {
        &self.h
    }

    /// `H[i][j]`.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.h[i * self.cols + j]
    }

    /// Adds `rows` activation rows `x` (`rows × cols`, row-major).
    pub fn add_rows(&mut self, x: &[f32], rows: usize) -> Result<()> {
        self.add_gram(&Gram::new(x, rows, self.cols)?)
    }

    /// Adds a batch whose Gram matrix is already computed.
    pub fn add_gram(&mut self, g: &Gram) -> Result<()> {
        if g.cols != self.cols {
            return Err(Error::Invalid(format!(
                "Hessian of {} inputs cannot take activations of {} columns",
                self.cols, g.cols
            )));
        }
        if g.rows == 0 {
            return Ok(());
        }
        let n = self.n_samples + g.rows;
        let keep = self.n_samples as f64 / n as f64;
        let add = 2.0 / n as f64;
        self.h
            .iter_mut()
            .zip(&g.xtx)
            .for_each(|(h, &v)| *h = *h * keep + add * v as f64);
        self.n_samples = n;
        Ok(())
    }

    /// Merges another Hessian of the same layer (as if its rows had been
    /// added here): the sample-weighted mean.
    pub fn merge(&mut self, other: &Hessian) -> Result<()> {
        if other.cols != self.cols {
            return Err(Error::Invalid(format!(
                "cannot merge Hessians of {} and {} inputs",
                self.cols, other.cols
            )));
        }
        let n = self.n_samples + other.n_samples;
        if n == 0 {
            return Ok(());
        }
        let (a, b) = (
            self.n_samples as f64 / n as f64,
            other.n_samples as f64 / n as f64,
        );
        self.h
            .iter_mut()
            .zip(&other.h)
            .for_each(|(h, &o)| *h = *h * a + o * b);
        self.n_samples = n;
        Ok(())
    }

    /// Shrinkage towards a prior for a Hessian estimated from too few
    /// rows: with `n` = [`n_samples`](Self::n_samples) below `min_samples`,
    /// `(n·H + (min_samples − n)·P) / min_samples`, i.e. this Hessian's
    /// rows counted as they are and the prior `P` filling in for the rows
    /// that are missing (at `n = 0`, `P` itself); with `n ≥ min_samples`,
    /// this Hessian unchanged. Both are normalised (`2·XᵀX/n`), so the
    /// result is too; its sample count is `max(n, min_samples)` (the prior
    /// counts for the rows it stands in for).
    ///
    /// GPTQ for a mixture-of-experts layer uses it for experts that the
    /// calibration text routes few tokens to: their own Hessian has rank
    /// at most `n` and GPTQ would fit those few rows at the expense of
    /// every other input (docs/GPTQ.md, "Experts").
    pub fn shrink_towards(&self, prior: &Hessian, min_samples: usize) -> Result<Hessian> {
        if prior.cols != self.cols {
            return Err(Error::Invalid(format!(
                "cannot shrink a Hessian of {} inputs towards one of {}",
                self.cols, prior.cols
            )));
        }
        let n = self.n_samples;
        if n >= min_samples {
            return Ok(self.clone());
        }
        let a = n as f64 / min_samples as f64;
        let h = self
            .h
            .iter()
            .zip(&prior.h)
            .map(|(&s, &p)| a * s + (1.0 - a) * p)
            .collect();
        Ok(Hessian {
            cols: self.cols,
            h,
            n_samples: min_samples,
        })
    }

    /// `Σ_r δ_r·H·δ_rᵀ` for `δ = W - Ŵ` (`rows × cols`): the layer's squared
    /// output error `‖(W - Ŵ)·Xᵀ‖²_F` on the accumulated activations, times
    /// `2/n`. This is the objective GPTQ minimises.
    pub fn output_error(&self, w: &[f32], w_hat: &[f32], rows: usize) -> Result<f64> {
        let c = self.cols;
        if w.len() != rows * c || w_hat.len() != rows * c {
            return Err(Error::Invalid(format!(
                "output_error: {rows}x{c} weights need {} values, found {} and {}",
                rows * c,
                w.len(),
                w_hat.len()
            )));
        }
        use rayon::prelude::*;
        Ok((0..rows)
            .into_par_iter()
            .map(|r| {
                let d: Vec<f64> = w[r * c..(r + 1) * c]
                    .iter()
                    .zip(&w_hat[r * c..(r + 1) * c])
                    .map(|(a, b)| *a as f64 - *b as f64)
                    .collect();
                (0..c)
                    .map(|i| d[i] * super::cholesky::dot(&self.h[i * c..(i + 1) * c], &d))
                    .sum::<f64>()
            })
            .sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..rows * cols)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn naive(x: &[f32], rows: usize, cols: usize) -> Vec<f64> {
        let mut h = vec![0.0; cols * cols];
        for i in 0..cols {
            for j in 0..cols {
                h[i * cols + j] = 2.0
                    * (0..rows)
                        .map(|r| x[r * cols + i] as f64 * x[r * cols + j] as f64)
                        .sum::<f64>()
                    / rows as f64;
            }
        }
        h
    }

    #[test]
    fn streaming_update_equals_batch() {
        let (cols, rows) = (19, 2100);
        let x = data(rows, cols, 7);
        let want = naive(&x, rows, cols);
        let mut h = Hessian::new(cols);
        // Uneven batches, one larger than the GEMM chunk, one empty.
        let mut at = 0;
        for m in [5, 0, 1500, 1, 594] {
            h.add_rows(&x[at * cols..(at + m) * cols], m).unwrap();
            at += m;
        }
        assert_eq!(h.n_samples(), rows);
        for (a, b) in h.matrix().iter().zip(&want) {
            assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // Merging two halves gives the same.
        let mut a = Hessian::new(cols);
        a.add_rows(&x[..700 * cols], 700).unwrap();
        let mut b = Hessian::new(cols);
        b.add_rows(&x[700 * cols..], rows - 700).unwrap();
        a.merge(&b).unwrap();
        for (p, q) in a.matrix().iter().zip(h.matrix()) {
            assert!((p - q).abs() < 1e-6 * (1.0 + q.abs()));
        }
    }

    #[test]
    fn output_error_is_scaled_output_norm() {
        let (cols, n, rows) = (8, 30, 5);
        let x = data(n, cols, 1);
        let w = data(rows, cols, 2);
        let w_hat: Vec<f32> = w.iter().map(|v| (v * 4.0).round() / 4.0).collect();
        let mut h = Hessian::new(cols);
        h.add_rows(&x, n).unwrap();
        let mut direct = 0.0f64;
        for t in 0..n {
            for r in 0..rows {
                let y: f64 = (0..cols)
                    .map(|c| {
                        (w[r * cols + c] - w_hat[r * cols + c]) as f64 * x[t * cols + c] as f64
                    })
                    .sum();
                direct += y * y;
            }
        }
        let e = h.output_error(&w, &w_hat, rows).unwrap();
        assert!(
            (e - 2.0 * direct / n as f64).abs() < 1e-6 * direct,
            "{e} vs {direct}"
        );
    }

    #[test]
    fn shrinkage_fills_in_missing_rows() {
        let cols = 6;
        let own_x = data(4, cols, 3);
        let all_x = data(50, cols, 4);
        let mut own = Hessian::new(cols);
        own.add_rows(&own_x, 4).unwrap();
        let mut prior = Hessian::new(cols);
        prior.add_rows(&all_x, 50).unwrap();
        // 4 of 12 rows: one third own, two thirds prior.
        let b = own.shrink_towards(&prior, 12).unwrap();
        assert_eq!(b.n_samples(), 12);
        for ((v, o), p) in b.matrix().iter().zip(own.matrix()).zip(prior.matrix()) {
            let want = o / 3.0 + p * 2.0 / 3.0;
            assert!(
                (v - want).abs() <= 1e-12 * (1.0 + want.abs()),
                "{v} vs {want}"
            );
        }
        // Enough rows: unchanged; none: the prior.
        assert_eq!(own.shrink_towards(&prior, 4).unwrap(), own);
        let none = Hessian::new(cols).shrink_towards(&prior, 12).unwrap();
        assert_eq!(none.matrix(), prior.matrix());
        assert!(own.shrink_towards(&Hessian::new(5), 12).is_err());
    }

    #[test]
    fn errors() {
        let mut h = Hessian::new(4);
        assert!(h.add_rows(&[1.0; 7], 2).is_err());
        assert!(h.add_rows(&[1.0, 2.0, f32::INFINITY, 0.0], 1).is_err());
        assert!(Hessian::from_matrix(2, vec![1.0, 2.0, 3.0, 1.0], 1).is_err());
        assert!(h.merge(&Hessian::new(3)).is_err());
    }
}
