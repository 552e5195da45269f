//! The decode kernels of quantized weights, the weight repacked once into
//! the GPU layout of [`crate::qlayout`] and uploaded: f32 activations and
//! sums (`kernels/qmatmul.cu`: the exact mode, and tables that are not
//! affine), or 8-bit activations in two passes and integer dot products
//! (`kernels/qmatmul_q8.cu`: generated rows of the integer and GGUF
//! formats in the default mode).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use mm_core::{Error, Result, WeightData};

use std::sync::Arc;

use mm_core::tensor::DeviceBuffer;

use crate::buffer::{alloc_of, upload};
use crate::compile::{QMATMUL, QMATMUL_Q8};
use crate::qlayout::QLayout;
use crate::runtime::{driver_err, Runtime};

/// Warps per block (`QWARPS` in the kernel) and weight rows per warp.
const WARPS: usize = 4;
const R: usize = 2;

/// A quantized weight in the GPU layout, on the GPU.
pub struct DeviceQWeight {
    pub rows: usize,
    pub cols: usize,
    pub kp: usize,
    pub bits: u32,
    pub group: usize,
    pub mode: u32,
    pub codes: CudaSlice<u8>,
    pub params: CudaSlice<u8>,
    pub lut: CudaSlice<f32>,
    /// `(la, lb)` when the table is affine, `lut[c] = la + lb·c` for every
    /// code (the integer and GGUF formats): the kernels then skip it.
    pub affine: Option<(f32, f32)>,
    /// Bytes the GPU reads per pass over the weight (codes + parameters).
    pub bytes: usize,
}

/// `(la, lb)` with `lut[c] == la + lb·c` exactly for every code, if any.
pub fn affine(lut: &[f32]) -> Option<(f32, f32)> {
    let (la, lb) = (*lut.first()?, lut.get(1)? - lut[0]);
    lut.iter()
        .enumerate()
        .all(|(c, &v)| v == la + lb * c as f32)
        .then_some((la, lb))
}

// SAFETY: as `DeviceWeight`: read-only device memory after the upload.
unsafe impl Sync for DeviceQWeight {}
unsafe impl Send for DeviceQWeight {}

/// The weight's GPU form, built and uploaded on first use, cached in it.
pub fn prepare(rt: &Runtime, w: &WeightData) -> Result<std::sync::Arc<DeviceQWeight>> {
    w.prepared(|w| {
        let what = format!("a {} weight {:?}", w.format.name(), w.shape);
        upload_layout(rt, &QLayout::from_weight(w)?, &what)
    })
}

/// Uploads a weight already in the GPU layout (`what` names it in errors).
pub fn upload_layout(rt: &Runtime, l: &QLayout, what: &str) -> Result<DeviceQWeight> {
    let unit = 128 / l.bits as usize;
    if l.group % unit != 0 {
        return Err(Error::Other(format!(
            "cuda layout of {what}: groups of {} split a unit of {unit} codes",
            l.group
        )));
    }
    let params = l.params.bytes();
    Ok(DeviceQWeight {
        rows: l.rows,
        cols: l.cols,
        kp: l.kp,
        bits: l.bits,
        group: l.group,
        mode: l.params.mode(),
        affine: affine(&l.lut),
        bytes: l.codes.len() + params.len(),
        codes: upload(rt, &l.codes, what)?,
        params: upload(rt, &params, what)?,
        lut: upload(rt, &l.lut, what)?,
    })
}

/// Launches the f32 kernel: `y[r] = x[r] · wᵀ (+ bias)` for the `n` rows
/// `r` listed in `rows` (the first `n` when None), all on the GPU;
/// nothing allocated, so a caller may capture it in a graph.
pub fn launch(
    rt: &Runtime,
    q: &DeviceQWeight,
    x: &CudaSlice<f32>,
    rows: Option<&CudaSlice<u32>>,
    bias: Option<&CudaSlice<f32>>,
    y: &mut CudaSlice<f32>,
    n: usize,
) -> Result<()> {
    let (k, m) = (q.cols, q.rows);
    let need = if rows.is_some() { 0 } else { n };
    if x.len() < need * k || y.len() < need * m || bias.is_some_and(|b| b.len() < m) {
        return Err(Error::Invalid(format!(
            "quantized matmul of {n} rows by a {m}x{k} weight: buffers of {}, {} and {:?} values",
            x.len(),
            y.len(),
            bias.map(|b| b.len())
        )));
    }
    let nr = activation_rows_per_warp(n);
    let (la, lb) = q.affine.unwrap_or((0.0, 1.0));
    let name = format!(
        "qmatmul_b{}_p{}_r{R}_n{nr}{}",
        q.bits,
        q.mode,
        if q.affine.is_some() { "_a" } else { "" }
    );
    let f = rt.function(&QMATMUL, &name)?;
    let dims = [
        super::dim(n, "matmul rows")?,
        super::dim(k, "matmul k")?,
        super::dim(m, "matmul m")?,
        super::dim(q.kp, "matmul padded k")?,
        super::dim(q.group, "group")?,
    ];
    let null = 0u64;
    let mut l = rt.stream.launch_builder(&f);
    l.arg(&q.codes).arg(&q.params).arg(&q.lut).arg(x);
    super::arg_or_null(&mut l, rows, &null);
    super::arg_or_null(&mut l, bias, &null);
    l.arg(y);
    for d in &dims {
        l.arg(d);
    }
    l.arg(&la).arg(&lb);
    let cfg = gemv_grid(m, R, n, nr)?;
    // SAFETY: codes hold m rows of kp codes, params m·kp/group entries,
    // lut 2^bits values; x, bias and y were checked above; the kernel
    // checks its row and column indices.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("quantized matmul", e))?;
    Ok(())
}

