//! The scheduler's limits and its counters for metrics.

use mm_core::{Error, Result};

use super::blocks::DEFAULT_BLOCK_SIZE;
use super::prefix::PrefixCacheStats;

/// Scheduler limits. See `Default` for the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences running at once (vLLM `--max-num-seqs`, default 64).
    pub max_num_seqs: usize,
    /// Token budget of one step, prefill chunks and decodes together (vLLM
    /// `--max-num-batched-tokens`); at least `max_num_seqs`, so every
    /// running decode always fits.
    pub max_num_batched_tokens: usize,
    /// Tokens per KV block (default 16).
    pub block_size: usize,
    /// KV blocks in the cache.
    pub num_blocks: usize,
    /// Longest sequence, prompt plus generated tokens.
    pub max_model_len: usize,
    /// Share full blocks of common prefixes (default on).
    pub enable_prefix_caching: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 64,
            max_num_batched_tokens: 2048,
            block_size: DEFAULT_BLOCK_SIZE,
            num_blocks: 1024,
            max_model_len: 4096,
            enable_prefix_caching: true,
        }
    }
}

impl SchedulerConfig {
    /// Rejects limits the scheduler cannot work with.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.max_num_seqs == 0 {
            return bad("max_num_seqs must be at least 1".into());
        }
        if self.max_num_batched_tokens < self.max_num_seqs {
            return bad(format!(
                "max_num_batched_tokens ({}) must be at least max_num_seqs ({}), so every running sequence can decode each step",
                self.max_num_batched_tokens, self.max_num_seqs
            ));
        }
        if self.max_model_len < 2 {
            return bad(format!(
                "max_model_len must be at least 2 (one prompt and one generated token), got {}",
                self.max_model_len
            ));
        }
        Ok(())
    }
}

/// Counts for metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SchedulerStats {
    pub num_running: usize,
    pub num_waiting: usize,
    /// Fraction of KV blocks referenced by sequences.
    pub kv_cache_usage: f64,
    /// Preemptions since the start (`vllm:num_preemptions_total`).
    pub num_preemptions: u64,
    pub prefix_cache: PrefixCacheStats,
}
