//! The paged key/value cache's storage and the batch layout of a forward
//! step, shared by every backend.
//!
//! Layout: one [`KvStore`] per layer for keys and one for values, each
//! `slots × width` values (`width = kv heads × head dim`), where slot
//! `b·block_size + i` is row `i` of block `b`. A sequence's block table
//! lists its blocks in position order, so its key at position `t` lives in
//! slot `table[t / block_size]·block_size + t % block_size`. Blocks are
//! handed out by the engine's allocator; the store knows nothing of
//! sequences.
//!
//! A forward step runs the tokens of many sequences at once, flattened into
//! one `[tokens, …]` batch: [`PagedBatch`] says which rows belong to which
//! sequence, where each sequence's keys are, and how many it has.

use std::sync::Arc;

use half::f16;

use crate::tensor::DeviceBuffer;
use crate::{Error, Result};

/// Element type of a KV store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KvDType {
    /// Half precision: half the memory, the default for serving.
    #[default]
    F16,
    /// Full precision (the `--exact` verification mode).
    F32,
}

impl KvDType {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            KvDType::F16 => 2,
            KvDType::F32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDType::F16 => "f16",
            KvDType::F32 => "f32",
        }
    }
}

/// Where a KV store's values live.
#[derive(Clone, Debug)]
pub enum KvStorage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// Owned by a GPU backend (which knows its element type).
    Device(Arc<dyn DeviceBuffer>),
}

/// One layer's keys or values: `slots` rows of `width` values.
#[derive(Clone, Debug)]
pub struct KvStore {
    slots: usize,
    width: usize,
    dtype: KvDType,
    pub storage: KvStorage,
}

impl KvStore {
    /// A zeroed host store.
    pub fn host(slots: usize, width: usize, dtype: KvDType) -> Result<Self> {
        let n = slots.checked_mul(width).ok_or_else(|| {
            Error::Invalid(format!("KV store of {slots} slots × {width} overflows"))
        })?;
        let storage = match dtype {
            KvDType::F32 => KvStorage::F32(vec![0.0; n]),
            KvDType::F16 => KvStorage::F16(vec![f16::ZERO; n]),
        };
        Ok(Self {
            slots,
            width,
            dtype,
            storage,
        })
    }

    /// A host f32 store holding `values` (`slots × width`, row-major).
    pub fn from_f32(slots: usize, width: usize, values: Vec<f32>) -> Result<Self> {
        if slots.checked_mul(width) != Some(values.len()) {
            return Err(Error::Invalid(format!(
                "KV store of {slots} × {width} given {} values",
                values.len()
            )));
        }
        Ok(Self {
            slots,
            width,
            dtype: KvDType::F32,
            storage: KvStorage::F32(values),
        })
    }

    /// Checks a read of `slots` (each inside the store), or an error
    /// naming the first bad one: every backend's `gather_kv` checks with
    /// this.
    pub fn check_read(&self, slots: &[u32]) -> Result<()> {
        if let Some(s) = slots.iter().find(|&&s| s as usize >= self.slots) {
            return Err(Error::Invalid(format!(
                "gather_kv: slot {s} is past the store's {} slots",
                self.slots
            )));
        }
        Ok(())
    }

    /// Wraps a device buffer of `slots × width` values.
    pub fn device(
        slots: usize,
        width: usize,
        dtype: KvDType,
        buf: Arc<dyn DeviceBuffer>,
    ) -> Result<Self> {
        if buf.len() != slots * width {
            return Err(Error::Invalid(format!(
                "KV store of {slots} × {width} given a device buffer of {} values",
                buf.len()
            )));
        }
        Ok(Self {
            slots,
            width,
            dtype,
            storage: KvStorage::Device(buf),
        })
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn dtype(&self) -> KvDType {
        self.dtype
    }

    /// Bytes the values take.
    pub fn bytes(&self) -> usize {
        self.slots * self.width * self.dtype.bytes()
    }

    /// Checks a write of `rows` rows of `width` values into `slots` (one
    /// slot per row, each inside the store), or an error naming the
    /// mismatch: every backend's `write_kv` checks with this before it
    /// writes anything, so a bad slot list leaves the store untouched.
    pub fn check_write(&self, slots: &[u32], rows: usize, width: usize) -> Result<()> {
        if width != self.width || rows != slots.len() {
            return Err(Error::Invalid(format!(
                "write_kv: {rows} rows of {width} values for {} slots of a store {} wide",
                slots.len(),
                self.width
            )));
        }
        if let Some(s) = slots.iter().find(|&&s| s as usize >= self.slots) {
            return Err(Error::Invalid(format!(
                "write_kv: slot {s} is past the store's {} slots",
                self.slots
            )));
        }
        Ok(())
    }

    /// Row `slot` widened to f32 into `out` (host stores only).
    pub fn read_row(&self, slot: usize, out: &mut [f32]) -> Result<()> {
        let w = self.width;
        if slot >= self.slots || out.len() != w {
            return Err(Error::Invalid(format!(
                "KV read of slot {slot} into {} values ({} slots × {w})",
                out.len(),
                self.slots
            )));
        }
        match &self.storage {
            KvStorage::F32(v) => out.copy_from_slice(&v[slot * w..][..w]),
            KvStorage::F16(v) => {
                use half::slice::HalfFloatSliceExt;
                v[slot * w..][..w].convert_to_f32_slice(out)
            }
            KvStorage::Device(b) => {
                return Err(Error::Invalid(format!(
                    "KV store on {} read as host memory",
                    b.backend()
                )))
            }
        }
        Ok(())
    }
}

/// One sequence's part of a flattened step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqSpan {
    /// First row of the sequence's queries in the batch.
    pub q_start: usize,
    /// Number of its query rows this step (1 for a decode step, a chunk of
    /// the prompt for prefill).
    pub q_len: usize,
    /// Keys the sequence has after this step's rows are written: query row
    /// `i` is at position `kv_len − q_len + i` and sees keys up to it.
    pub kv_len: usize,
    /// Where its block table starts in [`PagedBatch::block_tables`].
    pub table_start: usize,
}

