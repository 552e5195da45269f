#!/usr/bin/env bash
# The quality table of docs/QUALITY.md: every metal-marlin format at group
# 128, quantized with RTN and with GPTQ from the same source, each evaluated
# with `metal-marlin eval` (perplexity on a public-domain text, and mean KL
# divergence / top-1 agreement against the unquantized source).
#
# Usage: scripts/quality.sh [BIN] [MODEL] [WORKDIR]
#   BIN      metal-marlin binary        (default target/release/metal-marlin)
#   MODEL    source model, GGUF or HF   (default: the cached SmolLM2 Q4_1 GGUF)
#   WORKDIR  where models and results go (default /tmp/mm-quality)
# Environment:
#   JOBS (parallel jobs, default 1), THREADS (threads per job, default all
#   cores), FORMATS, METHODS (default "rtn gptq-act"; `gptq` is GPTQ
#   without --act-order), TEXT (evaluation text, default GPL-3), MAX_CHUNKS (evaluate
#   only the first N windows), LIC (the license-text folder), GROUP (group
#   size, default 128, with --group-fallback), QARGS (more quantize
#   arguments, e.g. "--rotate" or "--scale-search minmax"), TAG (appended to
#   the result names, to keep variants apart), CALIB (a calibration text
#   instead of the license texts).
#
# The reference is the source with every tensor widened to f32
# (`quantize --keep '.*=f32'`): its values are exactly the source's. GPTQ
# calibrates on other license texts (Apache-2.0, MPL-2.0, GFDL-1.3,
# Artistic) than the one evaluated. Each job writes WORKDIR/<fmt>-<method>.json
# (eval's JSON plus quantize time and size); the table goes to stdout.
set -euo pipefail

BIN=$(realpath "${1:-target/release/metal-marlin}")
MODEL=${2:-${METAL_MARLIN_CACHE:-$HOME/.cache/metal-marlin}/SmolLM2-135M-Instruct.Q4_1.gguf}
WORK=${3:-/tmp/mm-quality}
LIC=${LIC:-/usr/share/common-licenses}
TEXT=${TEXT:-$LIC/GPL-3}
JOBS=${JOBS:-1}
THREADS=${THREADS:-$(nproc)}
FORMATS=${FORMATS:-"int8 int8-asym int4 int4-asym int3 int3-asym int2 int2-asym nf4 fp8-e4m3 fp8-e5m2 fp4 mxfp4"}
METHODS=${METHODS:-"rtn gptq-act"}
MAX_CHUNKS=${MAX_CHUNKS:-}
GROUP=${GROUP:-128}
QARGS=${QARGS:-}
TAG=${TAG:-}

mkdir -p "$WORK"
# CALIB: a calibration text to use instead of the license texts.
if [ -n "${CALIB:-}" ]; then
    cp "$CALIB" "$WORK/calib.txt"
else
    cat "$LIC/Apache-2.0" "$LIC/MPL-2.0" "$LIC/GFDL-1.3" "$LIC/Artistic" >"$WORK/calib.txt"
fi
if [ ! -f "$WORK/ref/config.json" ]; then
    rm -rf "$WORK/ref"
    "$BIN" quantize "$MODEL" --keep '.*=f32' -o "$WORK/ref" --threads "$THREADS" >"$WORK/ref.log" 2>&1
fi

export BIN MODEL WORK TEXT THREADS MAX_CHUNKS GROUP QARGS TAG
job() {
    local fmt=$1 method=$2 out="$WORK/$1-$2$TAG"
    local q=(quantize "$MODEL" --format "$fmt" -o "$out" --force --threads "$THREADS")
    case $fmt in mxfp4 | trellis*) ;; *) q+=(--group-size "$GROUP" --group-fallback) ;; esac
    # shellcheck disable=SC2206 # QARGS is a list of words
    q+=($QARGS)
    case $method in
        rtn) q+=(--method rtn) ;;
        gptq) q+=(--method gptq --calib "$WORK/calib.txt") ;;
        gptq-act) q+=(--method gptq --calib "$WORK/calib.txt" --act-order) ;;
        *) echo "unknown method $method" >&2; return 1 ;;
    esac
    local t0 t1
    t0=$(date +%s.%N)
    if ! "$BIN" "${q[@]}" >"$out.quantize.log" 2>&1; then
        echo "{\"format\":\"$fmt\",\"method\":\"$method\",\"error\":\"quantize failed, see $out.quantize.log\"}" >"$out.json"
        return
    fi
    t1=$(date +%s.%N)
    local e=(eval -m "$out" --ref "$WORK/ref" --text "$TEXT" --json --threads "$THREADS")
    [ -n "$MAX_CHUNKS" ] && e+=(--max-chunks "$MAX_CHUNKS")
    local r
    if ! r=$("$BIN" "${e[@]}" 2>"$out.eval.log"); then
        r='{"error":"eval failed"}'
    fi
    local bytes
    bytes=$(du -cb "$out"/*.safetensors | tail -1 | cut -f1)
    echo "{\"format\":\"$fmt\",\"method\":\"$method\",\"quantize_s\":$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b - a}'),\"bytes\":$bytes,\"eval\":$r}" >"$out.json"
    echo "done $fmt $method: $r" >&2
}
export -f job

for f in $FORMATS; do for m in $METHODS; do echo "$f $m"; done; done |
    xargs -P "$JOBS" -L 1 bash -c 'job "$@"' _

python3 - "$WORK" "$METHODS" "$TAG" $FORMATS <<'EOF'
import json, sys, os
work, methods, tag, fmts = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4:]
head = [f"{m.upper()} {c}" for m in methods for c in ("PPL", "KLD", "top-1")]
print("| format | " + " | ".join(head) + " | size (MB) |")
print("|---|" + "---:|" * (len(head) + 1))
for f in fmts:
    row, size = [], ""
    for m in methods:
        p = os.path.join(work, f"{f}-{m}{tag}.json")
        try:
            j = json.load(open(p))
            e = j["eval"]
            row += [f"{e['ppl']:.3f}", f"{e['kld']:.4f}", f"{100*e['top1']:.2f}%"]
            size = f"{j['bytes']/1e6:.1f}"
        except Exception:
            row += ["–", "–", "–"]
    print(f"| {f} | " + " | ".join(row) + f" | {size} |")
EOF
