#!/usr/bin/env python3
"""GGUF copies of the tiny mixture-of-experts and MLA fixtures, made by llama.cpp's converter.

What it produces
----------------
tests/fixtures/tiny/<name>/gguf/model.bf16.gguf   convert_hf_to_gguf.py --outtype bf16 of the HF
                                                 fixture beside it (bf16 weights: exact copies)
    qwen3-moe-sparse, mixtral, glm4-moe, deepseek-v2, deepseek-v3-yarn-interleaved, glm4-moe-lite
tests/fixtures/tiny/<name>/gguf/model.q8_0.gguf   --outtype q8_0 (qwen3-moe-sparse, deepseek-v2),
    logits.q8_0.npy, reference.q8_0.json          with transformers' logits and greedy ids for the
                                                 weights that file holds (dequantized by gguf-py)
tests/fixtures/tiny/mixtral/gguf/model.per-expert.bf16.gguf
    the merged Mixtral file rewritten with one tensor per expert (blk.N.ffn_gate.E.weight, ...):
    the layout of converters before 2024, which today's converter no longer writes; made here
    with gguf-py's writer from the merged file (same bytes, split per expert)
tests/fixtures/tiny/deepseek-v2/gguf/model.q8_0.fused.gguf
    the Q8_0 file with each layer's gate and up experts in one ffn_gate_up_exps tensor (per
    expert its gate rows, then its up rows), as llama.cpp's loader also reads; the converter
    writes it (--fuse-gate-up-exps) only for architectures other than these four. Rewritten
    with gguf-py's writer and checked to hold model.q8_0.gguf's weights exactly, so it shares
    that file's reference
tests/fixtures/tiny/deepseek-v2/gguf/model.kv-b.bf16.gguf
    the DeepSeek-V2 file with attn_kv_b (key and value up-projections in one tensor) instead of
    the split attn_k_b/attn_v_b, and key/value_length per head without the *_mla keys: the layout
    of converters before the split; rewritten here from the split file with gguf-py's writer
tests/fixtures/tiny-gguf.json                     what each file is, its reference directory, and
                                                 the tiny tokenizer's test strings with
                                                 transformers' ids

How to run
----------
    /work/venv/bin/python scripts/make_gguf_fixtures.py /path/to/llama.cpp

The llama.cpp directory is a source checkout (or the vendor/llama.cpp of the llama-cpp-python
sdist) holding convert_hf_to_gguf.py, conversion/ and gguf-py/; nothing is built or downloaded.
Needs torch, transformers 5, safetensors, numpy, tokenizers and llama.cpp's gguf-py (pip install
-e <llama.cpp>/gguf-py). The HF fixtures must exist (scripts/make_fixtures.py). ~2 minutes.

What the converter needs that the fixtures lack, and how it is given
--------------------------------------------------------------------
* A tokenizer: the tiny models have none. A byte-level BPE of 320 tokens (8 special tokens, the
  256 byte symbols, 56 merges learnt from a few fixed sentences) is built with `tokenizers` and
  written beside a temporary copy of each fixture. The converter identifies a BPE pre-tokenizer
  by hashing its output on a test string, and knows only released tokenizers' hashes: it is told
  this one is "gpt-2", which it is (ByteLevel with GPT-2's split), by replacing
  `TextModel.get_vocab_base_pre` in the converter process. Nothing else of the converter is
  changed. GLM's vocabulary code also wants [gMASK], <|user|>, <|endoftext|> and
  <|observation|>; they are among the special tokens.
* glm4-moe-lite: transformers 5 saves GLM-4.7-Flash's dense layers as `mlp_layer_types`, which
  the converter does not read (it writes leading_dense_block_count 0, which llama.cpp would fail
  to load); the copy's config gets `first_k_dense_replace: 1`, as the released model's config
  has.
* Forms GGUF cannot hold are not converted: llama.cpp's qwen3moe has no dense MLP and always
  renormalises (so qwen3-moe-sparse, not qwen3-moe / qwen3-moe-renorm); its deepseek2 rotates
  interleaved pairs and takes mscale = mscale_all_dim (so deepseek-v3-yarn-interleaved, not
  deepseek-v3-yarn). Both were added to make_fixtures.py for this.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures  # noqa: E402  (save_npy, greedy helpers)
import moe_fixtures  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny"
MANIFEST = ROOT / "tests" / "fixtures" / "tiny-gguf.json"

SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "[gMASK]", "<|user|>", "<|endoftext|>",
            "<|observation|>", "<|assistant|>"]
TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Mixture of experts route each token to the experts it needs; the rest are skipped.",
    "def main():\n    return 42\n",
    "Hello, world! Hello again, world.",
]
TOKENIZER_CASES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "experts route tokens: 1 2 33 444",
    "  two spaces\nand a new line\ttab",
    "naïve café — ünïcödé ✓",
]

# name -> (HF fixture, config edits for the converter's copy, outtypes)
FIXTURES = {
    "qwen3-moe-sparse": ("qwen3-moe-sparse", {}, ["bf16", "q8_0"]),
    "mixtral": ("mixtral", {}, ["bf16"]),
    "glm4-moe": ("glm4-moe", {}, ["bf16"]),
    "deepseek-v2": ("deepseek-v2", {}, ["bf16", "q8_0"]),
    "deepseek-v3-yarn-interleaved": ("deepseek-v3-yarn-interleaved", {}, ["bf16"]),
    "glm4-moe-lite": ("glm4-moe-lite", {"first_k_dense_replace": 1}, ["bf16"]),
}

# The converter in a child process, told that the tiny tokenizer's pre-tokenizer is GPT-2's.
SHIM = """
import runpy, sys
lcpp = sys.argv[1]
sys.argv = [lcpp + "/convert_hf_to_gguf.py"] + sys.argv[2:]
sys.path.insert(0, lcpp)
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
runpy.run_path(lcpp + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def make_tokenizer(dst: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=make_fixtures.VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TRAIN_TEXT, trainer=trainer)
    assert tok.get_vocab_size() == make_fixtures.VOCAB
    dst.mkdir(parents=True, exist_ok=True)
    tok.save(str(dst / "tokenizer.json"))
    (dst / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>",
        "eos_token": "<|eos|>", "pad_token": "<|pad|>", "model_max_length": 512}))


