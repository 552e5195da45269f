//! Embedding lookup: rows of a `[vocab, k]` table, in any weight format.
//! Only the requested rows are dequantized; nothing is cached.

use mm_core::{Error, Result, Tensor, WeightData};

fn check(ids: &[u32], table: &WeightData) -> Result<(usize, usize)> {
    let (vocab, k) = table.dims2()?;
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    Ok((vocab, k))
}

/// Fast CPU embedding: dequantizes just the rows it needs.
pub fn embedding(ids: &[u32], table: &WeightData) -> Result<Tensor> {
    let (_, k) = check(ids, table)?;
    let mut out = mm_core::host_pool::zeroed(ids.len() * k);
    for (o, &id) in out.chunks_mut(k).zip(ids) {
        o.copy_from_slice(&mm_quant::dequantize_rows_ref(
            table,
            id as usize..id as usize + 1,
        )?);
    }
    Tensor::from_vec(vec![ids.len(), k], out)
}

/// Scalar reference over a dense table.
pub fn embedding_ref(ids: &[u32], table: &[f32], k: usize) -> Vec<f32> {
    ids.iter()
        .flat_map(|&i| table[i as usize * k..(i as usize + 1) * k].to_vec())
        .collect()
}
