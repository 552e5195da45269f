#!/usr/bin/env bash
# Expert quantization on a real-weights MoE (docs/QUALITY.md, "Experts of a
# MoE-fied SmolLM2"): uniform RTN and GPTQ expert formats against
# `--expert-bits auto` at several budgets, each evaluated with `metal-marlin
# eval` (PPL on GPL-3, KLD and top-1 against the unquantized MoE model).
#
# Usage: scripts/expert_quality.sh BIN MOE WORKDIR
#   BIN      metal-marlin binary
#   MOE      the MoE model directory (scripts/moefy_smollm2.py --out)
#   WORKDIR  where models and results go
# Environment: RUNS (default: all, see below), THREADS (default all cores),
#   CALIB_WINDOWS (default 8), MAX_CHUNKS (evaluate the first N windows),
#   LIC (license-text folder), GROUP (default 64).
#
# Only the routed experts change between runs: attention and the tied
# embedding stay F16 (`--keep self_attn=f16 --keep embed_tokens=f16`),
# routers stay F32 (never quantized). Calibration: Apache-2.0, MPL-2.0,
# GFDL-1.3 and Artistic; evaluation: GPL-3.
set -euo pipefail

BIN=$(realpath "$1")
MOE=$(realpath "$2")
WORK=$3
LIC=${LIC:-/usr/share/common-licenses}
THREADS=${THREADS:-$(nproc)}
CALIB_WINDOWS=${CALIB_WINDOWS:-8}
GROUP=${GROUP:-64}
MAX_CHUNKS=${MAX_CHUNKS:-}
RUNS=${RUNS:-"rtn-int2 rtn-int3 rtn-int4 rtn-auto2.75 rtn-auto3.25 rtn-auto3.75 rtn-auto4.25 gptq-int2 gptq-int3 gptq-int4 gptq-auto2.75 gptq-auto3.25 gptq-auto3.75 gptq-auto4.25"}

mkdir -p "$WORK"
cat "$LIC/Apache-2.0" "$LIC/MPL-2.0" "$LIC/GFDL-1.3" "$LIC/Artistic" >"$WORK/calib.txt"
evaluate() {
    local e=(eval -m "$1" --ref "$MOE" --text "$LIC/GPL-3" --json --threads "$THREADS")
    [ -n "$MAX_CHUNKS" ] && e+=(--max-chunks "$MAX_CHUNKS")
    "$BIN" "${e[@]}" 2>"$1.eval.log"
}
[ -f "$WORK/moe.json" ] || evaluate "$MOE" >"$WORK/moe.json"
for run in $RUNS; do
    method=${run%%-*}
    what=${run#*-}
    out="$WORK/$run"
    q=(quantize "$MOE" -o "$out" --force --threads "$THREADS" --group-size "$GROUP"
        --keep 'self_attn=f16' --keep 'embed_tokens=f16' --method "$method")
    [ "$method" = gptq ] && q+=(--act-order)
    case $what in
        auto*) q+=(--format int4 --expert-bits auto --target-bpw "${what#auto}"
                   --expert-formats int2,int3,int4,int8 --calib "$WORK/calib.txt"
                   --calib-windows "$CALIB_WINDOWS") ;;
        *) q+=(--format "$what") ;;
    esac
    [ "$method" = gptq ] && [[ $what != auto* ]] && q+=(--calib "$WORK/calib.txt" --calib-windows "$CALIB_WINDOWS")
    t0=$(date +%s)
    if ! "$BIN" "${q[@]}" >"$out.quantize.log" 2>&1; then
        echo "$run: quantize failed, see $out.quantize.log" >&2
        continue
    fi
    t1=$(date +%s)
    r=$(evaluate "$out" || echo '{"error":"eval failed"}')
    bytes=$(du -cb "$out"/*.safetensors | tail -1 | cut -f1)
    bpw=$(grep -o '"achieved_bpw": [0-9.]*' "$out/quantization_config.json" | grep -o '[0-9.]*$' || true)
    echo "{\"run\":\"$run\",\"quantize_s\":$((t1 - t0)),\"bytes\":$bytes,\"expert_bpw\":\"${bpw}\",\"eval\":$r}" | tee "$out.json"
done
