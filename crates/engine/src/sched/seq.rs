//! One request's state in the scheduler: its tokens, how many of them have
//! their KV computed, its block table and its place in the life cycle.

use super::blocks::BlockId;
use super::prefix::{extend_block_hashes, BlockHash};

/// A sequence's id. Ids are handed out in arrival order, so comparing two
/// ids compares arrival times (FCFS and the preemption order use this).
pub type SeqId = u64;

/// What to run: the prompt's token ids and how many tokens may be generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub prompt: Vec<u32>,
    /// At least 1. The scheduler finishes the sequence with
    /// [`FinishReason::Length`] once this many tokens were generated or the
    /// sequence reaches `max_model_len`.
    pub max_new_tokens: usize,
}

impl Request {
    pub fn new(prompt: Vec<u32>, max_new_tokens: usize) -> Self {
        Self {
            prompt,
            max_new_tokens,
        }
    }
}

/// Why a sequence ended (vLLM's `finished_reason` label values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// EOS or a stop string (decided by the caller).
    Stop,
    /// `max_new_tokens` or `max_model_len` reached.
    Length,
    /// Cancelled (client gone, shutdown).
    Abort,
}

impl FinishReason {
    /// The label value vLLM's metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// Where a sequence is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqStatus {
    /// Queued, never run.
    Waiting,
    /// Admitted: holds KV blocks, scheduled at every step it can be.
    Running,
    /// Queued again after preemption by recompute: its blocks were freed and
    /// its prompt plus generated tokens will be computed again.
    Preempted,
    Finished(FinishReason),
}

/// A sequence (request) as the scheduler tracks it.
#[derive(Clone, Debug)]
pub struct Sequence {
    pub id: SeqId,
    /// Prompt then generated token ids.
    tokens: Vec<u32>,
    prompt_len: usize,
    pub max_new_tokens: usize,
    /// Tokens whose KV is in the cache (a prefix of `tokens`).
    pub num_computed: usize,
    /// KV blocks holding tokens `[i*block_size, (i+1)*block_size)`.
    pub block_table: Vec<BlockId>,
    pub status: SeqStatus,
    /// Prompt tokens served from the prefix cache when first admitted
    /// (`usage.prompt_tokens_details.cached_tokens`).
    pub cached_tokens: usize,
    /// Times this sequence was preempted.
    pub num_preemptions: u32,
    /// Chained hashes of the full blocks of `tokens` (kept only with prefix
    /// caching on).
    pub(crate) block_hashes: Vec<BlockHash>,
    /// Leading blocks of `block_table` already in the prefix cache (hits, or
    /// registered once computed): the next one to register.
    pub(crate) num_cached_blocks: usize,
    /// Whether the sequence has been admitted at least once.
    pub(crate) admitted_before: bool,
}

impl Sequence {
    pub(crate) fn new(id: SeqId, req: Request) -> Self {
        let prompt_len = req.prompt.len();
        Self {
            id,
            tokens: req.prompt,
            prompt_len,
            max_new_tokens: req.max_new_tokens,
            num_computed: 0,
            block_table: Vec::new(),
            status: SeqStatus::Waiting,
            cached_tokens: 0,
            num_preemptions: 0,
            block_hashes: Vec::new(),
            num_cached_blocks: 0,
            admitted_before: false,
        }
    }

    /// Arrival order (the id).
    pub fn arrival(&self) -> u64 {
        self.id
    }

    /// Prompt then generated ids.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// Prompt plus generated tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Never true: a sequence has at least one prompt token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Tokens still to compute before the next token can be sampled: 1 for
    /// a decoding sequence, more while (re)computing the prompt.
    pub fn num_pending(&self) -> usize {
        self.len() - self.num_computed
    }

    /// Whether the prompt (and, after preemption, the generated tokens) is
    /// computed, so each step computes the one newest token.
    pub fn is_decoding(&self) -> bool {
        self.num_pending() == 1 && !self.generated().is_empty()
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.status, SeqStatus::Finished(_))
    }

    /// Appends a sampled token (and, with caching, hashes a block it fills).
    pub(crate) fn push_token(&mut self, token: u32, block_size: usize, hashing: bool) {
        self.tokens.push(token);
        if hashing {
            self.update_hashes(block_size);
        }
    }

    pub(crate) fn update_hashes(&mut self, block_size: usize) {
        extend_block_hashes(&mut self.block_hashes, &self.tokens, block_size);
    }

    /// The flat KV slot of token position `pos`, if its block is allocated.
    pub fn slot(&self, pos: usize, block_size: usize) -> Option<usize> {
        let b = *self.block_table.get(pos / block_size)?;
        Some(b as usize * block_size + pos % block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_views_and_pending() {
        let mut s = Sequence::new(3, Request::new(vec![5, 6, 7], 4));
        assert_eq!((s.arrival(), s.prompt_len(), s.len()), (3, 3, 3));
        assert_eq!(s.status, SeqStatus::Waiting);
        assert_eq!(s.num_pending(), 3);
        assert!(!s.is_decoding());
        s.num_computed = 3;
        assert_eq!(s.num_pending(), 0);
        s.push_token(9, 2, true);
        assert_eq!(s.prompt(), &[5, 6, 7]);
        assert_eq!(s.generated(), &[9]);
        assert_eq!(s.tokens(), &[5, 6, 7, 9]);
        assert!(s.is_decoding());
        assert_eq!(s.block_hashes.len(), 2);
        assert!(!s.is_empty() && !s.is_finished());
    }

    #[test]
    fn slots_follow_the_block_table() {
        let mut s = Sequence::new(0, Request::new(vec![1; 20], 1));
        s.block_table = vec![7, 2];
        assert_eq!(s.slot(0, 16), Some(7 * 16));
        assert_eq!(s.slot(15, 16), Some(7 * 16 + 15));
        assert_eq!(s.slot(17, 16), Some(2 * 16 + 1));
        assert_eq!(s.slot(32, 16), None);
    }

    #[test]
    fn finish_reason_labels() {
        assert_eq!(FinishReason::Stop.as_str(), "stop");
        assert_eq!(FinishReason::Length.as_str(), "length");
        assert_eq!(FinishReason::Abort.as_str(), "abort");
    }
}
