//! Sampling: plain greedy rows (no bias, no penalty, no draw) on the GPU
//! (`shaders/sample.wgsl`), so only their ids come back; every other row
//! is read back alone and sampled on the host by `mm_core::sample`, the
//! reference itself.

use std::sync::Arc;

use mm_core::sample::{check_rows, sample_row};
use mm_core::{Result, SampleRow, Tensor};

use super::dim;
use crate::buffer::{on_gpu, words};
use crate::runtime::Runtime;
use crate::shader::Variant;

/// Threads per workgroup (one workgroup per row).
const WG: u32 = 256;

fn variant() -> Variant {
    Variant::new("sample", "argmax").with("WG", WG)
}

pub fn variants() -> Vec<Variant> {
    vec![variant()]
}

/// Whether `r` is an argmax of the logits as they are.
fn plain_greedy(r: &SampleRow) -> bool {
    !r.draws()
        && r.logit_bias.is_empty()
        && (r.repeat_penalty == 1.0 || r.repeat_tokens.is_empty())
        && (!r.penalizes_produced() || r.produced.is_empty())
}

pub fn sample(rt: &Arc<Runtime>, logits: &Tensor, rows: &[SampleRow]) -> Result<Vec<u32>> {
    let (_, vocab) = logits.dims2()?;
    check_rows(logits.numel(), vocab, rows)?;
    let mut out = vec![0u32; rows.len()];
    let (gpu, host): (Vec<usize>, Vec<usize>) =
        (0..rows.len()).partition(|&i| plain_greedy(&rows[i]));
    if !gpu.is_empty() {
        let list: Vec<u32> = gpu
            .iter()
            .map(|&i| dim(rows[i].row, "logits row"))
            .collect::<Result<_>>()?;
        let kernel = rt.kernel(&variant())?;
        let lb = on_gpu(rt, logits)?;
        let rb = words(rt, &list, "sampled rows")?;
        let ib = rt.alloc(list.len() as u64 * 4, "sampled ids")?;
        rt.dispatch(
            &kernel,
            &[dim(list.len(), "sampled rows")?, dim(vocab, "vocabulary")?],
            &[(1, &lb), (2, &rb), (3, &ib)],
            [dim(list.len(), "sampled rows")?, 1, 1],
        )?;
        let ids = rt.read(&ib, 0, list.len() as u64 * 4)?;
        for (&i, id) in gpu.iter().zip(bytemuck::cast_slice::<u8, u32>(&ids)) {
            out[i] = *id;
        }
    }
    if !host.is_empty() {
        let which: Vec<usize> = host.iter().map(|&i| rows[i].row).collect();
        let vals = logits.rows_to_vec(&which)?;
        for (j, &i) in host.iter().enumerate() {
            out[i] = sample_row(&vals[j * vocab..(j + 1) * vocab], &rows[i])?;
        }
    }
    Ok(out)
}
