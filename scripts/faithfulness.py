#!/usr/bin/env python3
"""Faithfulness to transformers on the SmolLM2 fixture prompts.

For every logits case of tests/fixtures/smollm2/reference.json (transformers'
float32 logits of the same GGUF), prints top-1 agreement and mean / max
KL(transformers || engine) over the stored positions, for:

  * metal-marlin's default path, its `--exact` path, and each extra mode given
    with --mode NAME=FLAGS (e.g. --mode "one-pass int8=--fast-activations");
  * llama.cpp through llama-cpp-python (`logits_all=True`), when the
    `llama_cpp` module is importable (install or build it yourself, outside
    this repository; LLAMA_CPP_LIB_PATH may point at a libllama build).

With --reference exact the reference is metal-marlin's own `--exact` logits
of --gguf (f32 activations, f32 KV cache) over the same prompts and
positions instead of the fixtures: for files the fixtures were not made
from (an F16 or BF16 GGUF of the same model).

Usage:
  scripts/faithfulness.py [--bin target/release/metal-marlin] [--gguf PATH]
                          [--threads 2] [--mode NAME=FLAGS ...] [--json]
                          [--reference transformers|exact]
Needs numpy. The GGUF defaults to the cached default model.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "smollm2")


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def compare(case, got, want=None):
    """(top-1 hits, positions, per-position KL) of full-sequence logits `got`
    against the fixture's logits, or against full-sequence logits `want`."""
    f, n = case["first_position"], case["logits_shape"][0]
    if want is None:
        want = np.load(os.path.join(FIX, case["logits_file"]))
    else:
        want = want[f:f + n]
    got = got[f:f + n]
    lw, lg = log_softmax(want), log_softmax(got)
    kl = (np.exp(lw) * (lw - lg)).sum(-1)
    top1 = int((got.argmax(-1) == want.argmax(-1)).sum())
    return top1, n, kl


def ours(binary, gguf, threads, flags, case, tmp):
    out = os.path.join(tmp, "logits.npy")
    cmd = [binary, "--threads", str(threads), "logits", "-m", gguf,
           "--ids", ",".join(map(str, case["input_ids"])), "--out", out] + flags
    subprocess.run(cmd, check=True, capture_output=True)
    return np.load(out)


def llama_cpp_logits(gguf, threads):
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=gguf, logits_all=True, n_ctx=512, n_batch=512,
                          n_threads=threads, verbose=False)

    def run(case):
        llm.reset()
        llm.eval(case["input_ids"])
        return np.array(llm.scores[:len(case["input_ids"])], dtype=np.float32)
    run.version = getattr(llama_cpp, "__version__", "?")
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "metal-marlin"))
    ap.add_argument("--gguf", default=os.path.join(
        os.environ.get("METAL_MARLIN_CACHE", os.path.expanduser("~/.cache/metal-marlin")),
        "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", action="append", default=[],
                    help="NAME=FLAGS: another metal-marlin mode to measure")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--reference", choices=["transformers", "exact"], default="transformers")
    a = ap.parse_args()
    ref = json.load(open(os.path.join(FIX, "reference.json")))
    engines = [("metal-marlin default", None)]
    if a.reference == "transformers":
        engines.append(("metal-marlin --exact", ["--exact"]))
    for m in a.mode:
        name, _, flags = m.partition("=")
        engines.append(("metal-marlin " + name, flags.split()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        want = [None] * len(ref["logits"])
        if a.reference == "exact":
            want = [ours(a.bin, a.gguf, a.threads, ["--exact"], c, tmp) for c in ref["logits"]]
        for name, flags in engines:
            rows.append((name, [compare(c, ours(a.bin, a.gguf, a.threads, flags or [], c, tmp), w)
                                for c, w in zip(ref["logits"], want)]))
        peer = llama_cpp_logits(a.gguf, a.threads)
        if peer is None:
            print("llama_cpp not importable: llama.cpp row skipped", file=sys.stderr)
        else:
            rows.append((f"llama.cpp (llama-cpp-python {peer.version})",
                         [compare(c, peer(c), w) for c, w in zip(ref["logits"], want)]))
    keys = [c["key"] for c in ref["logits"]]
    table = []
    for name, res in rows:
        allkl = np.concatenate([r[2] for r in res])
        row = {"engine": name,
               "top1": f"{sum(r[0] for r in res)}/{sum(r[1] for r in res)}",
               "mean_kl": float(allkl.mean()), "max_kl": float(allkl.max())}
        for k, r in zip(keys, res):
            row[f"{k}_top1"] = f"{r[0]}/{r[1]}"
            row[f"{k}_mean_kl"] = float(r[2].mean())
        table.append(row)
    if a.json:
        print(json.dumps(table, indent=1))
        return
    head = ["engine", "top-1"] + [f"{k} top-1 / mean KL" for k in keys] + ["mean KL", "max KL"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in table:
        cells = [r["engine"], r["top1"]]
        cells += [f"{r[k + '_top1']} / {r[k + '_mean_kl']:.2e}" for k in keys]
        cells += [f"{r['mean_kl']:.2e}", f"{r['max_kl']:.2e}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
