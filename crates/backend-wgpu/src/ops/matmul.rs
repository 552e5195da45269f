//! `y = x · wᵀ (+ bias)` for weights of every format the GPU layout takes
//! (`shaders/matmul.wgsl`): dense f32/f16/bf16 weights as stored (rows
//! padded to 8 columns), quantized ones in `mm_quant::gpu_layout`
//! (codes widened to 4 or 8 bits, a value table, per-group scale and
//! offset), uploaded once per weight ([`prepare`]).

use std::sync::Arc;

use mm_core::{Error, Result, Tensor, WeightData, WeightFormat};
use mm_quant::gpu_layout::{self, QLayout};

use super::dim;
use crate::buffer::{alloc, on_gpu};
use crate::runtime::{spread, Runtime};
use crate::shader::Variant;

/// Threads per workgroup of the matmul kernel.
const WG: u32 = 64;
/// Weight rows per workgroup (`R` of the kernel).
const R: usize = 4;

/// How a weight is stored on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    F32,
    F16,
    BF16,
    /// The GPU layout with `bits`-bit codes and parameter storage `mode`
    /// ([`Params::mode`]).
    Q {
        bits: u32,
        mode: u32,
    },
}

/// A weight in GPU memory.
pub struct GpuWeight {
    pub rows: usize,
    pub cols: usize,
    /// Row stride in values (padded columns).
    pub kp: usize,
    /// Columns per parameter group (quantized weights; `kp` otherwise).
    pub group: usize,
    pub stored: Stored,
    /// Values or codes, then parameters and value table (quantized).
    pub bufs: Vec<wgpu::Buffer>,
}

impl GpuWeight {
    /// The slot WEIGHT of a kernel reading this weight.
    pub fn template(&self) -> String {
        template(self.stored)
    }

    /// The buffers at bindings 8, 9, 10.
    pub fn bindings(&self) -> Vec<(u32, &wgpu::Buffer)> {
        self.bufs
            .iter()
            .enumerate()
            .map(|(i, b)| (8 + i as u32, b))
            .collect()
    }
}

/// The WGSL of the load functions of a stored form.
pub fn template(s: Stored) -> String {
    match s {
        Stored::F32 => include_str!("../../shaders/w_f32.wgsl").to_string(),
        Stored::F16 => include_str!("../../shaders/w_f16.wgsl").to_string(),
        Stored::BF16 => include_str!("../../shaders/w_bf16.wgsl").to_string(),
        Stored::Q { bits, mode } => {
            let codes = if bits == 4 {
                include_str!("../../shaders/w_q4.wgsl")
            } else {
                include_str!("../../shaders/w_q8.wgsl")
            };
            let param = match mode {
                0 => "let h = unpack2x16float(wpar[g / 2u]);\n    return vec2<f32>(select(h.x, h.y, (g & 1u) == 1u), 0.0);",
                1 => "return unpack2x16float(wpar[g]);",
                2 => "let h = unpack2x16float(wpar[g]);\n    return vec2<f32>(h.x, -h.x * h.y);",
                3 => "return vec2<f32>(bitcast<f32>(wpar[2u * g]), bitcast<f32>(wpar[2u * g + 1u]));",
                _ => "return vec2<f32>(bitcast<f32>(wpar[g]), 0.0);",
            };
            include_str!("../../shaders/w_q.wgsl")
                .replace("{{PARAM}}", param)
                .replace("{{CODES}}", codes)
        }
    }
}

/// Every stored form a weight can take.
pub fn all_stored() -> Vec<Stored> {
    let mut v = vec![Stored::F32, Stored::F16, Stored::BF16];
    for bits in [4, 8] {
        for mode in 0..5 {
            v.push(Stored::Q { bits, mode });
        }
    }
    v
}

/// Whether weights of `f` run here.
pub fn supports(f: WeightFormat) -> bool {
    f.is_dense() || gpu_layout::supports(f)
}

