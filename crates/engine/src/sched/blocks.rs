//! The paged KV cache's block allocator: a fixed number of blocks of
//! `block_size` token slots each, with reference counts and a free list.
//!
//! A block is in one of three states:
//! - **free**: on the free list, holds nothing useful;
//! - **used**: referenced by one or more block tables (ref count ≥ 1);
//! - **retained**: no block table references it, but its contents are kept
//!   because the prefix cache may hand it out again (see `prefix.rs`); it
//!   becomes used again with [`BlockAllocator::reclaim`], or free with
//!   [`BlockAllocator::discard`].
//!
//! The allocator only does bookkeeping: no KV memory lives here. Every misuse
//! (unknown block, double free, sharing a free block) is an `Error::Invalid`,
//! never a panic, so a bug in a caller cannot take the server down.

use mm_core::{Error, Result};

/// Index of a KV block. The flat KV slot of token `offset` in block `b` is
/// `b * block_size + offset`.
pub type BlockId = u32;

/// Default block size in tokens (vLLM's).
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// Number of blocks needed to hold `tokens` tokens.
pub fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size.max(1))
}

/// The state of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockState {
    Free,
    /// Referenced by this many block tables (≥ 1).
    Used(u32),
    /// Unreferenced but kept for the prefix cache.
    Retained,
}

/// Fixed pool of KV blocks with reference counts.
#[derive(Clone, Debug)]
pub struct BlockAllocator {
    block_size: usize,
    state: Vec<BlockState>,
    /// Free blocks; `allocate` pops from the end. Filled in reverse so that a
    /// fresh allocator hands out 0, 1, 2, … (deterministic, easy to test).
    free: Vec<BlockId>,
    num_retained: usize,
}

impl BlockAllocator {
    /// A pool of `num_blocks` blocks of `block_size` tokens, all free.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self> {
        if block_size == 0 {
            return Err(Error::Invalid(
                "KV block size must be at least 1 token".into(),
            ));
        }
        if num_blocks == 0 {
            return Err(Error::Invalid("the KV cache needs at least 1 block".into()));
        }
        if num_blocks > BlockId::MAX as usize || num_blocks.checked_mul(block_size).is_none() {
            return Err(Error::Invalid(format!(
                "{num_blocks} KV blocks of {block_size} tokens is more than the block ids can address"
            )));
        }
        Ok(Self {
            block_size,
            state: vec![BlockState::Free; num_blocks],
            free: (0..num_blocks as BlockId).rev().collect(),
            num_retained: 0,
        })
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Total number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.state.len()
    }

    /// Blocks on the free list.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Unreferenced blocks kept for the prefix cache.
    pub fn num_retained(&self) -> usize {
        self.num_retained
    }

    /// Blocks referenced by at least one block table.
    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free() - self.num_retained
    }

    /// Fraction of blocks in use (0.0 ..= 1.0), for `kv_cache_usage_perc`.
    /// Retained blocks count as unused: they are given up on demand.
    pub fn usage(&self) -> f64 {
        self.num_used() as f64 / self.num_blocks() as f64
    }

    /// The state of `block`, or an error if it does not exist.
    pub fn state(&self, block: BlockId) -> Result<BlockState> {
        self.state
            .get(block as usize)
            .copied()
            .ok_or_else(|| self.unknown(block))
    }

    /// Number of references to `block` (0 when free or retained).
    pub fn ref_count(&self, block: BlockId) -> Result<u32> {
        Ok(match self.state(block)? {
            BlockState::Used(n) => n,
            _ => 0,
        })
    }

    /// Takes a block from the free list with one reference, or `None` when
    /// the free list is empty (running out is normal, not an error).
    pub fn allocate(&mut self) -> Option<BlockId> {
        let b = self.free.pop()?;
        self.state[b as usize] = BlockState::Used(1);
        Some(b)
    }

    /// Adds a reference to a used block (a fork: another block table shares
    /// it read-only). Returns the new reference count.
    pub fn share(&mut self, block: BlockId) -> Result<u32> {
        match self.state(block)? {
            BlockState::Used(n) => {
                let n = n.checked_add(1).ok_or_else(|| {
                    Error::Invalid(format!("KV block {block}: too many references"))
                })?;
                self.state[block as usize] = BlockState::Used(n);
                Ok(n)
            }
            s => Err(Error::Invalid(format!(
                "KV block {block} cannot be shared: it is {}",
                describe(s)
            ))),
        }
    }

    /// Drops one reference; at zero the block goes back to the free list.
    /// Returns the remaining reference count.
    pub fn free(&mut self, block: BlockId) -> Result<u32> {
        let n = self.decref(block)?;
        if n == 0 {
            self.state[block as usize] = BlockState::Free;
            self.free.push(block);
        }
        Ok(n)
    }

    /// Drops one reference; at zero the block is retained (kept for the
    /// prefix cache) instead of freed. Returns the remaining count.
    pub fn free_and_retain(&mut self, block: BlockId) -> Result<u32> {
        let n = self.decref(block)?;
        if n == 0 {
            self.state[block as usize] = BlockState::Retained;
            self.num_retained += 1;
        }
        Ok(n)
    }

    /// A retained block becomes used with one reference (a prefix-cache hit,
    /// or an evicted block reused for new contents).
    pub fn reclaim(&mut self, block: BlockId) -> Result<()> {
        self.expect_retained(block, "reclaimed")?;
        self.state[block as usize] = BlockState::Used(1);
        self.num_retained -= 1;
        Ok(())
    }

    /// A retained block goes back to the free list.
    pub fn discard(&mut self, block: BlockId) -> Result<()> {
        self.expect_retained(block, "discarded")?;
        self.state[block as usize] = BlockState::Free;
        self.num_retained -= 1;
        self.free.push(block);
        Ok(())
    }

    fn decref(&mut self, block: BlockId) -> Result<u32> {
        match self.state(block)? {
            BlockState::Used(n) => {
                let n = n - 1;
                if n > 0 {
                    self.state[block as usize] = BlockState::Used(n);
                }
                Ok(n)
            }
            s => Err(Error::Invalid(format!(
                "KV block {block} freed twice: it is already {}",
                describe(s)
            ))),
        }
    }

    fn expect_retained(&self, block: BlockId, what: &str) -> Result<()> {
        match self.state(block)? {
            BlockState::Retained => Ok(()),
            s => Err(Error::Invalid(format!(
                "KV block {block} cannot be {what}: it is {}, not retained",
                describe(s)
            ))),
        }
    }

    fn unknown(&self, block: BlockId) -> Error {
        Error::Invalid(format!(
            "KV block {block} does not exist (the cache has {} blocks)",
            self.num_blocks()
        ))
    }
}

