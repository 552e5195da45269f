#!/usr/bin/env python3
"""Writes small valid GGUF files to fuzz/seeds/ (the gguf_parse seed corpus).

Each is a tiny llama/qwen-style model (hidden 32, 2 layers, 4 heads) with
tensors in several GGML types and metadata of every value type.
Run: /work/venv/bin/python scripts/make_fuzz_seeds.py  (needs numpy, gguf)
"""
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter
from gguf.quants import quantize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "seeds")
rng = np.random.default_rng(7)


def model(name: str, arch: str, types: list, extra=None) -> None:
    path = os.path.join(OUT, name)
    w = GGUFWriter(path, arch)
    w.add_name("seed")
    w.add_uint32(f"{arch}.embedding_length", 32)
    w.add_uint32(f"{arch}.feed_forward_length", 64)
    w.add_uint32(f"{arch}.block_count", 1)
    w.add_uint32(f"{arch}.attention.head_count", 4)
    w.add_uint32(f"{arch}.attention.head_count_kv", 2)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32(f"{arch}.rope.freq_base", 10000.0)
    w.add_uint32(f"{arch}.context_length", 64)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(8)])
    w.add_array("tokenizer.ggml.scores", [float(-i) for i in range(8)])
    w.add_array("tokenizer.ggml.token_type", [1] * 8)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_bool("general.flag", True)
    w.add_int64("general.i64", -5)
    w.add_float64("general.f64", 0.25)
    if extra:
        extra(w)

    def tensor(tname, shape, ty):
        x = rng.standard_normal(shape).astype(np.float32)
        if ty == T.F32:
            w.add_tensor(tname, x)
        elif ty == T.F16:
            w.add_tensor(tname, x.astype(np.float16))
        else:
            w.add_tensor(tname, quantize(x, ty), raw_dtype=ty)

    tensor("token_embd.weight", (8, 32), types[0])
    tensor("output_norm.weight", (32,), T.F32)
    tensor("blk.0.attn_norm.weight", (32,), T.F32)
    tensor("blk.0.attn_q.weight", (32, 32), types[1])
    tensor("blk.0.attn_k.weight", (16, 32), types[2])
    if arch == "qwen2":
        tensor("blk.0.attn_q.bias", (32,), T.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    model("llama_q8_q4_1.gguf", "llama", [T.Q8_0, T.Q4_1, T.Q4_0])
    model("qwen2_f16_q5.gguf", "qwen2", [T.F16, T.Q5_0, T.Q5_1])
    model(
        "llama_rope_freqs.gguf",
        "llama",
        [T.F32, T.Q8_0, T.F16],
        extra=lambda w: w.add_tensor("rope_freqs.weight", np.linspace(1, 8, 4, dtype=np.float32)),
    )
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)))


if __name__ == "__main__":
    main()
