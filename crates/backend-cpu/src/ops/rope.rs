//! Rotary position embedding, rotate-half layout (GPT-NeoX / HF): within a
//! head of width d, element i pairs with element i + d/2. Angles are
//! `position * inv_freq[i]` computed in f32 as transformers does.

use mm_core::{Result, Tensor};

use mm_core::backend::rope_dims as check;

/// Fast CPU RoPE: cos/sin once per (position, frequency), reused by every head.
pub fn rope(
    x: &Tensor,
    head_dim: usize,
    positions: &[u32],
    inv_freq: &[f32],
    mscale: f32,
) -> Result<Tensor> {
    let (_, width) = check(x, head_dim, positions, inv_freq)?;
    let half = head_dim / 2;
    let mut out = mm_core::host_pool::copied(x.as_slice()?);
    let mut cs = vec![(0.0f32, 0.0f32); half];
    for (row, &p) in out.chunks_mut(width).zip(positions) {
        for (c, &f) in cs.iter_mut().zip(inv_freq) {
            let a = p as f32 * f;
            *c = (a.cos() * mscale, a.sin() * mscale);
        }
        for h in row.chunks_mut(head_dim) {
            let (lo, hi) = h.split_at_mut(half);
            for ((a, b), &(c, s)) in lo.iter_mut().zip(hi.iter_mut()).zip(&cs) {
                let (x1, x2) = (*a, *b);
                *a = x1 * c - x2 * s;
                *b = x2 * c + x1 * s;
            }
        }
    }
    Tensor::from_vec(x.shape().to_vec(), out)
}

/// Scalar reference in f64 (angle rounded to f32 first, as the model does).
pub fn rope_ref(
    x: &[f32],
    width: usize,
    head_dim: usize,
    positions: &[u32],
    inv_freq: &[f32],
    mscale: f32,
) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = x.to_vec();
    for (r, &p) in positions.iter().enumerate() {
        for h in 0..width / head_dim {
            for i in 0..half {
                let a = (p as f32 * inv_freq[i]) as f64;
                let (c, s) = (a.cos() * mscale as f64, a.sin() * mscale as f64);
                let base = r * width + h * head_dim;
                let (x1, x2) = (x[base + i] as f64, x[base + i + half] as f64);
                out[base + i] = (x1 * c - x2 * s) as f32;
                out[base + i + half] = (x2 * c + x1 * s) as f32;
            }
        }
    }
    out
}