fn describe(s: BlockState) -> &'static str {
    match s {
        BlockState::Free => "free",
        BlockState::Used(_) => "in use",
        BlockState::Retained => "retained by the prefix cache",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(msg(BlockAllocator::new(0, 16).unwrap_err()).contains("at least 1 block"));
        assert!(msg(BlockAllocator::new(4, 0).unwrap_err()).contains("block size"));
        assert!(BlockAllocator::new(usize::MAX / 2, 16).is_err());
    }

    #[test]
    fn allocates_in_order_until_empty() {
        let mut a = BlockAllocator::new(3, 16).unwrap();
        assert_eq!(a.allocate(), Some(0));
        assert_eq!(a.allocate(), Some(1));
        assert_eq!(a.allocate(), Some(2));
        assert_eq!(a.allocate(), None);
        assert_eq!((a.num_free(), a.num_used()), (0, 3));
        assert_eq!(a.usage(), 1.0);
        assert_eq!(a.free(1).unwrap(), 0);
        assert_eq!(a.allocate(), Some(1));
    }

    #[test]
    fn ref_counts_and_sharing() {
        let mut a = BlockAllocator::new(2, 4).unwrap();
        let b = a.allocate().unwrap();
        assert_eq!(a.share(b).unwrap(), 2);
        assert_eq!(a.share(b).unwrap(), 3);
        assert_eq!(a.ref_count(b).unwrap(), 3);
        assert_eq!(a.free(b).unwrap(), 2);
        assert_eq!(a.free(b).unwrap(), 1);
        assert_eq!(a.num_used(), 1);
        assert_eq!(a.free(b).unwrap(), 0);
        assert_eq!(a.state(b).unwrap(), BlockState::Free);
        assert_eq!((a.num_free(), a.num_used()), (2, 0));
        assert_eq!(a.usage(), 0.0);
    }

    #[test]
    fn double_free_and_unknown_are_errors() {
        let mut a = BlockAllocator::new(2, 4).unwrap();
        let b = a.allocate().unwrap();
        a.free(b).unwrap();
        assert!(msg(a.free(b).unwrap_err()).contains("freed twice"));
        assert!(msg(a.free(7).unwrap_err()).contains("does not exist"));
        assert!(msg(a.share(b).unwrap_err()).contains("cannot be shared"));
        assert!(a.share(9).is_err());
        assert!(a.ref_count(2).is_err());
        assert!(a.reclaim(b).is_err());
        assert!(a.discard(b).is_err());
        // Nothing changed after the errors.
        assert_eq!((a.num_free(), a.num_used(), a.num_retained()), (2, 0, 0));
    }

    #[test]
    fn retain_reclaim_discard() {
        let mut a = BlockAllocator::new(3, 4).unwrap();
        let b = a.allocate().unwrap();
        a.share(b).unwrap();
        assert_eq!(a.free_and_retain(b).unwrap(), 1);
        assert_eq!(a.state(b).unwrap(), BlockState::Used(1));
        assert_eq!(a.free_and_retain(b).unwrap(), 0);
        assert_eq!(a.state(b).unwrap(), BlockState::Retained);
        assert_eq!((a.num_free(), a.num_used(), a.num_retained()), (2, 0, 1));
        assert!(
            a.free(b).is_err(),
            "a retained block has no reference to drop"
        );
        assert!(a.share(b).is_err());
        a.reclaim(b).unwrap();
        assert_eq!(a.ref_count(b).unwrap(), 1);
        a.free_and_retain(b).unwrap();
        a.discard(b).unwrap();
        assert_eq!((a.num_free(), a.num_used(), a.num_retained()), (3, 0, 0));
        assert!(a.discard(b).is_err());
    }

    #[test]
    fn blocks_for_rounds_up() {
        assert_eq!(blocks_for(0, 16), 0);
        assert_eq!(blocks_for(1, 16), 1);
        assert_eq!(blocks_for(16, 16), 1);
        assert_eq!(blocks_for(17, 16), 2);
    }
}
