//! Prompt rows on the tensor cores (`kernels/tc_matmul.cu`): f16
//! operands (activations scaled per row by a power of two first), f32
//! accumulation, for dense and quantized weights alike. The default
//! precision's prefill path; decode rows and the exact mode keep the f32
//! kernels, so a row's arithmetic depends on its kind, not on its batch.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use mm_core::{Error, Result};

use crate::compile::TC_MATMUL;
use crate::ops::matmul::Prepared;
use crate::runtime::{driver_err, Runtime};

/// Output tile (`BM` × `BN` in the kernel).
const TILE: usize = 64;

/// `y[rows[i]] = x[rows[i]] · wᵀ (+ bias)` for the `n` rows listed (all
/// of x's first `n` rows when `rows` is None).
#[allow(clippy::too_many_arguments)]
pub fn launch(
    rt: &Runtime,
    w: &Prepared,
    x: &CudaSlice<f32>,
    rows: Option<&CudaSlice<u32>>,
    bias: Option<&CudaSlice<f32>>,
    y: &mut CudaSlice<f32>,
    n: usize,
    k: usize,
    m: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let null = 0u64;
    let (ni, ki, mi) = (
        super::dim(n, "matmul rows")?,
        super::dim(k, "matmul k")?,
        super::dim(m, "matmul m")?,
    );
    // Per-row power-of-two scales of the activations.
    let mut xs = crate::buffer::alloc(rt, n, "activation scales")?;
    let f = rt.function(&TC_MATMUL, "x_row_scales")?;
    let mut l = rt.stream.launch_builder(&f);
    l.arg(x);
    super::arg_or_null(&mut l, rows, &null);
    l.arg(&mut xs).arg(&ni).arg(&ki);
    // SAFETY: x holds the listed rows of k values, xs n; one warp per row.
    unsafe { l.launch(super::grid(n.div_ceil(8), 256)) }
        .map_err(|e| driver_err("activation scales", e))?;

    let (name, kp, group) = match w {
        Prepared::Dense(d) => (
            format!(
                "tc_matmul_{}",
                super::embedding::elem(d.format).unwrap_or("?")
            ),
            k,
            1,
        ),
        Prepared::Quant(q) => (format!("tc_matmul_b{}_p{}", q.bits, q.mode), q.kp, q.group),
    };
    let f = rt.function(&TC_MATMUL, &name)?;
    let (kpi, gi) = (super::dim(kp, "padded k")?, super::dim(group, "group")?);
    let mut l = rt.stream.launch_builder(&f);
    match w {
        Prepared::Dense(d) => l.arg(&d.bytes).arg(&null).arg(&null),
        Prepared::Quant(q) => l.arg(&q.codes).arg(&q.params).arg(&q.lut),
    };
    l.arg(x);
    super::arg_or_null(&mut l, rows, &null);
    l.arg(&xs);
    super::arg_or_null(&mut l, bias, &null);
    l.arg(y).arg(&ni).arg(&ki).arg(&mi).arg(&kpi).arg(&gi);
    if m.div_ceil(TILE) > u32::MAX as usize || n.div_ceil(TILE) > 65535 {
        return Err(Error::Invalid(format!(
            "tensor-core matmul of {n} rows by {m} outputs: grid too large"
        )));
    }
    let cfg = LaunchConfig {
        grid_dim: (m.div_ceil(TILE) as u32, n.div_ceil(TILE) as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the weight holds m rows (kp codes or k values), x and y the
    // listed rows (k and m values), xs n scales; the kernel checks every
    // row and column index against n, m and k.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("tensor-core matmul", e))?;
    Ok(())
}
