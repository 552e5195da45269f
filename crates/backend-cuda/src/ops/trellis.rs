//! Trellis weights on the GPU (`kernels/trellis.cu`, docs/FORMAT.md §4.8):
//! `y = sv ⊙ H(C · H(su ⊙ x)) (+ bias)` in three launches, the tiles read
//! as stored (uploaded once as u32 words), the sign and scale vectors as
//! f32. The same kernels for every row kind (f32 activations): a row's
//! result does not depend on the batch.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use mm_core::weight::MmKind;
use mm_core::{Error, Result, Tensor, WeightData, WeightFormat};
use mm_quant::trellis::{hadamard::block_size, split_scales};

use crate::buffer::{alloc, on_device, tensor, upload};
use crate::compile::TRELLIS;
use crate::runtime::{driver_err, Runtime};

/// Activation rows per block of `trellis_mv` (`MV_R`).
const MV_R: usize = 8;
/// Warps per block of `trellis_mv` (`MV_W`).
const MV_W: u32 = 4;

/// Whether `f` is a trellis format (every one runs here).
pub fn takes(f: WeightFormat) -> bool {
    matches!(f, WeightFormat::Mm(m) if m.kind.is_trellis())
}

/// A trellis weight on the GPU.
pub struct DeviceTrellis {
    pub k: u32,
    pub rows: usize,
    pub cols: usize,
    pub codes: CudaSlice<u32>,
    pub sv: CudaSlice<f32>,
    pub su: CudaSlice<f32>,
}

// SAFETY: read only by kernels on the runtime's stream after upload.
unsafe impl Sync for DeviceTrellis {}
unsafe impl Send for DeviceTrellis {}

/// Uploads `w` once (cached in the weight).
pub fn prepare(rt: &Runtime, w: &WeightData) -> Result<Arc<DeviceTrellis>> {
    w.prepared(|w| {
        let (WeightFormat::Mm(f), [rows, cols]) = (w.format, w.shape.as_slice()) else {
            return Err(Error::Invalid(format!(
                "cuda: {} {:?} is not a 2-D trellis weight",
                w.format.name(),
                w.shape
            )));
        };
        let MmKind::Trellis(k) = f.kind else {
            return Err(Error::Invalid(format!(
                "cuda: {} is not a trellis format",
                f.name()
            )));
        };
        let (rows, cols) = (*rows, *cols);
        let sizes = f.part_sizes(rows, cols)?;
        if w.bytes.len() != sizes.codes {
            return Err(Error::Invalid(format!(
                "{} [{rows}, {cols}]: {} code bytes, need {}",
                f.name(),
                w.bytes.len(),
                sizes.codes
            )));
        }
        let (sv, su) = split_scales(w.scales.as_deref().unwrap_or(&[]), rows, cols)?;
        let words: Vec<u32> = w
            .bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let what = format!("a {} weight [{rows}, {cols}]", f.name());
        Ok(DeviceTrellis {
            k: k as u32,
            rows,
            cols,
            codes: upload(rt, &words, &what)?,
            sv: upload(rt, &sv, &what)?,
            su: upload(rt, &su, &what)?,
        })
    })
}

/// `x[n, cols] · wᵀ (+ bias)` → `[n, rows]`.
pub fn matmul(rt: &Runtime, x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, k, m) = mm_core::backend::matmul_dims(x, w, bias)?;
    if n == 0 || m == 0 {
        return Ok(Tensor::zeros(vec![n, m]));
    }
    let t = prepare(rt, w)?;
    let xd = on_device(rt, x)?;
    let bd = bias.map(|b| on_device(rt, b)).transpose()?;
    let mut xr = alloc(rt, n * k, "trellis activations")?;
    rt.stream
        .memcpy_dtod(xd.slice(), &mut xr)
        .map_err(|e| driver_err("trellis: copying activations", e))?;
    had(rt, &mut xr, n, k, Some(&t.su), None, None)?;
    let mut y = alloc(rt, n * m, "trellis output")?;
    mv(rt, &t, &xr, &mut y, n)?;
    had(
        rt,
        &mut y,
        n,
        m,
        None,
        Some(&t.sv),
        bd.as_ref().map(|b| b.slice()),
    )?;
    tensor(rt, vec![n, m], y)
}

/// In place on `x[n, d]`: `x ← H(pre ⊙ x) ⊙ post + bias` per row.
fn had(
    rt: &Runtime,
    x: &mut CudaSlice<f32>,
    n: usize,
    d: usize,
    pre: Option<&CudaSlice<f32>>,
    post: Option<&CudaSlice<f32>>,
    bias: Option<&CudaSlice<f32>>,
) -> Result<()> {
    let h = block_size(d);
    let f = rt.function(&TRELLIS, "trellis_had")?;
    let (di, hi) = (
        super::dim(d, "trellis width")?,
        super::dim(h, "hadamard block")?,
    );
    let null = 0u64;
    let mut l = rt.stream.launch_builder(&f);
    l.arg(x);
    super::arg_or_null(&mut l, pre, &null);
    super::arg_or_null(&mut l, post, &null);
    super::arg_or_null(&mut l, bias, &null);
    l.arg(&di).arg(&hi);
    let cfg = LaunchConfig {
        grid_dim: ((d / h) as u32, super::dim(n, "trellis rows")? as u32, 1),
        block_dim: (h as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: x holds n·d values; pre, post and bias d (or null); h ≤ 128
    // divides d (block_size).
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("trellis_had", e))?;
    Ok(())
}

/// `y[n, rows] = x[n, cols] · Cᵀ` (the codes alone).
pub fn mv(
    rt: &Runtime,
    t: &DeviceTrellis,
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    n: usize,
) -> Result<()> {
    let f = rt.function(&TRELLIS, &format!("trellis_mv_k{}", t.k))?;
    let (ri, ci, ni) = (
        super::dim(t.rows, "trellis rows")?,
        super::dim(t.cols, "trellis cols")?,
        super::dim(n, "trellis activation rows")?,
    );
    let mut l = rt.stream.launch_builder(&f);
    l.arg(&t.codes).arg(x).arg(y).arg(&ri).arg(&ci).arg(&ni);
    let cfg = LaunchConfig {
        grid_dim: ((t.rows / 16) as u32, n.div_ceil(MV_R) as u32, 1),
        block_dim: (32 * MV_W, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: codes hold rows·cols·k/32 words (checked at upload), x n·cols
    // values, y n·rows; the kernel reads only within its band and rows.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("trellis_mv", e))?;
    Ok(())
}
