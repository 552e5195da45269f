//! Prefix caching as vLLM v1 does it, on top of the block allocator.
//!
//! A **full** block whose KV has been computed is keyed by
//! `hash(parent block's hash, the block's token ids)`, so a hash names the
//! whole prefix up to the end of that block. A later sequence whose prompt
//! starts with the same tokens gets those blocks read-only (their reference
//! counts rise) instead of recomputing them. When the last reference goes,
//! a cached block is not freed but *retained* in an LRU of evictable blocks:
//! a hit takes it back, and when no free block is left the allocator evicts
//! the least recently released one and reuses it for new contents.
//!
//! The hash is 64 bits of SHA-256; a hit also compares the stored parent hash
//! and token ids, so a false hit needs two chained 64-bit collisions.
//! Partial blocks are never cached, hence never shared.

use std::collections::{BTreeMap, HashMap};

use mm_core::{Error, Result};
use sha2::{Digest, Sha256};

use super::blocks::{BlockAllocator, BlockId, BlockState};

/// The hash of a full block and, through its parent, of the whole prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u64);

/// The stable hash of a block with token ids `tokens` after `parent`
/// (`None` for a sequence's first block). Same inputs, same hash, on every
/// machine and run.
pub fn hash_block(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    match parent {
        None => h.update(b"mm-kv-root"),
        Some(p) => {
            h.update(b"mm-kv-next");
            h.update(p.0.to_le_bytes());
        }
    }
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    BlockHash(u64::from_le_bytes(b))
}

/// Extends `hashes` with the chained hashes of every full block of `tokens`
/// not hashed yet (`hashes` holds those of the first blocks already).
pub fn extend_block_hashes(hashes: &mut Vec<BlockHash>, tokens: &[u32], block_size: usize) {
    let full = tokens.len() / block_size.max(1);
    while hashes.len() < full {
        let i = hashes.len();
        let parent = i.checked_sub(1).map(|p| hashes[p]);
        hashes.push(hash_block(
            parent,
            &tokens[i * block_size..(i + 1) * block_size],
        ));
    }
}

/// Counters for metrics (`vllm:prefix_cache_queries_total` and
/// `vllm:prefix_cache_hits_total` are `queries` and `hits`, in tokens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Prompt tokens looked up when requests were first admitted.
    pub queries: u64,
    /// Of those, tokens served from the cache.
    pub hits: u64,
    /// Tokens looked up when preempted requests were re-admitted (kept apart,
    /// as vLLM does, so recomputation does not inflate the hit rate).
    pub preempted_queries: u64,
    pub preempted_hits: u64,
    /// Cached blocks evicted to make room.
    pub evictions: u64,
}

#[derive(Clone, Debug)]
struct Cached {
    hash: BlockHash,
    parent: Option<BlockHash>,
    tokens: Box<[u32]>,
    /// Position in the LRU while evictable (reference count 0).
    lru_tick: Option<u64>,
}

/// The block allocator plus the prefix cache: every allocation of the
/// scheduler goes through here. With caching disabled it is a plain
/// allocator (nothing is registered, lookups miss).
#[derive(Clone, Debug)]
pub struct BlockPool {
    alloc: BlockAllocator,
    enabled: bool,
    by_hash: HashMap<BlockHash, BlockId>,
    cached: Vec<Option<Cached>>,
    /// Evictable cached blocks, oldest release first.
    lru: BTreeMap<u64, BlockId>,
    tick: u64,
    stats: PrefixCacheStats,
}

impl BlockPool {
    /// `num_blocks` blocks of `block_size` tokens; `enable_caching` turns the
    /// prefix cache on.
    pub fn new(num_blocks: usize, block_size: usize, enable_caching: bool) -> Result<Self> {
        let alloc = BlockAllocator::new(num_blocks, block_size)?;
        Ok(Self {
            alloc,
            enabled: enable_caching,
            by_hash: HashMap::new(),
            cached: vec![None; num_blocks],
            lru: BTreeMap::new(),
            tick: 0,
            stats: PrefixCacheStats::default(),
        })
    }

    /// The underlying allocator (counts, states, reference counts).
    pub fn allocator(&self) -> &BlockAllocator {
        &self.alloc
    }

    pub fn caching_enabled(&self) -> bool {
        self.enabled
    }

    pub fn block_size(&self) -> usize {
        self.alloc.block_size()
    }

    /// Blocks that `allocate` can still hand out: free plus evictable.
    pub fn num_available(&self) -> usize {
        self.alloc.num_free() + self.alloc.num_retained()
    }

    /// Unreferenced cached blocks (evictable).
    pub fn num_evictable(&self) -> usize {
        self.lru.len()
    }

    /// Fraction of blocks referenced by a sequence, for `kv_cache_usage_perc`.
    pub fn usage(&self) -> f64 {
        self.alloc.usage()
    }

