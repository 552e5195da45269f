//! The paged key/value cache and the inputs of one forward step.
//!
//! [`PagedKv`] holds one key and one value [`KvStore`] per layer on the
//! model's device, `num_blocks × block_size` slots each (a value store of
//! width 0 when the key store is all a layer keeps: multi-head latent
//! attention caches one latent-and-rotated-key row per token); which blocks a
//! sequence owns is the engine's business (its block allocator), the cache
//! only stores rows. A [`Step`] is one forward pass over the flattened
//! tokens of many sequences: their ids, positions, the slot each token's
//! key/value goes to, and the [`PagedBatch`] attention reads.
//!
//! [`KvCache`] is the single-sequence view the one-shot callers use
//! (`generate`, `eval`, `bench`, calibration): a private paged cache whose
//! block table is `0, 1, 2, …`, run through the same [`Step`] path.

use mm_core::{Device, Error, KvDType, KvStore, PagedBatch, Result, RowKind, SeqSpan};

/// Default tokens per KV block.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// A paged KV cache: per layer, keys and values for `num_blocks` blocks.
pub struct PagedKv {
    /// Unique per cache ([`mm_core::unique_id`]): keys recorded steps.
    pub(crate) id: u64,
    pub(crate) k: Vec<KvStore>,
    pub(crate) v: Vec<KvStore>,
    block_size: usize,
    num_blocks: usize,
}

