#!/usr/bin/env bash
# CUDA tests in two halves, for a GPU machine without Rust:
#
#   scripts/test-cuda.sh build   # here: builds the CUDA test binaries and the
#                                # CLI with --features cuda, stripped, into
#                                # target/cuda-bundle (carry that directory)
#   scripts/test-cuda.sh run     # on the GPU machine, from the repository root:
#                                # every CUDA test with MM_REQUIRE_CUDA=1, then
#                                # end-to-end logits, GPU against the CPU's
#                                # exact path, on the tiny fixtures as stored
#                                # and quantized by us to several formats, as
#                                # a prompt and as decode steps (CUDA graphs on
#                                # and off, which must agree bit for bit)
#   scripts/test-cuda.sh quick   # on the GPU machine, in about two minutes:
#                                # the GPU conformance checks, the batched
#                                # engine, the kernel table (no peers) and
#                                # the end-to-end checks on eight models
#                                # (dense, MoE and MLA ones among them)
#   scripts/test-cuda.sh model [1b|8b]
#                                # on the GPU machine: a random Llama-shape
#                                # model made by transformers; our GPU logits
#                                # (bf16 as stored, --exact) against
#                                # transformers' f32 ones on the same GPU;
#                                # then bench -p 512 -n 128 of it as bf16 and
#                                # quantized by us to int4, and transformers
#                                # bf16 speed, in one run
#   scripts/test-cuda.sh moe [glm47-flash|qwen3-30b-a3b] [LAYERS]
#                                # on the GPU machine: a MoE model at the
#                                # widths of GLM-4.7-Flash or Qwen3-30B-A3B
#                                # (LAYERS deep, default 8) made by
#                                # transformers; our logits against it, its
#                                # int4 version on the GPU against the CPU,
#                                # bench of the int4 version, transformers
#                                # bf16 speed
#   scripts/test-cuda.sh profile [MODEL]
#                                # on the GPU machine, after `model`: ncu's
#                                # time of every kernel of 4 decode steps of
#                                # MODEL (default the 1b int4 model), without
#                                # graphs, summed per kernel name
#   scripts/test-cuda.sh wgpu [1b|8b]
#                                # on the GPU machine, with a Vulkan loader
#                                # (libvulkan.so.1) and the NVIDIA driver's
#                                # Vulkan ICD: the wgpu backend's
#                                # conformance at both tiers, its matmul
#                                # kernel alone (wgpu_bench), a random
#                                # Llama-shape model's logits with
#                                # --device wgpu against transformers', and
#                                # its int4 bench on wgpu next to CUDA
#   scripts/test-cuda.sh trellis # on the GPU machine: the trellis formats
#                                # (docs/FORMAT.md §4.8): the GPU conformance
#                                # checks (trellis2/3/4 among the quantized
#                                # formats), tiny fixtures quantized here to
#                                # trellis2/3 with GPU logits against the
#                                # CPU's (prompt and decode steps), and the
#                                # kernel's bandwidth (qmatmul_bench --trellis)
#   scripts/test-cuda.sh bench [--quick]
#                                # on the GPU machine: the quantized matmul
#                                # kernels and their peers (cuBLAS fp16,
#                                # PyTorch int4) in one run, as a table;
#                                # then sampling on the GPU against read-back
#                                # and host sampling (sample_bench)
#
# `run` fails on any test failure and when no GPU is usable.
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/cuda-bundle

# Builds one test target (cargo test arguments after NAME) and copies its
# executable to $B/test-NAME.
test_exe() {
    local name=$1
    shift
    cargo test --release "$@" --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' |
        while read -r exe; do cp "$exe" "$B/test-$name"; done
}