    pub fn stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// Whether `block` holds a registered (cached) full block.
    pub fn is_cached(&self, block: BlockId) -> bool {
        self.cached_entry(block).is_some()
    }

    /// The hash under which `block` is cached, if it is.
    pub fn cached_hash(&self, block: BlockId) -> Option<BlockHash> {
        self.cached_entry(block).map(|c| c.hash)
    }

    /// Whether `block` is cached and unreferenced (in the LRU).
    pub fn is_evictable(&self, block: BlockId) -> bool {
        self.cached_entry(block)
            .is_some_and(|c| c.lru_tick.is_some())
    }

    /// A block with one reference: a free one, else the least recently
    /// released cached block (evicted: its hash is forgotten). `None` when
    /// every block is referenced.
    pub fn allocate(&mut self) -> Option<BlockId> {
        if let Some(b) = self.alloc.allocate() {
            return Some(b);
        }
        let (_, b) = self.lru.pop_first()?;
        if let Some(c) = self.cached[b as usize].take() {
            self.by_hash.remove(&c.hash);
        }
        self.stats.evictions += 1;
        // The block was retained (it was in the LRU), so this cannot fail;
        // should it, report exhaustion rather than hand out a bad block.
        self.alloc.reclaim(b).ok()?;
        Some(b)
    }

    /// Drops one reference to `block`. At zero a cached block becomes
    /// evictable (newest in the LRU); any other block is freed.
    pub fn release(&mut self, block: BlockId) -> Result<()> {
        if self.is_cached(block) {
            if self.alloc.free_and_retain(block)? == 0 {
                self.tick += 1;
                self.lru.insert(self.tick, block);
                if let Some(c) = self.cached[block as usize].as_mut() {
                    c.lru_tick = Some(self.tick);
                }
            }
        } else {
            self.alloc.free(block)?;
        }
        Ok(())
    }

    /// The longest run of cached blocks matching the first full blocks of a
    /// sequence: `hashes[i]` is the chained hash of block `i` of `tokens`.
    /// Takes no references (see [`BlockPool::acquire`]).
    pub fn lookup(&self, hashes: &[BlockHash], tokens: &[u32]) -> Vec<BlockId> {
        let bs = self.block_size();
        let mut hits = Vec::new();
        if !self.enabled {
            return hits;
        }
        for (i, h) in hashes.iter().enumerate() {
            let Some(&b) = self.by_hash.get(h) else { break };
            let Some(c) = self.cached_entry(b) else { break };
            let parent = i.checked_sub(1).map(|p| hashes[p]);
            let Some(toks) = tokens.get(i * bs..(i + 1) * bs) else {
                break;
            };
            if c.parent != parent || *c.tokens != *toks {
                break;
            }
            hits.push(b);
        }
        hits
    }

    /// Takes a reference to a cached block found by `lookup`: an evictable
    /// one leaves the LRU, a used one is shared.
    pub fn acquire(&mut self, block: BlockId) -> Result<()> {
        let Some(c) = self.cached_entry(block) else {
            return Err(Error::Invalid(format!(
                "KV block {block} is not in the prefix cache"
            )));
        };
        let tick = c.lru_tick;
        match self.alloc.state(block)? {
            BlockState::Retained => {
                self.alloc.reclaim(block)?;
                if let Some(t) = tick {
                    self.lru.remove(&t);
                }
                if let Some(c) = self.cached[block as usize].as_mut() {
                    c.lru_tick = None;
                }
            }
            BlockState::Used(_) => {
                self.alloc.share(block)?;
            }
            BlockState::Free => {
                return Err(Error::Invalid(format!(
                    "KV block {block} is cached but free (prefix cache out of sync)"
                )))
            }
        }
        Ok(())
    }

    /// Registers a full, computed, referenced block under `hash` so later
    /// sequences can share it. Returns false (and caches nothing) when
    /// caching is off or another block already holds this prefix: the block
    /// then stays private to its sequence.
    pub fn register(
        &mut self,
        block: BlockId,
        hash: BlockHash,
        parent: Option<BlockHash>,
        tokens: &[u32],
    ) -> Result<bool> {
        if tokens.len() != self.block_size() {
            return Err(Error::Invalid(format!(
                "KV block {block}: only full blocks are cached ({} of {} tokens given)",
                tokens.len(),
                self.block_size()
            )));
        }
        if !matches!(self.alloc.state(block)?, BlockState::Used(_)) {
            return Err(Error::Invalid(format!(
                "KV block {block} cannot be cached: no sequence holds it"
            )));
        }
        if !self.enabled {
            return Ok(false);
        }
        if let Some(c) = self.cached_entry(block) {
            if c.hash == hash {
                return Ok(false);
            }
            return Err(Error::Invalid(format!(
                "KV block {block} is already cached under another prefix"
            )));
        }
        if self.by_hash.contains_key(&hash) {
            return Ok(false);
        }
        self.by_hash.insert(hash, block);
        self.cached[block as usize] = Some(Cached {
            hash,
            parent,
            tokens: tokens.into(),
            lru_tick: None,
        });
        Ok(true)
    }