/// Activation passes of the 8-bit kernels in the default mode: the second
/// quantizes the first one's rounding remainder (about 15-bit
/// activations, as the CPU backend's default).
pub const Q8_PASSES: u32 = 2;

/// Whether [`launch_q8`] takes this weight: an affine table of 4- or
/// 8-bit codes.
pub fn q8_capable(q: &DeviceQWeight) -> bool {
    q.affine.is_some() && matches!(q.bits, 4 | 8)
}

/// Activations quantized by `quantize_x_q8`, kept for the next matmul of
/// the same input (q, k and v; gate and up): the input tensor itself is
/// held, so its buffer cannot be reused for another tensor meanwhile.
pub struct QuantizedX {
    input: Arc<dyn DeviceBuffer>,
    /// (rows, k, kp, passes, nibble order).
    key: (usize, usize, usize, u32, bool),
    xq: CudaSlice<i8>,
    xm: CudaSlice<i32>,
}

/// Weight rows per warp of the 8-bit kernels (2 or 4) for `n` activation
/// rows: four share each activation load among more weight rows, which
/// pays once there are several activation rows (H100, 14336×4096: M = 8
/// 51.4 µs against 58.1; M = 1 16.3 against 15.3). A row's arithmetic is
/// the same either way (each lane sums the same units in the same order).
pub fn q8_rows_per_warp(n: usize) -> usize {
    if n >= 2 {
        4
    } else {
        2
    }
}