case "${1:-}" in
build)
    rm -rf "$B" && mkdir -p "$B"
    cargo build --release --features cuda,wgpu -p metal-marlin
    cp target/release/metal-marlin "$B/"
    cargo build --release -p mm-backend-cuda --example qmatmul_bench --example sample_bench
    cp target/release/examples/qmatmul_bench target/release/examples/sample_bench "$B/"
    cargo test --release -p mm-backend-cuda --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] in (["lib"], ["test"]):
        print(m["target"]["name"], m["executable"])' |
        while read -r name exe; do cp "$exe" "$B/test-$name"; done
    # The CLI's and the wgpu crate's test binaries, built with the same
    # features as the CLI above (so cargo builds it once).
    test_exe cuda_batch --features cuda,wgpu -p metal-marlin --test cuda_batch
    cargo build --release -p mm-backend-wgpu --example wgpu_bench
    cp target/release/examples/wgpu_bench "$B/"
    test_exe wgpu-conformance -p mm-backend-wgpu --test conformance
    test_exe wgpu_models --features cuda,wgpu -p metal-marlin --test wgpu_models
    strip "$B"/*
    ls -la "$B"
    ;;
run | quick)
    export MM_REQUIRE_CUDA=1
    # The defaults, whatever the caller's environment: prompt rows on the
    # tensor cores, decode steps as CUDA graphs.
    export MM_CUDA_TENSOR_CORES=1 MM_CUDA_GRAPHS=1
    if [ "$1" = quick ]; then
        # A first look in a short call: the GPU checks of the suite (not
        # the two-architecture compile of every kernel), the batched
        # engine, the kernel table without its peers, eight models below.
        "$B/test-conformance" --test-threads=1 cuda_
        "$B/test-cuda_batch" --test-threads=1
        "$B/qmatmul_bench" --quick
        "$B/sample_bench" --quick
        models=(tests/fixtures/tiny/llama/ tests/fixtures/tiny/qwen3/
            tests/fixtures/tiny/qwen3-moe/ tests/fixtures/tiny/glm4-moe/
            tests/fixtures/tiny/glm4-moe-lite/ tests/fixtures/tiny/deepseek-v3-yarn/)
        formats=(int4)
        # MoE models with quantized experts run them on the GPU (routing
        # included); as stored (bf16) their experts run on the CPU.
        quantized_moe="tests/fixtures/tiny/qwen3-moe tests/fixtures/tiny/mixtral
            tests/fixtures/tiny/glm4-moe-lite tests/fixtures/tiny/deepseek-v3-yarn"
    else
        for t in "$B"/test-*; do
            echo "== $t"
            "$t" --test-threads=1
        done
        models=(tests/fixtures/tiny/*/)
        formats=(int4 int4-asym nf4 int8 fp8 mxfp4 int3)
        quantized_moe="tests/fixtures/tiny/qwen3-moe tests/fixtures/tiny/mixtral
            tests/fixtures/tiny/glm4-moe tests/fixtures/tiny/glm4-moe-lite
            tests/fixtures/tiny/deepseek-v2 tests/fixtures/tiny/deepseek-v3-yarn"
    fi
    echo "== end to end: logits on the GPU against the CPU's --exact path"
    q=$(mktemp -d)
    for f in "${formats[@]}"; do
        for m in tests/fixtures/tiny/llama tests/fixtures/tiny/qwen3 $quantized_moe; do
            out="$q/$(basename "$m")-$f"
            "$B/metal-marlin" quantize "$m" --out "$out" --format "$f" --group-size 32 \
                --group-fallback >/dev/null
            cp "$m/reference.json" "$out/"
            models+=("$out/")
        done
    done
    for m in "${models[@]}"; do
        ids=$(python3 -c "import json; print(','.join(map(str, json.load(open('$m/reference.json'))['input_ids'])))")
        "$B/metal-marlin" logits -m "$m" --ids "$ids" --device cpu --exact --out /tmp/mm-cpu.npy >/dev/null
        # exact: f32 everywhere; default: the prompt's matmuls on the
        # tensor cores (f16 operands) and an f16 KV cache; decode: the
        # last 8 ids as decode steps (replayed CUDA graphs from the third),
        # then the same without graphs, which must give the same bits.
        for mode in exact default decode nograph; do
            case $mode in
            exact) flags=(--exact) ;;
            default) flags=() ;;
            decode) flags=(--decode 8) ;;
            nograph) flags=(--decode 8) ;;
            esac
            MM_CUDA_GRAPHS=$([ $mode = nograph ] && echo 0 || echo 1) \
                "$B/metal-marlin" logits -m "$m" --ids "$ids" --device cuda "${flags[@]}" \
                --out "/tmp/mm-gpu-$mode.npy" >/dev/null
            python3 - "$m" "$mode" <<'PY'