impl PagedKv {
    /// Allocates `num_blocks` blocks of `block_size` slots for `layers`
    /// layers of `k_width` key and `v_width` value values (kv heads × head
    /// dim each for grouped-query attention; the latent and rotated key,
    /// and 0, for multi-head latent attention) in `dtype`.
    pub fn new(
        device: &Device,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        (k_width, v_width): (usize, usize),
        dtype: KvDType,
    ) -> Result<Self> {
        if num_blocks == 0 || block_size == 0 {
            return Err(Error::Invalid(format!(
                "a KV cache needs blocks: {num_blocks} blocks of {block_size} tokens asked"
            )));
        }
        let slots = num_blocks.checked_mul(block_size).ok_or_else(|| {
            Error::Invalid(format!("{num_blocks} KV blocks of {block_size} overflow"))
        })?;
        let mk = |width| -> Result<Vec<KvStore>> {
            (0..layers)
                .map(|_| device.kv_store(slots, width, dtype))
                .collect()
        };
        Ok(Self {
            id: mm_core::unique_id(),
            k: mk(k_width)?,
            v: mk(v_width)?,
            block_size,
            num_blocks,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn layers(&self) -> usize {
        self.k.len()
    }

    pub fn dtype(&self) -> KvDType {
        self.k.first().map_or(KvDType::F32, |s| s.dtype())
    }

    /// Bytes one block takes over every layer, keys and values.
    pub fn bytes_per_block(&self) -> usize {
        self.block_size * self.bytes_per_token()
    }

    /// Bytes one token's keys and values take over every layer.
    pub fn bytes_per_token(&self) -> usize {
        let w = |s: &[KvStore]| s.first().map_or(0, |s| s.width());
        self.k.len() * (w(&self.k) + w(&self.v)) * self.dtype().bytes()
    }
}

/// One forward step over the flattened tokens of the batch's sequences.
#[derive(Clone, Debug, Default)]
pub struct Step {
    /// Token ids, sequence after sequence (`batch.seqs` order).
    pub ids: Vec<u32>,
    /// Position of each token in its sequence.
    pub positions: Vec<u32>,
    /// KV slot each token's key and value are written to.
    pub slots: Vec<u32>,
    /// Which rows belong to which sequence and where their keys are.
    pub batch: PagedBatch,
    /// Rows whose logits the step returns, in this order.
    pub logits_rows: Vec<usize>,
    /// Each row's kind (prompt or generated token): a backend gives every
    /// row the arithmetic of its kind, whatever the batch around it.
    pub kinds: Vec<RowKind>,
}

impl Step {
    /// Checks the step against itself and a cache (before anything runs, so
    /// a bad step changes nothing).
    pub fn validate(&self, kv: &PagedKv) -> Result<()> {
        let n = self.ids.len();
        if n == 0 {
            return Err(Error::Invalid("forward step with no tokens".into()));
        }
        if self.positions.len() != n || self.slots.len() != n || self.kinds.len() != n {
            return Err(Error::Invalid(format!(
                "forward step: {n} ids, {} positions, {} slots, {} row kinds",
                self.positions.len(),
                self.slots.len(),
                self.kinds.len()
            )));
        }
        if self.batch.block_size != kv.block_size {
            return Err(Error::Invalid(format!(
                "forward step for blocks of {} tokens, the cache has {}",
                self.batch.block_size, kv.block_size
            )));
        }
        self.batch.validate(n, kv.num_blocks * kv.block_size)?;
        for s in &self.batch.seqs {
            for i in 0..s.q_len {
                let (r, pos) = (s.q_start + i, s.kv_len - s.q_len + i);
                if self.positions[r] as usize != pos
                    || self.slots[r] as usize != self.batch.slot(s, pos)
                {
                    return Err(Error::Invalid(format!(
                        "forward step row {r}: position {} slot {}, its sequence expects {pos} and {}",
                        self.positions[r],
                        self.slots[r],
                        self.batch.slot(s, pos)
                    )));
                }
            }
        }
        if let Some(r) = self.logits_rows.iter().find(|&&r| r >= n) {
            return Err(Error::Invalid(format!(
                "forward step asks logits of row {r} of {n}"
            )));
        }
        Ok(())
    }

    /// The step of one sequence whose block table is `table`: `ids` (all
    /// of `kind`) after its first `past` positions; logits of every row or
    /// of the last.
    pub fn single(
        ids: &[u32],
        past: usize,
        table: &[u32],
        block_size: usize,
        all_logits: bool,
        kind: RowKind,
    ) -> Step {
        let n = ids.len();
        let batch = PagedBatch {
            seqs: vec![SeqSpan {
                q_start: 0,
                q_len: n,
                kv_len: past + n,
                table_start: 0,
            }],
            block_tables: table.to_vec(),
            block_size,
        };
        let positions: Vec<u32> = (past..past + n).map(|p| p as u32).collect();
        let slots = (past..past + n)
            .map(|t| {
                table.get(t / block_size).map_or(u32::MAX, |&b| {
                    (b as usize * block_size + t % block_size) as u32
                })
            })
            .collect();
        Step {
            ids: ids.to_vec(),
            positions,
            slots,
            batch,
            logits_rows: if all_logits {
                (0..n).collect()
            } else {
                vec![n - 1]
            },
            kinds: vec![kind; n],
        }
    }
}

/// The KV cache of one sequence: a private [`PagedKv`] with the identity
/// block table, filled position by position.
pub struct KvCache {
    pub(crate) paged: PagedKv,
    table: Vec<u32>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// Room for `capacity` positions of `layers` layers (widths as
    /// [`PagedKv::new`]).
    pub fn new(
        device: &Device,
        layers: usize,
        capacity: usize,
        widths: (usize, usize),
        dtype: KvDType,
    ) -> Result<Self> {
        let bs = DEFAULT_BLOCK_SIZE;
        let blocks = capacity.div_ceil(bs).max(1);
        Ok(Self {
            paged: PagedKv::new(device, layers, blocks, bs, widths, dtype)?,
            table: (0..blocks as u32).collect(),
            len: 0,
            capacity,
        })
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets everything (buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps only the first `len` positions (for prefix reuse).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The step that runs `ids` after what the cache holds: prompt rows,
    /// unless one token follows earlier ones (a generated token, as
    /// `generate` feeds them).
    pub(crate) fn step(&self, ids: &[u32], all_logits: bool) -> Result<Step> {
        self.check_room(ids.len())?;
        let kind = if ids.len() == 1 && self.len > 0 {
            RowKind::Generated
        } else {
            RowKind::Prompt
        };
        Ok(Step::single(
            ids,
            self.len,
            &self.table,
            self.paged.block_size(),
            all_logits,
            kind,
        ))
    }

    pub(crate) fn check_room(&self, n: usize) -> Result<()> {
        if self.len + n > self.capacity {
            return Err(Error::ContextOverflow {
                prompt: self.len,
                requested: n,
                context: self.capacity,
            });
        }
        Ok(())
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
