//! The scheduler's bookkeeping checks, for tests and debugging.

use std::collections::HashMap;

use mm_core::{Error, Result};

use super::Scheduler;
use crate::sched::blocks::{blocks_for, BlockId, BlockState};
use crate::sched::seq::SeqStatus;

impl Scheduler {
    /// Checks the bookkeeping (for tests and debugging; O(blocks + tokens)):
    /// every block's reference count equals the number of block tables
    /// holding it; free + evictable + used = total; only fully computed,
    /// cached blocks are shared; queues, statuses and tables agree.
    pub fn check_invariants(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("scheduler invariant: {m}")));
        let a = self.pool.allocator();
        let bs = self.cfg.block_size;
        let mut refs: HashMap<BlockId, u32> = HashMap::new();
        if self.running.len() > self.cfg.max_num_seqs {
            return bad(format!("{} running > max_num_seqs", self.running.len()));
        }
        if self.running.len() + self.waiting.len() != self.seqs.len() {
            return bad("a sequence is in no queue or in both".into());
        }
        for (&id, seq) in &self.seqs {
            let (r, w) = (self.running.contains(&id), self.waiting.contains(&id));
            match seq.status {
                SeqStatus::Running if r => {}
                SeqStatus::Waiting | SeqStatus::Preempted if w => {}
                s => {
                    return bad(format!(
                        "sequence {id} is {s:?} but running={r} waiting={w}"
                    ))
                }
            }
            if w && (!seq.block_table.is_empty() || seq.num_computed != 0) {
                return bad(format!("waiting sequence {id} holds blocks or computed KV"));
            }
            let t = seq.block_table.len();
            if r && (t < blocks_for(seq.num_computed, bs) || t > blocks_for(seq.len(), bs)) {
                return bad(format!(
                    "sequence {id}: {t} blocks for {} computed of {}",
                    seq.num_computed,
                    seq.len()
                ));
            }
            if seq.num_computed >= seq.len() && r {
                return bad(format!("running sequence {id} has nothing left to compute"));
            }
            for (i, &b) in seq.block_table.iter().enumerate() {
                *refs.entry(b).or_default() += 1;
                if self.pool.is_cached(b) && (i + 1) * bs > seq.num_computed {
                    return bad(format!(
                        "sequence {id}: cached block {b} at {i} is not computed"
                    ));
                }
            }
        }
        let mut evictable = 0;
        for b in 0..a.num_blocks() as BlockId {
            let want = refs.get(&b).copied().unwrap_or(0);
            let state = a.state(b)?;
            let rc = a.ref_count(b)?;
            if rc != want {
                return bad(format!(
                    "block {b} has {rc} references but {want} tables hold it"
                ));
            }
            if rc > 1 && !self.pool.is_cached(b) {
                return bad(format!("block {b} is shared but not a cached prefix block"));
            }
            if (state == BlockState::Retained) != self.pool.is_evictable(b) {
                return bad(format!(
                    "block {b} is {state:?} but evictable={}",
                    self.pool.is_evictable(b)
                ));
            }
            if state == BlockState::Free && self.pool.is_cached(b) {
                return bad(format!("free block {b} is still cached"));
            }
            evictable += usize::from(self.pool.is_evictable(b));
        }
        if a.num_free() + a.num_retained() + a.num_used() != a.num_blocks()
            || evictable != a.num_retained()
        {
            return bad("block counts do not add up".into());
        }
        Ok(())
    }
}
