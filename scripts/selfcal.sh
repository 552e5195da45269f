#!/usr/bin/env bash
# Self-generated calibration text: the unquantized model answers a set of
# everyday chat prompts (scripts/selfcal-prompts.txt), sampled at
# temperature 0.7, and each exchange is written in the model's ChatML form
# (SmolLM2's template). Calibrating GPTQ on what the model itself says in
# chat, next to plain text, is what made 2-bit SmolLM2 answer questions
# (docs/QUALITY.md, "Calibration text"); it needs no dataset.
#
# Usage: scripts/selfcal.sh [BIN] [MODEL] [OUT] [SAMPLES]
#   BIN      metal-marlin binary (default target/release/metal-marlin)
#   MODEL    the source model (default: the cached SmolLM2 Q4_1 GGUF)
#   OUT      output text file (default selfcal.txt)
#   SAMPLES  answers per prompt, each with its own seed (default 2)
# Environment: JOBS (parallel answers, default nproc), TOKENS (answer
# length, default 256), PROMPTS (prompt file, one per line).
set -euo pipefail

BIN=$(realpath "${1:-target/release/metal-marlin}")
MODEL=${2:-${METAL_MARLIN_CACHE:-$HOME/.cache/metal-marlin}/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${3:-selfcal.txt}
SAMPLES=${4:-2}
PROMPTS=${PROMPTS:-$(dirname "$0")/selfcal-prompts.txt}
JOBS=${JOBS:-$(nproc)}
TOKENS=${TOKENS:-256}
SYSTEM="You are a helpful AI assistant named SmolLM, trained by Hugging Face"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export BIN MODEL TMP TOKENS SYSTEM
answer() {
    local i=$1 k=$2 p=$3 a
    a=$("$BIN" chat -m "$MODEL" --prompt "$p" -n "$TOKENS" --temperature 0.7 \
        --seed $((i * 10 + k)) --threads 1 2>/dev/null)
    printf '<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n%s<|im_end|>\n' \
        "$SYSTEM" "$p" "$a" >"$TMP/$(printf '%05d-%03d' "$i" "$k").txt"
}
export -f answer
i=0
while IFS= read -r p; do
    i=$((i + 1))
    [ -n "$p" ] || continue
    for k in $(seq 1 "$SAMPLES"); do
        printf '%s\0%s\0%s\0' "$i" "$k" "$p"
    done
done <"$PROMPTS" | xargs -0 -n 3 -P "$JOBS" bash -c 'answer "$@"' _
cat "$TMP"/*.txt >"$OUT"
echo "wrote $OUT: $(wc -c <"$OUT") bytes, $(find "$TMP" -name "*.txt" | wc -l) answers" >&2