/// Launches `quantize_x_q8` over `n` rows of `x` (those listed in `rows`,
/// if given): `key` = (rows, k, kp, passes, nibble order).
fn quantize_x(
    rt: &Runtime,
    x: &CudaSlice<f32>,
    rows: Option<&CudaSlice<u32>>,
    (n, k, kp, passes, nib): (usize, usize, usize, u32, bool),
) -> Result<(CudaSlice<i8>, CudaSlice<i32>)> {
    let np = n * passes as usize;
    let mut xq = alloc_of::<i8>(rt, np * kp, "8-bit activations")?;
    // Per block of 32: scale bits and two sums of 16 (an int4 each).
    let mut xm = alloc_of::<i32>(rt, np * kp / 32 * 4, "8-bit activation scales")?;
    let dims = [
        super::dim(n, "matmul rows")?,
        super::dim(k, "matmul k")?,
        super::dim(kp, "matmul padded k")?,
    ];
    let null = 0u64;
    let f = rt.function(&QMATMUL_Q8, "quantize_x_q8")?;
    let mut l = rt.stream.launch_builder(&f);
    l.arg(x);
    super::arg_or_null(&mut l, rows, &null);
    let (passes_i, nib) = (passes as i32, i32::from(nib));
    l.arg(&dims[0])
        .arg(&dims[1])
        .arg(&dims[2])
        .arg(&passes_i)
        .arg(&nib);
    l.arg(&mut xq).arg(&mut xm);
    let cfg = LaunchConfig {
        grid_dim: ((kp / 32).div_ceil(8) as u32, dims[0] as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: x holds the listed rows of k values (checked by the caller),
    // the outputs passes·n rows of kp codes and kp/32 blocks of 4 values.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("activation quantization", e))?;
    Ok((xq, xm))
}

/// As [`launch`], the activations quantized to 8 bits per 32 values first
/// (`passes` 1 or 2, see [`Q8_PASSES`]), then integer dot products with
/// `r` (2 or 4) weight rows per warp. The quantized activations live in
/// buffers of the stream's pool (stream-ordered, so a graph may capture
/// them); when `input` names the tensor `x` belongs to (and no `rows`
/// list is given), they are kept for the next call on the same input.
#[allow(clippy::too_many_arguments)]
pub fn launch_q8(
    rt: &Runtime,
    q: &DeviceQWeight,
    x: &CudaSlice<f32>,
    input: Option<&Arc<dyn DeviceBuffer>>,
    rows: Option<&CudaSlice<u32>>,
    bias: Option<&CudaSlice<f32>>,
    y: &mut CudaSlice<f32>,
    n: usize,
    passes: u32,
    r: usize,
) -> Result<()> {
    let (k, m, kp) = (q.cols, q.rows, q.kp);
    let ok = q8_capable(q) && matches!(passes, 1 | 2) && matches!(r, 2 | 4);
    let Some((la, lb)) = q.affine.filter(|_| ok) else {
        return Err(Error::Invalid(format!(
            "8-bit-activation matmul of a {}-bit weight (affine table: {}), {passes} passes, \
             {r} rows per warp",
            q.bits,
            q.affine.is_some()
        )));
    };
    let need = if rows.is_some() { 0 } else { n };
    if n == 0
        || kp % 32 != 0
        || x.len() < need * k
        || y.len() < need * m
        || bias.is_some_and(|b| b.len() < m)
    {
        return Err(Error::Invalid(format!(
            "8-bit-activation matmul of {n} rows by a {m}x{k} weight: buffers of {}, {} and {:?} values",
            x.len(),
            y.len(),
            bias.map(|b| b.len())
        )));
    }
    let key = (n, k, kp, passes, q.bits == 4);
    with_quantized_x(rt, x, input, rows, key, |xq, xm| {
        launch_q8_on(rt, q, (xq, xm), rows, bias, y, n, passes, r, (la, lb))
    })
}

/// `f` on the 8-bit activations of `x` for `key` = (rows, k, kp, passes,
/// nibble order): the kept ones when `input` (the tensor `x` belongs to,
/// with no `rows` list) was quantized with that key last, else quantized
/// now (and kept, when `input` is given).
pub(crate) fn with_quantized_x<T>(
    rt: &Runtime,
    x: &CudaSlice<f32>,
    input: Option<&Arc<dyn DeviceBuffer>>,
    rows: Option<&CudaSlice<u32>>,
    key: (usize, usize, usize, u32, bool),
    f: impl FnOnce(&CudaSlice<i8>, &CudaSlice<i32>) -> Result<T>,
) -> Result<T> {
    let input = input.filter(|_| rows.is_none());
    let mut kept = rt.quantized_x.lock().unwrap_or_else(|p| p.into_inner());
    let hit =
        matches!((&*kept, input), (Some(c), Some(i)) if Arc::ptr_eq(&c.input, i) && c.key == key);
    if hit {
        let c = kept.as_ref().expect("checked above");
        return f(&c.xq, &c.xm);
    }
    let (xq, xm) = quantize_x(rt, x, rows, key)?;
    match input {
        Some(i) => {
            let c = kept.insert(QuantizedX {
                input: i.clone(),
                key,
                xq,
                xm,
            });
            f(&c.xq, &c.xm)
        }
        None => f(&xq, &xm),
    }
}

/// The GEMV of [`launch_q8`] on activations already quantized.
#[allow(clippy::too_many_arguments)]
fn launch_q8_on(
    rt: &Runtime,
    q: &DeviceQWeight,
    (xq, xm): (&CudaSlice<i8>, &CudaSlice<i32>),
    rows: Option<&CudaSlice<u32>>,
    bias: Option<&CudaSlice<f32>>,
    y: &mut CudaSlice<f32>,
    n: usize,
    passes: u32,
    r: usize,
    (la, lb): (f32, f32),
) -> Result<()> {
    let (m, kp) = (q.rows, q.kp);
    let null = 0u64;
    let nr = activation_rows_per_warp(n);
    let name = format!("qmatmul_q8{passes}_b{}_p{}_r{r}_n{nr}", q.bits, q.mode);
    let f = rt.function(&QMATMUL_Q8, &name)?;
    let dims = [
        super::dim(n, "matmul rows")?,
        super::dim(m, "matmul m")?,
        super::dim(kp, "matmul padded k")?,
        super::dim(q.group, "group")?,
    ];
    let mut l = rt.stream.launch_builder(&f);
    l.arg(&q.codes).arg(&q.params).arg(xq).arg(xm);
    super::arg_or_null(&mut l, rows, &null);
    super::arg_or_null(&mut l, bias, &null);
    l.arg(y);
    for d in &dims {
        l.arg(d);
    }
    l.arg(&la).arg(&lb);
    let cfg = gemv_grid(m, r, n, nr)?;
    // SAFETY: codes hold m rows of kp codes, params m·kp/group entries;
    // the activation buffers were sized above for n rows and `passes`;
    // bias and y were checked above; the kernel checks its indices.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("8-bit-activation matmul", e))?;
    Ok(())
}

/// Activation rows per warp of the decode kernels (their `NR`) for `n`.
fn activation_rows_per_warp(n: usize) -> usize {
    match n {
        1 => 1,
        2..=4 => 4,
        _ => 8,
    }
}

/// The decode kernels' launch: blocks of [`WARPS`] warps of `r` weight
/// rows each over `m` rows, and `nr` activation rows per block row.
fn gemv_grid(m: usize, r: usize, n: usize, nr: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (
            m.div_ceil(WARPS * r) as u32,
            super::dim(n.div_ceil(nr), "matmul row groups")? as u32,
            1,
        ),
        block_dim: (32 * WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::affine;

    #[test]
    fn affine_tables_are_recognized_exactly() {
        let int4: Vec<f32> = (0..16).map(|c| c as f32 - 8.0).collect();
        assert_eq!(affine(&int4), Some((-8.0, 1.0)));
        let mut nf4 = int4.clone();
        nf4[5] += 1e-3;
        assert_eq!(affine(&nf4), None);
        assert_eq!(affine(&[0.5]), None, "one value says nothing of a step");
    }
}
