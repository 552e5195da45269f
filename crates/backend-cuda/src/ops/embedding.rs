//! Embedding rows of a table (`kernels/embedding.cu`) as f32 on the GPU:
//! dense tables as stored, quantized ones in the GPU layout of
//! [`crate::qlayout`] (the one their matmul reads).

use cudarc::driver::PushKernelArg;
use mm_core::{Error, Result, Tensor, WeightData, WeightFormat};

use crate::buffer::{alloc, tensor, weight};
use crate::compile::EMBEDDING;
use crate::ops::qmatmul;
use crate::qlayout;
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
    let suffix = elem(table.format);
    if suffix.is_none() && !qlayout::supports(table.format) {
        return Err(Error::Invalid(format!(
            "cuda embedding: {} tables are not supported",
            table.format.name()
        )));
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    if ids.is_empty() || k == 0 {
        return Ok(Tensor::zeros(vec![ids.len(), k]));
    }
    let idd = rt.upload_cached("token ids", ids)?;
    let mut y = alloc(rt, ids.len() * k, "embedding output")?;
    let ki = super::dim(k, "embedding width")?;
    match suffix {
        Some(suffix) => {
            let w = weight(rt, table)?;
            let f = rt.function(&EMBEDDING, &format!("embedding_{suffix}"))?;
            let mut l = rt.stream.launch_builder(&f);
            l.arg(&w.bytes).arg(idd.as_ref()).arg(&mut y).arg(&ki);
            // SAFETY: ids were checked against the table's rows; y holds
            // ids.len()·k values.
            unsafe { l.launch(super::grid(ids.len(), 256)) }
        }
        None => {
            // The quantized table in the layout its matmul reads (a tied
            // LM head shares it).
            let q = qmatmul::prepare(rt, table)?;
            let f = rt.function(&EMBEDDING, &format!("qembedding_b{}_p{}", q.bits, q.mode))?;
            let (kp, group) = (
                super::dim(q.kp, "embedding padded width")?,
                super::dim(q.group, "group")?,
            );
            let mut l = rt.stream.launch_builder(&f);
            l.arg(&q.codes)
                .arg(&q.params)
                .arg(&q.lut)
                .arg(idd.as_ref())
                .arg(&mut y)
                .arg(&ki)
                .arg(&kp)
                .arg(&group);
            // SAFETY: as above; the layout holds vocab rows of kp codes and
            // their groups' parameters.
            unsafe { l.launch(super::grid(ids.len(), 256)) }
        }
    }
    .map_err(|e| driver_err("embedding", e))?;
    tensor(rt, vec![ids.len(), k], y)
}
