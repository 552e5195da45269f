//! RMSNorm over the last dimension: `x * rsqrt(mean(x²) + eps) * w`,
//! computed in f32 as HF transformers does.

use mm_core::{Error, Result, Tensor};

/// Fast CPU RMSNorm; rows in parallel when there are many.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let k = *x.shape().last().unwrap_or(&0);
    if w.numel() != k || k == 0 {
        return Err(Error::Invalid(format!(
            "rms_norm: weight has {} values, rows have {k}",
            w.numel()
        )));
    }
    let (xs, ws) = (x.as_slice()?, w.as_slice()?);
    let mut out = mm_core::host_pool::zeroed(xs.len());
    let row = |(o, r): (&mut [f32], &[f32])| {
        let ss: f32 = r.iter().map(|v| v * v).sum::<f32>() / k as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        o.iter_mut()
            .zip(r.iter().zip(ws))
            .for_each(|(o, (v, w))| *o = v * inv * w);
    };
    let chunk = if xs.len() / k >= 8 { k } else { xs.len() };
    crate::pool::for_each_chunk_mut(&mut out, chunk, |c, o| {
        o.chunks_mut(k).zip(xs[c * chunk..].chunks(k)).for_each(row)
    });
    Tensor::from_vec(x.shape().to_vec(), out)
}

/// Scalar reference in f64.
pub fn rms_norm_ref(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let k = w.len();
    x.chunks(k)
        .flat_map(|r| {
            let ss = r.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64;
            let inv = 1.0 / (ss + eps as f64).sqrt();
            r.iter()
                .zip(w)
                .map(move |(&v, &w)| (v as f64 * inv * w as f64) as f32)
                .collect::<Vec<_>>()
        })
        .collect()
}
