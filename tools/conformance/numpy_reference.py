"""An independent NumPy forward pass of a BitNet b1.58 GGUF, for what llama.cpp cannot check.

llama.cpp has no `bitnet-b1.58` architecture (microsoft/BitNet's, with squared-ReLU gating), so
this script is the reference for it. It dequantizes the weights with the `gguf` package and
follows the graph step by step, rounding where llama.cpp's CPU path rounds: activations to
int8 in blocks of 256 before each ternary product (Q8_K), keys/values/queries/attention weights
to f16, and the final hidden state to f16 before the F16 output layer.

Usage:
  python tools/conformance/numpy_reference.py MODEL.gguf --out FIXTURE.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

PROMPTS = [
    [1, 504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30],
    [1, 4093, 198, 1780, 314, 216, 33, 34, 1232, 216, 35, 32, 47, 2, 198, 1, 520, 9531, 198],
]
TOP_N = 5


def q8k(x: np.ndarray) -> np.ndarray:
    """Quantizes rows to int8 in blocks of 256 as llama.cpp's quantize_row_q8_K_ref; returns
    the dequantized values."""
    b = x.reshape(x.shape[0], -1, 256).astype(np.float32)
    idx = np.abs(b).argmax(axis=2)
    mx = np.take_along_axis(b, idx[..., None], axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(mx != 0, np.float32(-127.0) / mx, 0).astype(np.float32)
    q = np.minimum(np.rint(iscale * b), 127)
    d = np.where(iscale != 0, np.float32(1.0) / iscale, 0)
    return (q * d).reshape(x.shape)


def f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    r = GGUFReader(a.model)
    arch = r.fields["general.architecture"].contents()
    kv = lambda k, d=None: r.fields[f"{arch}.{k}"].contents() if f"{arch}.{k}" in r.fields else d  # noqa: E731
    E, L = kv("embedding_length"), kv("block_count")
    H, HK = kv("attention.head_count"), kv("attention.head_count_kv")
    eps, base = kv("attention.layer_norm_rms_epsilon"), kv("rope.freq_base", 10000.0)
    act = kv("hidden_act", "silu" if arch == "bitnet" else "relu2")
    hd = E // H
    T = {t.name: t for t in r.tensors}

    def W(n):
        t = T[n]
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        return w.reshape([int(x) for x in reversed(t.shape)]) if len(t.shape) > 1 else w.reshape(-1)

    def lin(name, x, ternary=True):
        y = (q8k(x) if ternary else x) @ W(name + ".weight").T
        if name + ".scale" in T:
            y = y * W(name + ".scale")[0]
        return y

    def rms(x, w):
        return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps).astype(np.float32) * w

    def rope(x, n):  # NeoX pairs i with i + hd/2
        half = hd // 2
        inv = base ** (-np.arange(half, dtype=np.float64) * 2 / hd)
        ang = np.arange(n)[:, None] * inv[None, :]
        c, s = np.cos(ang)[:, None, :].astype(np.float32), np.sin(ang)[:, None, :].astype(np.float32)
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], -1)

    emb = W("token_embd.weight")
    out_w = W("output.weight") if "output.weight" in T else emb
    cases = []
    for toks in PROMPTS:
        n = len(toks)
        x = emb[toks]
        for l in range(L):
            pre = f"blk.{l}."
            h = rms(x, W(pre + "attn_norm.weight"))
            q = rope(lin(pre + "attn_q", h).reshape(n, H, hd), n)
            k = f16(rope(lin(pre + "attn_k", h).reshape(n, HK, hd), n))
            v = f16(lin(pre + "attn_v", h).reshape(n, HK, hd))
            out = np.zeros((n, H, hd), dtype=np.float32)
            for hh in range(H):
                s = f16(q[:, hh]) @ k[:, hh // (H // HK)].T / np.sqrt(hd)
                s = s + np.triu(np.full((n, n), -np.inf), 1)
                s = np.exp(s - s.max(1, keepdims=True))
                s = f16(s / s.sum(1, keepdims=True))
                out[:, hh] = s @ v[:, hh // (H // HK)]
            x = x + lin(pre + "attn_output", rms(out.reshape(n, E), W(pre + "attn_sub_norm.weight")))
            h = rms(x, W(pre + "ffn_norm.weight"))
            g, u = lin(pre + "ffn_gate", h), lin(pre + "ffn_up", h)
            g = np.maximum(g, 0) ** 2 * u if act == "relu2" else g / (1 + np.exp(-g)) * u
            x = x + lin(pre + "ffn_down", rms(g, W(pre + "ffn_sub_norm.weight")))
        logits = f16(rms(x, W("output_norm.weight"))).astype(np.float64) @ out_w.T.astype(np.float64)
        lp = logits - logits.max(1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
        positions = [None] + [
            {"token_logprob": float(lp[i - 1][toks[i]]), "top": [[int(t), float(lp[i - 1][t])] for t in np.argsort(-lp[i - 1])[:TOP_N]]}
            for i in range(1, n)
        ]
        cases.append({"tokens": toks, "positions": positions})
    sha = hashlib.sha256(open(a.model, "rb").read()).hexdigest()
    with open(a.out, "w") as f:
        json.dump({"generator": "tools/conformance/numpy_reference.py", "file": os.path.basename(a.model), "sha256": sha,
                   "architecture": arch, "hidden_act": act, "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
