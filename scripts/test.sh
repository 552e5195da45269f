#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the default model (SmolLM2,
# needed by the end-to-end tests) into the user cache, then every test of
# the workspace, optimized (profile `ci`: release without LTO, quick to build),
# the CLI with the wgpu backend (its tests run on any Vulkan driver: Mesa's
# lavapipe does on a machine without a GPU; without one they say so and pass).
set -euo pipefail
cd "$(dirname "$0")/.."
# `info` with no -m resolves (and on first use fetches and verifies) the default model.
cargo run --profile ci -q --features wgpu --bin metal-marlin -- info >/dev/null
MM_REQUIRE_SMOLLM2=1 cargo test --profile ci --workspace --features metal-marlin/wgpu "$@"
