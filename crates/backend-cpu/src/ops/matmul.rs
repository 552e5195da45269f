//! `y[n, m] = x[n, k] · w[m, k]ᵀ (+ bias)`.
//!
//! GGML block formats (Q4_0 … Q6_K) run natively on their stored bytes in
//! [`super::qmatmul`] (fused dequantize-and-dot, no f32 copy), Q4_0/Q4_1/
//! Q8_0 on x86 (AVX2, AVX-512 VNNI) on their row-interleaved repack
//! ([`super::qmatmul::il`]);
//! metal-marlin formats on their codes repacked once at load
//! ([`super::qmatmul::mm`]). Dense weights (F32, F16, BF16) on their
//! stored bytes in [`dense`] (F16/BF16 widened in registers, no f32 copy),
//! in both modes; other formats in the exact mode over their f32 values.

pub mod dense;

use mm_core::{Error, Result, Tensor, WeightData, WeightFormat};

use crate::{dense_f32, il_prepared, mm_prepared};

/// Dot product with eight accumulators (vectorizes to AVX/NEON).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

fn check(x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    let (n, k) = x.dims2()?;
    let (m, kw) = w.dims2()?;
    if k != kw {
        return Err(Error::Invalid(format!(
            "matmul: x has {k} columns, weight {:?} expects {kw}",
            w.shape
        )));
    }
    if let Some(b) = bias {
        if b.numel() != m {
            return Err(Error::Invalid(format!(
                "matmul: bias has {} values, expected {m}",
                b.numel()
            )));
        }
    }
    Ok((n, k, m))
}

/// Fast CPU matmul.
pub fn matmul(x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, k, m) = check(x, w, bias)?;
    if super::qmatmul::il::active(super::qmatmul::Isa::detect(), w) {
        let p = il_prepared(w)?;
        let mut y = super::qmatmul::il::matmul_il(&p, x.as_slice()?, n)?;
        add_bias(&mut y, bias, m)?;
        return Tensor::from_vec(vec![n, m], y);
    }
    if super::qmatmul::supports(w.format) {
        let mut y = super::qmatmul::matmul_q(w.format, &w.bytes, x.as_slice()?, n, k, m)?;
        add_bias(&mut y, bias, m)?;
        return Tensor::from_vec(vec![n, m], y);
    }
    if super::qmatmul::mm::supports(w) {
        let p = mm_prepared(w)?;
        let mut y = super::qmatmul::mm::matmul_mm(&p, x.as_slice()?, n)?;
        add_bias(&mut y, bias, m)?;
        return Tensor::from_vec(vec![n, m], y);
    }
    matmul_dense(x, w, bias)
}

/// Matmul with f32 activations (the reference-precision path): dense
/// weights (F32, F16, BF16) on their stored bytes ([`dense`]), any other
/// format over its f32 values, dequantized once (`dense_f32`).
pub fn matmul_dense(x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, k, m) = check(x, w, bias)?;
    let xs = x.as_slice()?;
    let mut y = if w.format.is_dense() {
        dense::matmul(w.format, &w.bytes, xs, n, k, m)?
    } else {
        let wd = dense_f32(w)?;
        dense::matmul(WeightFormat::F32, bytemuck::cast_slice(&wd.0), xs, n, k, m)?
    };
    add_bias(&mut y, bias, m)?;
    Tensor::from_vec(vec![n, m], y)
}

fn add_bias(y: &mut [f32], bias: Option<&Tensor>, m: usize) -> Result<()> {
    if let Some(b) = bias {
        let b = b.as_slice()?;
        y.chunks_mut(m)
            .for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b));
    }
    Ok(())
}

/// Scalar reference: f64 accumulation over the dequantized weight.
pub fn matmul_ref(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    k: usize,
    m: usize,
) -> Vec<f32> {
    let mut y = vec![0.0f32; n * m];
    for i in 0..n {
        for j in 0..m {
            let mut s = 0.0f64;
            for t in 0..k {
                s += x[i * k + t] as f64 * w[j * k + t] as f64;
            }
            y[i * m + j] = (s + bias.map_or(0.0, |b| b[j] as f64)) as f32;
        }
    }
    y
}