import sys
import numpy as np
mode = sys.argv[2]
a = np.load(f"/tmp/mm-gpu-{mode}.npy").astype(np.float64)
b = np.load("/tmp/mm-cpu.npy").astype(np.float64)
if mode == "nograph":
    g = np.load("/tmp/mm-gpu-decode.npy").astype(np.float64)
    assert np.array_equal(a, g), f"decode steps with and without CUDA graphs differ by {np.abs(a - g).max():.3e}"
def logsm(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
la, lb = logsm(a), logsm(b)
kl = (np.exp(lb) * (lb - la)).sum(-1)
top1 = (a.argmax(-1) == b.argmax(-1)).mean()
err = np.abs(a - b).max() / np.abs(b).max()
print(f"{sys.argv[1]} {mode}: top-1 {top1:.0%}, mean KL {kl.mean():.2e}, max |dlogit|/max|logit| {err:.1e}")
if mode == "exact":
    assert top1 == 1.0 and kl.mean() <= 1e-6 and err <= 1e-4, "GPU logits differ from the CPU's"
else:
    assert kl.mean() <= 1e-3 and err <= 2e-2, "GPU logits differ from the CPU's"
PY
        done
    done
    ;;
model)
    export MM_CUDA_TENSOR_CORES=1 MM_CUDA_GRAPHS=1
    d=/tmp/mm-random-${2:-1b}
    [ -d "$d" ] || python3 scripts/cuda/random_llama.py make "$d" --shape "${2:-1b}"
    ids=$(python3 -c "import json; print(','.join(map(str, json.load(open('$d/reference.json'))['input_ids'])))")
    "$B/metal-marlin" logits -m "$d" --ids "$ids" --device cuda --exact --out /tmp/mm-gpu.npy
    python3 scripts/cuda/random_llama.py compare "$d" /tmp/mm-gpu.npy
    "$B/metal-marlin" logits -m "$d" --ids "$ids" --device cuda --out /tmp/mm-gpu-default.npy
    python3 scripts/cuda/random_llama.py compare "$d" /tmp/mm-gpu-default.npy
    [ -d "$d-int4" ] || "$B/metal-marlin" quantize "$d" --out "$d-int4" --format int4 >/dev/null
    for m in "$d" "$d-int4"; do
        echo "== bench $m"
        "$B/metal-marlin" bench -m "$m" --device cuda -p 512 -n 128 -r 3 --batch 8,32,64
    done
    echo "== bench $d-int4 decode without CUDA graphs"
    MM_CUDA_GRAPHS=0 "$B/metal-marlin" bench -m "$d-int4" --device cuda -p 0 -n 128 -r 3
    python3 scripts/cuda/random_llama.py speed "$d"
    ;;