    /// Counts one lookup of `queried` tokens of which `hit` came from the
    /// cache; `recompute` for a preempted sequence coming back.
    pub fn record_lookup(&mut self, queried: usize, hit: usize, recompute: bool) {
        if !self.enabled {
            return;
        }
        if recompute {
            self.stats.preempted_queries += queried as u64;
            self.stats.preempted_hits += hit as u64;
        } else {
            self.stats.queries += queried as u64;
            self.stats.hits += hit as u64;
        }
    }

    /// Drops every evictable cached block (they become free). Blocks still
    /// referenced stay cached. Returns how many were dropped.
    pub fn clear_evictable(&mut self) -> usize {
        let blocks: Vec<BlockId> = self.lru.values().copied().collect();
        self.lru.clear();
        for &b in &blocks {
            if let Some(c) = self.cached[b as usize].take() {
                self.by_hash.remove(&c.hash);
            }
            // Evictable blocks are retained, so this succeeds.
            let _ = self.alloc.discard(b);
        }
        blocks.len()
    }

    fn cached_entry(&self, block: BlockId) -> Option<&Cached> {
        self.cached.get(block as usize).and_then(|c| c.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(tokens: &[u32], bs: usize) -> Vec<BlockHash> {
        let mut h = Vec::new();
        extend_block_hashes(&mut h, tokens, bs);
        h
    }

    #[test]
    fn hash_is_stable_and_chained() {
        let a = hash_block(None, &[1, 2, 3, 4]);
        assert_eq!(a, hash_block(None, &[1, 2, 3, 4]));
        assert_ne!(a, hash_block(None, &[1, 2, 3, 5]));
        // Same tokens after a different prefix: a different hash.
        assert_ne!(hash_block(Some(a), &[5, 6]), hash_block(None, &[5, 6]));
        // Pinned values (SHA-256 of the documented bytes, checked with
        // Python's hashlib): the hash must not change between builds.
        assert_eq!(a, BlockHash(0xe1a0_b48c_0bd6_31c4));
        assert_eq!(
            hash_block(Some(a), &[5, 6]),
            BlockHash(0x8104_11c5_9441_61b6)
        );
        let h = hashes(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 4);
        assert_eq!(h.len(), 2, "the partial block is not hashed");
        assert_eq!(h[1], hash_block(Some(h[0]), &[5, 6, 7, 8]));
        let mut inc = vec![h[0]];
        extend_block_hashes(&mut inc, &[1, 2, 3, 4, 5, 6, 7, 8], 4);
        assert_eq!(inc, h);
    }

    /// Allocates and registers the full blocks of `tokens`, as a sequence
    /// that computed them would.
    fn fill(pool: &mut BlockPool, tokens: &[u32]) -> Vec<BlockId> {
        let bs = pool.block_size();
        let h = hashes(tokens, bs);
        let mut table = Vec::new();
        for i in 0..h.len() {
            let b = pool.allocate().unwrap();
            let parent = i.checked_sub(1).map(|p| h[p]);
            assert!(pool
                .register(b, h[i], parent, &tokens[i * bs..(i + 1) * bs])
                .unwrap());
            table.push(b);
        }
        table
    }

    #[test]
    fn hit_shares_blocks_and_miss_after_divergence() {
        let mut p = BlockPool::new(8, 4, true).unwrap();
        let a: Vec<u32> = (0..12).collect();
        let ta = fill(&mut p, &a);
        // Same first 8 tokens, then different.
        let mut b: Vec<u32> = (0..8).collect();
        b.extend([100, 101, 102, 103]);
        let hits = p.lookup(&hashes(&b, 4), &b);
        assert_eq!(hits, ta[..2].to_vec());
        for &h in &hits {
            p.acquire(h).unwrap();
        }
        assert_eq!(p.allocator().ref_count(ta[0]).unwrap(), 2);
        assert_eq!(p.allocator().ref_count(ta[2]).unwrap(), 1);
        // Different first block: no hit even if later tokens agree.
        let c: Vec<u32> = [9, 9, 9, 9].into_iter().chain(4..12).collect();
        assert!(p.lookup(&hashes(&c, 4), &c).is_empty());
    }

    #[test]
    fn released_cached_blocks_are_evictable_lru() {
        let mut p = BlockPool::new(3, 2, true).unwrap();
        let t = fill(&mut p, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(p.num_available(), 0);
        assert_eq!(p.allocate(), None);
        // Release in reverse order, as a finishing sequence does: the tail
        // block becomes the oldest, evicted first.
        for &b in t.iter().rev() {
            p.release(b).unwrap();
        }
        assert_eq!(
            (p.num_evictable(), p.num_available(), p.usage()),
            (3, 3, 0.0)
        );
        // A hit on the first two blocks takes them out of the LRU.
        let toks = [1, 2, 3, 4, 7];
        let hits = p.lookup(&hashes(&toks, 2), &toks);
        assert_eq!(hits, t[..2].to_vec());
        for &h in &hits {
            p.acquire(h).unwrap();
        }
        assert_eq!(p.num_evictable(), 1);
        // The next allocation evicts the remaining cached block.
        let b = p.allocate().unwrap();
        assert_eq!(b, t[2]);
        assert!(!p.is_cached(b));
        assert_eq!(p.stats().evictions, 1);
        let toks = [1, 2, 3, 4, 5, 6, 0];
        assert_eq!(p.lookup(&hashes(&toks, 2), &toks).len(), 2);
    }

    #[test]
    fn free_blocks_go_before_cached_ones() {
        let mut p = BlockPool::new(3, 2, true).unwrap();
        let t = fill(&mut p, &[1, 2]);
        p.release(t[0]).unwrap();
        let x = p.allocate().unwrap();
        let y = p.allocate().unwrap();
        assert!(x != t[0] && y != t[0]);
        assert!(p.is_evictable(t[0]));
        assert_eq!(p.allocate(), Some(t[0]));
    }

    #[test]
    fn duplicate_prefix_stays_private() {
        let mut p = BlockPool::new(4, 2, true).unwrap();
        let t = fill(&mut p, &[1, 2]);
        let other = p.allocate().unwrap();
        let h = hash_block(None, &[1, 2]);
        assert!(!p.register(other, h, None, &[1, 2]).unwrap());
        assert!(!p.is_cached(other));
        assert!(
            !p.register(t[0], h, None, &[1, 2]).unwrap(),
            "already cached"
        );
        p.release(other).unwrap();
        assert_eq!(p.allocator().state(other).unwrap(), BlockState::Free);
    }

    #[test]
    fn register_and_acquire_errors() {
        let mut p = BlockPool::new(4, 2, true).unwrap();
        let b = p.allocate().unwrap();
        assert!(
            p.register(b, BlockHash(1), None, &[1]).is_err(),
            "partial block"
        );
        assert!(
            p.register(3, BlockHash(1), None, &[1, 2]).is_err(),
            "free block"
        );
        assert!(
            p.register(9, BlockHash(1), None, &[1, 2]).is_err(),
            "unknown block"
        );
        assert!(p.acquire(b).is_err(), "not cached");
        assert!(p.register(b, BlockHash(1), None, &[1, 2]).unwrap());
        assert!(p.register(b, BlockHash(2), None, &[1, 2]).is_err());
        p.release(b).unwrap();
        assert!(p.release(b).is_err(), "double free");
    }

    #[test]
    fn token_mismatch_under_same_hash_misses() {
        let mut p = BlockPool::new(2, 2, true).unwrap();
        let b = p.allocate().unwrap();
        let h = hash_block(None, &[1, 2]);
        // Simulate a collision: another prefix registered under this hash.
        p.register(b, h, None, &[7, 7]).unwrap();
        assert!(p.lookup(&[h], &[1, 2]).is_empty());
    }

    #[test]
    fn disabled_cache_is_a_plain_allocator() {
        let mut p = BlockPool::new(2, 2, false).unwrap();
        let b = p.allocate().unwrap();
        let h = hash_block(None, &[1, 2]);
        assert!(!p.register(b, h, None, &[1, 2]).unwrap());
        assert!(p.lookup(&[h], &[1, 2]).is_empty());
        p.release(b).unwrap();
        assert_eq!(p.allocator().num_free(), 2);
        p.record_lookup(10, 0, false);
        assert_eq!(p.stats(), PrefixCacheStats::default());
    }

    #[test]
    fn stats_and_clear() {
        let mut p = BlockPool::new(4, 2, true).unwrap();
        p.record_lookup(10, 4, false);
        p.record_lookup(6, 6, true);
        let s = p.stats();
        assert_eq!(
            (s.queries, s.hits, s.preempted_queries, s.preempted_hits),
            (10, 4, 6, 6)
        );
        let t = fill(&mut p, &[1, 2, 3, 4]);
        p.release(t[1]).unwrap();
        assert_eq!(p.clear_evictable(), 1);
        assert!(p.is_cached(t[0]) && !p.is_cached(t[1]));
        assert_eq!(p.allocator().num_free(), 3);
    }
}