def hf_copy(name: str, edits: dict, tok_dir: Path, tmp: Path) -> Path:
    src = TINY / name
    d = tmp / f"hf-{name}"
    d.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(src / f, d / f)
    for f in tok_dir.iterdir():
        shutil.copy(f, d / f.name)
    if edits:
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(edits)
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d


def convert(lcpp: Path, hf_dir: Path, out: Path, outtype: str):
    out.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-c", SHIM, str(lcpp), str(hf_dir), "--outfile", str(out),
                        "--outtype", outtype], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"converting {hf_dir.name} to {outtype} failed:\n{r.stdout}\n{r.stderr}")


# --------------------------------------------------------------------------- rewrites

def copy_metadata(reader, writer, skip=()):
    """Every key of `reader` but the header fields, architecture and `skip`."""
    import gguf
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture" or f.name in skip:
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, f.contents(), vtype, sub_type=sub)


def rewrite(src: Path, dst: Path, tensors, skip_keys=(), extra_keys=()):
    """Writes `dst` with `src`'s metadata (less `skip_keys`, plus `extra_keys` (key, value,
    type)) and the tensors `tensors(reader)` yields as (name, array, ggml type)."""
    import gguf
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    copy_metadata(reader, w, skip_keys)
    for k, v, t in extra_keys:
        w.add_key_value(k, v, t)
    for name, data, qtype in tensors(reader):
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def per_expert(src: Path, dst: Path):
    """blk.N.ffn_{gate,up,down}_exps [E, rows, cols] -> blk.N.ffn_{gate,up,down}.E [rows, cols]."""
    def tensors(reader):
        for t in reader.tensors:
            if t.name.endswith("_exps.weight"):
                base = t.name[: -len("_exps.weight")]
                for e in range(t.data.shape[0]):
                    yield f"{base}.{e}.weight", np.ascontiguousarray(t.data[e]), t.tensor_type
            else:
                yield t.name, t.data, t.tensor_type
    rewrite(src, dst, tensors)


def join_pairs(first: str, second: str, joined: str, join):
    """A `rewrite` tensor source that replaces each `blk.N.{first}` and its `blk.N.{second}`
    by `blk.N.{joined}` = `join(first, second)` (reader tensors), the rest unchanged."""
    def tensors(reader):
        by = {t.name: t for t in reader.tensors}
        for t in reader.tensors:
            if t.name.endswith(second):
                continue
            if t.name.endswith(first):
                b = by[t.name.replace(first, second)]
                assert t.tensor_type == b.tensor_type
                yield (t.name.replace(first, joined), np.ascontiguousarray(join(t, b)),
                       t.tensor_type)
            else:
                yield t.name, t.data, t.tensor_type
    return tensors


def fused_gate_up(src: Path, dst: Path):
    """blk.N.ffn_gate_exps + ffn_up_exps [E, rows, ·] -> blk.N.ffn_gate_up_exps [E, 2 rows, ·]."""
    # Rows of bytes (quantized blocks) stay whole: concatenate per expert.
    rewrite(src, dst, join_pairs("ffn_gate_exps.weight", "ffn_up_exps.weight",
                                 "ffn_gate_up_exps.weight",
                                 lambda g, u: np.concatenate([g.data, u.data], axis=1)))


