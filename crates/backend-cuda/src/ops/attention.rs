//! Causal GQA paged attention on the GPU (`kernels/attention.cu`): the
//! CPU op's contract (`mm_core::Backend::paged_attention`), decode and
//! prefill rows in one launch, f32 or f16 stores, sliding windows. With
//! the backend's next kernels (not yet run on a GPU), models with several
//! query heads per KV head take the v2 kernel (the heads of a KV head in
//! one block, decode rows' keys split); others v1. The choice depends on
//! the model's shape only, never on the batch.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use mm_core::{Error, KvDType, KvStore, PagedBatch, PagedParams, Result, Tensor};

use crate::buffer::{alloc, kv_buffer, on_device, tensor};
use crate::compile::ATTENTION;
use crate::runtime::{driver_err, Runtime};

/// Warps per block (`WARPS` in the kernel).
const WARPS: u32 = 4;

/// Per query row of a validated batch: its position (it attends to keys
/// `0..=pos`), where its sequence's block table starts, and 1 when its
/// sequence decodes one token (`q_len` 1: the v2 kernel splits its keys).
pub(crate) fn row_meta(batch: &PagedBatch) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let rows = batch.seqs.iter().map(|s| s.q_len).sum();
    let mut pos = Vec::with_capacity(rows);
    let mut table0 = Vec::with_capacity(rows);
    let mut single = Vec::with_capacity(rows);
    for s in &batch.seqs {
        for i in 0..s.q_len {
            pos.push((s.kv_len - s.q_len + i) as u32);
            table0.push(s.table_start as u32);
            single.push(u32::from(s.q_len == 1));
        }
    }
    (pos, table0, single)
}

/// The v2 kernel's constants (`GB`, `MAXS`, `GT` in attention.cu): query
/// heads per block at most, splits of a decode row's keys at most,
/// threads per block; and the (row, head group) completion counters kept
/// by the runtime (a launch with more falls back to v1).
const GB: usize = 16;
const MAXS: usize = 16;
const GT: u32 = 256;
/// Keys per tile (`TK`). The v2 kernel's dynamic shared memory peaks at
/// d = 576 with f32 stores and separate K and V: 16 heads' queries (36
/// KB), the probabilities (2 KB) and two tiles (148 KB); A100 and H100
/// allow a block 163 and 227 KB.
const TK: usize = 32;
pub(crate) const COUNTERS: usize = 1 << 16;

/// `(groups, heads per group)` of the v2 kernel for `g` query heads per
/// KV head, or `None` when v1 runs: one query head per KV head (nothing to
/// share), or a head width the 8-wide loads cannot take.
fn gqa_groups(g: usize, d: usize) -> Option<(usize, usize)> {
    if g < 2 || d % 8 != 0 || d > 576 {
        return None;
    }
    let groups = g.div_ceil(GB);
    Some((groups, g.div_ceil(groups)))
}

pub fn paged_attention(
    rt: &Runtime,
    q: &Tensor,
    k: &KvStore,
    v: &KvStore,
    batch: &PagedBatch,
    p: &PagedParams,
    v2: bool,
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
    let (pos, table0, single) = row_meta(batch);
    let qd = on_device(rt, q)?;
    let tables = rt.upload_cached("block tables", &batch.block_tables)?;
    let pos = rt.upload_cached("query positions", &pos)?;
    let table0 = rt.upload_cached("block-table starts", &table0)?;
    let mut y = alloc(rt, rows * qw, "attention output")?;
    let elem = match k.dtype() {
        KvDType::F32 => "f32",
        KvDType::F16 => "f16",
    };
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
    let v2 = v2 && rows * hkv * GB <= COUNTERS;
    if let Some((groups, gb)) = gqa_groups(h / hkv, d).filter(|_| v2) {
        let splits = if single.contains(&1) { MAXS } else { 1 };
        let single = rt.upload_cached("decode rows", &single)?;
        let count = rt.attention_counters()?;
        let mut part = alloc(
            rt,
            rows * hkv * groups * splits * gb * (d + 2),
            "attention partial results",
        )?;
        let f = rt.function(&ATTENTION, &format!("attention_gqa_{elem}"))?;
        let esize = if elem == "f32" { 4 } else { 2 };
        let row_bytes = (d + 16 / esize) * esize;
        let stores = if std::ptr::eq(k, v) { 1 } else { 2 };
        let smem = gb * d * 4 + TK * GB * 4 + TK * row_bytes * stores;
        // A block's opt-in limit covers the kernel's static shared memory
        // too: what dynamic memory may ask for is the rest.
        let fixed = f
            .shared_size_bytes()
            .map_err(|e| driver_err("attention static shared memory", e))?
            .max(0) as usize;
        let max_smem = rt.max_shared_memory()?.saturating_sub(fixed);
        if smem > max_smem {
            return Err(Error::Invalid(format!(
                "cuda paged attention: {smem} bytes of shared memory for heads of {d} ({max_smem} allowed)"
            )));
        }
        if !rt.capturing() {
            // Above the default 48 KB a kernel must ask: for what the GPU
            // allows a block, so that no later launch (or recorded step)
            // needs more than was set.
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                max_smem as i32,
            )
            .map_err(|e| driver_err("attention shared memory", e))?;
        }
        let mut l = rt.stream.launch_builder(&f);
        l.arg(qd.slice())
            .arg(&kb.data)
            .arg(&vb.data)
            .arg(tables.as_ref())
            .arg(pos.as_ref())
            .arg(table0.as_ref())
            .arg(single.as_ref())
            .arg(&mut y)
            .arg(&mut part)
            .arg(count.as_ref());
        for x in &dims {
            l.arg(x);
        }
        let g = [
            super::dim(groups, "head groups")?,
            super::dim(gb, "heads per group")?,
        ];
        l.arg(&p.scale).arg(&window).arg(&g[0]).arg(&g[1]);
        let cfg = LaunchConfig {
            grid_dim: (
                super::dim(rows, "attention rows")? as u32,
                (hkv * groups) as u32,
                splits as u32,
            ),
            block_dim: (GT, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        // SAFETY: as below; part holds rows·hkv·groups·splits blocks of
        // gb·(d + 2) floats, count at least rows·hkv·groups zeros (each
        // launch's last blocks reset theirs), d ≤ 576 and a multiple of 8.
        unsafe { l.launch(cfg) }.map_err(|e| driver_err("paged attention", e))?;
        return tensor(rt, vec![rows, qw], y);
    }
    let f = rt.function(&ATTENTION, &format!("attention_{elem}_d{dpl}"))?;
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
