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
    /// `(lut0, step)` when the value table is affine, `lut[c] = lut0 +
    /// step·c` (quantized integer and GGUF formats).
    pub affine: Option<(f32, f32)>,
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
            include_str!("../../shaders/w_q.wgsl")
                .replace("{{PARAM}}", param(mode))
                .replace("{{CODES}}", codes)
        }
    }
}

/// The body of `wparam(g)`, a group's `(s, o)`, for parameter storage
/// `mode` ([`gpu_layout::Params::mode`]).
fn param(mode: u32) -> &'static str {
    match mode {
        0 => "let h = unpack2x16float(wpar[g / 2u]);\n    return vec2<f32>(select(h.x, h.y, (g & 1u) == 1u), 0.0);",
        1 => "return unpack2x16float(wpar[g]);",
        2 => "let h = unpack2x16float(wpar[g]);\n    return vec2<f32>(h.x, -h.x * h.y);",
        3 => "return vec2<f32>(bitcast<f32>(wpar[2u * g]), bitcast<f32>(wpar[2u * g + 1u]));",
        _ => "return vec2<f32>(bitcast<f32>(wpar[g]), 0.0);",
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
            affine: None,
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
                affine: affine(&l.lut),
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

/// `(lut0, step)` of a table whose every entry is `lut0 + step·c` exactly.
fn affine(lut: &[f32]) -> Option<(f32, f32)> {
    let (l0, step) = (*lut.first()?, lut.get(1)? - lut[0]);
    lut.iter()
        .enumerate()
        .all(|(c, &v)| v == l0 + step * c as f32)
        .then_some((l0, step))
}

/// Threads per workgroup of the decode kernel (`matvec.wgsl`); 64, 128
/// or 256 by `MM_WGPU_MATVEC_WG`, 0 for the general kernel instead.
fn matvec_wg() -> u32 {
    static WG: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *WG.get_or_init(
        || match std::env::var("MM_WGPU_MATVEC_WG").ok().as_deref() {
            Some("0") => 0,
            Some("64") => 64,
            Some("256") => 256,
            _ => 128,
        },
    )
}

/// The decode kernel for a quantized weight of `bits`-bit codes in
/// parameter storage `mode`, affine or looked up.
fn matvec_variant(bits: u32, mode: u32, affine: bool, wg: u32) -> Variant {
    let (codes, lutn) = if bits == 4 {
        (include_str!("../../shaders/mv_q4.wgsl"), 16)
    } else {
        (include_str!("../../shaders/mv_q8.wgsl"), 256)
    };
    let (val4, fold, lookup) = if affine {
        ("return vec4<f32>(c);", "p.step * d + p.lut0 * sx", "false")
    } else {
        (
            "return vec4<f32>(lut_[c.x], lut_[c.y], lut_[c.z], lut_[c.w]);",
            "d",
            "true",
        )
    };
    Variant::new("matvec", "matvec")
        .with("WG", wg)
        .with("LUTN", lutn)
        .with("PARAM", param(mode))
        .with("VAL4", val4)
        .with("FOLD", fold)
        .with("LOOKUP", lookup)
        .with("CODES", codes)
}

/// Columns of one chunk of the decode kernel.
fn chunk_cols(bits: u32) -> usize {
    if bits == 4 {
        32
    } else {
        16
    }
}

/// Rows of x from which `gemm.wgsl` (64 × 64 tiles) takes over from
/// `matmul.wgsl` (4 × 4 per workgroup).
const GEMM_ROWS: usize = 16;

fn gemm_variant(stored: Stored) -> Variant {
    Variant::new("gemm", "gemm")
        .with("WG", 256)
        .with("WEIGHT", template(stored))
        .with("X8", X8)
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

/// Every matmul variant, the decode kernel's included.
pub fn variants() -> Vec<Variant> {
    let mut v: Vec<Variant> = all_stored()
        .into_iter()
        .flat_map(|s| [variant(s, 1), variant(s, 4), gemm_variant(s)])
        .collect();
    for s in all_stored() {
        if let Stored::Q { bits, mode } = s {
            for affine in [true, false] {
                for wg in [64, 128, 256] {
                    v.push(matvec_variant(bits, mode, affine, wg));
                }
            }
        }
    }
    v
}

/// The decode kernel fits `gw` for an input of `k` columns.
fn matvec_fits(gw: &GpuWeight, k: usize) -> Option<(u32, u32)> {
    match gw.stored {
        Stored::Q { bits, mode }
            if matvec_wg() != 0
                && k.is_multiple_of(4)
                && gw.group.is_multiple_of(chunk_cols(bits)) =>
        {
            Some((bits, mode))
        }
        _ => None,
    }
}

/// One row of x through `matvec.wgsl`.
fn matvec(
    rt: &Arc<Runtime>,
    gw: &GpuWeight,
    (bits, mode): (u32, u32),
    k: usize,
    m: usize,
    x: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
) -> Result<()> {
    let wg = matvec_wg();
    let kernel = rt.kernel(&matvec_variant(bits, mode, gw.affine.is_some(), wg))?;
    let (lut0, step) = gw.affine.unwrap_or((0.0, 0.0));
    let [gx, gz] = spread(
        m.div_ceil(R),
        rt.limits.max_compute_workgroups_per_dimension,
    );
    let params = [
        dim(k, "columns")?,
        dim(m, "outputs")?,
        dim(gw.kp, "padded columns")?,
        dim(gw.group, "group")?,
        bias.is_some() as u32,
        gx,
        lut0.to_bits(),
        step.to_bits(),
    ];
    let nb = rt.upload_cached("no bias", &[], || vec![0; 4])?;
    let mut bind = vec![(1, x), (2, bias.unwrap_or(&nb)), (3, y)];
    bind.extend(gw.bindings());
    rt.dispatch(&kernel, &params, &bind, [gx, 1, gz])
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
    if n == 1 {
        if let Some(q) = matvec_fits(&gw, k) {
            let xb = on_gpu(rt, x)?;
            let bb = bias.map(|b| on_gpu(rt, b)).transpose()?;
            let (y, yb) = alloc(rt, vec![n, m], "matmul output")?;
            matvec(rt, &gw, q, k, m, &xb, bb.as_ref(), &yb)?;
            return Ok(y);
        }
    }
    let gemm = n >= GEMM_ROWS;
    let nb = if n == 1 { 1 } else { 4 };
    let kernel = if gemm {
        rt.kernel(&gemm_variant(gw.stored))?
    } else {
        rt.kernel(&variant(gw.stored, nb))?
    };
    let xb = on_gpu(rt, x)?;
    let bb = match bias {
        Some(b) => on_gpu(rt, b)?,
        None => rt.upload_cached("no bias", &[], || vec![0; 4])?,
    };
    let (y, yb) = alloc(rt, vec![n, m], "matmul output")?;
    let max = rt.limits.max_compute_workgroups_per_dimension;
    let (blocks, nb) = if gemm { (m.div_ceil(64), 64) } else { (m.div_ceil(R), nb) };
    let [gx, gz] = spread(blocks, max);
    if gemm && gz > 1 {
        return Err(Error::Invalid(format!(
            "wgpu: a weight of {m} rows passes {max} workgroups of 64 rows"
        )));
    }
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
