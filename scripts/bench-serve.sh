#!/usr/bin/env bash
# Serving benchmark (docs/performance.md, "Serving"): N concurrent streams (N = 1, 4, 8, 16,
# 32; prompts of mixed length) against shard-oracle --parallel N and, side by side in the same
# run, llama.cpp's own llama-server -np N (continuous batching), on the same file and threads:
# the default target, then the 2B-4T-shaped TQ2_0 file. It prints aggregate tok/s, TTFT and
# inter-token p50/p99, and the ratios.
#
# llama-server is built once from the llama.cpp source inside the llama-cpp-python sdist
# (PyPI), with cmake and ninja from PyPI, into $SHARD_CACHE/llama-server (about 15 minutes on
# two cores). Set SHARD_BENCH_STREAMS to change the N list.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"
"$SHARD_ROOT/scripts/setup.sh" --bench
threads=${SHARD_BENCH_THREADS:-$(nproc)}
streams=${SHARD_BENCH_STREAMS:-1,4,8,16,32}
ls_dir="$SHARD_CACHE/llama-server"
server="$ls_dir/build/bin/llama-server"
if [ ! -x "$server" ]; then
  log "building llama-server from the llama-cpp-python sdist"
  "$SHARD_PYTHON" -m pip install --quiet cmake ninja
  version=$("$SHARD_PYTHON" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
  rm -rf "$ls_dir/sdist" && mkdir -p "$ls_dir/sdist"
  # The sdist itself, straight from PyPI's JSON API (pip download would build its metadata).
  "$SHARD_PYTHON" - "$version" "$ls_dir/sdist" <<'PY'
import json, sys, urllib.request
version, out = sys.argv[1], sys.argv[2]
meta = json.load(urllib.request.urlopen(f"https://pypi.org/pypi/llama-cpp-python/{version}/json"))
sdist = next(u for u in meta["urls"] if u["packagetype"] == "sdist")
urllib.request.urlretrieve(sdist["url"], f"{out}/{sdist['filename']}")
PY
  tar -xzf "$ls_dir"/sdist/llama_cpp_python-*.tar.gz -C "$ls_dir/sdist"
  rm -rf "$ls_dir/src" && mv "$ls_dir"/sdist/llama_cpp_python-*/vendor/llama.cpp "$ls_dir/src"
  bin=$(dirname "$SHARD_PYTHON")
  PATH="$bin:$PATH" cmake -S "$ls_dir/src" -B "$ls_dir/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON
  PATH="$bin:$PATH" cmake --build "$ls_dir/build" --target llama-server -j "$(nproc)"
fi
cargo build --locked --release -p shard-oracle
oracle="$CARGO_TARGET_DIR/release/shard-oracle"
serve() {
  "$SHARD_PYTHON" tools/bench/bench_serve.py --shard-oracle "$oracle" --llama-server "$server" \
    --threads "$threads" --streams "$streams" "$@"
}
log "serving: the default target"
serve --model models/shard-target-bitnet-tq2_0.gguf --max-tokens 64
bench2b="$SHARD_DATA_DIR/bench/bitnet-2b4t-tq2_0.gguf"
if [ -f "$bench2b" ]; then
  log "serving: the 2B-4T-shaped TQ2_0 file"
  # Shorter prompts: on two cores a 2B model evaluates about 75 prompt tokens a second.
  serve --model "$bench2b" --max-tokens 32 --prompt-words 8,16,32,48
else
  log "no 2B-4T-shaped file yet: scripts/bench.sh writes it"
fi
