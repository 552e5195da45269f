//! Embedding rows of a dense table (`kernels/embedding.cu`), widened to
//! f32 on the GPU.

use cudarc::driver::PushKernelArg;
use mm_core::{Error, Result, Tensor, WeightData, WeightFormat};

use crate::buffer::{alloc, tensor, upload, weight};
use crate::compile::EMBEDDING;
use crate::runtime::{driver_err, Runtime};

/// The kernel suffix of a dense element type, or `None` for other formats.
pub(crate) fn elem(format: WeightFormat) -> Option<&'static str> {
    match format {
        WeightFormat::F32 => Some("f32"),
        WeightFormat::F16 => Some("f16"),
        WeightFormat::BF16 => Some("bf16"),
        _ => None,
    }
}

pub fn embedding(rt: &Runtime, ids: &[u32], table: &WeightData) -> Result<Tensor> {
    let (vocab, k) = table.dims2()?;
    let Some(suffix) = elem(table.format) else {
        return Err(Error::Invalid(format!(
            "cuda embedding: {} tables are not supported",
            table.format.name()
        )));
    };
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    if ids.is_empty() || k == 0 {
        return Ok(Tensor::zeros(vec![ids.len(), k]));
    }
    let w = weight(rt, table)?;
    let idd = upload(rt, ids, "token ids")?;
    let mut y = alloc(rt, ids.len() * k, "embedding output")?;
    let f = rt.function(&EMBEDDING, &format!("embedding_{suffix}"))?;
    let ki = super::dim(k, "embedding width")?;
    let mut l = rt.stream.launch_builder(&f);
    l.arg(&w.bytes).arg(&idd).arg(&mut y).arg(&ki);
    // SAFETY: ids were checked against the table's rows; y holds
    // ids.len()·k values.
    unsafe { l.launch(super::grid(ids.len(), 256)) }.map_err(|e| driver_err("embedding", e))?;
    tensor(rt, vec![ids.len(), k], y)
}
