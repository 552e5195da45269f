//! Quantization error propagation (Arai & Ichikawa 2025, "QEP"): fit a
//! layer to what the *unquantized* model computes, not to what its own,
//! already-degraded inputs would give.
//!
//! Sequential GPTQ minimizes `‖(W − Ŵ)·X̂ᵀ‖²` over the inputs `X̂` that the
//! quantized layers before produce. What matters is the distance to the
//! unquantized model's output `W·Xᵀ`, with `X` the unquantized model's
//! inputs. With `δ = X − X̂`, `D = 2·δᵀX̂/n` and `H = 2·X̂ᵀX̂/n`, the
//! least-squares optimum of `‖W·Xᵀ − Ŵ·X̂ᵀ‖²` is `W* = W + W·D·H⁻¹`, and
//! the objective differs from `‖(W* − Ŵ)·X̂ᵀ‖²` by a constant: quantizing
//! `W*` with ordinary GPTQ (same `H`) minimizes it. The correction is
//! applied with a strength `α ∈ [0, 1]` (`W + α·W·D·H⁻¹`): at α = 1 the
//! layer also absorbs whatever the calibration set's particular errors
//! are, which can overfit; the paper tunes α per layer type.
//!
//! Residual correction (an extension here): a weight whose output is added
//! to the residual stream (attention `o_proj`, MLP `down_proj`) can also
//! take up the error the stream already carries there. With `r = h − ĥ`
//! the unquantized minus the quantized residual at that addition and
//! `R = 2·rᵀX̂/n`, the target `W·Xᵀ + rᵀ` gives `W* = W + (W·D + R)·H⁻¹`.

use mm_core::{Error, Result};

use super::cholesky::{cholesky_inverse, cholesky_lower};
use super::hessian::at_b;
use super::Hessian;

/// `D = 2·Eᵀ·X̂ / n` for an error `E` (`n × p`) on the rows `X̂` (`n × cols`)
/// that the quantized model feeds a layer, accumulated in f64 over batches
/// with the [`Hessian`]'s streaming rule, so that the two share a scale.
/// Input error: `E = X − X̂` against the reference inputs `X` (`p = cols`,
/// [`add_rows`](Self::add_rows)). Residual error: `E = h − ĥ`, the residual
/// stream the layer's output is added to (`p` = the layer's outputs,
/// [`add_error`](Self::add_error)).
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorCross {
    p: usize,
    cols: usize,
    /// `p × cols`, row-major.
    d: Vec<f64>,
    n_samples: usize,
}

impl ErrorCross {
    /// An empty input-error accumulator for a layer with `cols` inputs.
    pub fn new(cols: usize) -> Self {
        Self::with_error_width(cols, cols)
    }

    /// An empty accumulator for errors of `p` columns on `cols` inputs.
    pub fn with_error_width(p: usize, cols: usize) -> Self {
        Self {
            p,
            cols,
            d: vec![0.0; p * cols],
            n_samples: 0,
        }
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Columns of the error (rows of the matrix).
    pub fn error_width(&self) -> usize {
        self.p
    }

    /// Rows added so far.
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }

    /// `p × cols`, row-major.
    pub fn matrix(&self) -> &[f64] {
        &self.d
    }

    /// Adds `rows` matching rows of the reference inputs `x_ref` and the
    /// quantized model's inputs `x_q` (both `rows × cols`, row-major).
    pub fn add_rows(&mut self, x_ref: &[f32], x_q: &[f32], rows: usize) -> Result<()> {
        if self.p != self.cols || x_ref.len() != x_q.len() {
            return Err(Error::Invalid(format!(
                "error cross-product: reference inputs of {} values for {} quantized-model inputs \
                 (an accumulator of {}x{})",
                x_ref.len(),
                x_q.len(),
                self.p,
                self.cols
            )));
        }
        let delta: Vec<f32> = x_ref.iter().zip(x_q).map(|(a, b)| a - b).collect();
        self.add_error(&delta, x_q, rows)
    }

    /// Adds `rows` rows of an error `e` (`rows × p`) and the matching inputs
    /// `x_q` (`rows × cols`).
    pub fn add_error(&mut self, e: &[f32], x_q: &[f32], rows: usize) -> Result<()> {
        let (p, c) = (self.p, self.cols);
        if e.len() != rows * p || x_q.len() != rows * c {
            return Err(Error::Invalid(format!(
                "error cross-product: {rows} rows need {} error and {} input values, found {} and {}",
                rows * p,
                rows * c,
                e.len(),
                x_q.len()
            )));
        }
        if let Some(i) = e.iter().chain(x_q).position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "error cross-product: non-finite value in row {}",
                if i < e.len() {
                    i / p.max(1)
                } else {
                    (i - e.len()) / c
                }
            )));
        }
        if rows == 0 {
            return Ok(());
        }
        let mut prod = vec![0f32; p * c];
        at_b(e, p, x_q, c, rows, &mut prod);
        let n = self.n_samples + rows;
        let keep = self.n_samples as f64 / n as f64;
        let add = 2.0 / n as f64;
        self.d
            .iter_mut()
            .zip(&prod)
            .for_each(|(d, &v)| *d = *d * keep + add * v as f64);
        self.n_samples = n;
        Ok(())
    }
}

