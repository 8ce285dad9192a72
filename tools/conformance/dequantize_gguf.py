"""Writes a copy of a GGUF file with every quantized or half-precision tensor stored as F32.

llama.cpp's CPU kernels round activations to int8 blocks before a quantized matmul, and on a
small quantized model such as SmolLM2-135M Q4_1 that rounding is unstable: llama.cpp's own
logits move by more than 0.1 between a batched and a token-by-token pass (the fixture records
how much). Dequantizing the weights to F32 makes llama.cpp compute in floats on exactly the
same weights, which is what Shard's burn draft model does, so the two can be compared tightly.

Usage: python tools/conformance/dequantize_gguf.py SRC.gguf DST.gguf
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ggufx import RawTensor, kv_records, write_gguf  # noqa: E402


def dequantize_file(src: str, dst: str) -> None:
    reader = GGUFReader(src)
    tensors = []
    for t in reader.tensors:
        shape = tuple(int(d) for d in t.shape)
        if t.tensor_type == GGMLQuantizationType.F32:
            tensors.append(RawTensor(t.name, shape, int(t.tensor_type), bytes(t.data.tobytes())))
        else:
            values = dequantize(t.data, t.tensor_type).astype(np.float32)
            tensors.append(RawTensor(t.name, shape, int(GGMLQuantizationType.F32), values.tobytes()))
    write_gguf(dst, kv_records(reader), tensors)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst")
    a = p.parse_args()
    dequantize_file(a.src, a.dst)
