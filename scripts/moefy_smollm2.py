"""MoE-fy SmolLM2: a real-weights mixture-of-experts checkpoint for measuring expert quantization.

We have no trained MoE checkpoint offline, so this turns SmolLM2-135M (dense) into a
MixtralForCausalLM: each layer's 1536 MLP neurons are split into E experts (default 8 experts
of 192 neurons), each expert being the SwiGLU of its neurons (w1 = gate rows, w3 = up rows,
w2 = down columns), and a router picks top-k of them per token.

* Split (--split cluster, default): balanced k-means of the neurons' activation profiles
  (|silu(gate)·up| over calibration tokens, each neuron's profile normalised), so neurons that
  fire together share an expert (MoEfication, Zhang et al. 2022); --split contiguous takes
  neurons 0..191, 192..383, ...
* Router: least squares (no bias; Mixtral's router has none) from the MLP input (the
  post-attention RMSNorm output) to each expert's output norm on the calibration tokens, so a
  token picks the experts predicted to contribute most. Mixtral renormalises the softmax over
  the chosen k, and the dense MLP is the *sum* of all experts: the router logits are the
  predictions scaled to a small spread (--router-spread, the standard deviation of a token's
  logits) so the chosen experts' weights stay near 1/k, and w2 is multiplied by k, so each
  chosen expert contributes about its full output.
* Check (always run): the same construction with top-k = E, a zero router and w2 × E (every
  weight exactly 1/E) reproduces SmolLM2's logits (asserted within 1e-4 · max|logit|).

It is a MoE-fied dense model, not a trained MoE: routing drops (E - k)/E of each layer's MLP
and nothing was trained to make up for it; its own perplexity is reported for that reason.

Usage (the f32 SmolLM2 directory comes from `metal-marlin quantize GGUF --keep '.*=f32' -o REF`):
    /work/venv/bin/python scripts/moefy_smollm2.py --src REF --calib calib.txt --out /tmp/smol-moe \
        [--experts 8] [--top-k 4] [--split cluster|contiguous] [--windows 16] [--eval TEXT]
The output directory (outside the repository) holds config.json, model.safetensors and the
tokenizer files; --eval prints the MoE model's and SmolLM2's perplexity and the MoE model's
KL divergence from SmolLM2 on TEXT (windows of 512, every token after the first scored).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

WINDOW = 512


def windows(ids: list[int], n: int) -> list[torch.Tensor]:
    """Up to n non-overlapping windows of WINDOW tokens spread over ids."""
    count = min(n, len(ids) // WINDOW)
    if count == 0:
        sys.exit(f"text too short: {len(ids)} tokens, need {WINDOW}")
    starts = [0] if count == 1 else [k * (len(ids) - WINDOW) // (count - 1) for k in range(count)]
    return [torch.tensor(ids[s : s + WINDOW]) for s in starts]


@torch.no_grad()
def mlp_inputs(model: LlamaForCausalLM, wins: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, the MLP inputs of every calibration token, [tokens, hidden]."""
    layers = model.model.layers
    got: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [
        layer.mlp.register_forward_hook(lambda m, a, o, i=i: got[i].append(a[0][0].clone()))
        for i, layer in enumerate(layers)
    ]
    for w in wins:
        model(w[None])
    for h in hooks:
        h.remove()
    return [torch.cat(g) for g in got]


def balanced_kmeans(profiles: torch.Tensor, k: int, seed: int, iters: int = 20) -> list[list[int]]:
    """k equal-size clusters of the rows of `profiles` (unit rows; cosine similarity):
    assignment by the best (row, cluster) similarities first, each cluster taking n/k rows."""
    n = profiles.shape[0]
    size = n // k
    g = torch.Generator().manual_seed(seed)
    centers = profiles[torch.randperm(n, generator=g)[:k]].clone()
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        sim = profiles @ centers.T  # [n, k]
        order = torch.argsort(sim.flatten(), descending=True)
        taken = torch.zeros(n, dtype=torch.bool)
        fill = [0] * k
        for flat in order.tolist():
            r, c = divmod(flat, k)
            if taken[r] or fill[c] == size:
                continue
            taken[r] = True
            assign[r] = c
            fill[c] += 1
            if all(f == size for f in fill):
                break
        new = torch.stack([profiles[assign == c].mean(0) for c in range(k)])
        new = F.normalize(new, dim=1)
        if torch.allclose(new, centers):
            break
        centers = new
    return [sorted((assign == c).nonzero().flatten().tolist()) for c in range(k)]


@torch.no_grad()
def moefy(model, xs, experts: int, top_k: int, split: str, spread: float, seed: int):
    """State dict (checkpoint names) of the Mixtral model and per-layer neuron groups."""
    sd = {}
    base = model.state_dict()
    for name, t in base.items():
        if ".mlp." not in name and name != "lm_head.weight":
            sd[name] = t.clone()
    inter = model.config.intermediate_size
    if inter % experts:
        sys.exit(f"{inter} neurons do not split into {experts} experts")
    width = inter // experts
    groups_all = []
    for l, x in enumerate(xs):
        p = f"model.layers.{l}.mlp."
        wg, wu, wd = (base[p + n + ".weight"] for n in ("gate_proj", "up_proj", "down_proj"))
        act = F.silu(x @ wg.T) * (x @ wu.T)  # [tokens, inter]
        if split == "contiguous":
            groups = [list(range(e * width, (e + 1) * width)) for e in range(experts)]
        else:
            groups = balanced_kmeans(F.normalize(act.abs().T, dim=1), experts, seed + l)
        groups_all.append(groups)
        norms = torch.stack(
            [(act[:, g] @ wd[:, g].T).norm(dim=1) for g in groups], dim=1
        )  # [tokens, experts]
        router = torch.linalg.lstsq(x.double(), norms.double()).solution.T.float()  # [E, hidden]
        pred = x @ router.T
        scale = spread / pred.std(dim=1).mean().clamp_min(1e-12)
        q = f"model.layers.{l}.block_sparse_moe."
        sd[q + "gate.weight"] = (router * scale).contiguous()
        for e, g in enumerate(groups):
            sd[q + f"experts.{e}.w1.weight"] = wg[g].contiguous()
            sd[q + f"experts.{e}.w3.weight"] = wu[g].contiguous()
            sd[q + f"experts.{e}.w2.weight"] = (wd[:, g] * top_k).contiguous()
    return sd, groups_all