/// Rows of `bytes` (`rows × cols` values of `size` bytes) padded to `kp`
/// values with zeros; the bytes themselves when no padding is needed.
fn padded(bytes: &[u8], rows: usize, cols: usize, kp: usize, size: usize) -> Vec<u8> {
    if kp == cols {
        return bytes.to_vec();
    }
    let mut out = vec![0u8; rows * kp * size];
    for (o, i) in out
        .chunks_exact_mut(kp * size)
        .zip(bytes.chunks_exact(cols * size))
    {
        o[..cols * size].copy_from_slice(i);
    }
    out
}

/// `w`'s GPU form, uploaded on first use and kept with the weight.
pub fn prepare(rt: &Arc<Runtime>, w: &WeightData) -> Result<Arc<GpuWeight>> {
    w.prepared(|w| upload(rt, w))
}

fn upload(rt: &Runtime, w: &WeightData) -> Result<GpuWeight> {
    let (rows, cols) = w.dims2()?;
    let what = format!("{} weight {rows}x{cols}", w.format.name());
    let dense = |stored, size| -> Result<GpuWeight> {
        let kp = cols.div_ceil(8) * 8;
        let data = padded(&w.bytes, rows, cols, kp, size);
        Ok(GpuWeight {
            rows,
            cols,
            kp,
            group: kp,
            stored,
            bufs: vec![rt.upload(&data, &what)?],
        })
    };
    match w.format {
        WeightFormat::F32 => dense(Stored::F32, 4),
        WeightFormat::F16 => dense(Stored::F16, 2),
        WeightFormat::BF16 => dense(Stored::BF16, 2),
        f if gpu_layout::supports(f) => {
            let l = QLayout::from_weight(w)?;
            let mode = l.params.mode();
            let params = l.params.bytes();
            Ok(GpuWeight {
                rows,
                cols,
                kp: l.kp,
                group: l.group,
                stored: Stored::Q { bits: l.bits, mode },
                bufs: vec![
                    rt.upload(&l.codes, &what)?,
                    rt.upload(&params, &what)?,
                    rt.upload(bytemuck::cast_slice(&l.lut), &what)?,
                ],
            })
        }
        f => Err(Error::Invalid(format!(
            "wgpu: {} weights are not supported",
            f.name()
        ))),
    }
}

fn variant(stored: Stored, nb: usize) -> Variant {
    Variant::new("matmul", "matmul")
        .with("WG", WG)
        .with("NB", nb)
        .with("WEIGHT", template(stored))
        .with("X8", X8)
}

/// The activation loads the matmul kernels share (`shaders/x8.wgsl`).
pub const X8: &str = include_str!("../../shaders/x8.wgsl");

/// Every matmul variant.
pub fn variants() -> Vec<Variant> {
    all_stored()
        .into_iter()
        .flat_map(|s| [variant(s, 1), variant(s, 4)])
        .collect()
}

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
    let gw = prepare(rt, w)?;
    let nb = if n == 1 { 1 } else { 4 };
    let kernel = rt.kernel(&variant(gw.stored, nb))?;
    let xb = on_gpu(rt, x)?;
    let bb = match bias {
        Some(b) => on_gpu(rt, b)?,
        None => rt.upload_cached("no bias", &[], || vec![0; 4])?,
    };
    let (y, yb) = alloc(rt, vec![n, m], "matmul output")?;
    let blocks = m.div_ceil(R);
    let [gx, gz] = spread(blocks, rt.limits.max_compute_workgroups_per_dimension);
    let params = [
        dim(n, "rows")?,
        dim(k, "columns")?,
        dim(m, "outputs")?,
        dim(gw.kp, "padded columns")?,
        dim(gw.group, "group")?,
        bias.is_some() as u32,
        gx,
        0,
    ];
    let mut bind = vec![(1, &xb), (2, &bb), (3, &yb)];
    bind.extend(gw.bindings());
    rt.dispatch(
        &kernel,
        &params,
        &bind,
        [gx, dim(n.div_ceil(nb), "row blocks")?, gz],
    )?;
    Ok(y)
}
