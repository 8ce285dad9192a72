"""Writes small seed files for the `gguf` fuzz target (fuzz/fuzz_targets/gguf.rs).

A mutation fuzzer spends its time in proportion to input size, so whole model files (hundreds
of kilobytes, nearly all tensor bytes) make it crawl. These seeds keep a real model's metadata
(hyperparameters, tokenizer, chat template) and shrink its tensors to a few bytes each, so every
decoder behind the container is reached from a few-kilobyte input.

Usage: python tools/fuzz/make_gguf_seeds.py MODEL.gguf [MODEL2.gguf ...] --out fuzz/corpus/gguf
"""

from __future__ import annotations

import argparse
import os
import sys

from gguf import GGUFReader

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ggufx import RawTensor, kv_records, write_gguf  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for path in a.models:
        reader = GGUFReader(path)
        stem = os.path.basename(path).removesuffix(".gguf")
        kvs = kv_records(reader, skip_prefixes=())
        # Metadata alone, and metadata with two tiny F32 tensors.
        write_gguf(os.path.join(a.out, f"{stem}-meta.gguf"), kvs, [])
        tiny = [RawTensor("token_embd.weight", (4, 2), 0, bytes(32)), RawTensor("output_norm.weight", (4,), 0, bytes(16))]
        write_gguf(os.path.join(a.out, f"{stem}-tiny.gguf"), kvs, tiny)
        print(stem)


if __name__ == "__main__":
    main()
