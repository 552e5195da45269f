#!/usr/bin/env python3
"""Writes the GGML dequantization fixtures of crates/quant/tests/data/.

Reference values come from the `gguf` Python package (gguf-py, llama.cpp's
own), whose numpy (de)quantizers follow ggml-quants.c operation by operation.

For each simple format F (q4_0 q4_1 q5_0 q5_1 q8_0):
  F.input.f32  little-endian f32 input values
  F.bin        gguf.quants.quantize(input, F)
  F.f32        gguf.quants.dequantize(F.bin, F)
For each K-quant F (q2_k q3_k q4_k q5_k q6_k), which gguf-py cannot quantize:
  F.bin        random blocks with sane f16 scales
  F.f32        gguf.quants.dequantize(F.bin, F)

Run: /work/venv/bin/python scripts/make_ggml_fixtures.py  (needs numpy, gguf)
"""
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "quant", "tests", "data")
rng = np.random.default_rng(20240607)


def simple_input(n_blocks: int) -> np.ndarray:
    x = rng.standard_normal((n_blocks, 32)).astype(np.float32)
    x[0] = 0.0                      # all zero: d = 0, id = 0
    x[1] = 0.75                     # constant block
    x[2] *= 100.0                   # large range
    x[3] = np.abs(x[3]) * 1e-3      # tiny, all positive
    x[4, 7] = -40.0                 # one dominant negative outlier
    x[5] = np.linspace(-1, 1, 32)   # ties at .5 boundaries
    return x.reshape(-1)


def write(name: str, arr: np.ndarray) -> None:
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(np.ascontiguousarray(arr).tobytes())


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for t in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        x = simple_input(8).reshape(1, -1)
        q = quantize(x, t)
        y = dequantize(q, t).astype(np.float32)
        name = t.name.lower()
        write(f"{name}.input.f32", x.astype("<f4"))
        write(f"{name}.bin", q)
        write(f"{name}.f32", y.astype("<f4"))

    # Offsets of the f16 super-block scales (d, dmin) in each K block.
    f16_fields = {
        T.Q2_K: [80, 82],
        T.Q3_K: [108],
        T.Q4_K: [0, 2],
        T.Q5_K: [0, 2],
        T.Q6_K: [208],
    }
    for t, fields in f16_fields.items():
        n_blocks = 3
        _, type_size = GGML_QUANT_SIZES[t]
        blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
        for b in range(n_blocks):
            for k, off in enumerate(fields):
                v = rng.uniform(1e-3, 0.1) * (-1.0 if (b == 1 and k == 0) else 1.0)
                blocks[b, off:off + 2] = np.frombuffer(np.float16(v).tobytes(), dtype=np.uint8)
        y = dequantize(blocks.reshape(1, -1), t).astype(np.float32)
        name = t.name.lower()
        write(f"{name}.bin", blocks.reshape(-1))
        write(f"{name}.f32", y.astype("<f4"))
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote fixtures to {OUT}: {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
