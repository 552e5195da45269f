#!/usr/bin/env bash
# For a Mac owner: metal-marlin on Apple Silicon's GPU (the wgpu backend on
# Metal) next to llama.cpp's Metal backend and MLX, on the same weights, in
# one run; prints one table (tokens/s, pp512 and tg128, median of 3 runs).
#
#   scripts/bench-mac.sh [MODEL.gguf]
#
# MODEL defaults to the default model (SmolLM2-135M-Instruct, Q4_1 GGUF,
# fetched on first use). metal-marlin runs the GGUF as stored, on the GPU
# (--device wgpu) and on the CPU. llama.cpp runs it if `llama-bench` is on
# PATH (brew install llama.cpp). MLX runs if `mlx_lm` is importable and
# MLX_MODEL names an MLX model of the same weights (e.g. a 4-bit
# mlx-community conversion); MLX cannot read a GGUF, so its row is the
# same model in MLX's own 4-bit format, which the table says.
set -euo pipefail
cd "$(dirname "$0")/.."
P=512 N=128 R=3
cargo build --release -q --features wgpu
mm=target/release/metal-marlin
model=${1:-$("$mm" info 2>/dev/null | awk '/^path:/ {print $2}')}
[ -f "$model" ] || { echo "no model file: $model"; exit 1; }
echo "model: $model"
system_profiler SPDisplaysDataType 2>/dev/null | grep -E "Chipset Model|Total Number of Cores" || true

row() { printf "| %-34s | %10s | %10s |\n" "$1" "$2" "$3"; }
mm_row() {
    local json
    if json=$("$mm" bench -m "$model" --device "$1" -p $P -n $N -r $R --json 2>/dev/null); then
        python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print("%.1f %.1f" % (j["prefill_tok_s"], j["decode_tok_s"]))' "$json"
    else
        echo "failed failed"
    fi
}

echo
row "engine" "pp$P tok/s" "tg$N tok/s"
row "----------------------------------" "----------" "----------"
read -r pp tg <<<"$(mm_row wgpu)"; row "metal-marlin --device wgpu (Metal)" "$pp" "$tg"
read -r pp tg <<<"$(mm_row cpu)"; row "metal-marlin --device cpu" "$pp" "$tg"
if command -v llama-bench >/dev/null; then
    out=$(llama-bench -m "$model" -p $P -n $N -r $R -ngl 99 -o json 2>/dev/null || true)
    read -r pp tg <<<"$(python3 -c '
import json, sys
try:
    rows = json.loads(sys.argv[1])
except Exception:
    print("failed failed"); sys.exit()
pp = [r["avg_ts"] for r in rows if r.get("n_prompt", 0) > 0]
tg = [r["avg_ts"] for r in rows if r.get("n_gen", 0) > 0]
print("%.1f %.1f" % (pp[0] if pp else float("nan"), tg[0] if tg else float("nan")))' "$out")"
    row "llama.cpp Metal (same GGUF)" "$pp" "$tg"
else
    row "llama.cpp: llama-bench not on PATH" "-" "-"
fi
if [ -n "${MLX_MODEL:-}" ] && python3 -c "import mlx_lm" 2>/dev/null; then
    read -r pp tg <<<"$(python3 - "$MLX_MODEL" $P $N <<'PY'
import sys, time
import mlx.core as mx
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache
name, p, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model, _ = load(name)
def run():
    cache = make_prompt_cache(model)
    ids = mx.random.randint(100, 1000, (1, p))
    t0 = time.perf_counter(); mx.eval(model(ids, cache=cache)); t1 = time.perf_counter()
    tok = mx.array([[1]])
    for _ in range(n):
        mx.eval(model(tok, cache=cache))
    t2 = time.perf_counter()
    return p / (t1 - t0), n / (t2 - t1)
run()
res = sorted(run() for _ in range(3))
print("%.1f %.1f" % (res[1][0], sorted(r[1] for r in res)[1]))
PY
)"
    row "MLX ($MLX_MODEL)" "$pp" "$tg"
else
    row "MLX: set MLX_MODEL, pip install mlx-lm" "-" "-"
fi