wgpu)
    export MM_REQUIRE_WGPU=1
    # The Vulkan loader (libvulkan.so.1, from the distribution's libvulkan1
    # package; on LD_LIBRARY_PATH if carried) and the NVIDIA driver's
    # Vulkan ICD, which lives in libGLX_nvidia.so.0: a driver installed
    # without its ICD file gets one here.
    python3 -c 'import ctypes; ctypes.CDLL("libvulkan.so.1")' 2>/dev/null ||
        { echo "no Vulkan loader (libvulkan.so.1): install libvulkan1 or put it on LD_LIBRARY_PATH"; exit 1; }
    if ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1 &&
        [ -z "${VK_ICD_FILENAMES:-}" ] &&
        python3 -c 'import ctypes; ctypes.CDLL("libGLX_nvidia.so.0")' 2>/dev/null; then
        echo '{"file_format_version": "1.0.0", "ICD": {"library_path": "libGLX_nvidia.so.0", "api_version": "1.3.0"}}' \
            >/tmp/mm-nvidia-icd.json
        export VK_ICD_FILENAMES=/tmp/mm-nvidia-icd.json
    fi
    "$B/test-wgpu-conformance" --test-threads=1
    # The tiny fixtures end to end with --device wgpu, against transformers
    # and the CPU (the CI test, on this GPU).
    MM_BIN="$B/metal-marlin" "$B/test-wgpu_models" --test-threads=1
    # The matmul kernel alone at Llama-3-8B shapes (GB/s of weights read).
    "$B/wgpu_bench"
    d=/tmp/mm-random-${2:-1b}
    [ -d "$d" ] || python3 scripts/cuda/random_llama.py make "$d" --shape "${2:-1b}"
    ids=$(python3 -c "import json; print(','.join(map(str, json.load(open('$d/reference.json'))['input_ids'])))")
    "$B/metal-marlin" logits -m "$d" --ids "$ids" --device wgpu --out /tmp/mm-wgpu.npy
    python3 scripts/cuda/random_llama.py compare "$d" /tmp/mm-wgpu.npy
    [ -d "$d-int4" ] || "$B/metal-marlin" quantize "$d" --out "$d-int4" --format int4 >/dev/null
    for dev in wgpu cuda; do
        echo "== bench $d-int4 --device $dev"
        "$B/metal-marlin" bench -m "$d-int4" --device "$dev" -p 512 -n 128 -r 3
    done
    ;;
moe)
    export MM_CUDA_TENSOR_CORES=1 MM_CUDA_GRAPHS=1
    shape=${2:-glm47-flash}
    layers=${3:-8}
    d=/tmp/mm-$shape-$layers
    [ -d "$d" ] || python3 scripts/cuda/random_moe.py make "$d" --shape "$shape" --layers "$layers"
    ids=$(python3 -c "import json; print(','.join(map(str, json.load(open('$d/reference.json'))['input_ids'])))")
    [ -d "$d-int4" ] || "$B/metal-marlin" quantize "$d" --out "$d-int4" --format int4 >/dev/null
    cp "$d/reference.json" "$d-int4/"
    # As stored (bf16 experts run on the CPU) against transformers' f32.
    "$B/metal-marlin" logits -m "$d" --ids "$ids" --device cuda --out /tmp/mm-moe.npy
    python3 scripts/cuda/random_moe.py compare "$d" /tmp/mm-moe.npy
    # int4 experts on the GPU: the prompt, then the last 8 ids as decode
    # steps (graphs), against the CPU's exact path on the same int4 model.
    "$B/metal-marlin" logits -m "$d-int4" --ids "$ids" --device cpu --exact --out /tmp/mm-moe-cpu.npy
    for flags in "" "--decode 8"; do
        "$B/metal-marlin" logits -m "$d-int4" --ids "$ids" --device cuda $flags --out /tmp/mm-moe-gpu.npy
        python3 - <<'PY'
