#!/usr/bin/env bash
# Retrains Shard's default model pair from scratch and rewrites models/ and
# tests/fixtures/default-pair.json:
#   fetch corpus -> train tokenizer -> train BitNet target (QAT) -> distil draft
#   -> export GGUF -> evaluate with llama.cpp -> model card.
#
# Usage: tools/train/retrain.sh [--target-minutes M] [--draft-minutes M] [--seqkd-minutes M] [--preset gpu|cpu]
# Uses a CUDA GPU when torch sees one (preset gpu, ~6 + 2.5 + 1.5 min); otherwise the
# cpu preset, bounded by the minute budgets (defaults 50 + 20 + 26 minutes).
# Environment: SHARD_TRAIN_CACHE (default ~/.cache/shard-train) holds the downloads, the
# tokenized corpus, checkpoints and a virtualenv built from requirements.txt
# (llama-cpp-python compiles llama.cpp: about 10 minutes the first time).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${SHARD_TRAIN_CACHE:-$HOME/.cache/shard-train}"
venv="${SHARD_TRAIN_VENV:-$cache/venv}"
train_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target-minutes|--draft-minutes|--seqkd-minutes|--preset|--seed|--threads) train_args+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

mkdir -p "$cache"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$here/requirements.txt"
fi
py="$venv/bin/python"
cd "$here"

echo "== corpus";    "$py" corpus.py --cache "$cache"
echo "== tokenizer"; "$py" tokenize_corpus.py --cache "$cache"
echo "== train";     rm -rf "$cache/run"
"$py" train.py --data "$cache/tok" --out "$cache/run" "${train_args[@]}"
echo "== export";    rm -rf "$cache/gguf"
"$py" export_gguf.py --run "$cache/run" --tokenizer "$cache/tok/tokenizer.json" --out "$cache/gguf"
echo "== evaluate with llama.cpp"
"$py" eval_llamacpp.py --models "$cache/gguf" --data "$cache/tok" --corpus "$cache/corpus" \
  --report "$cache/eval_report.json" --fixture "$cache/default-pair.json"
echo "== check, then rewrite models/ and the fixture"
"$py" write_card.py --cache "$cache" --models "$root/models" \
  --fixture-out "$root/tests/fixtures/default-pair.json"
