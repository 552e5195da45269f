//! Per-head matmul: `y[n, h*m]` from `x[n, h*k]` and `w[h, m, k]`, with
//! `y[r, head*m + j] = Σ_i x[r, head*k + i] · w[head, j, i]`.
//!
//! Multi-head latent attention folds the key up-projection into each
//! head's query and applies the value up-projection after attention (the
//! absorbed form); both are one small matmul per head over the same rows.
//!
//! Strategy: one task per (head, block of [`ROWS`] rows); each output is a
//! dot product of a weight row with an input row, summed in 16 lanes and
//! then across them by one fixed order ([`super::vmath::dispatch`] compiles
//! it for the widest vector unit). Every row gets the same arithmetic
//! whatever the batch around it (batch invariance).

use mm_core::backend::head_matmul_dims as check;
use mm_core::{Result, Tensor};

/// Rows per task.
const ROWS: usize = 8;

/// Fast CPU per-head matmul (f32).
pub fn head_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, h, k, m) = check(x, w)?;
    let (xs, ws) = (x.as_slice()?, w.as_slice()?);
    let mut out = mm_core::host_pool::zeroed(n * h * m);
    let blocks = n.div_ceil(ROWS);
    let op = OutPtr(out.as_mut_ptr());
    crate::pool::for_each(h * blocks, |t| {
        let (head, b) = (t / blocks, t % blocks);
        let wh = &ws[head * m * k..][..m * k];
        for r in b * ROWS..((b + 1) * ROWS).min(n) {
            let xr = &xs[(r * h + head) * k..][..k];
            // SAFETY: row r, head `head` (m values) belongs to this task only.
            let o = unsafe { std::slice::from_raw_parts_mut(op.get().add((r * h + head) * m), m) };
            for (o, wr) in o.iter_mut().zip(wh.chunks_exact(k)) {
                *o = dot(xr, wr);
            }
        }
    });
    Tensor::from_vec(vec![n, h * m], out)
}

/// The output, written by disjoint tasks.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each output element is written by exactly one task.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `Σ a[i]·b[i]` in 16 lanes, then the lanes and the tail in order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    super::vmath::dispatch(
        #[inline(always)]
        || {
            let mut acc = [0.0f32; 16];
            let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
            let (ta, tb) = (ca.remainder(), cb.remainder());
            for (x, y) in ca.zip(cb) {
                for i in 0..16 {
                    acc[i] = x[i].mul_add(y[i], acc[i]);
                }
            }
            let mut s = acc.iter().sum::<f32>();
            for (x, y) in ta.iter().zip(tb) {
                s = x.mul_add(*y, s);
            }
            s
        },
    )
}

/// Scalar reference in f64.
pub fn head_matmul_ref(x: &[f32], w: &[f32], n: usize, h: usize, k: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n * h * m];
    for r in 0..n {
        for head in 0..h {
            for j in 0..m {
                let s: f64 = (0..k)
                    .map(|i| x[(r * h + head) * k + i] as f64 * w[(head * m + j) * k + i] as f64)
                    .sum();
                out[(r * h + head) * m + j] = s as f32;
            }
        }
    }
    out
}
