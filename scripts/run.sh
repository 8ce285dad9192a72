#!/usr/bin/env bash
# Builds and runs the Oracle on the default model (models/), serving the API and the web app
# on http://127.0.0.1:8080 (SHARD_HOST / SHARD_PORT to change). Extra arguments go to
# shard-oracle (see `shard-oracle --help`).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"
model=${SHARD_MODEL:-models/shard-target-bitnet-tq2_0.gguf}
if [ ! -f "$model" ]; then
  log "$model not found; using a generated synthetic model instead"
  "$SHARD_ROOT/scripts/setup.sh"
  model="$SHARD_DATA_DIR/synth/bitnet-tiny-tq2_0.gguf"
fi
command -v cargo >/dev/null || { log "cargo not found: install Rust with rustup (https://rustup.rs)"; exit 1; }
"$SHARD_ROOT/scripts/setup.sh" --web
"$SHARD_ROOT/scripts/build-web.sh"
log "building shard-oracle (release)"
cargo build --locked --release -p shard-oracle
exec "$CARGO_TARGET_DIR/release/shard-oracle" --model "$model" --host "${SHARD_HOST:-127.0.0.1}" --port "${SHARD_PORT:-8080}" --web-dir dist "$@"
