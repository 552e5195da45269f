//! `y[n, m] = x[n, k] · w[m, k]ᵀ (+ bias)` for every weight the GPU takes:
//! dense (F32/F16/BF16, `kernels/matmul.cu`, the stored bytes uploaded
//! once), quantized ([`super::qmatmul`], the GPU layout) and trellis
//! ([`super::trellis`]).
//!
//! Which kernel computes a row: in the exact mode (and while the tensor
//! cores are off, `CudaBackend::tensor_cores`) every row takes the f32
//! kernels; otherwise prompt rows go to the tensor cores
//! ([`super::tc_matmul`], f16 operands) and generated rows to the decode
//! kernels (8-bit activations in two passes for the integer and GGUF
//! formats, [`qmatmul::launch_q8`]; f32 for the others), so a row's
//! arithmetic depends on its kind only, never on the batch around it. Without kinds (`Backend::matmul`), more than
//! [`SIMT_ROWS`] rows count as a prompt.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use mm_core::{Error, Result, RowKind, Tensor, WeightData};

use crate::buffer::{alloc, on_device, tensor, weight, DeviceWeight};
use crate::compile::MATMUL;
use crate::ops::qmatmul::{self, DeviceQWeight};
use crate::runtime::{driver_err, Runtime};

/// Activation rows per warp (`ROWS` in the kernel).
const ROWS: usize = 8;
/// Warps (weight rows) per block.
const WARPS: usize = 8;
/// Calls of more rows than this without row kinds run as a prompt.
pub const SIMT_ROWS: usize = 8;

/// A weight's GPU form.
pub enum Prepared {
    Dense(Arc<DeviceWeight>),
    Quant(Arc<DeviceQWeight>),
}

fn prepared(rt: &Runtime, w: &WeightData) -> Result<Prepared> {
    if w.format.is_dense() {
        Ok(Prepared::Dense(weight(rt, w)?))
    } else {
        Ok(Prepared::Quant(qmatmul::prepare(rt, w)?))
    }
}

pub fn matmul(
    rt: &Runtime,
    x: &Tensor,
    w: &WeightData,
    bias: Option<&Tensor>,
    kinds: Option<&[RowKind]>,
    f32_only: bool,
) -> Result<Tensor> {
    let (n, k, m) = mm_core::backend::matmul_dims(x, w, bias)?;
    if kinds.is_some_and(|ks| ks.len() != n) {
        return Err(Error::Invalid(format!(
            "matmul: {} row kinds for {n} rows",
            kinds.map_or(0, |k| k.len())
        )));
    }
    if n == 0 || m == 0 {
        return Ok(Tensor::zeros(vec![n, m]));
    }
    // Trellis weights: one kernel for every row kind (f32 activations).
    if super::trellis::takes(w.format) {
        return super::trellis::matmul(rt, x, w, bias);
    }
    let p = prepared(rt, w)?;
    let xd = on_device(rt, x)?;
    let bd = bias.map(|b| on_device(rt, b)).transpose()?;
    let (xs, bs) = (xd.slice(), bd.as_ref().map(|b| b.slice()));
    let mut y = alloc(rt, n * m, "matmul output")?;
    let is_prompt = |i: usize| kinds.map_or(n > SIMT_ROWS, |ks| ks[i] == RowKind::Prompt);
    let np = if f32_only {
        0
    } else {
        (0..n).filter(|&i| is_prompt(i)).count()
    };
    let q8 = !f32_only;
    // The input's identity, for reusing its 8-bit quantization.
    let input = crate::buffer::kept_input(x, &xd);
    if np == 0 {
        simt(rt, &p, xs, input, None, bs, &mut y, n, k, m, q8)?;
    } else if np == n {
        super::tc_matmul::launch(rt, &p, xs, None, bs, &mut y, n, k, m)?;
    } else {
        let (prompt, gen): (Vec<u32>, Vec<u32>) =
            (0..n as u32).partition(|&i| is_prompt(i as usize));
        let pr = rt.upload_cached("prompt rows", &prompt)?;
        let gr = rt.upload_cached("generated rows", &gen)?;
        super::tc_matmul::launch(rt, &p, xs, Some(pr.as_ref()), bs, &mut y, np, k, m)?;
        simt(
            rt,
            &p,
            xs,
            input,
            Some(gr.as_ref()),
            bs,
            &mut y,
            n - np,
            k,
            m,
            q8,
        )?;
    }
    tensor(rt, vec![n, m], y)
}

/// The decode kernels over `n` rows (those listed in `rows`, if given):
/// 8-bit activations where `q8` and the weight allows, else f32. `input`:
/// the tensor `x` belongs to, if any.
#[allow(clippy::too_many_arguments)]
fn simt(
    rt: &Runtime,
    p: &Prepared,
    x: &CudaSlice<f32>,
    input: Option<&Arc<dyn mm_core::tensor::DeviceBuffer>>,
    rows: Option<&CudaSlice<u32>>,
    bias: Option<&CudaSlice<f32>>,
    y: &mut CudaSlice<f32>,
    n: usize,
    k: usize,
    m: usize,
    q8: bool,
) -> Result<()> {
    match p {
        Prepared::Quant(q) if q8 && qmatmul::q8_capable(q) => qmatmul::launch_q8(
            rt,
            q,
            x,
            input,
            rows,
            bias,
            y,
            n,
            qmatmul::Q8_PASSES,
            qmatmul::q8_rows_per_warp(n),
        ),
        Prepared::Quant(q) => qmatmul::launch(rt, q, x, rows, bias, y, n),
        Prepared::Dense(d) => dense(rt, d, x, rows, bias, y, n, k, m),
    }
}

#[allow(clippy::too_many_arguments)]
fn dense(
    rt: &Runtime,
    wd: &DeviceWeight,
    x: &CudaSlice<f32>,
    rows: Option<&CudaSlice<u32>>,
    bias: Option<&CudaSlice<f32>>,
    y: &mut CudaSlice<f32>,
    n: usize,
    k: usize,
    m: usize,
) -> Result<()> {
    let suffix = super::embedding::elem(wd.format).unwrap_or("?");
    let f = rt.function(&MATMUL, &format!("matmul_{suffix}"))?;
    let (ni, ki, mi) = (
        super::dim(n, "matmul rows")?,
        super::dim(k, "matmul k")?,
        super::dim(m, "matmul m")?,
    );
    let null = 0u64;
    let mut l = rt.stream.launch_builder(&f);
    l.arg(&wd.bytes).arg(x);
    super::arg_or_null(&mut l, rows, &null);
    super::arg_or_null(&mut l, bias, &null);
    l.arg(y).arg(&ni).arg(&ki).arg(&mi);
    let cfg = LaunchConfig {
        grid_dim: (m.div_ceil(WARPS) as u32, n.div_ceil(ROWS) as u32, 1),
        block_dim: (32 * WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: w holds m·k values of its type, x and y the listed rows (k
    // and m values), bias m (or null); the kernel checks its indices.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("matmul", e))?;
    Ok(())
}
