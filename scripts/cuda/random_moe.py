"""Mixture-of-experts models with random weights at the widths of real ones,
made by transformers on the GPU machine (no hub there), fewer layers so that
they fit its disk and the call's time, and their reference numbers on the
same GPU.

    python3 scripts/cuda/random_moe.py make DIR --shape glm47-flash|qwen3-30b-a3b
            [--layers N] [--seed 0]
        saves DIR (config, bf16 safetensors, a tokenizer: SmolLM2's with the
        special tokens GLM's GGUF conversion asks for, so llama.cpp's
        converter takes the model) and DIR/reference.json: 24 input ids
        and transformers' float32 logits of them
    python3 scripts/cuda/random_moe.py speed DIR
        transformers bf16: prefill of 512 tokens and 128 greedy decode steps
        (tokens/s), the peer of `metal-marlin bench -p 512 -n 128`
    python3 scripts/cuda/random_moe.py compare DIR OURS.npy [--max-kl K]
        as random_llama.py compare

Shapes (per layer as the real model; the real depth in brackets):
* glm47-flash: GLM-4.7-Flash (Glm4MoeLiteForCausalLM) [47 layers]: hidden
  2048, MLA (20 heads, q_lora 768, kv_lora 512, qk 192+64, v 256), first
  layer dense (10240), then 64 routed experts of 1536 top-4 (sigmoid +
  correction bias, scaling 1.8, renormalised) and 1 shared expert.
* qwen3-30b-a3b: Qwen3-30B-A3B [48 layers]: hidden 2048, GQA 32/4 heads of
  128, 128 experts of 768 top-8 (softmax, renormalised).

Weights come from transformers' own initializer (normal, std 0.02) under a
fixed seed; RMSNorm weights and correction biases are drawn so that they
matter (a zero bias would leave the bias path untested); routers are drawn
10x wider so that routing is rarely near a tie.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from random_llama import arg, compare, timed  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "..", "tests", "fixtures", "tokenizer", "smollm2-hf")


def config(shape, layers):
    if shape == "glm47-flash":
        try:
            from transformers import Glm4MoeLiteConfig
        except ImportError:  # transformers before GLM-4.7-Flash: its twin
            from transformers import DeepseekV3Config

            def Glm4MoeLiteConfig(mlp_layer_types, **kw):
                return DeepseekV3Config(first_k_dense_replace=mlp_layer_types.count("dense"),
                                        **kw)
        return Glm4MoeLiteConfig(
            vocab_size=154880, hidden_size=2048, intermediate_size=10240,
            num_hidden_layers=layers, num_attention_heads=20, num_key_value_heads=20,
            q_lora_rank=768, kv_lora_rank=512, qk_nope_head_dim=192, qk_rope_head_dim=64,
            v_head_dim=256, rope_interleave=True, n_routed_experts=64,
            num_experts_per_tok=4, moe_intermediate_size=1536, n_shared_experts=1,
            n_group=1, topk_group=1, routed_scaling_factor=1.8, norm_topk_prob=True,
            mlp_layer_types=["dense"] + ["sparse"] * (layers - 1), rms_norm_eps=1e-5,
            max_position_embeddings=4096, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    if shape == "qwen3-30b-a3b":
        from transformers import Qwen3MoeConfig
        return Qwen3MoeConfig(
            vocab_size=151936, hidden_size=2048, intermediate_size=6144,
            num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=4,
            head_dim=128, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
            norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
            rms_norm_eps=1e-6, max_position_embeddings=4096, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    sys.exit(f"unknown shape {shape}")


def save_tokenizer(d):
    """SmolLM2's tokenizer plus GLM's special tokens (llama.cpp's GLM vocab
    writer looks them up); its pre-tokenizer is one llama.cpp knows."""
    from tokenizers import AddedToken, Tokenizer
    tok = Tokenizer.from_file(os.path.join(TOKENIZER, "tokenizer.json"))
    extra = ["[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|observation|>"]
    tok.add_special_tokens([AddedToken(t, special=True) for t in extra])
    tok.save(os.path.join(d, "tokenizer.json"))
    cfg = json.load(open(os.path.join(TOKENIZER, "tokenizer_config.json")))
    cfg.pop("added_tokens_decoder", None)
    json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))


def make(d):
    import torch
    from transformers import AutoModelForCausalLM
    seed = int(arg("--seed", "0"))
    shape = arg("--shape", "glm47-flash")
    cfg = config(shape, int(arg("--layers", "8")))
    torch.manual_seed(seed)
    with torch.device("cuda"):
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p.float()))
            # Routers 10x wider than the initializer's: the experts a token
            # picks are then rarely near a tie, which a 1e-3 difference in
            # the hidden state (the GPU's default precision) would flip.
            if n.endswith("mlp.gate.weight"):
                p.mul_(10.0)
        for n, b in m.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn_like(b.float()))
    m.save_pretrained(d)
    # GLM-4.7-Flash's own config.json also names its dense lead in
    # DeepSeek's key, which llama.cpp's converter reads (without it the
    # converter takes every layer for a MoE one).
    types = getattr(cfg, "mlp_layer_types", None)
    if types is not None:
        path = os.path.join(d, "config.json")
        c = json.load(open(path))
        c.setdefault("first_k_dense_replace", types.count("dense"))
        json.dump(c, open(path, "w"), indent=2)
    save_tokenizer(d)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(3, 49152, (24,), generator=g).tolist()
    m = m.float()
    with torch.no_grad():
        logits = m(torch.tensor([ids], device="cuda")).logits[0]
    json.dump({"input_ids": ids, "logits": logits.cpu().tolist()},
              open(os.path.join(d, "reference.json"), "w"))
    print(f"saved {d}: {shape}, {cfg.num_hidden_layers} layers, "
          f"{sum(p.numel() for p in m.parameters()) / 1e9:.2f} B parameters")


def speed(d):
    """transformers' speed: 64 decode steps (its MoE layers loop over the
    experts in Python, slow enough that 128 would only lengthen the call)."""
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).cuda().eval()
    timed(m, 49152, 64)


if __name__ == "__main__":
    cmd = sys.argv[1:2]
    if cmd == ["make"]:
        make(sys.argv[2])
    elif cmd == ["speed"]:
        speed(sys.argv[2])
    elif cmd == ["compare"]:
        top1, kl, err = compare(sys.argv[2], sys.argv[3])
        sys.exit(0 if top1 == 1.0 and kl <= float(arg("--max-kl", "1e-3")) else 1)
    else:
        sys.exit(__doc__)
