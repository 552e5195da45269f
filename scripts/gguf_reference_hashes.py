#!/usr/bin/env python3
"""Reference dequantization hashes of every tensor of a GGUF file.

Dequantizes each tensor with gguf-py (llama.cpp's Python package) and prints
one line per tensor:  name  type  shape(comma-separated, row-major)  hash
where hash = sum_k bits(v[k]) * (k % 65521 + 1)  mod 2^64 over the f32
values v in row-major order (bits = the IEEE-754 bit pattern as u32). The
ignored test `real_gguf` in crates/formats/tests/ recomputes it in Rust.

Usage: /work/venv/bin/python scripts/gguf_reference_hashes.py FILE.gguf > OUT
"""
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def weighted_hash(v: np.ndarray) -> int:
    bits = np.ascontiguousarray(v.astype(np.float32).reshape(-1)).view(np.uint32).astype(np.uint64)
    w = (np.arange(bits.size, dtype=np.uint64) % np.uint64(65521)) + np.uint64(1)
    with np.errstate(over="ignore"):
        return int(np.sum(bits * w, dtype=np.uint64))


def main() -> None:
    r = GGUFReader(sys.argv[1])
    for t in r.tensors:
        v = dequantize(t.data, t.tensor_type)
        shape = [int(d) for d in reversed(t.shape.tolist())]
        assert v.size == int(np.prod(shape)), t.name
        print(t.name, t.tensor_type.name, ",".join(map(str, shape)), weighted_hash(v))


if __name__ == "__main__":
    main()
