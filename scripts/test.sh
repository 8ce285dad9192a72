#!/usr/bin/env bash
# Runs Shard's whole test suite: set-up, formatting, the wasm32 build, unit, property and
# integration tests (real Oracle processes, llama.cpp conformance, the official openai client,
# the web app in headless Chromium).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"
"$SHARD_ROOT/scripts/setup.sh"

log "cargo fmt --check"
cargo fmt --all --check
log "container files: hadolint (no errors) and the compose file's structure"
"$SHARD_VENV/bin/hadolint" --failure-threshold error Dockerfile
"$SHARD_PYTHON" tools/ops/check_compose.py docker-compose.yml
log "building the Oracle and the native Scout"
cargo build --locked -p shard-oracle -p shard-scout
# The browser crates for wasm32, as the web app the Oracle serves in the browser tests.
"$SHARD_ROOT/scripts/build-web.sh"
log "running the tests"
cargo test --locked --workspace -- --test-threads 2
log "all tests passed"
