//! What one step runs: the scheduler's plan, per sequence, and the same
//! flattened into the arrays a batched forward pass uploads (vLLM's
//! `input_ids`, `positions`, `slot_mapping`, `query_start_loc`,
//! `seq_lens`, block tables and `logits_indices`).

use super::blocks::BlockId;
use super::seq::{SeqId, Sequence};

/// One sequence's share of a step: compute the KV of `token_ids` at
/// positions `start..start + token_ids.len()`, attending to all earlier
/// positions through `block_table`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: SeqId,
    /// The ids to feed: one for a decode, a chunk for a prefill.
    pub token_ids: Vec<u32>,
    /// Position of `token_ids[0]`; the KV of positions `0..start` is cached.
    pub start: usize,
    /// The sequence's KV blocks, covering positions `0..start + len`.
    pub block_table: Vec<BlockId>,
    /// Flat KV slot (`block * block_size + offset`) where each new token's
    /// K and V go. These slots belong to this sequence alone.
    pub slot_mapping: Vec<usize>,
    /// Whether the last token's logits are wanted (the sequence's tokens are
    /// then all computed and the caller samples the next one).
    pub needs_logits: bool,
}

impl ScheduledSeq {
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Length of the attended context after this step (`seq_lens`).
    pub fn context_len(&self) -> usize {
        self.start + self.token_ids.len()
    }

    /// Positions of the new tokens.
    pub fn positions(&self) -> std::ops::Range<usize> {
        self.start..self.context_len()
    }
}

/// The plan of one step. Decodes come first, then prefill chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub seqs: Vec<ScheduledSeq>,
    /// Sequences preempted by recompute while planning this step (their
    /// blocks are freed; they wait to be recomputed).
    pub preempted: Vec<SeqId>,
    /// Total new tokens, at most `max_num_batched_tokens`.
    pub num_batched_tokens: usize,
}

impl StepPlan {
    /// Nothing to run.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The plan as flat arrays for one batched forward pass.
    pub fn flatten(&self) -> FlatBatch {
        let mut f = FlatBatch {
            query_start: vec![0],
            ..FlatBatch::default()
        };
        for s in &self.seqs {
            f.input_ids.extend_from_slice(&s.token_ids);
            f.positions.extend(s.positions());
            f.slot_mapping.extend_from_slice(&s.slot_mapping);
            f.query_start.push(f.input_ids.len());
            f.context_lens.push(s.context_len());
            f.block_tables.push(s.block_table.clone());
            if s.needs_logits {
                f.logits_indices.push(f.input_ids.len() - 1);
                f.logits_seqs.push(s.id);
            }
        }
        f
    }
}

/// What `on_step_done` changed.
#[derive(Clone, Debug, Default)]
pub struct StepOutput {
    /// Sequences finished with [`FinishReason::Length`] by this step, with
    /// their final tokens; they are no longer known to the scheduler.
    pub finished: Vec<Sequence>,
}

/// A step's inputs, flat: token `i` of the batch is `input_ids[i]` at
/// `positions[i]`, its KV goes to `slot_mapping[i]`; sequence `j` owns
/// tokens `query_start[j]..query_start[j + 1]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlatBatch {
    pub input_ids: Vec<u32>,
    pub positions: Vec<usize>,
    pub slot_mapping: Vec<usize>,
    /// Cumulative token counts, `num_seqs + 1` entries starting at 0.
    pub query_start: Vec<usize>,
    /// Per sequence: attended length after this step.
    pub context_lens: Vec<usize>,
    pub block_tables: Vec<Vec<BlockId>>,
    /// Flat indices of the tokens whose logits are sampled…
    pub logits_indices: Vec<usize>,
    /// …and the sequences they belong to, in the same order.
    pub logits_seqs: Vec<SeqId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_concatenates_in_order() {
        let plan = StepPlan {
            seqs: vec![
                ScheduledSeq {
                    id: 4,
                    token_ids: vec![9],
                    start: 5,
                    block_table: vec![1, 2],
                    slot_mapping: vec![2 * 4 + 1],
                    needs_logits: true,
                },
                ScheduledSeq {
                    id: 7,
                    token_ids: vec![1, 2, 3],
                    start: 0,
                    block_table: vec![0],
                    slot_mapping: vec![0, 1, 2],
                    needs_logits: false,
                },
            ],
            preempted: vec![],
            num_batched_tokens: 4,
        };
        let f = plan.flatten();
        assert_eq!(f.input_ids, vec![9, 1, 2, 3]);
        assert_eq!(f.positions, vec![5, 0, 1, 2]);
        assert_eq!(f.slot_mapping, vec![9, 0, 1, 2]);
        assert_eq!(f.query_start, vec![0, 1, 4]);
        assert_eq!(f.context_lens, vec![6, 3]);
        assert_eq!(f.block_tables, vec![vec![1, 2], vec![0]]);
        assert_eq!((f.logits_indices, f.logits_seqs), (vec![0], vec![4]));
        assert!(!plan.is_empty() && StepPlan::default().is_empty());
        assert_eq!(StepPlan::default().flatten().query_start, vec![0]);
    }
}