def mixtral_config(llama_cfg, experts: int, top_k: int) -> MixtralConfig:
    c = llama_cfg
    return MixtralConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size // experts,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.hidden_size // c.num_attention_heads,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_theta if hasattr(c, "rope_theta") else c.rope_parameters["rope_theta"],
        tie_word_embeddings=True,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        sliding_window=None,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        router_jitter_noise=0.0,
    )


def write(out: Path, src: Path, cfg: MixtralConfig, sd: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cfg.architectures = ["MixtralForCausalLM"]
    cfg.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in sd.items()}, out / "model.safetensors", {"format": "pt"})
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / f).is_file():
            shutil.copy(src / f, out / f)


@torch.no_grad()
def logits_of(model, w: torch.Tensor) -> torch.Tensor:
    return model(w[None]).logits[0].double()


@torch.no_grad()
def evaluate(moe, dense, wins) -> dict:
    nll_m = nll_d = kl = 0.0
    n = 0
    for w in wins:
        lm, ld = logits_of(moe, w)[:-1], logits_of(dense, w)[:-1]
        tgt = w[1:]
        pm, pd = F.log_softmax(lm, -1), F.log_softmax(ld, -1)
        nll_m -= pm.gather(1, tgt[:, None]).sum().item()
        nll_d -= pd.gather(1, tgt[:, None]).sum().item()
        kl += (pd.exp() * (pd - pm)).sum().item()
        n += len(tgt)
    return {"ppl_moe": math.exp(nll_m / n), "ppl_dense": math.exp(nll_d / n), "kld": kl / n, "tokens": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True, help="SmolLM2 HF directory (f32)")
    ap.add_argument("--calib", type=Path, required=True, help="calibration text")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--split", choices=["cluster", "contiguous"], default="cluster")
    ap.add_argument("--router-spread", type=float, default=0.1)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval", type=Path, help="text for PPL/KLD against SmolLM2")
    ap.add_argument("--eval-windows", type=int, default=8)
    a = ap.parse_args()
    if not 0 < a.top_k < a.experts:
        sys.exit("--top-k must be in 1..experts-1 (routing must matter)")
    torch.manual_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(a.src)
    dense = LlamaForCausalLM.from_pretrained(a.src, dtype=torch.float32).eval()
    ids = tok(a.calib.read_text(), add_special_tokens=False)["input_ids"]
    wins = windows(ids, a.windows)
    print(f"calibration: {len(wins)} windows of {WINDOW} tokens", file=sys.stderr)
    xs = mlp_inputs(dense, wins)

    sd, groups = moefy(dense, xs, a.experts, a.top_k, a.split, a.router_spread, a.seed)

    # Exactness: top-k = E, zero router (every weight 1/E), w2 x E instead of x k.
    exact = {k: v for k, v in sd.items()}
    for l in range(dense.config.num_hidden_layers):
        q = f"model.layers.{l}.block_sparse_moe."
        exact[q + "gate.weight"] = torch.zeros_like(sd[q + "gate.weight"])
        for e in range(a.experts):
            exact[q + f"experts.{e}.w2.weight"] = sd[q + f"experts.{e}.w2.weight"] * (a.experts / a.top_k)
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp), a.src, mixtral_config(dense.config, a.experts, a.experts), exact)
        full = MixtralForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        w = wins[0][:128]
        got, want = logits_of(full, w), logits_of(dense, w)
        err = (got - want).abs().max().item() / want.abs().max().item()
        print(f"check: top-k = E = {a.experts} reproduces SmolLM2, max|Δlogit|/max|logit| = {err:.2e}")
        assert err <= 1e-4, f"the all-experts model differs from SmolLM2: {err:.2e}"
        del full

    cfg = mixtral_config(dense.config, a.experts, a.top_k)
    write(a.out, a.src, cfg, sd)
    (a.out / "moefy.json").write_text(
        json.dumps(
            {
                "source": str(a.src),
                "experts": a.experts,
                "top_k": a.top_k,
                "split": a.split,
                "router_spread": a.router_spread,
                "calib_windows": len(wins),
                "groups": groups,
            }
        )
        + "\n"
    )
    print(f"wrote {a.out} (MixtralForCausalLM, {a.experts} experts of {cfg.intermediate_size}, top-{a.top_k})")
    if a.eval:
        moe = MixtralForCausalLM.from_pretrained(a.out, dtype=torch.float32).eval()
        ev = windows(tok(a.eval.read_text(), add_special_tokens=False)["input_ids"], a.eval_windows)
        r = evaluate(moe, dense, ev)
        print(json.dumps(r))


if __name__ == "__main__":
    main()
