#!/usr/bin/env bash
# Runs Shard's whole test suite: set-up, formatting, the wasm32 build, unit, property and
# integration tests (real Oracle processes, llama.cpp conformance, the official openai client).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"
"$SHARD_ROOT/scripts/setup.sh"

log "cargo fmt --check"
cargo fmt --all --check
log "building the Oracle and the native Scout"
cargo build --locked -p shard-oracle -p shard-scout
log "building the browser crates for wasm32"
cargo build --locked --target wasm32-unknown-unknown -p shard-shared -p shard-scout -p shard-web-ui
log "running the tests"
cargo test --locked --workspace -- --test-threads 2
log "all tests passed"