/// The sequences of one forward step and their block tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PagedBatch {
    pub seqs: Vec<SeqSpan>,
    /// Every sequence's block table, concatenated.
    pub block_tables: Vec<u32>,
    /// Token slots per block.
    pub block_size: usize,
}

impl PagedBatch {
    /// The block table of `s`: enough blocks for its `kv_len` keys.
    pub fn table(&self, s: &SeqSpan) -> &[u32] {
        let n = s.kv_len.div_ceil(self.block_size.max(1));
        &self.block_tables[s.table_start..s.table_start + n]
    }

    /// Slot of key position `t` of sequence `s`.
    #[inline]
    pub fn slot(&self, s: &SeqSpan, t: usize) -> usize {
        let bs = self.block_size;
        self.block_tables[s.table_start + t / bs] as usize * bs + t % bs
    }

    /// Total query rows.
    pub fn rows(&self) -> usize {
        self.seqs.iter().map(|s| s.q_len).sum()
    }

    /// Checks that the spans tile `rows` query rows in order, that every
    /// table is long enough and every block inside a store of `slots`.
    pub fn validate(&self, rows: usize, slots: usize) -> Result<()> {
        let bad = |why: String| Err(Error::Invalid(format!("paged batch: {why}")));
        if self.block_size == 0 {
            return bad("block size 0".into());
        }
        let mut next = 0;
        for (i, s) in self.seqs.iter().enumerate() {
            if s.q_start != next || s.q_len == 0 || s.q_len > s.kv_len {
                return bad(format!(
                    "sequence {i} ({s:?}) does not follow row {next} or has more queries than keys"
                ));
            }
            next += s.q_len;
            let n = s.kv_len.div_ceil(self.block_size);
            let Some(table) = self.block_tables.get(s.table_start..s.table_start + n) else {
                return bad(format!(
                    "sequence {i} needs {n} blocks from {}, the tables hold {}",
                    s.table_start,
                    self.block_tables.len()
                ));
            };
            if let Some(b) = table
                .iter()
                .find(|&&b| (b as usize + 1) * self.block_size > slots)
            {
                return bad(format!(
                    "sequence {i} names block {b}, past the store's {slots} slots"
                ));
            }
        }
        if next != rows {
            return bad(format!("spans cover {next} rows, the queries have {rows}"));
        }
        Ok(())
    }
}

/// Attention shape of a paged step.
#[derive(Clone, Copy, Debug)]
pub struct PagedParams {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplier of q·k (usually `1/sqrt(d)`).
    pub scale: f32,
    /// Sliding window: a query at position `p` sees only keys `p−w+1..=p`.
    pub window: Option<usize>,
}

/// Query rows of a paged-attention call, or an error naming what does not
/// fit: heads and widths of `q`, the stores and `p`, stores of one size and
/// type, and the batch against the stores ([`PagedBatch::validate`]).
/// Every backend's `paged_attention` checks its input with this.
pub fn attention_rows(
    q: &crate::Tensor,
    k: &KvStore,
    v: &KvStore,
    b: &PagedBatch,
    p: &PagedParams,
) -> Result<usize> {
    let (n, qw) = q.dims2()?;
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "paged attention: {why} (q {:?}, k {}×{}, v {}×{}, {p:?})",
            q.shape(),
            k.slots(),
            k.width(),
            v.slots(),
            v.width()
        )))
    };
    if p.n_kv_heads == 0 || p.n_heads % p.n_kv_heads != 0 || p.head_dim == 0 {
        return bad("query heads must be a multiple of kv heads");
    }
    if qw != p.n_heads * p.head_dim
        || k.width() != p.n_kv_heads * p.head_dim
        || (v.slots(), v.width(), v.dtype()) != (k.slots(), k.width(), k.dtype())
    {
        return bad("widths do not match heads × head_dim");
    }
    b.validate(n, k.slots())?;
    Ok(n)
}
