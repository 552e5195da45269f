"""Tiny mixture-of-experts fixtures for make_fixtures.py (Qwen3-MoE, Mixtral, GLM-4-MoE; the
MoE layers of the MLA fixtures of mla_fixtures.py go through the same checks).

Made exactly as the dense tiny models (same script, same steps; see make_fixtures.py), plus:

* every router `e_score_correction_bias` (GLM) is randomized to 0.1*randn (transformers leaves
  zeros, which would hide a bias that is ignored or used for the weights);
* a weight seed is accepted only if routing is robust: on the logits input and on the greedy
  prompt + continuation, at every MoE layer and token, the gap between the last chosen and the
  first unchosen expert's (bias-corrected) score, and between the last chosen and first unchosen
  group's score, is at least MIN_ROUTER_MARGIN (scores are softmax probabilities or sigmoids;
  the default-precision path moves them by ~1e-4), so an implementation within the logits
  tolerance routes every token as transformers does;
* reference.json records `routing`: per MoE layer the experts no token of the logits input
  picked, and the smallest router margin.

Features covered: softmax top-k with (qwen3-moe-renorm, mixtral) and without (qwen3-moe)
renormalisation, dense layers from mlp_only_layers (qwen3-moe), decoder_sparse_step
(qwen3-moe-renorm), every layer sparse (qwen3-moe-sparse, the form GGUF holds) and first_k_dense_replace (glm4-moe*), sigmoid + correction bias +
group-limited top-k with 4 groups of which 2 compete + routed_scaling_factor + renormalisation +
one shared expert + q/k norm + attention bias + partial rotary 0.5 (glm4-moe), and without
groups / renormalisation / qk-norm with two shared experts and partial rotary 0.25
(glm4-moe-plain). 8 experts, top-2, expert width 32, tied embeddings (fixture size).
"""

from __future__ import annotations

import torch
from transformers import Glm4MoeConfig, MixtralConfig, Qwen3MoeConfig

MIN_ROUTER_MARGIN = 1e-3


def moe_specs(common: dict) -> dict:
    """name -> (seed, config, n_input_tokens), as make_fixtures.tiny_specs."""
    c = dict(common, intermediate_size=64, tie_word_embeddings=True)
    moe = dict(num_experts_per_tok=2, moe_intermediate_size=32)
    return {
        "qwen3-moe": (
            1101,
            Qwen3MoeConfig(**c, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           rms_norm_eps=1e-6, num_experts=8, norm_topk_prob=False,
                           mlp_only_layers=[0], decoder_sparse_step=1, **moe,
                           rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
            12,
        ),
        "qwen3-moe-renorm": (
            1102,
            Qwen3MoeConfig(**dict(c, num_hidden_layers=3), num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, num_experts=8,
                           norm_topk_prob=True, mlp_only_layers=[], decoder_sparse_step=2, **moe,
                           rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
            12,
        ),
        # Every layer sparse and renormalised: the only Qwen3-MoE llama.cpp's converter and
        # `qwen3moe` graph take (its tensor list has no dense MLP, its graph always
        # renormalises), for the GGUF fixture of make_gguf_fixtures.py.
        "qwen3-moe-sparse": (
            1106,
            Qwen3MoeConfig(**c, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           rms_norm_eps=1e-6, num_experts=8, norm_topk_prob=True,
                           mlp_only_layers=[], decoder_sparse_step=1, **moe,
                           rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
            12,
        ),
        "mixtral": (
            1103,
            MixtralConfig(**dict(c, intermediate_size=32), num_attention_heads=4,
                          num_key_value_heads=2, rms_norm_eps=1e-5, num_local_experts=8,
                          num_experts_per_tok=2, sliding_window=None,
                          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
            12,
        ),
        "glm4-moe": (
            1104,
            Glm4MoeConfig(**c, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          rms_norm_eps=1e-5, n_routed_experts=8, n_shared_experts=1,
                          n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
                          first_k_dense_replace=1, use_qk_norm=True, attention_bias=True, **moe,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "partial_rotary_factor": 0.5}),
            12,
        ),
        "glm4-moe-plain": (
            1105,
            Glm4MoeConfig(**c, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          rms_norm_eps=1e-5, n_routed_experts=8, n_shared_experts=2,
                          n_group=1, topk_group=1, norm_topk_prob=False,
                          routed_scaling_factor=1.0, first_k_dense_replace=1, use_qk_norm=False,
                          attention_bias=False, **moe,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "partial_rotary_factor": 0.25}),
            12,
        ),
    }


def is_moe(model) -> bool:
    return any(_is_router(m) for m in model.modules())


def _is_router(m) -> bool:
    return type(m).__name__.endswith(("TopKRouter", "TopkRouter"))


def randomize(model, gen: torch.Generator) -> int:
    """Router correction biases -> 0.1*randn; returns how many."""
    n = 0
    with torch.no_grad():
        for m in model.modules():
            b = getattr(m, "e_score_correction_bias", None)
            if _is_router(m) and b is not None:
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
                n += 1
    return n


def _choice(router, x: torch.Tensor):
    """(choice scores with groups masked, group scores or None, top_k, topk_group).

    Softmax routers group only under DeepSeek-V2's `group_limited_greedy` (a group scores its
    best expert); sigmoid routers (GLM, DeepSeek-V3) score a group by its best two."""
    logits = torch.nn.functional.linear(x.float(), router.weight.float())
    bias = getattr(router, "e_score_correction_bias", None)
    if bias is None:
        s = torch.softmax(logits, -1)
        grouped = getattr(router, "topk_method", None) == "group_limited_greedy"
    else:
        s = logits.sigmoid() + bias.float()
        grouped = True
    g = getattr(router, "num_group", None) or 1
    if not grouped or g == 1:
        return s, None, router.top_k, None
    per = s.view(-1, g, s.shape[-1] // g)
    gs = per.max(dim=-1).values if bias is None else per.topk(2, dim=-1)[0].sum(-1)
    keep = torch.zeros_like(gs).scatter_(1, gs.topk(router.topk_group, dim=-1)[1], 1)
    mask = keep.unsqueeze(-1).expand(-1, g, s.shape[-1] // g).reshape(s.shape).bool()
    return s.masked_fill(~mask, float("-inf")), gs, router.top_k, router.topk_group


@torch.no_grad()
def routing_stats(model, ids: list[int]) -> dict:
    """Per MoE layer on a cache-free forward of `ids`: the smallest gap at the top-k (and
    group) boundary, and the experts no token picked."""
    inputs = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, name=name: inputs.__setitem__(name, a[0]))
             for name, m in model.named_modules() if _is_router(m)]
    try:
        model(torch.tensor([ids]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    layers = []
    routers = dict(model.named_modules())
    for name, x in inputs.items():
        r = routers[name]
        x = x.reshape(-1, x.shape[-1])
        s, gs, k, kg = _choice(r, x)
        top = s.topk(k + 1, dim=-1)
        margin = float((top.values[:, k - 1] - top.values[:, k]).min())
        if gs is not None:
            gt = gs.topk(kg + 1, dim=-1).values
            margin = min(margin, float((gt[:, kg - 1] - gt[:, kg]).min()))
        picked = set(top.indices[:, :k].flatten().tolist())
        layers.append({"router": name, "min_margin": margin,
                       "unpicked_experts": sorted(set(range(s.shape[-1])) - picked)})
    return {"layers": layers, "min_margin": min(l["min_margin"] for l in layers)}


def routing_ok(model, seqs: list[list[int]]) -> bool:
    return all(routing_stats(model, s)["min_margin"] >= MIN_ROUTER_MARGIN for s in seqs)
