#!/usr/bin/env bash
# Builds the web app (web-ui/ + scout-wasm/, assets in www/) into dist/ with trunk, in
# release mode, and writes gzip copies beside the big files for the Oracle to serve.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"
log "building the web app (trunk build --release)"
trunk build --release --dist dist
for f in dist/*.wasm dist/*.js dist/*.css; do
  [ -f "$f" ] && gzip -9 -k -f -n "$f"
done
wasm=$(ls dist/*.wasm)
log "web app: $(du -b "$wasm" | cut -f1) bytes of wasm, $(du -b "$wasm.gz" | cut -f1) gzipped"
