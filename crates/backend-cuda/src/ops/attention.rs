//! Causal GQA paged attention on the GPU (`kernels/attention.cu`): the
//! CPU op's contract (`mm_core::Backend::paged_attention`), decode and
//! prefill rows in one launch, f32 or f16 stores, sliding windows.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use mm_core::{Error, KvDType, KvStore, PagedBatch, PagedParams, Result, Tensor};

use crate::buffer::{alloc, kv_buffer, on_device, tensor};
use crate::compile::ATTENTION;
use crate::runtime::{driver_err, Runtime};

/// Warps per block (`WARPS` in the kernel).
const WARPS: u32 = 4;

/// Per query row of a validated batch: its position (it attends to keys
/// `0..=pos`) and where its sequence's block table starts.
pub(crate) fn row_meta(batch: &PagedBatch) -> (Vec<u32>, Vec<u32>) {
    let rows = batch.seqs.iter().map(|s| s.q_len).sum();
    let (mut pos, mut table0) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    for s in &batch.seqs {
        for i in 0..s.q_len {
            pos.push((s.kv_len - s.q_len + i) as u32);
            table0.push(s.table_start as u32);
        }
    }
    (pos, table0)
}

pub fn paged_attention(
    rt: &Runtime,
    q: &Tensor,
    k: &KvStore,
    v: &KvStore,
    batch: &PagedBatch,
    p: &PagedParams,
) -> Result<Tensor> {
    let rows = mm_core::kv::attention_rows(q, k, v, batch, p)?;
    let (h, hkv, d) = (p.n_heads, p.n_kv_heads, p.head_dim);
    let qw = h * d;
    let dpl = match d {
        1..=32 => 32,
        33..=64 => 64,
        65..=128 => 128,
        129..=256 => 256,
        // MLA's absorbed form: kv_lora_rank + qk_rope_head_dim (512 + 64).
        257..=576 => 576,
        _ => {
            return Err(Error::Invalid(format!(
                "cuda paged attention: head_dim {d} (at most 576)"
            )))
        }
    };
    if rows == 0 {
        return Ok(Tensor::zeros(vec![0, qw]));
    }
    let (kb, vb) = (
        kv_buffer(k, "paged attention")?,
        kv_buffer(v, "paged attention")?,
    );
    let (pos, table0) = row_meta(batch);
    let qd = on_device(rt, q)?;
    let tables = rt.upload_cached("block tables", &batch.block_tables)?;
    let pos = rt.upload_cached("query positions", &pos)?;
    let table0 = rt.upload_cached("block-table starts", &table0)?;
    let mut y = alloc(rt, rows * qw, "attention output")?;
    let elem = match k.dtype() {
        KvDType::F32 => "f32",
        KvDType::F16 => "f16",
    };
    let f = rt.function(&ATTENTION, &format!("attention_{elem}_d{dpl}"))?;
    let dims = [
        super::dim(h, "heads")?,
        super::dim(hkv, "kv heads")?,
        super::dim(d, "head_dim")?,
        super::dim(batch.block_size, "block size")?,
    ];
    let window = match p.window {
        None => 0,
        Some(w) => super::dim(w.max(1), "window")?,
    };
    let mut l = rt.stream.launch_builder(&f);
    l.arg(qd.slice())
        .arg(&kb.data)
        .arg(&vb.data)
        .arg(tables.as_ref())
        .arg(pos.as_ref())
        .arg(table0.as_ref())
        .arg(&mut y);
    for x in &dims {
        l.arg(x);
    }
    l.arg(&p.scale).arg(&window);
    let cfg = LaunchConfig {
        grid_dim: (super::dim(rows, "attention rows")? as u32, h as u32, 1),
        block_dim: (32 * WARPS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the batch was validated against the stores (every block of
    // every table inside them), q holds rows × h·d values, y the same.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("paged attention", e))?;
    tensor(rt, vec![rows, qw], y)
}