def merged_kv_b(src: Path, dst: Path):
    """attn_k_b [heads, lora, nope] + attn_v_b [heads, v, lora] -> attn_kv_b
    [heads * (nope + v), lora] (per head its nope key rows, then its v value rows); key/value
    length per head as before the *_mla keys."""
    import gguf
    reader = gguf.GGUFReader(src)
    field = lambda k: reader.fields[f"deepseek2.{k}"].contents()  # noqa: E731
    key_mla, val_mla = field("attention.key_length_mla"), field("attention.value_length_mla")
    U32 = gguf.GGUFValueType.UINT32

    def join(k_b, v_b):
        assert k_b.tensor_type == gguf.GGMLQuantizationType.BF16
        # gguf-py reads BF16 as bytes: view them as 16-bit elements.
        k = np.swapaxes(k_b.data.view(np.uint16), 1, 2)  # [heads, nope, lora]
        kv = np.concatenate([k, v_b.data.view(np.uint16)], axis=1)
        return kv.reshape(-1, kv.shape[-1])

    tensors = join_pairs("attn_k_b.weight", "attn_v_b.weight", "attn_kv_b.weight", join)
    rewrite(src, dst, tensors,
            skip_keys={"deepseek2.attention.key_length_mla", "deepseek2.attention.value_length_mla",
                       "deepseek2.attention.key_length", "deepseek2.attention.value_length"},
            extra_keys=[("deepseek2.attention.key_length", key_mla, U32),
                        ("deepseek2.attention.value_length", val_mla, U32)])


# --------------------------------------------------------------------------- Q8_0 references

# GGUF module -> HF module, for the tensors of the quantized fixtures.
LAYER = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
    "attn_kv_a_norm": "self_attn.kv_a_layernorm", "attn_q_a": "self_attn.q_a_proj",
    "attn_q_a_norm": "self_attn.q_a_layernorm", "attn_q_b": "self_attn.q_b_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate", "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
    "ffn_up_shexp": "mlp.shared_experts.up_proj", "ffn_down_shexp": "mlp.shared_experts.down_proj",
}
GLOBAL = {"token_embd.weight": "model.embed_tokens.weight",
          "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def hf_state_dict(path: Path) -> dict:
    """The weights a GGUF file holds, dequantized by gguf-py, under HF checkpoint names (no q/k
    permutation: only non-`llama` files are quantized here)."""
    import gguf
    reader = gguf.GGUFReader(path)
    vals = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            for t in reader.tensors}
    out = {}
    for name, a in vals.items():
        if name in GLOBAL:
            out[GLOBAL[name]] = a
            continue
        _, layer, rest = name.split(".", 2)
        module, kind = rest.rsplit(".", 1)
        p = f"model.layers.{layer}"
        if module == "ffn_gate_up_exps":  # [experts, 2 * width, hidden]: gate rows, up rows
            half = a.shape[1] // 2
            for e in range(a.shape[0]):
                out[f"{p}.mlp.experts.{e}.gate_proj.weight"] = a[e, :half]
                out[f"{p}.mlp.experts.{e}.up_proj.weight"] = a[e, half:]
        elif module.endswith("_exps"):
            proj = module[len("ffn_"):-len("_exps")]
            for e in range(a.shape[0]):
                out[f"{p}.mlp.experts.{e}.{proj}_proj.weight"] = a[e]
        elif module == "exp_probs_b":
            out[f"{p}.mlp.gate.e_score_correction_bias"] = a
        elif module == "attn_k_b":
            v = vals[name.replace("attn_k_b", "attn_v_b")]
            kv = np.concatenate([np.swapaxes(a, 1, 2), v], axis=1)
            out[f"{p}.self_attn.kv_b_proj.weight"] = kv.reshape(-1, kv.shape[-1])
        elif module == "attn_v_b":
            continue
        else:
            out[f"{p}.{LAYER[module]}.{kind}"] = a
    return out


