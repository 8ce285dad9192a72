"""The two models of Shard's default pair, written to match llama.cpp's graphs exactly.

Target: llama.cpp's `bitnet` architecture (src/models/bitnet.cpp). Per layer:
    x = attn_norm(h); q, k, v = BitLinear(x); RoPE (NEOX: rotate-half) on q, k;
    a = causal softmax attention (GQA); h = h + wo(attn_sub_norm(a))
    x = ffn_norm(h); g = silu(gate(x)) * up(x); h = h + down(ffn_sub_norm(g))
  then output_norm, logits = h @ token_embd^T (tied). llama.cpp's `bitnet` graph is SiLU-gated,
  so the target is trained with SiLU (microsoft's `bitnet-b1.58` arch is the relu^2 one).
  BitLinear is BitNet b1.58's quantization-aware linear layer: absmean ternary weights
  (scale = mean|W|, rounded to f16 as TQ2_0 stores it) and per-token absmax int8
  activations, both with a straight-through estimator.

Draft: llama.cpp's `llama` architecture, float weights, RoPE NORM mode (adjacent pairs),
  SiLU MLP, tied embeddings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab: int
    embd: int
    layers: int
    heads: int
    kv_heads: int
    ff: int
    ctx: int
    eps: float = 1e-5
    rope_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.embd // self.heads

    def to_dict(self) -> dict:
        return asdict(self)


class BitLinearFn(torch.autograd.Function):
    """y = Q8(x) @ T(W)^T with exact integer products; STE gradients through both quantizers."""

    @staticmethod
    def forward(ctx, x, w):
        xf = x.float()
        s = 127.0 / xf.abs().amax(-1, keepdim=True).clamp_min(1e-5)
        k = (xf * s).round().clamp(-128, 127)
        ws = w.abs().mean().clamp_min(1e-5).half().float()
        t = (w / ws).round().clamp(-1, 1)
        cdt = torch.bfloat16 if x.is_cuda else torch.float32  # integers: exact in bf16
        y = (k.to(cdt) @ t.to(cdt).t()).float() * (ws / s)
        ctx.save_for_backward(k.to(torch.int8), s, t.to(torch.int8), ws)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        k, s, t, ws = ctx.saved_tensors
        cdt = torch.bfloat16 if gy.is_cuda else torch.float32
        g = gy.to(cdt)
        wq = (t.float() * ws).to(cdt)
        gx = (g @ wq).to(gy.dtype)
        xq = (k.float() / s).to(cdt)
        gw = (g.reshape(-1, g.shape[-1]).t() @ xq.reshape(-1, xq.shape[-1])).float()
        return gx, gw


class BitLinear(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(n_in))

    def forward(self, x):
        return BitLinearFn.apply(x, self.weight)

    def ternary(self) -> tuple[torch.Tensor, float]:
        """(-1/0/+1 int8 matrix, f16-exact scale) as exported."""
        w = self.weight.detach().float()
        ws = w.abs().mean().clamp_min(1e-5).half().float()
        return (w / ws).round().clamp(-1, 1).to(torch.int8), float(ws)


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def rope_tables(cfg: Config, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    d = cfg.head_dim
    inv = cfg.rope_base ** (-torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)
    ang = torch.arange(T, device=device, dtype=torch.float32)[:, None] * inv[None, :]  # [T, d/2]
    return ang.cos(), ang.sin()


def rope_neox(x, cos, sin):
    """x: [B, H, T, d]; pairs (i, i + d/2) rotate by angle i (llama.cpp NEOX mode)."""
    h = x.shape[-1] // 2
    x0, x1 = x[..., :h].float(), x[..., h:].float()
    return torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).to(x.dtype)


def rope_norm(x, cos, sin):
    """x: [B, H, T, d]; pairs (2i, 2i + 1) rotate by angle i (llama.cpp NORM mode)."""
    x0, x1 = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2).to(x.dtype)


class Block(nn.Module):
    def __init__(self, cfg: Config, bitnet: bool, dropout: float = 0.0):
        super().__init__()
        E, KV = cfg.embd, cfg.kv_heads * cfg.head_dim
        self.drop = nn.Dropout(dropout)
        lin = BitLinear if bitnet else (lambda i, o: nn.Linear(i, o, bias=False))
        self.cfg, self.bitnet = cfg, bitnet
        self.attn_norm = RMSNorm(E, cfg.eps)
        self.wq, self.wk, self.wv, self.wo = lin(E, E), lin(E, KV), lin(E, KV), lin(E, E)
        self.ffn_norm = RMSNorm(E, cfg.eps)
        self.gate, self.up, self.down = lin(E, cfg.ff), lin(E, cfg.ff), lin(cfg.ff, E)
        if bitnet:
            self.attn_sub_norm = RMSNorm(E, cfg.eps)
            self.ffn_sub_norm = RMSNorm(cfg.ff, cfg.eps)

    def forward(self, h, cos, sin):
        cfg = self.cfg
        B, T, E = h.shape
        x = self.attn_norm(h)
        q = self.wq(x).view(B, T, cfg.heads, cfg.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        rope = rope_neox if self.bitnet else rope_norm
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           enable_gqa=cfg.kv_heads != cfg.heads)
        a = a.transpose(1, 2).reshape(B, T, E)
        if self.bitnet:
            a = self.attn_sub_norm(a)
        h = h + self.drop(self.wo(a))
        x = self.ffn_norm(h)
        g = F.silu(self.gate(x)) * self.up(x)
        if self.bitnet:
            g = self.ffn_sub_norm(g)
        return h + self.drop(self.down(g))


class LM(nn.Module):
    def __init__(self, cfg: Config, bitnet: bool, dropout: float = 0.0):
        super().__init__()
        self.cfg, self.bitnet = cfg, bitnet
        self.tok_embd = nn.Embedding(cfg.vocab, cfg.embd)
        nn.init.normal_(self.tok_embd.weight, std=0.02 if not bitnet else 1.0 / math.sqrt(cfg.embd))
        self.blocks = nn.ModuleList([Block(cfg, bitnet, dropout) for _ in range(cfg.layers)])
        self.output_norm = RMSNorm(cfg.embd, cfg.eps)
        if not bitnet:
            for b in self.blocks:
                for m in (b.wo, b.down):
                    nn.init.normal_(m.weight, std=0.02 / math.sqrt(2 * cfg.layers))

    def forward(self, idx):
        T = idx.shape[1]
        cos, sin = rope_tables(self.cfg, T, idx.device)
        h = self.tok_embd(idx)
        for b in self.blocks:
            h = b(h, cos, sin)
        h = self.output_norm(h)
        return h @ self.tok_embd.weight.to(h.dtype).t()

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def export_tensors(model: LM) -> dict:
    """Everything the GGUF export needs, as numpy arrays: BitLinear weights become
    `<name>.ternary` (int8 -1/0/+1) and `<name>.scale` (f16-exact float), the rest stays float."""
    import numpy as np
    out = {}
    for mname, mod in model.named_modules():
        if isinstance(mod, BitLinear):
            t, s = mod.ternary()
            out[mname + ".weight.ternary"] = t.cpu().numpy()
            out[mname + ".weight.scale"] = np.float32(s)
    for pname, p in model.named_parameters():
        if pname.endswith(".weight") and pname + ".ternary" in out:
            continue
        out[pname] = p.detach().float().cpu().numpy()
    return out


def save_compact(model: LM, path: str, extra: dict | None = None) -> None:
    """A small checkpoint for export: ternary weights packed 4 per byte, embeddings and float
    linears as f16, norms f32 (fits the device's 16 MiB file limit)."""
    import numpy as np
    tensors = {}
    for k, v in export_tensors(model).items():
        if k.endswith(".ternary"):
            codes = (v.reshape(-1) + 1).astype(np.uint8)
            codes = np.pad(codes, (0, (-codes.size) % 4)).reshape(-1, 4)
            packed = codes[:, 0] | (codes[:, 1] << 2) | (codes[:, 2] << 4) | (codes[:, 3] << 6)
            tensors[k] = {"packed": torch.from_numpy(packed.astype(np.uint8)), "shape": list(v.shape)}
        elif k.endswith(".scale"):
            tensors[k] = float(v)
        elif v.ndim >= 2:
            tensors[k] = torch.from_numpy(v.astype(np.float16))
        else:
            tensors[k] = torch.from_numpy(v.astype(np.float32))
    torch.save({"config": model.cfg.to_dict(), "bitnet": model.bitnet, "tensors": tensors, **(extra or {})}, path)


def load_compact(path: str) -> tuple[Config, bool, dict]:
    """Inverse of save_compact: (config, bitnet, export_tensors-style dict)."""
    import numpy as np
    ck = torch.load(path, map_location="cpu")
    out = {}
    for k, v in ck["tensors"].items():
        if k.endswith(".ternary"):
            p = v["packed"].numpy()
            codes = np.stack([(p >> s) & 3 for s in (0, 2, 4, 6)], 1).reshape(-1)
            n = int(np.prod(v["shape"]))
            out[k] = (codes[:n].astype(np.int8) - 1).reshape(v["shape"])
        elif k.endswith(".scale"):
            out[k] = np.float32(v)
        else:
            out[k] = v.float().numpy()
    return Config(**ck["config"]), ck["bitnet"], out
