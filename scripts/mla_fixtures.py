"""Tiny multi-head latent attention models for make_fixtures.py: DeepSeek-V2,
DeepSeek-V3 and GLM-4.7-Flash (Glm4MoeLite) at hidden 64, 2 layers, with
their attention's structure kept (latent ranks, nope/rope/v head dims that
differ, q_lora on and off, both RoPE layouts, YaRN with mscale).

Every layer is dense (first_k_dense_replace / mlp_layer_types), so these
check MLA alone; the MoE feed-forwards are another fixture's business.
Embeddings are tied and the MLPs narrow to keep each file under 100 KB.
"""

from transformers import DeepseekV2Config, DeepseekV3Config, Glm4MoeLiteConfig


def mla_specs(common):
    """name -> (seed, config, n_input_tokens), as tiny_specs() returns."""
    base = dict(common, intermediate_size=48, tie_word_embeddings=True)
    layers = base["num_hidden_layers"]
    return {
        # No q_lora (plain q_proj); RoPE on interleaved pairs as complex
        # numbers (V2 always); v_head_dim 16 < qk_head_dim 24; kv_a/o biases.
        "deepseek-v2": (
            1011,
            DeepseekV2Config(**base, num_attention_heads=4, num_key_value_heads=4,
                             q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16,
                             qk_rope_head_dim=8, v_head_dim=16, attention_bias=True,
                             first_k_dense_replace=layers, rms_norm_eps=1e-6,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
            12,
        ),
        # q_lora 24; rope_interleave off (rotate-half); YaRN factor 4 over an
        # original context of 64 with mscale 1 / mscale_all_dim 0.707: the
        # attention factor (cos/sin) and the softmax scale's mscale² both
        # differ from 1. 40 input tokens.
        "deepseek-v3-yarn": (
            1012,
            DeepseekV3Config(**base, num_attention_heads=4, num_key_value_heads=4,
                             q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16,
                             qk_rope_head_dim=8, v_head_dim=12, rope_interleave=False,
                             first_k_dense_replace=layers, rms_norm_eps=1e-6,
                             rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0,
                                              "factor": 4.0,
                                              "original_max_position_embeddings": 64,
                                              "beta_fast": 32.0, "beta_slow": 1.0,
                                              "mscale": 1.0, "mscale_all_dim": 0.707}),
            40,
        ),
        # GLM-4.7-Flash's layout: q_lora, interleaved RoPE pairs, v_head_dim
        # 32 > qk_head_dim 24, q_a/kv_a/o biases, 2 heads.
        "glm4-moe-lite": (
            1013,
            Glm4MoeLiteConfig(**base, num_attention_heads=2, num_key_value_heads=2,
                              q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16,
                              qk_rope_head_dim=8, v_head_dim=32, rope_interleave=True,
                              attention_bias=True, mlp_layer_types=["dense"] * layers,
                              rms_norm_eps=1e-5,
                              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
            12,
        ),
    }
