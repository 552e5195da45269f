#!/usr/bin/env bash
# The kernel crates' tests cross-compiled for aarch64 and run under qemu
# user-mode emulation (`qemu-aarch64 -cpu max`), so the NEON kernels
# (crates/backend-cpu/src/ops/qmatmul/aarch64*.rs) run against their scalar
# twins without an ARM machine. This checks correctness, not speed.
#
# Usage: scripts/test-aarch64.sh [CRATE...]   (default: mm-backend-cpu
#        mm-quant mm-conformance; extra cargo test arguments after `--`)
#
# Needs the rustup target aarch64-unknown-linux-gnu (skips, exit 0, without
# it), a cross linker (aarch64-linux-gnu-gcc) and qemu-aarch64: on Debian
# `gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user`, installed here
# when missing and run as root. Builds into target/aarch64-unknown-linux-gnu
# with the `ci` profile (release without LTO).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    echo "SKIPPED: the rustup target $TARGET is not installed" \
        "(rustup target add $TARGET); the NEON kernels were NOT tested." >&2
    exit 0
fi

SYSROOT=/usr/aarch64-linux-gnu
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
[ -e "$SYSROOT/lib/libc.so.6" ] || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${need[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "missing: ${need[*]} (install them, e.g. apt-get install ${need[*]})" >&2
        exit 1
    fi
fi

crates=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    crates+=(-p "$1")
    shift
done
[ $# -gt 0 ] && shift
[ ${#crates[@]} -gt 0 ] || crates=(-p mm-backend-cpu -p mm-quant -p mm-conformance)

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
# `-cpu max`: every extension qemu emulates (NEON is baseline anyway).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu max -L $SYSROOT"
cargo test --profile ci --target "$TARGET" "${crates[@]}" "$@"
