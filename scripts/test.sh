#!/usr/bin/env bash
# Runs Shard's whole test suite: set-up, formatting, the wasm32 build, unit, property and
# integration tests (real Oracle processes, llama.cpp conformance, the official openai client,
# the web app in headless Chromium), and the kernels on aarch64 under qemu.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"
"$SHARD_ROOT/scripts/setup.sh"

log "cargo fmt --check"
cargo fmt --all --check
log "container files: hadolint (no errors) and the compose file's structure"
"$SHARD_VENV/bin/hadolint" --failure-threshold error Dockerfile
"$SHARD_PYTHON" tools/ops/check_compose.py docker-compose.yml
# Everything the tests run, in one build: the binaries (shard-oracle, shard-scout) and every test
# target, so that both see one set of dependency features and no crate is compiled twice (a
# plain `cargo build -p shard-oracle` leaves out the dev-dependencies' features, and
# `cargo test` would then build libp2p, burn, axum and the rest a second time).
log "building the Oracle, the native Scout and the tests"
cargo build --locked --workspace --all-targets
# The browser crates for wasm32, as the web app the Oracle serves in the browser tests.
"$SHARD_ROOT/scripts/build-web.sh"
log "running the tests"
cargo test --locked --workspace -- --test-threads 2
# The NEON kernels, against the scalar reference, on an emulated aarch64 CPU: qemu's default
# CPU has the dot-product extension (both NEON kernels run), a Cortex-A53 does not (the
# baseline one runs, and detection must not pick the other).
log "the kernels on aarch64 under qemu-aarch64 (with and without dotprod)"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
for cpu in max cortex-a53; do
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu" \
    cargo test --locked -p shard-kernels --target aarch64-unknown-linux-gnu
done
log "all tests passed"
