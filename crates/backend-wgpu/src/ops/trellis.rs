//! Trellis weights (`shaders/trellis.wgsl`, docs/FORMAT.md §4.8):
//! `y = sv ⊙ H(C · H(su ⊙ x)) + bias` in three dispatches, the tiles read
//! as stored (one buffer of u32 words), the vectors as f32. The same
//! kernels for every row (f32 activations), each row on its own.

use std::sync::Arc;

use mm_core::weight::MmKind;
use mm_core::{Error, Result, Tensor, WeightData, WeightFormat};
use mm_quant::trellis::{hadamard::block_size, split_scales, BITS};

use super::dim;
use crate::buffer::{alloc, on_gpu};
use crate::runtime::{spread, Runtime};
use crate::shader::Variant;

/// Activation rows per workgroup of `trellis_mv` (`R`).
const R: usize = 4;

/// Whether `f` is a trellis format (every one runs here).
pub fn takes(f: WeightFormat) -> bool {
    matches!(f, WeightFormat::Mm(m) if m.kind.is_trellis())
}

fn had_variant(h: usize) -> Variant {
    Variant::new("trellis", "trellis_had")
        .with("WG", h)
        .with("K", 2)
}

fn mv_variant(k: u32) -> Variant {
    Variant::new("trellis", "trellis_mv")
        .with("WG", 64)
        .with("K", k)
}

/// Every trellis variant.
pub fn variants() -> Vec<Variant> {
    let mut v: Vec<Variant> = [16, 32, 64, 128].into_iter().map(had_variant).collect();
    v.extend(BITS.into_iter().map(mv_variant));
    v
}

/// A trellis weight on the GPU: tiles, `su`/`sv`, and the ones and zeros
/// the transforms take where a vector is absent.
pub struct GpuTrellis {
    k: u32,
    rows: usize,
    cols: usize,
    /// Shards of whole bands: (first band, bands, their tiles).
    codes: Vec<(usize, usize, wgpu::Buffer)>,
    sv: wgpu::Buffer,
    su: wgpu::Buffer,
    ones_rows: wgpu::Buffer,
    ones_cols: wgpu::Buffer,
    zeros_rows: wgpu::Buffer,
    zeros_cols: wgpu::Buffer,
}

/// Uploads `w` once (cached in the weight).
pub fn prepare(rt: &Arc<Runtime>, w: &WeightData) -> Result<Arc<GpuTrellis>> {
    w.prepared(|w| {
        let (WeightFormat::Mm(f), [rows, cols]) = (w.format, w.shape.as_slice()) else {
            return Err(Error::Invalid(format!(
                "wgpu: {} {:?} is not a 2-D trellis weight",
                w.format.name(),
                w.shape
            )));
        };
        let MmKind::Trellis(k) = f.kind else {
            return Err(Error::Invalid(format!("wgpu: {} is not a trellis format", f.name())));
        };
        let (rows, cols) = (*rows, *cols);
        let need = f.part_sizes(rows, cols)?.codes;
        if w.bytes.len() != need {
            return Err(Error::Invalid(format!(
                "{} [{rows}, {cols}]: {} code bytes, need {need}",
                f.name(),
                w.bytes.len()
            )));
        }
        // Shards of whole bands under the binding limit.
        let band_bytes = need / (rows / 16);
        let per = (rt.weight_cap() as usize / band_bytes).min(rows / 16);
        if per == 0 {
            return Err(Error::Invalid(format!(
                "wgpu: one band of 16 rows of a {} weight [{rows}, {cols}] takes {band_bytes} bytes, past the {} bytes one binding takes",
                f.name(),
                rt.weight_cap()
            )));
        }
        let (sv, su) = split_scales(w.scales.as_deref().unwrap_or(&[]), rows, cols)?;
        let what = format!("a {} weight [{rows}, {cols}]", f.name());
        let f32s = |v: &[f32]| rt.upload(bytemuck::cast_slice(v), &what);
        Ok(GpuTrellis {
            k: k as u32,
            rows,
            cols,
            codes: (0..rows / 16)
                .step_by(per)
                .map(|b0| {
                    let nb = per.min(rows / 16 - b0);
                    let bytes = &w.bytes[b0 * band_bytes..(b0 + nb) * band_bytes];
                    Ok((b0, nb, rt.upload(bytes, &what)?))
                })
                .collect::<Result<_>>()?,
            sv: f32s(&sv)?,
            su: f32s(&su)?,
            ones_rows: f32s(&vec![1.0; rows])?,
            ones_cols: f32s(&vec![1.0; cols])?,
            zeros_rows: f32s(&vec![0.0; rows])?,
            zeros_cols: f32s(&vec![0.0; cols])?,
        })
    })
}

/// `x[n, cols] · wᵀ (+ bias)` → `[n, rows]`.
pub fn matmul(
    rt: &Arc<Runtime>,
    x: &Tensor,
    w: &WeightData,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, k, m) = mm_core::backend::matmul_dims(x, w, bias)?;
    if n == 0 || m == 0 {
        return Ok(Tensor::zeros(vec![n, m]));
    }
    let t = prepare(rt, w)?;
    let xb = on_gpu(rt, x)?;
    let (_xr, xrb) = alloc(rt, vec![n, k], "trellis activations")?;
    rt.copy(&xb, 0, &xrb, 0, (n * k * 4) as u64)?;
    had(rt, &xrb, n, k, &t.su, &t.ones_cols, &t.zeros_cols)?;
    let (y, yb) = alloc(rt, vec![n, m], "trellis output")?;
    let kernel = rt.kernel(&mv_variant(t.k))?;
    let chunks = dim(n.div_ceil(R), "trellis row chunks")?;
    for (b0, nb, codes) in &t.codes {
        let [gx, gy] = spread(*nb, rt.limits.max_compute_workgroups_per_dimension);
        let p = [t.rows, t.cols, n, gx as usize, *nb, *b0];
        let p: Vec<u32> = p
            .iter()
            .map(|&v| dim(v, "trellis parameter"))
            .collect::<Result<_>>()?;
        rt.dispatch(
            &kernel,
            &p,
            &[(5, codes), (6, &xrb), (7, &yb)],
            [gx, gy, chunks],
        )?;
    }
    let bb = bias.map(|b| on_gpu(rt, b)).transpose()?;
    had(
        rt,
        &yb,
        n,
        m,
        &t.ones_rows,
        &t.sv,
        bb.as_ref().unwrap_or(&t.zeros_rows),
    )?;
    Ok(y)
}

/// In place on `x[n, d]`: `x ← H(pre ⊙ x) ⊙ post + bias` per row.
fn had(
    rt: &Arc<Runtime>,
    x: &wgpu::Buffer,
    n: usize,
    d: usize,
    pre: &wgpu::Buffer,
    post: &wgpu::Buffer,
    bias: &wgpu::Buffer,
) -> Result<()> {
    let h = block_size(d);
    let kernel = rt.kernel(&had_variant(h))?;
    let [gx, gy] = spread((d / h) * n, rt.limits.max_compute_workgroups_per_dimension);
    rt.dispatch(
        &kernel,
        &[
            dim(d, "width")?,
            dim(h, "block")?,
            dim(n, "rows")?,
            gx,
            0,
            0,
        ],
        &[(1, x), (2, pre), (3, post), (4, bias)],
        [gx, gy, 1],
    )
}