def quantized_reference(hf_name: str, gguf_path: Path, out_dir: Path, tag: str) -> dict:
    """transformers' logits and greedy ids for the weights of `gguf_path`."""
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM
    ref = json.loads((TINY / hf_name / "reference.json").read_text())
    with tempfile.TemporaryDirectory() as td:
        shutil.copy(TINY / hf_name / "config.json", td)
        sd = hf_state_dict(gguf_path)
        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, f"{td}/model.safetensors")
        model, info = AutoModelForCausalLM.from_pretrained(
            td, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    missing = [k for k in info["missing_keys"] if "lm_head" not in k]
    assert not missing and not info["unexpected_keys"], info
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ref["input_ids"]]), use_cache=False).logits[0].float().numpy()
    make_fixtures.save_npy(out_dir / f"logits.{tag}.npy", logits.astype(np.float32))
    greedy = make_fixtures.greedy_generate(model, ref["greedy_prompt"], 16)
    greedy_nc, margins = make_fixtures.greedy_nocache(model, ref["greedy_prompt"], 16)
    assert greedy == greedy_nc, (greedy, greedy_nc)
    want = np.load(TINY / hf_name / "logits.npy")
    q = {
        "model": hf_name,
        "gguf": gguf_path.name,
        "weights": f"{tag} as stored, dequantized by gguf-py; compute float32, eager",
        "input_ids": ref["input_ids"],
        "logits_file": f"logits.{tag}.npy",
        "max_abs_logit": float(np.abs(logits).max()),
        "max_abs_diff_vs_bf16_logits": float(np.abs(logits - want).max()),
        "greedy_prompt": ref["greedy_prompt"],
        "greedy_ids": greedy,
        "greedy_min_margin": min(margins),
        "routing": moe_fixtures.routing_stats(model, ref["input_ids"]),
        "tolerance": "max|dlogit| <= 1e-3 * max_abs_logit; greedy_ids identical",
    }
    make_fixtures.write_json(out_dir / f"reference.{tag}.json", q)
    return q


# --------------------------------------------------------------------------- main

def gguf_types(path: Path) -> dict:
    import gguf
    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("llama_cpp", type=Path, help="llama.cpp source directory")
    args = ap.parse_args()
    lcpp = args.llama_cpp.resolve()
    if not (lcpp / "convert_hf_to_gguf.py").is_file():
        sys.exit(f"{lcpp}/convert_hf_to_gguf.py not found")
    torch.use_deterministic_algorithms(True)

    entries = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        tok_dir = tmp / "tokenizer"
        make_tokenizer(tok_dir)
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(tok_dir)
        cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False)}
                 for t in TOKENIZER_CASES]

        for name, (hf, edits, outtypes) in FIXTURES.items():
            hf_dir = hf_copy(hf, edits, tok_dir, tmp)
            out_dir = TINY / hf / "gguf"
            if out_dir.exists():
                shutil.rmtree(out_dir)
            for outtype in outtypes:
                path = out_dir / f"model.{outtype}.gguf"
                convert(lcpp, hf_dir, path, outtype)
                e = {"gguf": str(path.relative_to(TINY)), "reference": hf, "outtype": outtype,
                     "made_by": "convert_hf_to_gguf.py", "config_edits": edits}
                if outtype != "bf16":
                    q = quantized_reference(hf, path, out_dir, outtype)
                    e["reference_file"] = str((out_dir / f"reference.{outtype}.json")
                                              .relative_to(TINY))
                    print(f"[{name} {outtype}] transformers on the dequantized weights: "
                          f"max|logit| {q['max_abs_logit']:.3f}, "
                          f"{q['max_abs_diff_vs_bf16_logits']:.4f} from the bf16 logits, "
                          f"router margin {q['routing']['min_margin']:.2e}")
                entries.append(e)
            bf16 = out_dir / "model.bf16.gguf"
            if name == "mixtral":
                per_expert(bf16, out_dir / "model.per-expert.bf16.gguf")
                entries.append({"gguf": f"{hf}/gguf/model.per-expert.bf16.gguf", "reference": hf,
                                "outtype": "bf16",
                                "made_by": "model.bf16.gguf split per expert (gguf-py writer)"})
            if name == "deepseek-v2":
                q8, fused = out_dir / "model.q8_0.gguf", out_dir / "model.q8_0.fused.gguf"
                fused_gate_up(q8, fused)
                a, b = hf_state_dict(q8), hf_state_dict(fused)
                assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
                entries.append({"gguf": f"{hf}/gguf/model.q8_0.fused.gguf", "reference": hf,
                                "outtype": "q8_0",
                                "reference_file": f"{hf}/gguf/reference.q8_0.json",
                                "made_by": "model.q8_0.gguf with ffn_gate_up_exps "
                                           "(gguf-py writer)"})
                merged_kv_b(bf16, out_dir / "model.kv-b.bf16.gguf")
                entries.append({"gguf": f"{hf}/gguf/model.kv-b.bf16.gguf", "reference": hf,
                                "outtype": "bf16",
                                "made_by": "model.bf16.gguf with attn_kv_b (gguf-py writer)"})

    import gguf
    for e in entries:
        p = TINY / e["gguf"]
        e["bytes"] = p.stat().st_size
        e["tensor_types"] = gguf_types(p)
        print(f"{e['gguf']:58s} {e['bytes']:8d} bytes  {e['tensor_types']}")
    make_fixtures.write_json(MANIFEST, {
        "made_by": "scripts/make_gguf_fixtures.py",
        "converter": "llama.cpp convert_hf_to_gguf.py (gguf-py "
                     f"{getattr(gguf, '__version__', 'unknown')})",
        "files": entries,
        "tokenizer_cases": cases,
    })


if __name__ == "__main__":
    main()
