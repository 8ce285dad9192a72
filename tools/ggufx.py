"""Small GGUF helpers shared by Shard's Python tools.

`gguf` (PyPI) reads and writes GGUF, but it has no I2_S type: that layout belongs to
microsoft/BitNet's llama.cpp fork (GGML type 36). So this module writes GGUF files itself,
copying metadata verbatim from a reader, and packs ternary tensors as I2_S.

I2_S, x86 layout (what `shard-oracle` reads):
  * codes 0, 1, 2 stand for -1, 0, +1;
  * every 128 consecutive weights fill 32 bytes: weight j of a block sits in byte j % 32,
    at bit shift 6 - 2 * (j // 32);
  * one f32 scale for the whole tensor follows the packed bytes, padded to 32 bytes,
    so a tensor of n weights takes n / 4 + 32 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

GGML_TYPE_I2_S = 36
ALIGNMENT = 32


@dataclass
class RawTensor:
    name: str
    shape: tuple  # ggml order: ne0 (row length) first
    ggml_type: int
    data: bytes


def pack_i2s(ternary: np.ndarray, scale: float) -> bytes:
    """Packs a flat array of -1/0/+1 values (length a multiple of 128) as I2_S bytes."""
    t = np.asarray(ternary, dtype=np.int8).reshape(-1)
    if t.size % 128 != 0:
        raise ValueError(f"I2_S needs a multiple of 128 weights, got {t.size}")
    codes = (t + 1).astype(np.uint8).reshape(-1, 4, 32)  # block, group, position
    packed = (codes[:, 0] << 6) | (codes[:, 1] << 4) | (codes[:, 2] << 2) | codes[:, 3]
    tail = struct.pack("<f", float(scale)) + bytes(28)
    return packed.astype(np.uint8).tobytes() + tail


def unpack_i2s(data: bytes, n: int) -> tuple[np.ndarray, float]:
    """Inverse of pack_i2s: returns (-1/0/+1 values, scale)."""
    packed = np.frombuffer(data[: n // 4], dtype=np.uint8).reshape(-1, 32)
    groups = [(packed >> s) & 3 for s in (6, 4, 2, 0)]
    codes = np.stack(groups, axis=1).reshape(-1).astype(np.int8)
    (scale,) = struct.unpack("<f", data[n // 4 : n // 4 + 4])
    return codes - 1, scale


def ternary_from_tq2(data: bytes, shape: tuple) -> tuple[np.ndarray, float]:
    """Decodes a TQ2_0 tensor to -1/0/+1 values plus its one scale.

    I2_S has a single scale per tensor, so every TQ2_0 block must share the same scale
    (as weights quantized with BitNet's absmean do)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    values = dequantize(raw, GGMLQuantizationType.TQ2_0).reshape(-1)
    blocks = raw.reshape(-1, 66)
    scales = np.unique(blocks[:, 64:66].copy().view(np.float16).astype(np.float32))
    scales = scales[scales != 0]
    if scales.size > 1:
        raise ValueError(f"TQ2_0 blocks have {scales.size} different scales; I2_S needs one")
    scale = float(scales[0]) if scales.size else 1.0
    return np.rint(values / scale).astype(np.int8), scale


def write_gguf(path: str, kv_bytes: list[bytes], tensors: list[RawTensor]) -> None:
    """Writes a GGUF v3 file from pre-encoded key/value records and raw tensors."""
    infos = bytearray()
    offset = 0
    offsets = []
    for t in tensors:
        offsets.append(offset)
        name = t.name.encode()
        infos += struct.pack("<Q", len(name)) + name
        infos += struct.pack("<I", len(t.shape))
        infos += b"".join(struct.pack("<Q", d) for d in t.shape)
        infos += struct.pack("<IQ", t.ggml_type, offset)
        offset += len(t.data)
        offset += (-offset) % ALIGNMENT
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv_bytes))
    head = header + b"".join(kv_bytes) + bytes(infos)
    with open(path, "wb") as f:
        f.write(head)
        f.write(bytes((-len(head)) % ALIGNMENT))
        for t, off in zip(tensors, offsets):
            f.write(t.data)
            f.write(bytes((-len(t.data)) % ALIGNMENT))


def kv_records(reader: GGUFReader, skip_prefixes: tuple = ()) -> list[bytes]:
    """The reader's key/value records, byte for byte, minus keys with the given prefixes."""
    out = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key.startswith(skip_prefixes):
            continue
        out.append(b"".join(bytes(p.tobytes()) for p in field.parts))
    return out


def convert_tq2_to_i2s(src: str, dst: str) -> None:
    """Rewrites every TQ2_0 tensor of `src` as I2_S in `dst`; everything else is copied."""
    reader = GGUFReader(src)
    tensors = []
    for t in reader.tensors:
        shape = tuple(int(d) for d in t.shape)
        data = bytes(t.data.tobytes())
        if t.tensor_type == GGMLQuantizationType.TQ2_0:
            ternary, scale = ternary_from_tq2(data, shape)
            tensors.append(RawTensor(t.name, shape, GGML_TYPE_I2_S, pack_i2s(ternary, scale)))
        else:
            tensors.append(RawTensor(t.name, shape, int(t.tensor_type), data))
    write_gguf(dst, kv_records(reader), tensors)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Convert a TQ2_0 BitNet GGUF to I2_S (x86 layout).")
    p.add_argument("src")
    p.add_argument("dst")
    a = p.parse_args()
    convert_tq2_to_i2s(a.src, a.dst)