/// The weight to quantize instead of `w` (`rows × cols`, row-major):
/// `W + α·(W·D + R)·(H + λI)⁻¹`, with `D` the input error `input`, `R` the
/// residual error `residual` (`rows` wide; none: 0), `λ = damp_percent ·
/// mean(diag H)` and the diagonal of never-activated columns set to 1 (as
/// GPTQ does). All must come from the same calibration rows.
#[allow(clippy::too_many_arguments)]
pub fn propagate_error(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &Hessian,
    input: &ErrorCross,
    residual: Option<&ErrorCross>,
    alpha: f64,
    damp_percent: f64,
) -> Result<Vec<f32>> {
    let bad = |e: String| Error::Invalid(format!("error propagation: {e}"));
    if w.len() != rows * cols || h.cols() != cols || (input.p, input.cols) != (cols, cols) {
        return Err(bad(format!(
            "a {rows}x{cols} weight ({} values) with a Hessian of {} inputs and an input error of {}x{}",
            w.len(),
            h.cols(),
            input.p,
            input.cols
        )));
    }
    for (what, c) in std::iter::once(("input", input)).chain(residual.map(|r| ("residual", r))) {
        if c.n_samples != h.n_samples() {
            return Err(bad(format!(
                "the Hessian covers {} rows, the {what} error {}",
                h.n_samples(),
                c.n_samples
            )));
        }
    }
    if let Some(r) = residual {
        if (r.p, r.cols) != (rows, cols) {
            return Err(bad(format!(
                "a residual error of {}x{} for a {rows}x{cols} weight",
                r.p, r.cols
            )));
        }
    }
    if !(0.0..=1.0).contains(&alpha) {
        return Err(bad(format!("strength {alpha} is outside [0, 1]")));
    }
    if alpha == 0.0 || rows == 0 {
        return Ok(w.to_vec());
    }
    let mut a = h.matrix().to_vec();
    let mean = (0..cols).map(|i| a[i * cols + i]).sum::<f64>() / cols as f64;
    let damp = damp_percent * mean;
    for i in 0..cols {
        let d = &mut a[i * cols + i];
        *d = if *d == 0.0 { 1.0 } else { *d + damp };
    }
    let l = cholesky_lower(&a, cols).map_err(|e| {
        bad(format!(
            "the dampened Hessian is not positive definite: {e}"
        ))
    })?;
    let inv = cholesky_inverse(&l, cols);
    drop((a, l));
    // (W·D + R)·A⁻¹.
    let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let mut t = matmul(&w64, input.matrix(), rows, cols, cols);
    if let Some(r) = residual {
        t.iter_mut().zip(r.matrix()).for_each(|(t, r)| *t += r);
    }
    let dw = matmul(&t, &inv, rows, cols, cols);
    Ok(w.iter()
        .zip(&dw)
        .map(|(&v, &d)| (v as f64 + alpha * d) as f32)
        .collect())
}

