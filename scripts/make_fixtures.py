#!/usr/bin/env python3
"""Generate the HuggingFace-transformers reference fixtures for metal-marlin.

What it produces
----------------
tests/fixtures/tiny/<name>/            (15 tiny random-weight models, one per feature; the 5
                                       mixture-of-experts ones are specified in moe_fixtures.py,
                                       the 3 MLA ones in scripts/mla_fixtures.py)
    config.json                        as transformers 5 writes it (rope_parameters style)
    generation_config.json             as transformers 5 writes it
    model.safetensors                  weights in bfloat16
    logits.npy                         float32 [n_tokens, vocab], numpy format v1.0, C order
    reference.json                     input_ids, greedy_prompt, greedy_ids, max_abs_logit, ...
    config.legacy.json                 (llama, llama3-rope only) same model, pre-v5 rope keys
tests/fixtures/smollm2/                (real SmolLM2-135M-Instruct Q4_1 GGUF, dequantized by transformers)
    logits_<prompt>.npy                float16 [n_positions, 49152]
    reference.json                     gguf sha256/size, prompts, input_ids, logits files, greedy ids/text

The GGUF itself is NOT copied (tests locate it separately; the sha256 is recorded).

How to run
----------
    /work/venv/bin/python scripts/make_fixtures.py \
        --smollm2-gguf /path/to/SmolLM2-135M-Instruct.Q4_1.gguf --out tests/fixtures

Needs torch, transformers (5.x), gguf, safetensors, numpy, and accelerate (transformers refuses
to load a GGUF without it). CPU only, ~5-7 minutes on 2 cores (mostly the SmolLM2 part). Fully deterministic: every tiny model is seeded with
torch.manual_seed(<fixed per-model seed>) (weight seeds are tried in a fixed order until the
greedy run has no near-tie, see MIN_GREEDY_MARGIN), input ids come from a seeded numpy
Generator, all reference computation is float32 with attn_implementation="eager". `--skip-smollm2` builds
only the tiny models.

How the tiny references are computed
------------------------------------
1. Build the model from a config (initializer_range=0.1 so logits are O(1), not ~0), then
   randomize every RMSNorm weight (incl. Qwen3 q_norm/k_norm) to 1 + 0.1*randn and every
   Linear bias (Qwen2 q/k/v) to 0.1*randn (transformers' init leaves ones/zeros, which would
   hide bugs such as a missing norm weight or bias).
2. model.to(bfloat16).save_pretrained(dir). (transformers 5 always writes safetensors; its
   save_pretrained no longer takes `safe_serialization`.)
3. Reload the saved bf16 weights with dtype=float32 (exact upcast) and run the full forward
   on input_ids -> logits.npy; then model.generate(do_sample=False, max_new_tokens=16) with
   eos_token_id=None so all 16 steps run -> greedy_ids. greedy_ids is cross-checked against
   a cache-free argmax loop, and the smallest top1-top2 margin over the 16 steps is recorded
   (greedy_min_margin) so tests know how robust the greedy check is.
So a correct implementation that loads the bf16 weights and computes in f32 should match
to ~1e-5 relative; the intended tolerance is max|dlogit| <= 1e-3 * max|logit|.

Observations on transformers 5.23 (recorded when this script was written)
------------------------------------------------------------------------
* config.json no longer has top-level `rope_theta` / `rope_scaling`. Instead it has one dict
  `rope_parameters` that ALWAYS contains `rope_theta` and `rope_type` (`"default"` when
  unscaled), plus the scaling fields for scaled types, e.g. llama3:
      "rope_parameters": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                          "original_max_position_embeddings": 64,
                          "rope_theta": 500000.0, "rope_type": "llama3"}
  linear: {"factor": 2.0, "rope_theta": 10000.0, "rope_type": "linear"}.
  Legacy kwargs (rope_theta=..., rope_scaling={...}) are still accepted and converted; a legacy
  rope_scaling using "type" instead of "rope_type" is converted too but the "type" key is
  kept inside rope_parameters. The config object has no `rope_theta` attribute any more.
* config.legacy.json = config.json with `rope_parameters` removed and replaced by top-level
  `rope_theta` (float) and `rope_scaling` (the remaining dict, or null when rope_type is
  "default"), i.e. what transformers 4.4x wrote. The script checks that transformers 5 parses
  both files to identical configs (same rope_parameters) and gives identical logits.
* Keys are sorted alphabetically, indent 2. Llama/Mistral/Qwen3 write `head_dim`; Qwen2 does not
  (head_dim = hidden/heads) and has no `attention_bias` key (q/k/v bias is hard-wired on, o_proj
  has no bias). Qwen2/Qwen3 write `layer_types` (all "full_attention"), `sliding_window`,
  `use_sliding_window`, `max_window_layers`. The weights dtype is recorded as `"dtype": "bfloat16"`.
* Tied embeddings: safetensors contains only model.embed_tokens.weight (no lm_head.weight).
* GGUF loading (modeling_gguf_pytorch_utils.py): tensors are dequantized by gguf-py to float32
  numpy (Q4_1: d*q + m with f16 d/m upcast to f32; Q8_0: d*q), then cast to the requested dtype.
  For arch "llama" the LlamaTensorProcessor un-permutes attn_q/attn_k (reverse of
  convert_hf_to_gguf's permute; attn_k uses n_kv_heads). tie_word_embeddings is set True
  because the file has no output.weight, so lm_head shares the (Q8_0-dequantized) token_embd.
  The script verifies: all params f32, lm_head is embed_tokens, and re-applying the llama.cpp
  permutation to Q/K raises the mean NLL of the code sample ~3x (0.82 -> 2.55), i.e. the
  un-permute is done and matters. (Short prompts are a weak test of this: a model with Q/K left
  permuted still answers " Paris." to "The capital of France is".)
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import transformers

import moe_fixtures
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from mla_fixtures import mla_specs

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
transformers.logging.set_verbosity_error()

VOCAB = 320
MIN_GREEDY_MARGIN = 0.01  # ~3x the logits tolerance (1e-3 * max|logit| ~ 3e-3)
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    max_position_embeddings=512,
    initializer_range=0.1,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
)


def tiny_specs():
    """name -> (seed, config, n_input_tokens). Each config exercises one feature."""
    return {
        # GQA 2 (4 q heads / 2 kv heads), untied, plain rope theta 1e4
        "llama": (
            1001,
            LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=2,
                        rms_norm_eps=1e-6, tie_word_embeddings=False,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
            12,
        ),
        # MQA (1 kv head), tied embeddings, like SmolLM2
        "llama-mqa-tied": (
            1002,
            LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=1,
                        rms_norm_eps=1e-5, tie_word_embeddings=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
            12,
        ),
        # llama3 rope scaling. head_dim 16 -> 8 freqs; with theta 5e5 the wavelengths are
        # 6.3, 32, 167, 860, ... so with original_max_position_embeddings=64
        # (low_freq_wavelen 64, high_freq_wavelen 16) freq 0 is kept, freq 1 is smoothed,
        # freqs 2..7 are divided by 8: all three branches are exercised. 40 input tokens.
        "llama3-rope": (
            1003,
            LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=2,
                        rms_norm_eps=1e-5, tie_word_embeddings=False,
                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                         "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 64}),
            40,
        ),
        # linear rope scaling (positions / 2)
        "llama-linear-rope": (
            1004,
            LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=2,
                        rms_norm_eps=1e-6, tie_word_embeddings=False,
                        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                         "factor": 2.0}),
            40,
        ),
        # Mistral: GQA 4 (8 q heads / 2 kv heads), head_dim 8, no sliding window
        "mistral": (
            1005,
            MistralConfig(**COMMON, num_attention_heads=8, num_key_value_heads=2,
                          rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=None,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
            12,
        ),
        # Qwen2: q/k/v biases (randomized), GQA 2, tied embeddings
        "qwen2": (
            1006,
            Qwen2Config(**COMMON, num_attention_heads=4, num_key_value_heads=2,
                        rms_norm_eps=1e-6, tie_word_embeddings=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
            12,
        ),
        # Qwen3: explicit head_dim 32 != 64/4, q_norm/k_norm (randomized), GQA 2, untied
        "qwen3": (
            1007,
            Qwen3Config(**COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                        rms_norm_eps=1e-6, tie_word_embeddings=False,
                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
            12,
        ),
        # DeepSeek-V2/V3 and GLM-4.7-Flash multi-head latent attention
        **mla_specs(COMMON),
    }


# --------------------------------------------------------------------------- helpers

def save_npy(path: Path, arr: np.ndarray):
    arr = np.ascontiguousarray(arr)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, version=(1, 0), allow_pickle=False)


def write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def randomize_params(model: torch.nn.Module, gen: torch.Generator):
    """RMSNorm weights -> 1 + 0.1*randn, Linear biases -> 0.1*randn."""
    n_norm = n_bias = 0
    with torch.no_grad():
        for mod in model.modules():
            if "RMSNorm" in type(mod).__name__ and getattr(mod, "weight", None) is not None:
                w = mod.weight
                w.copy_(1.0 + 0.1 * torch.randn(w.shape, generator=gen))
                n_norm += 1
            elif isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                b = mod.bias
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
                n_bias += 1
    return n_norm, n_bias


def disable_eos(model):
    gc = model.generation_config
    gc.eos_token_id = None
    gc.pad_token_id = 0
    gc.do_sample = False
    gc.temperature = None
    gc.top_p = None
    gc.top_k = None


@torch.no_grad()
def greedy_generate(model, prompt_ids, n_new):
    """model.generate (KV-cache path), eos disabled -> list of n_new ids."""
    disable_eos(model)
    inp = torch.tensor([prompt_ids], dtype=torch.long)
    out = model.generate(inp, attention_mask=torch.ones_like(inp), do_sample=False,
                         max_new_tokens=n_new, min_new_tokens=n_new, eos_token_id=None,
                         generation_config=model.generation_config)
    return out[0, len(prompt_ids):].tolist()


@torch.no_grad()
def greedy_nocache(model, prompt_ids, n_new):
    """Cache-free full-forward argmax loop; returns (ids, per-step top1-top2 margins)."""
    ids = list(prompt_ids)
    margins = []
    for _ in range(n_new):
        logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1].float()
        top = torch.topk(logits, 2)
        margins.append(float(top.values[0] - top.values[1]))
        ids.append(int(top.indices[0]))
    return ids[len(prompt_ids):], margins


def legacy_config(cfg: dict) -> dict:
    """transformers-5 config dict -> pre-v5 style (top-level rope_theta + rope_scaling)."""
    out = {}
    rp = dict(cfg["rope_parameters"])
    theta = rp.pop("rope_theta")
    scaling = None if rp.get("rope_type", "default") == "default" else rp
    for k, v in cfg.items():
        if k == "rope_parameters":
            continue
        out[k] = v
    out["rope_theta"] = theta
    out["rope_scaling"] = scaling
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- tiny models

def make_tiny(name, seed, config, n_tokens, out_root: Path):
    d = out_root / "tiny" / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)

    rng = np.random.default_rng(seed)
    input_ids = [int(x) for x in rng.integers(3, VOCAB, size=n_tokens)]
    greedy_prompt = input_ids

    # Weight seeds are tried in a fixed order (seed, seed+100, ...) until every greedy step has
    # a top1-top2 logit margin >= MIN_GREEDY_MARGIN, so the greedy check cannot flip within the
    # logits tolerance. Deterministic: the same seed is picked on every run.
    config = copy.deepcopy(config)
    for attempt in range(50):
        wseed = seed + 100 * attempt
        torch.manual_seed(wseed)
        gen = torch.Generator().manual_seed(wseed + 1)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                 attn_implementation="eager")
        n_norm, n_bias = randomize_params(model, gen)
        n_corr = moe_fixtures.randomize(model, gen)
        model.to(torch.bfloat16)
        probe = copy.deepcopy(model).to(torch.float32).eval()  # == reloading the bf16 file as f32
        g_ids, margins = greedy_nocache(probe, greedy_prompt, 16)
        if min(margins) >= MIN_GREEDY_MARGIN and (
                not moe_fixtures.is_moe(probe)
                or moe_fixtures.routing_ok(probe, [input_ids, greedy_prompt + g_ids])):
            break
    else:
        raise RuntimeError(f"{name}: no seed with greedy margin >= {MIN_GREEDY_MARGIN}"
                           " (and router margin, for MoE models)")
    model.save_pretrained(d)

    # reload the saved bf16 weights as float32
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        logits = model(torch.tensor([input_ids]), use_cache=False).logits[0].float().numpy()
    assert logits.shape == (n_tokens, VOCAB)
    save_npy(d / "logits.npy", logits.astype(np.float32))
    max_abs = float(np.abs(logits).max())

    greedy = greedy_generate(model, greedy_prompt, 16)
    greedy_nc, margins = greedy_nocache(model, greedy_prompt, 16)
    assert greedy == greedy_nc, (name, greedy, greedy_nc)
    assert min(margins) >= MIN_GREEDY_MARGIN, (name, margins)

    cfg_json = json.loads((d / "config.json").read_text())
    tied = bool(cfg_json.get("tie_word_embeddings"))
    # tied checkpoints must not carry lm_head.weight
    from safetensors import safe_open
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        dtypes = {str(f.get_tensor(k).dtype) for k in keys}
    assert dtypes == {"torch.bfloat16"}, dtypes
    assert ("lm_head.weight" in keys) == (not tied), (name, tied)

    ref = {
        "model": name,
        "model_type": cfg_json["model_type"],
        "weights_dtype": "bfloat16",
        "compute_dtype": "float32",
        "attn_implementation": "eager",
        "seed": seed,
        "weight_seed": wseed,
        "input_ids": input_ids,
        "logits_file": "logits.npy",
        "logits_shape": list(logits.shape),
        "logits_dtype": "float32",
        "max_abs_logit": max_abs,
        "logits_std": float(logits.std()),
        "logits_argmax": [int(x) for x in logits.argmax(-1)],
        "greedy_prompt": greedy_prompt,
        "greedy_max_new_tokens": 16,
        "greedy_ids": greedy,
        "greedy_min_margin": min(margins),
        "eos_disabled": True,
        "randomized": {"rmsnorm_weights": n_norm, "linear_biases": n_bias},
        **({"routing": moe_fixtures.routing_stats(model, input_ids),
            "randomized_correction_biases": n_corr} if moe_fixtures.is_moe(model) else {}),
        "tolerance": "max|dlogit| <= 1e-3 * max_abs_logit; greedy_ids identical",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }

    # legacy config variants + check that transformers parses them to the same model
    if name in ("llama", "llama3-rope"):
        leg = legacy_config(cfg_json)
        (d / "config.legacy.json").write_text(json.dumps(leg, indent=2) + "\n")
        # the two differ exactly in rope_parameters <-> rope_theta + rope_scaling
        a = {k: v for k, v in cfg_json.items() if k != "rope_parameters"}
        b = {k: v for k, v in leg.items() if k not in ("rope_theta", "rope_scaling")}
        assert a == b
        with tempfile.TemporaryDirectory() as td:
            shutil.copy(d / "model.safetensors", td)
            shutil.copy(d / "config.legacy.json", Path(td) / "config.json")
            m2 = AutoModelForCausalLM.from_pretrained(td, dtype=torch.float32, attn_implementation="eager")
            assert m2.config.rope_parameters == model.config.rope_parameters, (
                m2.config.rope_parameters, model.config.rope_parameters)
            with torch.no_grad():
                l2 = m2(torch.tensor([input_ids]), use_cache=False).logits[0].float().numpy()
            assert np.array_equal(l2, logits)
        ref["legacy_config_file"] = "config.legacy.json"

    # sanity: scaled rope must actually change the result vs. unscaled rope
    rp = cfg_json["rope_parameters"]
    if rp.get("rope_type", "default") != "default":
        with tempfile.TemporaryDirectory() as td:
            shutil.copy(d / "model.safetensors", td)
            c = dict(cfg_json)
            c["rope_parameters"] = {"rope_type": "default", "rope_theta": rp["rope_theta"]}
            (Path(td) / "config.json").write_text(json.dumps(c))
            m3 = AutoModelForCausalLM.from_pretrained(td, dtype=torch.float32, attn_implementation="eager")
            with torch.no_grad():
                l3 = m3(torch.tensor([input_ids]), use_cache=False).logits[0].float().numpy()
        ref["max_abs_diff_vs_unscaled_rope"] = float(np.abs(l3 - logits).max())
        assert ref["max_abs_diff_vs_unscaled_rope"] > 1e-2 * max_abs, ref["max_abs_diff_vs_unscaled_rope"]

    write_json(d / "reference.json", ref)
    print(f"[tiny] {name:18s} max|logit|={max_abs:6.3f} std={logits.std():.3f} "
          f"greedy={greedy} min_margin={min(margins):.4f}"
          + (f" d_vs_unscaled={ref['max_abs_diff_vs_unscaled_rope']:.3f}"
             if "max_abs_diff_vs_unscaled_rope" in ref else ""))


# --------------------------------------------------------------------------- SmolLM2

SMOL_LOGIT_PROMPTS = [
    # (key, kind, text, number of trailing positions whose logits are stored; None = all)
    ("plain", "text", "The capital of France is", None),
    # default chat template (adds SmolLM's default system prompt) -> 37 tokens. Storing all
    # positions would be 3.6 MB at f16 x 49152, so only the last 16 positions are kept: exactly
    # "<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n". The forward pass (and the
    # test's forward pass) still runs over all 37 tokens.
    ("chat", "chat", "What is the capital of France?", 16),
]
SMOL_GREEDY_EXTRA = [("code", "text", "def fibonacci(n):")]


def permute_llamacpp(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """convert_hf_to_gguf.py LlamaModel.permute (HF layout -> GGUF layout)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
             .swapaxes(1, 2).reshape(w.shape))


