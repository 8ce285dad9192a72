"""Writes synthetic BitNet b1.58 GGUF files: seeded random ternary weights, real tokenizer.

The tokenizer and chat template are copied from another GGUF (SmolLM2-135M-Instruct by
default), so the files exercise a real 49k-token BPE vocabulary. The same weights are written
as TQ2_0, TQ1_0 and I2_S, so each format can be checked against the others and against
llama.cpp (which reads TQ2_0 and TQ1_0, but not I2_S).

Usage:
  python tools/synth/make_bitnet.py --vocab-from SmolLM2.gguf --out-dir work-data/synth \
      [--preset tiny|2b4t] [--seed 7] [--types tq2_0,tq1_0,i2_s] \
      [--kv KEY=TYPE:VALUE ...] [--drop-kv KEY ...] [--output-tensor]

`--kv` adds or replaces a metadata key (TYPE: str, u32, f32, bool, or u32s for a
comma-separated array), `--drop-kv` removes one, and `--output-tensor` adds a separate
`output.weight` even to a `bitnet` file: the conformance tests use them for files whose
metadata says more than llama.cpp reads (see tests/tests/metadata.rs).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import quantize

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ggufx import GGML_TYPE_I2_S, RawTensor, kv_records, pack_i2s, write_gguf  # noqa: E402

# Spread of the logits. Kept moderate: a random network amplifies rounding differences
# (int8 activations, F16 KV cache) roughly in proportion to it.
LOGIT_STD = float(os.environ.get("SYNTH_LOGIT_STD", "1.0"))

PRESETS = {
    # A few layers over a toy vocabulary, for statistical tests that enumerate outcomes.
    "small": dict(layers=2, embd=256, ff=512, heads=4, kv_heads=2, ctx=256),
    # Small enough for CI; GQA, several layers and per-tensor scales all exercised.
    "tiny": dict(layers=4, embd=256, ff=768, heads=4, kv_heads=2, ctx=1024),
    # bitnet-b1.58-2B-4T's shapes, for the benchmark.
    "2b4t": dict(layers=30, embd=2560, ff=6912, heads=20, kv_heads=5, ctx=4096),
}


def kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", 8, len(v)) + v


def kv_u32(key: str, value: int) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<II", 4, value)


def kv_f32(key: str, value: float) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<If", 6, value)


def kv_strings(key: str, values: list) -> bytes:
    k = key.encode()
    out = struct.pack("<Q", len(k)) + k + struct.pack("<IIQ", 9, 8, len(values))
    for v in values:
        b = v.encode()
        out += struct.pack("<Q", len(b)) + b
    return out


def kv_i32s(key: str, values: list) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IIQ", 9, 5, len(values)) + struct.pack(f"<{len(values)}i", *values)


def kv_bool(key: str, value: bool) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IB", 7, int(value))


def kv_u32s(key: str, values: list) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IIQ", 9, 4, len(values)) + struct.pack(f"<{len(values)}I", *values)


def parse_kv(spec: str) -> tuple[str, bytes]:
    """KEY=TYPE:VALUE, as llama.cpp's --override-kv spells it (plus u32s for arrays)."""
    key, _, typed = spec.partition("=")
    ty, _, value = typed.partition(":")
    encoders = {
        "str": lambda: kv_string(key, value),
        "u32": lambda: kv_u32(key, int(value)),
        "f32": lambda: kv_f32(key, float(value)),
        "bool": lambda: kv_bool(key, value == "true"),
        "u32s": lambda: kv_u32s(key, [int(v) for v in value.split(",")]),
    }
    if not key or ty not in encoders:
        raise SystemExit(f"--kv {spec!r}: expected KEY=TYPE:VALUE with TYPE one of {', '.join(encoders)}")
    return key, encoders[ty]()