/// `a [m, k] · b [k, n]`, row-major, f64.
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    // SAFETY: out [m, n], a [m, k], b [k, n], all row-major and live.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(seed: &mut u64) -> f32 {
        let mut u = || {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 + 0.5) / (1u64 << 24) as f32
        };
        let (a, b) = (u(), u());
        (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
    }

    /// `x · wᵀ` for `x [n, c]`, `w [r, c]`, in f64.
    fn apply(x: &[f32], w: &[f32], n: usize, c: usize, r: usize) -> Vec<f64> {
        let mut y = vec![0f64; n * r];
        for t in 0..n {
            for o in 0..r {
                y[t * r + o] = (0..c)
                    .map(|i| x[t * c + i] as f64 * w[o * c + i] as f64)
                    .sum();
            }
        }
        y
    }

    /// `(rows, cols, n, w, x, x̂)` with `x̂ = x` plus correlated noise.
    fn problem(seed: u64) -> (usize, usize, usize, Vec<f32>, Vec<f32>, Vec<f32>) {
        let (rows, cols, n) = (5, 12, 300);
        let mut s = seed;
        let w: Vec<f32> = (0..rows * cols).map(|_| normal(&mut s)).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| normal(&mut s)).collect();
        let xq: Vec<f32> = x
            .chunks(cols)
            .flat_map(|r| {
                let e = 0.3 * normal(&mut s);
                r.iter()
                    .enumerate()
                    .map(move |(i, v)| v * 0.9 + e * (i % 3) as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        (rows, cols, n, w, x, xq)
    }

    #[test]
    fn full_strength_is_the_least_squares_fit_to_the_reference_output() {
        let (rows, cols, n, w, x, xq) = problem(7);
        let mut h = Hessian::new(cols);
        let mut d = ErrorCross::new(cols);
        // Two batches: the streaming rule must match one batch of all rows.
        for (a, b) in [(0, 120), (120, n)] {
            h.add_rows(&xq[a * cols..b * cols], b - a).unwrap();
            d.add_rows(&x[a * cols..b * cols], &xq[a * cols..b * cols], b - a)
                .unwrap();
        }
        let ws = propagate_error(&w, rows, cols, &h, &d, None, 1.0, 0.0).unwrap();
        // Normal equations of min ‖x·wᵀ − x̂·w*ᵀ‖: x̂ᵀ(x·wᵀ − x̂·w*ᵀ) = 0.
        let (y, yq) = (apply(&x, &w, n, cols, rows), apply(&xq, &ws, n, cols, rows));
        let scale: f64 = y.iter().map(|v| v * v).sum::<f64>().sqrt();
        for i in 0..cols {
            for o in 0..rows {
                let g: f64 = (0..n)
                    .map(|t| xq[t * cols + i] as f64 * (y[t * rows + o] - yq[t * rows + o]))
                    .sum();
                assert!(
                    g.abs() < 1e-4 * scale,
                    "gradient {g} at input {i}, output {o}"
                );
            }
        }
        // And it beats fitting to x̂ alone (w itself).
        let err = |v: &[f64]| -> f64 { y.iter().zip(v).map(|(a, b)| (a - b).powi(2)).sum() };
        let plain = err(&apply(&xq, &w, n, cols, rows));
        let fitted = err(&yq);
        assert!(fitted < 0.5 * plain, "{fitted} vs {plain}");
        // Half strength lands between.
        let wh = propagate_error(&w, rows, cols, &h, &d, None, 0.5, 0.0).unwrap();
        let half = err(&apply(&xq, &wh, n, cols, rows));
        assert!(fitted < half && half < plain, "{fitted} < {half} < {plain}");
    }

    #[test]
    fn residual_error_is_taken_up_by_the_output() {
        let (rows, cols, n, w, x, xq) = problem(3);
        let mut s = 5u64;
        let r: Vec<f32> = (0..n * rows).map(|_| 0.5 * normal(&mut s)).collect();
        let mut h = Hessian::new(cols);
        let (mut d, mut e) = (
            ErrorCross::new(cols),
            ErrorCross::with_error_width(rows, cols),
        );
        h.add_rows(&xq, n).unwrap();
        d.add_rows(&x, &xq, n).unwrap();
        e.add_error(&r, &xq, n).unwrap();
        let ws = propagate_error(&w, rows, cols, &h, &d, Some(&e), 1.0, 0.0).unwrap();
        // Normal equations of min ‖x·wᵀ + r − x̂·w*ᵀ‖.
        let (y, yq) = (apply(&x, &w, n, cols, rows), apply(&xq, &ws, n, cols, rows));
        let scale: f64 = y.iter().map(|v| v * v).sum::<f64>().sqrt();
        for i in 0..cols {
            for o in 0..rows {
                let g: f64 = (0..n)
                    .map(|t| {
                        let target = y[t * rows + o] + r[t * rows + o] as f64;
                        xq[t * cols + i] as f64 * (target - yq[t * rows + o])
                    })
                    .sum();
                assert!(
                    g.abs() < 1e-4 * scale,
                    "gradient {g} at input {i}, output {o}"
                );
            }
        }
        let wrong = ErrorCross::with_error_width(rows + 1, cols);
        let err = propagate_error(&w, rows, cols, &h, &d, Some(&wrong), 1.0, 0.0).unwrap_err();
        assert!(err.to_string().contains("the residual error 0"), "{err}");
        assert!(e.add_error(&r[..rows], &xq, 1).is_err());
    }

    #[test]
    fn no_error_no_change_and_bad_input() {
        let (rows, cols, n, w, x, xq) = problem(11);
        let mut h = Hessian::new(cols);
        let mut d = ErrorCross::new(cols);
        h.add_rows(&x, n).unwrap();
        d.add_rows(&x, &x, n).unwrap();
        assert!(d.matrix().iter().all(|&v| v == 0.0));
        assert_eq!(
            propagate_error(&w, rows, cols, &h, &d, None, 1.0, 0.01).unwrap(),
            w
        );
        assert_eq!(
            propagate_error(&w, rows, cols, &h, &d, None, 0.0, 0.01).unwrap(),
            w
        );
        let e = propagate_error(&w, rows, cols, &h, &d, None, 1.5, 0.01).unwrap_err();
        assert!(
            e.to_string().contains("strength 1.5 is outside [0, 1]"),
            "{e}"
        );
        let mut short = ErrorCross::new(cols);
        short
            .add_rows(&x[..cols * 10], &xq[..cols * 10], 10)
            .unwrap();
        let e = propagate_error(&w, rows, cols, &h, &short, None, 1.0, 0.01).unwrap_err();
        assert!(
            e.to_string()
                .contains("covers 300 rows, the input error 10"),
            "{e}"
        );
        let e = d.add_rows(&x[..cols], &xq, 1).unwrap_err();
        assert!(
            e.to_string()
                .contains("reference inputs of 12 values for 3600"),
            "{e}"
        );
        let mut nan = x[..cols].to_vec();
        nan[3] = f32::NAN;
        assert!(d.add_rows(&nan, &xq[..cols], 1).is_err());
    }
}
