"""Tiny multi-head latent attention models for make_fixtures.py: DeepSeek-V2,
DeepSeek-V3 and GLM-4.7-Flash (Glm4MoeLite) at hidden 64, 2-3 layers, with
their attention's structure kept (latent ranks, nope/rope/v head dims that
differ, q_lora on and off, both RoPE layouts, YaRN with mscale).

The first layer is dense, the others mixture-of-experts layers as each
architecture routes them (moe_fixtures.py randomizes correction biases and
checks the routing margins): 8 routed experts of width 16, top-2, shared
experts always added.

* deepseek-v2: softmax scores, `group_limited_greedy` (4 groups scored by
  their best expert, 2 compete), no renormalisation (transformers ignores
  `norm_topk_prob` here), routed_scaling_factor 1.5, 2 shared experts.
* deepseek-v3-yarn: 3 layers (two MoE), sigmoid + correction bias, noaux_tc
  (4 groups scored by the sum of their best two, 2 compete),
  renormalised, routed_scaling_factor 2.5, 1 shared expert.
* deepseek-v3-yarn-interleaved: the same with interleaved RoPE and
  mscale = mscale_all_dim, as a GGUF file holds it.
* glm4-moe-lite: as V3 with 2 groups of which 1 competes, scaling 1.8, the
  layer pattern from `mlp_layer_types`.

Embeddings are tied and the MLPs narrow to keep the files small.
"""

from transformers import DeepseekV2Config, DeepseekV3Config, Glm4MoeLiteConfig


def mla_specs(common):
    """name -> (seed, config, n_input_tokens), as tiny_specs() returns."""
    base = dict(common, intermediate_size=48, tie_word_embeddings=True)
    moe = dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16)

    def v3(rope_interleave, mscale):
        return DeepseekV3Config(**dict(base, num_hidden_layers=3), num_attention_heads=4,
                                num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=32,
                                qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
                                rope_interleave=rope_interleave, first_k_dense_replace=1,
                                rms_norm_eps=1e-6, **moe, n_shared_experts=1, n_group=4,
                                topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
                                rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0,
                                                 "factor": 4.0,
                                                 "original_max_position_embeddings": 64,
                                                 "beta_fast": 32.0, "beta_slow": 1.0,
                                                 "mscale": mscale, "mscale_all_dim": 0.707})

    return {
        # No q_lora (plain q_proj); RoPE on interleaved pairs as complex
        # numbers (V2 always); v_head_dim 16 < qk_head_dim 24; kv_a/o biases.
        "deepseek-v2": (
            1011,
            DeepseekV2Config(**base, num_attention_heads=4, num_key_value_heads=4,
                             q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16,
                             qk_rope_head_dim=8, v_head_dim=16, attention_bias=True,
                             first_k_dense_replace=1, rms_norm_eps=1e-6, **moe,
                             n_shared_experts=2, topk_method="group_limited_greedy",
                             n_group=4, topk_group=2, norm_topk_prob=False,
                             routed_scaling_factor=1.5,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
            12,
        ),
        # q_lora 24; rope_interleave off (rotate-half); YaRN factor 4 over an
        # original context of 64 with mscale 1 / mscale_all_dim 0.707: the
        # attention factor (cos/sin) and the softmax scale's mscale² both
        # differ from 1. 40 input tokens.
        "deepseek-v3-yarn": (1012, v3(rope_interleave=False, mscale=1.0), 40),
        # As deepseek-v3-yarn in the form a GGUF `deepseek2` file holds (for
        # make_gguf_fixtures.py): llama.cpp rotates interleaved pairs and takes
        # mscale = mscale_all_dim (DeepSeek-V2's 0.707 here), so cos/sin are
        # not scaled and the softmax scale gains mscale(4, 0.707)².
        "deepseek-v3-yarn-interleaved": (1013, v3(rope_interleave=True, mscale=0.707), 40),
        # GLM-4.7-Flash's layout: q_lora, interleaved RoPE pairs, v_head_dim
        # 32 > qk_head_dim 24, q_a/kv_a/o biases, 2 heads.
        "glm4-moe-lite": (
            1023,
            Glm4MoeLiteConfig(**base, num_attention_heads=2, num_key_value_heads=2,
                              q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16,
                              qk_rope_head_dim=8, v_head_dim=32, rope_interleave=True,
                              attention_bias=True, mlp_layer_types=["dense", "sparse"],
                              rms_norm_eps=1e-5, **moe, n_shared_experts=1, n_group=2,
                              topk_group=1, norm_topk_prob=True, routed_scaling_factor=1.8,
                              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
            12,
        ),
    }