def small_vocab_records(n: int) -> list:
    """A gpt2-style vocabulary of n single printable characters and no merges; token 0 is an
    end-of-text control token, so every id is reachable and decodes to one character. Large
    n (a 128k vocabulary for speed benchmarks) skips the surrogate code points, which UTF-8
    cannot hold."""
    codes = (c for c in range(ord("a"), 0x110000) if not 0xD800 <= c <= 0xDFFF)
    chars = [chr(c) for _, c in zip(range(n - 1), codes)]
    return [
        kv_string("tokenizer.ggml.model", "gpt2"),
        kv_string("tokenizer.ggml.pre", "gpt-2"),
        kv_strings("tokenizer.ggml.tokens", ["<|endoftext|>"] + chars),
        kv_i32s("tokenizer.ggml.token_type", [3] + [1] * len(chars)),
        kv_strings("tokenizer.ggml.merges", []),
        kv_u32("tokenizer.ggml.bos_token_id", 0),
        kv_u32("tokenizer.ggml.eos_token_id", 0),
    ]


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--vocab-from", help="GGUF whose tokenizer.* keys are copied")
    src.add_argument("--small-vocab", type=int, metavar="N",
                     help="instead, a toy vocabulary of N single-character tokens (for statistical tests)")
    p.add_argument("--name", help="file name stem (default: ARCH-PRESET)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--arch", choices=["bitnet", "bitnet-b1.58"], default="bitnet")
    p.add_argument("--types", default="tq2_0,tq1_0,i2_s")
    p.add_argument("--kv", action="append", default=[], metavar="KEY=TYPE:VALUE", help="add or replace a metadata key")
    p.add_argument("--drop-kv", action="append", default=[], metavar="KEY", help="leave a metadata key out")
    p.add_argument("--output-tensor", action="store_true", help="write a separate output.weight whatever the arch")
    a = p.parse_args(argv)
    cfg = PRESETS[a.preset]
    types = a.types.split(",")
    os.makedirs(a.out_dir, exist_ok=True)

    if a.vocab_from:
        vocab_reader = GGUFReader(a.vocab_from)
        n_vocab = len(vocab_reader.fields["tokenizer.ggml.tokens"].data)
        tokenizer_kvs = kv_records(vocab_reader, skip_prefixes=("general.", "llama."))
    else:
        n_vocab = a.small_vocab
        tokenizer_kvs = small_vocab_records(n_vocab)
    rng = np.random.default_rng(a.seed)
    E, F, L = cfg["embd"], cfg["ff"], cfg["layers"]
    head_dim = E // cfg["heads"]
    kv_dim = head_dim * cfg["kv_heads"]

    # Float tensors (norms, embeddings) and ternary tensors with one scale each.
    dense: list[tuple[str, np.ndarray, GGMLQuantizationType]] = []
    ternary: list[tuple[str, np.ndarray, float]] = []  # name, int8 [rows, cols], scale

    # Tied embeddings set the logit spread: std(logit) ~ emb_std * sqrt(E) = LOGIT_STD.
    emb_std = LOGIT_STD / np.sqrt(E)
    dense.append(("token_embd.weight", (rng.standard_normal((n_vocab, E)) * emb_std).astype(np.float16), GGMLQuantizationType.F16))
    dense.append(("output_norm.weight", (1.0 + 0.1 * rng.standard_normal(E)).astype(np.float32), GGMLQuantizationType.F32))
    if a.arch != "bitnet" or a.output_tensor:
        # microsoft/BitNet files may carry a separate output layer; exercise that path.
        dense.append(("output.weight", (rng.standard_normal((n_vocab, E)) * emb_std).astype(np.float16), GGMLQuantizationType.F16))

    def tern(rows: int, cols: int) -> tuple[np.ndarray, float]:
        w = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(rows, cols), p=[0.35, 0.3, 0.35])
        return w, float(np.float16(1.0 / np.sqrt(cols * 0.7)))

    for il in range(L):
        b = f"blk.{il}."
        for norm, n in (("attn_norm", E), ("attn_sub_norm", E), ("ffn_norm", E), ("ffn_sub_norm", F)):
            dense.append((b + norm + ".weight", (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32), GGMLQuantizationType.F32))
        for name, rows, cols in (
            ("attn_q", E, E), ("attn_k", kv_dim, E), ("attn_v", kv_dim, E), ("attn_output", E, E),
            ("ffn_gate", F, E), ("ffn_up", F, E), ("ffn_down", E, F),
        ):
            w, s = tern(rows, cols)
            ternary.append((b + name + ".weight", w, s))
        # Optional per-tensor `.scale` tensors, as some converters write them.
        if il % 2 == 0:
            for name in ("attn_q", "ffn_down"):
                dense.append((b + name + ".scale", np.array([1.0 + 0.25 * il], dtype=np.float32), GGMLQuantizationType.F32))

    arch = a.arch
    model_kvs = {
        "general.architecture": kv_string("general.architecture", arch),
        "general.name": kv_string("general.name", f"shard-synthetic-{a.preset}"),
        f"{arch}.context_length": kv_u32(f"{arch}.context_length", cfg["ctx"]),
        f"{arch}.embedding_length": kv_u32(f"{arch}.embedding_length", E),
        f"{arch}.block_count": kv_u32(f"{arch}.block_count", L),
        f"{arch}.feed_forward_length": kv_u32(f"{arch}.feed_forward_length", F),
        f"{arch}.attention.head_count": kv_u32(f"{arch}.attention.head_count", cfg["heads"]),
        f"{arch}.attention.head_count_kv": kv_u32(f"{arch}.attention.head_count_kv", cfg["kv_heads"]),
        f"{arch}.attention.layer_norm_rms_epsilon": kv_f32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        f"{arch}.rope.freq_base": kv_f32(f"{arch}.rope.freq_base", 10000.0),
        f"{arch}.vocab_size": kv_u32(f"{arch}.vocab_size", n_vocab),
    }
    for spec in a.kv:
        key, record = parse_kv(spec)
        model_kvs[key] = record
    for key in a.drop_kv:
        model_kvs.pop(key, None)
    kvs_common = tokenizer_kvs + list(model_kvs.values())

    dense_raw = [RawTensor(n, tuple(reversed(t.shape)), int(q), t.tobytes()) for n, t, q in dense]
    for ty in types:
        tensors = list(dense_raw)
        for name, w, s in ternary:
            shape = (w.shape[1], w.shape[0])
            if ty == "i2_s":
                data = pack_i2s(w.reshape(-1), s)
                tensors.append(RawTensor(name, shape, GGML_TYPE_I2_S, data))
            else:
                qt = {"tq2_0": GGMLQuantizationType.TQ2_0, "tq1_0": GGMLQuantizationType.TQ1_0}[ty]
                data = quantize((w.astype(np.float32) * np.float32(s)), qt).tobytes()
                tensors.append(RawTensor(name, shape, int(qt), data))
        path = os.path.join(a.out_dir, f"{a.name or a.arch + '-' + a.preset}-{ty}.gguf")
        write_gguf(path, kvs_common, tensors)
        print(path)


if __name__ == "__main__":
    main()
