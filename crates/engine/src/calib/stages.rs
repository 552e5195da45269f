//! Where each decoder-layer weight sits in GPTQ's true-sequential order,
//! for every architecture we load: standard attention (q/k/v, o), multi-head
//! latent attention (q_a/kv_a, q_b/kv_b, o), dense MLPs, and mixture-of-
//! experts blocks (routed experts, shared experts).

/// Stages of a decoder layer, in forward order (see [`stage_of`]).
pub const STAGES: usize = 5;

/// The stage of a decoder-layer weight in true-sequential order; weights
/// of one stage read the same input (or inputs computed from the same
/// earlier stages), so they are calibrated together:
///
/// | stage | weights |
/// |---|---|
/// | 0 | attention inputs: `q_proj`, `k_proj`, `v_proj`; MLA's `q_a_proj`, `kv_a_proj_with_mqa` (and `q_proj` without a query LoRA) |
/// | 1 | MLA's up-projections `q_b_proj`, `kv_b_proj` (their inputs are the normalised outputs of stage 0) |
/// | 2 | `o_proj` |
/// | 3 | feed-forward inputs: `gate_proj`/`up_proj` of a dense MLP, of the shared experts and of every routed expert (Mixtral's `w1`/`w3`) |
/// | 4 | `down_proj` of the same (Mixtral's `w2`) |
///
/// `None` for names outside decoder layers and for weights that are not
/// quantized with calibration (routers, norms).
pub fn stage_of(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let tail = tail.strip_suffix(".weight").unwrap_or(tail);
    let stage = if let Some(attn) = tail.strip_prefix("self_attn.") {
        match attn {
            "q_proj" | "k_proj" | "v_proj" | "q_a_proj" | "kv_a_proj_with_mqa" => 0,
            "q_b_proj" | "kv_b_proj" => 1,
            "o_proj" => 2,
            _ => return None,
        }
    } else {
        let (_, proj) = tail.rsplit_once('.')?;
        let block = ffn_block(tail)?;
        match (block, proj) {
            (FfnBlock::Expert(_), "w1" | "w3") => 3,
            (FfnBlock::Expert(_), "w2") => 4,
            (_, "gate_proj" | "up_proj") => 3,
            (_, "down_proj") => 4,
            _ => return None,
        }
    };
    Some((layer, stage))
}

/// Which feed-forward block a weight (without its layer prefix) is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FfnBlock {
    /// `mlp.{gate,up,down}_proj`.
    Dense,
    /// `{mlp|block_sparse_moe}.shared_experts.*`.
    Shared,
    /// `{mlp|block_sparse_moe}.experts.N.*`.
    Expert(usize),
}

fn ffn_block(tail: &str) -> Option<FfnBlock> {
    let (block, rest) = tail.split_once('.')?;
    if block != "mlp" && block != "block_sparse_moe" {
        return None;
    }
    let parts: Vec<&str> = rest.split('.').collect();
    match parts.as_slice() {
        [_] if block == "mlp" => Some(FfnBlock::Dense),
        ["shared_experts", _] => Some(FfnBlock::Shared),
        ["experts", e, _] => e.parse().ok().map(FfnBlock::Expert),
        _ => None,
    }
}

/// `(layer, expert)` of a routed expert's weight
/// (`model.layers.3.mlp.experts.5.up_proj.weight`,
/// `model.layers.0.block_sparse_moe.experts.1.w2.weight`); `None` for every
/// other weight, shared experts included (every token goes through them).
pub fn routed_expert(name: &str) -> Option<(usize, usize)> {
    let (layer, _) = stage_of(name)?;
    let rest = name.strip_prefix("model.layers.")?.split_once('.')?.1;
    match ffn_block(rest.strip_suffix(".weight").unwrap_or(rest))? {
        FfnBlock::Expert(e) => Some((layer, e)),
        _ => None,
    }
}

/// Where a weight's output is added to the residual stream: 0 at the
/// layer's input stream (attention output), 1 between the blocks (MLP or
/// shared-expert output); `None` for weights that feed other products and
/// for routed experts (their output is weighted by the router and reaches
/// only the rows routed to them).
pub(crate) fn residual_point(name: &str) -> Option<usize> {
    if routed_expert(name).is_some() {
        return None;
    }
    match stage_of(name)?.1 {
        2 => Some(0),
        4 => Some(1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_the_forward_order() {
        let s = |n: &str| stage_of(&format!("model.layers.{n}.weight"));
        assert_eq!(s("0.self_attn.q_proj"), Some((0, 0)));
        assert_eq!(s("12.self_attn.v_proj"), Some((12, 0)));
        assert_eq!(s("3.self_attn.o_proj"), Some((3, 2)));
        assert_eq!(s("3.mlp.up_proj"), Some((3, 3)));
        assert_eq!(s("29.mlp.down_proj"), Some((29, 4)));
        // MLA.
        assert_eq!(s("1.self_attn.q_a_proj"), Some((1, 0)));
        assert_eq!(s("1.self_attn.kv_a_proj_with_mqa"), Some((1, 0)));
        assert_eq!(s("1.self_attn.q_b_proj"), Some((1, 1)));
        assert_eq!(s("1.self_attn.kv_b_proj"), Some((1, 1)));
        // Experts, shared experts, Mixtral.
        assert_eq!(s("2.mlp.experts.7.gate_proj"), Some((2, 3)));
        assert_eq!(s("2.mlp.experts.7.down_proj"), Some((2, 4)));
        assert_eq!(s("2.mlp.shared_experts.up_proj"), Some((2, 3)));
        assert_eq!(s("2.mlp.shared_experts.down_proj"), Some((2, 4)));
        assert_eq!(s("4.block_sparse_moe.experts.0.w1"), Some((4, 3)));
        assert_eq!(s("4.block_sparse_moe.experts.0.w3"), Some((4, 3)));
        assert_eq!(s("4.block_sparse_moe.experts.0.w2"), Some((4, 4)));
        // Not calibrated.
        assert_eq!(stage_of("lm_head.weight"), None);
        assert_eq!(s("2.mlp.gate"), None);
        assert_eq!(s("4.block_sparse_moe.gate"), None);
        assert_eq!(s("1.self_attn.kv_a_layernorm"), None);
        assert_eq!(stage_of("model.layers.x.mlp.down_proj.weight"), None);
        assert_eq!(stage_of("model.layers.1.input_layernorm.weight"), None);
        assert_eq!(s("2.mlp.experts.x.gate_proj"), None);
    }

    #[test]
    fn routed_experts_and_residual_writers() {
        let n = |s: &str| format!("model.layers.{s}.weight");
        assert_eq!(routed_expert(&n("2.mlp.experts.7.gate_proj")), Some((2, 7)));
        assert_eq!(
            routed_expert(&n("0.block_sparse_moe.experts.3.w2")),
            Some((0, 3))
        );
        assert_eq!(routed_expert(&n("2.mlp.shared_experts.up_proj")), None);
        assert_eq!(routed_expert(&n("2.mlp.down_proj")), None);
        assert_eq!(routed_expert(&n("2.mlp.gate")), None);
        assert_eq!(residual_point(&n("2.self_attn.o_proj")), Some(0));
        assert_eq!(residual_point(&n("2.mlp.down_proj")), Some(1));
        assert_eq!(
            residual_point(&n("2.mlp.shared_experts.down_proj")),
            Some(1)
        );
        assert_eq!(residual_point(&n("2.mlp.experts.1.down_proj")), None);
        assert_eq!(residual_point(&n("2.self_attn.kv_b_proj")), None);
    }
}
