"""Exports the trained pair to GGUF: the target as llama.cpp `bitnet` in TQ2_0 (and I2_S via
tools/ggufx.py), the draft as llama.cpp `llama` in F16. Both carry the same gpt2-style BPE
tokenizer (tokenizer.ggml.*) and chat template.

Usage: python export_gguf.py --run CACHE/run --tokenizer CACHE/tok/tokenizer.json --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as QT
from gguf.quants import quantize

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from model import LM, Config, export_tensors, load_compact  # noqa: E402

TARGET_NAME = "shard-target-bitnet-tq2_0.gguf"
TARGET_I2S_NAME = "shard-target-bitnet-i2_s.gguf"
DRAFT_NAME = "shard-draft-llama-f16.gguf"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
SPECIAL_IDS = {"bos": 0, "eos": 1}


def add_tokenizer(w: gguf.GGUFWriter, tokenizer_json: str) -> None:
    with open(tokenizer_json, encoding="utf-8") as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    special = {a["id"] for a in tj["added_tokens"] if a["special"]}
    for a in tj["added_tokens"]:
        if a["id"] >= len(tokens):
            tokens.extend([None] * (a["id"] + 1 - len(tokens)))
        tokens[a["id"]] = a["content"]
    assert all(t is not None for t in tokens)
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(SPECIAL_IDS["bos"])
    w.add_eos_token_id(SPECIAL_IDS["eos"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)


def add_hparams(w: gguf.GGUFWriter, cfg: Config) -> None:
    w.add_vocab_size(cfg.vocab)
    w.add_context_length(cfg.ctx)
    w.add_embedding_length(cfg.embd)
    w.add_block_count(cfg.layers)
    w.add_feed_forward_length(cfg.ff)
    w.add_head_count(cfg.heads)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_layer_norm_rms_eps(cfg.eps)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_rope_dimension_count(cfg.head_dim)


def load(run: str, name: str) -> tuple[Config, dict]:
    """Tensors of `name` (target or draft) from RUN/name_q.pt (compact) or RUN/name.pt (full)."""
    compact = os.path.join(run, f"{name}_q.pt")
    if os.path.exists(compact):
        cfg, _, tensors = load_compact(compact)
        return cfg, tensors
    ck = torch.load(os.path.join(run, f"{name}.pt"), map_location="cpu")
    m = LM(Config(**ck["config"]), bitnet=name == "target")
    m.load_state_dict(ck["state"])
    return m.cfg, export_tensors(m)


LINEAR_NAMES = [("wq", "attn_q"), ("wk", "attn_k"), ("wv", "attn_v"), ("wo", "attn_output"),
                ("gate", "ffn_gate"), ("up", "ffn_up"), ("down", "ffn_down")]


def begin(path: str, arch: str, name: str, description: str, ftype, cfg: Config, tokenizer_json: str,
          tensors: dict) -> gguf.GGUFWriter:
    w = gguf.GGUFWriter(path, arch)
    w.add_name(name)
    w.add_description(description)
    w.add_file_type(ftype)
    add_hparams(w, cfg)
    add_tokenizer(w, tokenizer_json)
    w.add_tensor("token_embd.weight", tensors["tok_embd.weight"].astype(np.float16))
    w.add_tensor("output_norm.weight", tensors["output_norm.weight"].astype(np.float32))
    return w


def finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def export_target(cfg: Config, tensors: dict, tokenizer_json: str, path: str) -> None:
    for n in (cfg.embd, cfg.ff):
        assert n % 256 == 0, "TQ2_0 rows must be a multiple of 256"
    w = begin(path, "bitnet", "shard-target-bitnet",
              "Shard default target: BitNet b1.58 (ternary, quantization-aware) trained on the Brown corpus "
              "and the King James Bible", gguf.LlamaFileType.MOSTLY_TQ2_0, cfg, tokenizer_json, tensors)
    for i in range(cfg.layers):
        b, p = f"blocks.{i}.", f"blk.{i}."
        for norm in ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm"):
            w.add_tensor(p + norm + ".weight", tensors[b + norm + ".weight"].astype(np.float32))
        for attr, name in LINEAR_NAMES:
            t = tensors[b + attr + ".weight.ternary"].astype(np.float32)
            s = np.float32(tensors[b + attr + ".weight.scale"])
            assert np.float16(s) == s
            w.add_tensor(p + name + ".weight", quantize(t * s, QT.TQ2_0), raw_dtype=QT.TQ2_0)
    finish(w)


def export_draft(cfg: Config, tensors: dict, tokenizer_json: str, path: str) -> None:
    w = begin(path, "llama", "shard-draft-llama",
              "Shard default draft: a small llama distilled from the Shard BitNet target",
              gguf.LlamaFileType.MOSTLY_F16, cfg, tokenizer_json, tensors)
    for i in range(cfg.layers):
        b, p = f"blocks.{i}.", f"blk.{i}."
        for norm in ("attn_norm", "ffn_norm"):
            w.add_tensor(p + norm + ".weight", tensors[b + norm + ".weight"].astype(np.float32))
        for attr, name in LINEAR_NAMES:
            w.add_tensor(p + name + ".weight", tensors[b + attr + ".weight"].astype(np.float16))
    finish(w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    tpath = os.path.join(a.out, TARGET_NAME)
    export_target(*load(a.run, "target"), a.tokenizer, tpath)
    export_draft(*load(a.run, "draft"), a.tokenizer, os.path.join(a.out, DRAFT_NAME))
    from ggufx import convert_tq2_to_i2s  # tools/ggufx.py
    convert_tq2_to_i2s(tpath, os.path.join(a.out, TARGET_I2S_NAME))
    for n in (TARGET_NAME, TARGET_I2S_NAME, DRAFT_NAME):
        print(f"{n}: {os.path.getsize(os.path.join(a.out, n)) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
