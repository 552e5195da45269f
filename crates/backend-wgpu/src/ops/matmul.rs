//! `y = x · wᵀ (+ bias)` for weights of every format the GPU takes
//! ([`crate::weight`]), by three kernels: `matvec.wgsl` for one row of x
//! and a quantized weight (a decode step), `gemm.wgsl` (64 × 64 tiles)
//! from [`GEMM_ROWS`] rows, `matmul.wgsl` (4 weight rows × 1 or 4 rows of
//! x per workgroup) for the rest. Each runs once per shard of the weight.
//! Trellis weights take their own kernels ([`super::trellis`]).

use std::sync::Arc;

use mm_core::{Error, Result, Tensor, WeightData};

use super::dim;
use crate::buffer::{alloc, on_gpu};
use crate::runtime::{spread, Runtime};
use crate::shader::Variant;
use crate::weight::{all_stored, param, prepare, template, GpuWeight, Shard, Stored};

/// Threads per workgroup of the matmul kernel.
const WG: u32 = 64;
/// Weight rows per workgroup (`R` of the kernel).
const R: usize = 4;

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

/// One row of x through `matvec.wgsl`, for shard `s` of `gw`.
#[allow(clippy::too_many_arguments)]
fn matvec(
    rt: &Arc<Runtime>,
    gw: &GpuWeight,
    s: &Shard,
    (bits, mode): (u32, u32),
    k: usize,
    x: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
) -> Result<()> {
    let wg = matvec_wg();
    let kernel = rt.kernel(&matvec_variant(bits, mode, gw.affine.is_some(), wg))?;
    let (lut0, step) = gw.affine.unwrap_or((0.0, 0.0));
    let [gx, gz] = spread(
        s.rows.div_ceil(R),
        rt.limits.max_compute_workgroups_per_dimension,
    );
    let params = [
        dim(k, "columns")?,
        dim(s.rows, "outputs")?,
        dim(gw.kp, "padded columns")?,
        dim(gw.group, "group")?,
        bias.is_some() as u32,
        gx,
        lut0.to_bits(),
        step.to_bits(),
        dim(s.row0, "first row")?,
    ];
    let nb = rt.upload_cached("no bias", &[], || vec![0; 4])?;
    let mut bind = vec![(1, x), (2, bias.unwrap_or(&nb)), (3, y)];
    bind.extend(s.bindings());
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
    if super::trellis::takes(w.format) {
        return super::trellis::matmul(rt, x, w, bias);
    }
    let gw = prepare(rt, w)?;
    if n == 1 {
        if let Some(q) = matvec_fits(&gw, k) {
            let xb = on_gpu(rt, x)?;
            let bb = bias.map(|b| on_gpu(rt, b)).transpose()?;
            let (y, yb) = alloc(rt, vec![n, m], "matmul output")?;
            for s in &gw.shards {
                matvec(rt, &gw, s, q, k, &xb, bb.as_ref(), &yb)?;
            }
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
    for s in &gw.shards {
        let (blocks, nb) = if gemm {
            (s.rows.div_ceil(64), 64)
        } else {
            (s.rows.div_ceil(R), nb)
        };
        let [gx, gz] = spread(blocks, max);
        if gemm && gz > 1 {
            return Err(Error::Invalid(format!(
                "wgpu: a weight of {} rows passes {max} workgroups of 64 rows",
                s.rows
            )));
        }
        let params = [
            dim(n, "rows")?,
            dim(k, "columns")?,
            dim(s.rows, "outputs")?,
            dim(gw.kp, "padded columns")?,
            dim(gw.group, "group")?,
            bias.is_some() as u32,
            gx,
            dim(s.row0, "first row")?,
            dim(m, "outputs")?,
        ];
        let mut bind = vec![(1, &xb), (2, &bb), (3, &yb)];
        bind.extend(s.bindings());
        rt.dispatch(
            &kernel,
            &params,
            &bind,
            [gx, dim(n.div_ceil(nb), "row blocks")?, gz],
        )?;
    }
    Ok(y)
}
