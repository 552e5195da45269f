//! The execution core's bookkeeping (issue 12): a paged KV cache's block
//! allocator, vLLM-style prefix caching, and a continuous-batching
//! scheduler with chunked prefill and preemption by recompute. Pure logic:
//! no tensors, no model; the caller runs each [`StepPlan`] on a backend.
//!
//! - [`blocks`]: [`BlockAllocator`], fixed blocks with reference counts.
//! - [`prefix`]: [`BlockPool`], the allocator plus the prefix cache (block
//!   hashes, sharing, LRU eviction, hit counters).
//! - [`seq`]: [`Sequence`] state and [`Request`].
//! - [`step`]: [`StepPlan`], its flat form [`FlatBatch`], [`StepOutput`].
//! - [`config`]: [`SchedulerConfig`] and [`SchedulerStats`].
//! - [`scheduler`]: [`Scheduler`], the policy.
//!
//! A serving loop:
//! ```
//! use mm_engine::sched::{Request, Scheduler, SchedulerConfig};
//! let mut s = Scheduler::new(SchedulerConfig { num_blocks: 64, ..Default::default() })?;
//! let id = s.add(Request::new(vec![1, 2, 3], 2))?;
//! while s.has_unfinished() {
//!     let plan = s.schedule()?;
//!     // Run the model on plan.flatten(), sample where needs_logits is set.
//!     let sampled: Vec<_> = plan.seqs.iter()
//!         .map(|e| (e.id, e.needs_logits.then_some(42)))
//!         .collect();
//!     let out = s.on_step_done(&sampled)?;
//!     for seq in out.finished {
//!         assert_eq!((seq.id, seq.generated()), (id, &[42, 42][..]));
//!     }
//! }
//! # Ok::<(), mm_core::Error>(())
//! ```

pub mod blocks;
pub mod config;
pub mod prefix;
pub mod scheduler;
pub mod seq;
pub mod step;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod scheduler_tests;

pub use blocks::{BlockAllocator, BlockId, BlockState, DEFAULT_BLOCK_SIZE};
pub use config::{SchedulerConfig, SchedulerStats};
pub use prefix::{BlockHash, BlockPool, PrefixCacheStats};
pub use scheduler::Scheduler;
pub use seq::{FinishReason, Request, SeqId, SeqStatus, Sequence};
pub use step::{FlatBatch, ScheduledSeq, StepOutput, StepPlan};