import numpy as np
a = np.load("/tmp/mm-moe-gpu.npy").astype(np.float64)
b = np.load("/tmp/mm-moe-cpu.npy").astype(np.float64)
def logsm(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
la, lb = logsm(a), logsm(b)
kl = (np.exp(lb) * (lb - la)).sum(-1).mean()
top1 = (a.argmax(-1) == b.argmax(-1)).mean()
print(f"int4 GPU against the CPU's exact path: top-1 {top1:.0%}, mean KL {kl:.2e}")
assert kl <= 1e-3, "GPU logits differ from the CPU's"
PY
    done
    echo "== bench $d-int4"
    "$B/metal-marlin" bench -m "$d-int4" --device cuda -p 512 -n 128 -r 3 --batch 8,32
    echo "== bench $d-int4 decode without CUDA graphs"
    MM_CUDA_GRAPHS=0 "$B/metal-marlin" bench -m "$d-int4" --device cuda -p 0 -n 128 -r 3
    python3 scripts/cuda/random_moe.py speed "$d"
    ;;
profile)
    m=${2:-/tmp/mm-random-1b-int4}
    ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
    # The card's own clocks and warm caches (as a replayed step sees
    # them), not ncu's defaults (base clocks, caches flushed per launch).
    MM_CUDA_GRAPHS=0 "$ncu" --metrics gpu__time_duration.sum --csv --print-units base \
        --clock-control none --cache-control none \
        "$B/metal-marlin" logits -m "$m" --ids 1,2,3,4,5,6,7,8 --device cuda --decode 4 \
        --out /tmp/mm-profile.npy >/tmp/mm-ncu.csv 2>/tmp/mm-ncu.err || {
        tail -20 /tmp/mm-ncu.err
        exit 1
    }
    cp /tmp/mm-ncu.csv "${OUT:-/tmp}/" 2>/dev/null || true
    # --decode 4 runs the prompt without its last 4 ids, then 4 decode
    # steps: the table is per decode step.
    python3 scripts/cuda/kernel_times.py /tmp/mm-ncu.csv --skip 1
    ;;
trellis)
    export MM_REQUIRE_CUDA=1
    "$B/test-conformance" --test-threads=1 cuda_quantized_matmul_conforms
    ids=$(python3 -c "import json; print(','.join(map(str, json.load(open('tests/fixtures/tiny/llama/reference.json'))['input_ids'])))")
    for f in llama qwen3 qwen2; do
        for fmt in trellis2 trellis3; do
            m=/tmp/mm-$f-$fmt
            "$B/metal-marlin" quantize "tests/fixtures/tiny/$f" -o "$m" --format "$fmt" --force >/dev/null 2>&1
            for mode in "" "--decode 6"; do
                # shellcheck disable=SC2086 # mode is empty or two words
                "$B/metal-marlin" logits -m "$m" --ids "$ids" --device cuda --out /tmp/mm-g.npy $mode >/dev/null
                # shellcheck disable=SC2086
                "$B/metal-marlin" logits -m "$m" --ids "$ids" --device cpu --out /tmp/mm-c.npy $mode >/dev/null
                python3 -c "
import numpy as np, sys
g, c = np.load('/tmp/mm-g.npy'), np.load('/tmp/mm-c.npy')
rel = np.abs(g - c).max() / np.abs(c).max()
print('$f $fmt ${mode:-prompt}: max|d|/max|c| %.2e, top-1 %d/%d' % (rel, (g.argmax(-1) == c.argmax(-1)).sum(), len(c)))
sys.exit(0 if rel < 1e-4 else 1)"
            done
        done
    done
    "$B/qmatmul_bench" --trellis | tee "${OUT:-/tmp}/trellis.txt"
    ;;
bench)
    "$B/qmatmul_bench" ${2:-} | tee "${OUT:-/tmp}/qmatmul.txt"
    python3 scripts/cuda/peers.py measure ${2:-} >/dev/null
    python3 scripts/cuda/peers.py table "${OUT:-/tmp}/qmatmul.jsonl" "${OUT:-/tmp}/peers.jsonl"
    "$B/sample_bench" ${2:-} | tee "${OUT:-/tmp}/sample.txt"
    ;;
*)
    echo "usage: $0 build|run|quick|model [1b|8b]|moe [SHAPE] [LAYERS]|profile [MODEL]|trellis|bench [--quick]" >&2
    exit 2
    ;;
esac