def make_smollm2(gguf_path: Path, out_root: Path):
    d = out_root / "smollm2"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    gdir, gname = str(gguf_path.parent), gguf_path.name

    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    cfg = model.config

    # ---- loader checks
    checks = {}
    checks["all_params_float32"] = all(p.dtype == torch.float32 for p in model.parameters())
    checks["tie_word_embeddings"] = bool(cfg.tie_word_embeddings)
    checks["lm_head_is_embed_tokens"] = (
        model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr())
    assert checks["all_params_float32"] and checks["lm_head_is_embed_tokens"], checks

    def encode(kind, text):
        if kind == "chat":
            enc = tok.apply_chat_template([{"role": "user", "content": text}],
                                          add_generation_prompt=True, tokenize=True)
            ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
            rendered = tok.apply_chat_template([{"role": "user", "content": text}],
                                               add_generation_prompt=True, tokenize=False)
        else:
            ids = tok(text).input_ids
            rendered = text
        return [int(x) for x in ids], rendered

    @torch.no_grad()
    def full_logits(m, ids):
        return m(torch.tensor([ids]), use_cache=False).logits[0].float()

    ref = {
        "gguf_file": gname,
        "gguf_sha256": sha256_file(gguf_path),
        "gguf_size_bytes": gguf_path.stat().st_size,
        "loader": "transformers AutoModelForCausalLM.from_pretrained(gguf_file=..., dtype=float32), "
                  "attn_implementation=eager; gguf-py dequantizes Q4_1/Q8_0 to float32",
        "config": {
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "rms_norm_eps": cfg.rms_norm_eps, "rope_parameters": dict(cfg.rope_parameters),
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        },
        "loader_checks": checks,
        "tolerance": "top-1 agreement 100% over stored positions, mean KL(ref||impl) <= 1e-3, "
                     "greedy 32 tokens identical",
        "logits": [],
        "greedy": [],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
    }

    # ---- logits
    for key, kind, text, keep_last in SMOL_LOGIT_PROMPTS:
        ids, rendered = encode(kind, text)
        lg = full_logits(model, ids)
        start = 0 if keep_last is None else max(0, len(ids) - keep_last)
        part = lg[start:].numpy()
        top2 = -np.sort(-part, axis=-1)[:, :2]
        fname = f"logits_{key}.npy"
        save_npy(d / fname, part.astype(np.float16))
        ref["logits"].append({
            "key": key, "kind": kind, "prompt": text, "rendered_prompt": rendered,
            "input_ids": ids, "logits_file": fname, "logits_dtype": "float16",
            "first_position": start, "logits_shape": list(part.shape),
            "positions_note": f"row i = logits after input_ids[{start} + i]",
            # argmax / margins from the float32 logits (f16 storage spacing is 1/32 at |x|>=32)
            "argmax": [int(x) for x in part.argmax(-1)],
            "top1_top2_margin": [round(float(x), 5) for x in top2[:, 0] - top2[:, 1]],
            "f16_argmax_matches_f32": bool((part.astype(np.float16).argmax(-1) == part.argmax(-1)).all()),
            "max_abs_logit": float(np.abs(part).max()),
        })
        print(f"[smollm2] logits {key}: {len(ids)} tokens, stored rows {start}..{len(ids) - 1}, "
              f"max|logit|={np.abs(part).max():.2f}")

    # ---- greedy
    prompts = [(k, kind, t) for k, kind, t, _ in SMOL_LOGIT_PROMPTS] + SMOL_GREEDY_EXTRA
    eos = cfg.eos_token_id
    for key, kind, text in prompts:
        ids, rendered = encode(kind, text)
        new = greedy_generate(model, ids, 32)
        # cross-check against the cache-free argmax loop and record robustness margins
        new_nc, margins = greedy_nocache(model, ids, 32)
        assert new == new_nc, (key, new, new_nc)
        eos_pos = new.index(eos) if eos in new else None
        entry = {
            "key": key, "kind": kind, "prompt": text, "rendered_prompt": rendered,
            "input_ids": ids, "max_new_tokens": 32, "eos_disabled": True,
            "greedy_ids": new,
            "greedy_text": tok.decode(new, skip_special_tokens=False),
            "hit_eos": eos_pos is not None,
            "eos_index": eos_pos,
            "greedy_ids_until_eos": new if eos_pos is None else new[: eos_pos + 1],
            "greedy_text_until_eos": tok.decode(new if eos_pos is None else new[: eos_pos + 1],
                                                skip_special_tokens=False),
            "step_top1_top2_margin": [round(x, 5) for x in margins],
            "min_margin": min(margins),
        }
        ref["greedy"].append(entry)
        print(f"[smollm2] greedy {key}: eos_at={eos_pos} min_margin={min(margins):.3f}\n"
              f"          {entry['greedy_text']!r}")

    # Q/K permutation check: re-applying llama.cpp's permutation (i.e. what a loader that forgot
    # to un-permute would compute) must clearly hurt: mean NLL of the code prompt + its greedy
    # continuation under the loaded model vs. the re-permuted model.
    g = ref["greedy"][-1]
    seq = torch.tensor([g["input_ids"] + g["greedy_ids"]])

    @torch.no_grad()
    def mean_nll(m):
        lp = m(seq, use_cache=False).logits[0, :-1].float().log_softmax(-1)
        tgt = seq[0, 1:]
        return float(-lp[torch.arange(len(tgt)), tgt].mean())

    checks["code_seq_mean_nll"] = mean_nll(model)
    m_bad = copy.deepcopy(model)
    with torch.no_grad():
        for layer in m_bad.model.layers:
            a = layer.self_attn
            a.q_proj.weight.copy_(permute_llamacpp(a.q_proj.weight, cfg.num_attention_heads))
            a.k_proj.weight.copy_(permute_llamacpp(a.k_proj.weight, cfg.num_key_value_heads))
    checks["code_seq_mean_nll_if_qk_left_permuted"] = mean_nll(m_bad)
    assert checks["code_seq_mean_nll_if_qk_left_permuted"] > 1.5 * checks["code_seq_mean_nll"], checks
    del m_bad

    write_json(d / "reference.json", ref)
    print(f"[smollm2] checks: {checks}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smollm2-gguf", type=Path, help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--only", nargs="*", help="only these tiny models")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    specs = {**tiny_specs(), **moe_fixtures.moe_specs(COMMON)}
    for name, (seed, cfg, n) in specs.items():
        if args.skip_tiny:
            break
        if args.only and name not in args.only:
            continue
        make_tiny(name, seed, cfg, n, args.out)
    if not args.skip_smollm2:
        if args.smollm2_gguf is None:
            sys.exit("--smollm2-gguf is required (or pass --skip-smollm2)")
        make_smollm2(args.smollm2_gguf, args.out)


if __name__ == "__main__":
    main()
