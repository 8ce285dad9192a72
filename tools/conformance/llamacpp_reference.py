"""Records llama.cpp's view of a GGUF file as a JSON fixture: tokens, top-5 logprobs, greedy text.

Shard's conformance test (tests/tests/conformance.rs) asks the running Oracle for
`/v1/completions` with `echo` and `logprobs=5` and compares against this fixture. The fixture
is committed; this script regenerates it. It drives llama.cpp through `Llama.eval()` and
`Llama.scores` (row i holds the distribution that predicts token i + 1), not through
llama-cpp-python's server, whose echo logprobs are shifted by one position.

With `--self-noise`, each model is evaluated a second time one token at a time (n_batch 1),
and the change in the top-5 logprobs against the batched pass is recorded, largest and per
position: how far llama.cpp's output moves under rounding-order changes alone. The fixture also
records llama.cpp's `system_info` (the SIMD features it was built for).

Usage:
  python tools/conformance/llamacpp_reference.py MODEL.gguf [MODEL2.gguf ...] --out FIXTURE.json [--self-noise]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

import numpy as np
import llama_cpp
from llama_cpp import Llama

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. In the beginning God created the heaven and the earth.",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "Numbers 1234567 and symbols: {\"key\": [1, 2.5]}  tabs\tand\nnewlines — café naïve 日本",
]
# Strings whose tokenization (special tokens parsed, no BOS) is recorded too: whitespace runs,
# digits, punctuation, contractions, accents, CJK, emoji, code, control-token text.
TOKENIZE = [
    "Hello world", " leading space", "trailing space ", "  two  spaces  ", "\t\ttabs\tand\nnew\n\nlines\r\n",
    "It's we'll they're I'd you've", "UPPER lower MiXeD", "3.14159 2,718 1e-10 12345678901234567890",
    "naïve café résumé Zürich", "日本語のテキスト", "emoji 🎉🚀 mixed", "fn main() { println!(\"{}\", x); }",
    "<|im_start|>system\nhi<|im_end|>", "<|im_start|> not special when glued<|im_end|>x", "a" * 100,
    "!!!???...", "x\u00a0y\u2009z", "Mr. O'Neil's dog-eat-dog world.",
]
TOP_N = 5
GREEDY_TOKENS = 16


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log_softmax(rows: np.ndarray) -> np.ndarray:
    m = rows.max(axis=1, keepdims=True)
    return rows - m - np.log(np.exp(rows - m).sum(axis=1, keepdims=True))


def top_distances(lp: np.ndarray, case: dict) -> list:
    """Per position, the largest |Δ| between `lp`'s row and a recorded case (token logprob and
    top-5, by rank). Entry i - 1 is the row predicting token i."""
    out = []
    for i, pos in enumerate(case["positions"][1:], 1):
        row = lp[i - 1]
        top = np.sort(row)[::-1][:TOP_N]
        out.append(float(max(abs(row[case["tokens"][i]] - pos["token_logprob"]), *(abs(a - b[1]) for a, b in zip(top, pos["top"])))))
    return out


def self_noise(path: str, cases: list) -> float:
    """How far llama.cpp's own top-5 logprobs move when the prompt is evaluated token by token.
    Each case also gets `self_noise_by_position`, so a test can see where the movement is."""
    llm = Llama(path, logits_all=True, verbose=False, n_ctx=512, n_batch=1, n_ubatch=1, n_threads=os.cpu_count() or 2, seed=1)
    worst = 0.0
    for case in cases:
        llm.reset()
        llm.eval(case["tokens"])
        by_position = top_distances(log_softmax(np.array(llm.scores[: len(case["tokens"])], dtype=np.float64)), case)
        case["self_noise_by_position"] = by_position
        worst = max(worst, *by_position)
    return worst


def reference(path: str, noise: bool = False) -> dict:
    llm = Llama(path, logits_all=True, verbose=False, n_ctx=512, n_threads=os.cpu_count() or 2, seed=1)
    cases = []
    for prompt in PROMPTS:
        llm.reset()
        tokens = llm.tokenize(prompt.encode(), add_bos=llm._model.add_bos_token(), special=True)
        llm.eval(tokens)
        lp = log_softmax(np.array(llm.scores[: len(tokens)], dtype=np.float64))
        positions = [None]
        for i in range(1, len(tokens)):
            row = lp[i - 1]
            top = np.argsort(-row)[:TOP_N]
            positions.append({
                "token_logprob": float(row[tokens[i]]),
                "top": [[int(t), float(row[t])] for t in top],
            })
        # Greedy continuation: argmax of the last row, then one token at a time, with the top
        # logprobs of every step (so a test can tell a near-tie from a real divergence).
        greedy, greedy_top = [], []
        row = lp[len(tokens) - 1]
        for _ in range(GREEDY_TOKENS):
            nxt = int(np.argmax(row))
            greedy.append(nxt)
            greedy_top.append([[int(t), float(row[t])] for t in np.argsort(-row)[:TOP_N]])
            llm.eval([nxt])
            row = log_softmax(np.array([llm.scores[llm.n_tokens - 1]], dtype=np.float64))[0]
        cases.append({
            "prompt": prompt, "tokens": [int(t) for t in tokens], "positions": positions,
            "greedy": greedy, "greedy_top": greedy_top,
        })
    tokenization = [{"text": t, "tokens": [int(x) for x in llm.tokenize(t.encode(), add_bos=False, special=True)]} for t in TOKENIZE]
    out = {"file": os.path.basename(path), "sha256": sha256(path), "top_n": TOP_N, "cases": cases, "tokenization": tokenization}
    if noise:
        out["self_noise_n_batch_1"] = self_noise(path, cases)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--self-noise", action="store_true", help="also record llama.cpp's batched vs token-by-token distance")
    a = p.parse_args()
    # llama.cpp picks its SIMD code for the CPU it was built on, and quantized kernels round
    # differently on AVX2 and AVX-512, so the host's features are part of the record.
    out = {
        "generator": "llama-cpp-python " + __import__("llama_cpp").__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "models": [reference(m, a.self_noise) for m in a.models],
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
