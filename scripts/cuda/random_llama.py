"""A Llama-shape model with random weights, made by transformers on the GPU
machine (no hub there), and its reference numbers on the same GPU.

    python3 scripts/cuda/random_llama.py make DIR [--shape 1b|8b] [--seed 0]
        saves DIR (config + bf16 safetensors) and DIR/reference.json:
        input ids and transformers' float32 logits of them (the bf16
        weights upcast, so the CPU/GPU --exact paths can be compared
        without bf16 arithmetic noise)
    python3 scripts/cuda/random_llama.py speed DIR
        transformers bf16 on the GPU: prefill of 512 tokens and 128 greedy
        decode steps (tokens/s), the peer of `metal-marlin bench -p 512 -n 128`
    python3 scripts/cuda/random_llama.py compare DIR OURS.npy
        top-1 agreement, mean KL and max logit error of OURS against
        reference.json

Weights are drawn by transformers' own initializer (normal, std 0.02) from
a fixed seed; RMSNorm weights are drawn around 1 so that they matter.
"""
import json
import os
import sys
import time

SHAPES = {
    # Llama-3.2-1B and Llama-3-8B (vocab cut to 32000 to keep files small)
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8),
}


def arg(name, default):
    a = sys.argv
    return a[a.index(name) + 1] if name in a else default


def make(d):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    seed = int(arg("--seed", "0"))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, rope_theta=500000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=False,
                      torch_dtype="bfloat16", **SHAPES[arg("--shape", "1b")])
    with torch.device("cuda"):
        m = LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p.float()))
    m.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(3, cfg.vocab_size, (24,), generator=g).tolist()
    m = m.float()
    with torch.no_grad():
        logits = m(torch.tensor([ids], device="cuda")).logits[0]
    json.dump({"input_ids": ids, "logits": logits.cpu().tolist()},
              open(os.path.join(d, "reference.json"), "w"))
    print(f"saved {d}: {sum(p.numel() for p in m.parameters()) / 1e9:.2f} B parameters")


def speed(d):
    import torch
    from transformers import LlamaForCausalLM
    m = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.bfloat16).cuda().eval()
    timed(m, 32000, 128)


def timed(m, vocab, new_tokens):
    """Prints transformers' speed on model m: prefill of 512 random ids
    below `vocab` (3 timed runs after 2 warm-ups) and `new_tokens` greedy
    decode steps after an 8-token warm-up."""
    import torch
    ids = torch.randint(3, vocab, (1, 512), device="cuda")
    with torch.no_grad():
        for _ in range(2):
            m(ids)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(3):
            m(ids)
        torch.cuda.synchronize()
        pp = 3 * 512 / (time.perf_counter() - t)
        one = ids[:, :1]
        m.generate(one, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        torch.cuda.synchronize()
        t = time.perf_counter()
        m.generate(one, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        torch.cuda.synchronize()
        tg = new_tokens / (time.perf_counter() - t)
    print(json.dumps({"peer": "transformers-bf16", "pp512_tok_s": round(pp, 1),
                      f"tg{new_tokens}_tok_s": round(tg, 1),
                      "gpu": torch.cuda.get_device_name()}))


def compare(d, ours):
    import numpy as np
    ref = np.array(json.load(open(os.path.join(d, "reference.json")))["logits"], dtype=np.float64)
    a = np.load(ours).astype(np.float64)

    def logsm(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    la, lr = logsm(a), logsm(ref)
    kl = (np.exp(lr) * (lr - la)).sum(-1)
    top1 = (a.argmax(-1) == ref.argmax(-1)).mean()
    err = np.abs(a - ref).max() / np.abs(ref).max()
    print(f"{ours} vs transformers: top-1 {top1:.0%}, mean KL {kl.mean():.2e}, "
          f"max |dlogit|/max|logit| {err:.1e}")
    return top1, kl.mean(), err


if __name__ == "__main__":
    cmd = sys.argv[1:2]
    if cmd == ["make"]:
        make(sys.argv[2])
    elif cmd == ["speed"]:
        speed(sys.argv[2])
    elif cmd == ["compare"]:
        top1, kl, err = compare(sys.argv[2], sys.argv[3])
        limit = float(arg("--max-kl", "1e-3"))
        sys.exit(0 if top1 == 1.0 and kl <= limit else 1)
    else:
        sys.exit(__doc__)
