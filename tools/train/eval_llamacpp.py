"""Evaluates the exported pair with llama.cpp (PyPI llama-cpp-python) and records fixtures.

  * tokenizer check: llama.cpp's tokenization of every held-out document equals the
    `tokenizers` library's (and detokenizes back to the same text);
  * held-out perplexity: non-overlapping 512-token windows of the held-out token stream, each
    evaluated from an empty KV cache, first token of a window used only as context (the same
    protocol as train.py's figure);
  * greedy generations for five prompts, and a chat answer through the GGUF's chat template;
  * the draft's greedy acceptance rate against the target with k = 4 (see acceptance());
  * tests/fixtures/default-pair.json: sha256 of both files, 16-token greedy continuations.

Greedy tokens are always argmax(Llama.scores) after Llama.eval (never the server's logprobs).

Usage: python eval_llamacpp.py --models DIR --data CACHE/tok --corpus CACHE/corpus
                               --report OUT.json [--fixture tests/fixtures/default-pair.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time

import jinja2
import numpy as np
from llama_cpp import Llama
from tokenizers import Tokenizer

from export_gguf import DRAFT_NAME, TARGET_NAME

EVAL_WINDOW = 512
BOS, EOS = 0, 1
GEN_PROMPTS = [
    "In the beginning God created",
    "The jury said that the city",
    "And the LORD spake unto Moses, saying,",
    "The President told reporters",
    "She looked at him and",
]
FIXTURE_PROMPTS = ["In the beginning God created", "The jury said that the city"]
FIXTURE_CHAT = "Tell me about the king of Israel."
# The conversations of tests/tests/default_pair.rs (3 and 5 turns).
MULTI_TURN = [
    ["Tell me about the land of Egypt.", "And it came to pass", "What did the people say?"],
    ["The jury said that the city", "And it came to pass", "Tell me more.", "She looked at him and", "What happened next?"],
]


def open_model(path: str) -> Llama:
    return Llama(model_path=path, n_ctx=1024, n_batch=512, n_ubatch=512, logits_all=True,
                 verbose=False, seed=0)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def next_token(llm: Llama, ids: list[int]) -> int:
    """argmax of the logits after `ids`, reusing the KV cache's common prefix."""
    have = list(llm.input_ids[: llm.n_tokens])
    n = 0
    while n < min(len(have), len(ids)) and have[n] == ids[n]:
        n += 1
    n = min(n, len(ids) - 1)
    llm.n_tokens = n  # eval() drops the KV cache from here on
    llm.eval(ids[n:])
    return int(np.argmax(llm.scores[len(ids) - 1]))


def greedy(llm: Llama, ids: list[int], n: int, stop: int | None = None) -> list[int]:
    out = list(ids)
    for _ in range(n):
        t = next_token(llm, out)
        out.append(t)
        if t == stop:
            break
    return out[len(ids):]


def perplexity(llm: Llama, held: np.ndarray) -> tuple[float, int]:
    n = len(held) // EVAL_WINDOW
    total, count = 0.0, 0
    for i in range(n):
        w = held[i * EVAL_WINDOW:(i + 1) * EVAL_WINDOW].astype(np.int64).tolist()
        llm.reset()
        llm.eval(w[:-1])
        logits = np.asarray(llm.scores[: EVAL_WINDOW - 1], dtype=np.float64)
        m = logits.max(-1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(logits - m).sum(-1)))
        total += float((lse - logits[np.arange(EVAL_WINDOW - 1), w[1:]]).sum())
        count += EVAL_WINDOW - 1
    return total / count, count


def acceptance(target: Llama, draft: Llama, prompts: list[list[int]], k: int = 4, gen: int = 64) -> dict:
    """Greedy speculative decoding, simulated exactly: the target's greedy continuation G of
    each prompt is fixed; at position p the draft proposes k greedy tokens from G[:p]; the
    target accepts the longest prefix that matches G, then adds its own next token, so
    p advances by accepted + 1. Rate = accepted drafted tokens / drafted tokens."""
    acc = drafted = rounds = 0
    for ids in prompts:
        g = ids + greedy(target, ids, gen)
        p = len(ids)
        while p < len(g):
            prop = greedy(draft, g[:p], k)
            a = 0
            while a < k and p + a < len(g) and prop[a] == g[p + a]:
                a += 1
            acc += a
            drafted += k
            rounds += 1
            p += a + 1
    return {"k": k, "prompts": len(prompts), "generated_per_prompt": gen, "rounds": rounds,
            "drafted": drafted, "accepted": acc, "rate": acc / drafted,
            "tokens_per_target_pass": (acc + rounds) / rounds}


def render_chat(llm: Llama, messages: list[dict]) -> str:
    tmpl = llm.metadata["tokenizer.chat_template"]
    return jinja2.Template(tmpl).render(messages=messages, add_generation_prompt=True)


def chat_ids(llm: Llama, user: str) -> list[int]:
    return [BOS] + llm.tokenize(render_chat(llm, [{"role": "user", "content": user}]).encode(),
                                add_bos=False, special=True)


def text_of(llm: Llama, ids: list[int]) -> str:
    return llm.detokenize(ids, special=True).decode("utf-8", errors="replace")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--fixture", default=None)
    p.add_argument("--acceptance-prompts", type=int, default=60)
    a = p.parse_args()
    t0 = time.time()
    tpath, dpath = os.path.join(a.models, TARGET_NAME), os.path.join(a.models, DRAFT_NAME)
    target, draft = open_model(tpath), open_model(dpath)
    tok = Tokenizer.from_file(os.path.join(a.data, "tokenizer.json"))
    report: dict = {}

    # Tokenizer agreement.
    docs = [json.loads(l)["text"] for l in open(os.path.join(a.corpus, "heldout.jsonl"), encoding="utf-8")]
    docs.append("<|user|>Who was Moses?<|end|><|assistant|>And Moses said,<|end|>")
    mismatches = 0
    n_tok = 0
    for d in docs:
        ours = tok.encode(d).ids
        for llm in (target, draft):
            theirs = llm.tokenize(d.encode(), add_bos=False, special=True)
            if theirs != ours or llm.detokenize(theirs, special=True).decode() != d:
                mismatches += 1
        n_tok += len(ours)
    report["tokenizer"] = {"documents": len(docs), "tokens": n_tok, "mismatching_documents": mismatches}
    print("tokenizer:", report["tokenizer"], flush=True)

    held = np.load(os.path.join(a.data, "heldout.npy"))
    for name, llm in (("target", target), ("draft", draft)):
        nll, count = perplexity(llm, held)
        report[name] = {"file": os.path.basename(tpath if name == "target" else dpath),
                        "bytes": os.path.getsize(tpath if name == "target" else dpath),
                        "sha256": sha256(tpath if name == "target" else dpath),
                        "heldout_nll": nll, "heldout_ppl": math.exp(nll), "heldout_tokens": count}
        print(name, "llama.cpp held-out ppl", round(math.exp(nll), 3), flush=True)

    report["generations"] = []
    for prompt in GEN_PROMPTS:
        ids = [BOS] + target.tokenize(prompt.encode(), add_bos=False, special=False)
        row = {"prompt": prompt}
        for name, llm in (("target", target), ("draft", draft)):
            row[name] = text_of(llm, greedy(llm, ids, 40, stop=EOS))
        report["generations"].append(row)
        print(row, flush=True)
    chats = []
    for user in ["Tell me about the king of Israel.", "What did the jury say about the election?",
                 "Write about the sea."]:
        ids = chat_ids(target, user)
        out = greedy(target, ids, 80, stop=EOS)
        chats.append({"user": user, "assistant": text_of(target, [t for t in out if t != EOS])})
    report["chat"] = chats
    print(chats, flush=True)
    # Multi-turn: each greedy answer becomes history for the next turn, as the web app sends it.
    conversations = []
    for turns in MULTI_TURN:
        messages, shown = [], []
        for user in turns:
            messages.append({"role": "user", "content": user})
            ids = [BOS] + target.tokenize(render_chat(target, messages).encode(), add_bos=False, special=True)
            answer = text_of(target, [t for t in greedy(target, ids, 40, stop=EOS) if t != EOS])
            messages.append({"role": "assistant", "content": answer})
            shown.append({"user": user, "assistant": answer})
        conversations.append(shown)
    report["multi_turn"] = conversations
    print(conversations, flush=True)

    prompts_json = json.load(open(os.path.join(a.data, "heldout_prompts.json")))
    rng = np.random.default_rng(0)
    pick = rng.choice(len(prompts_json), size=min(a.acceptance_prompts, len(prompts_json)), replace=False)
    prompts = [[BOS] + target.tokenize(prompts_json[i]["text"].encode(), add_bos=False, special=False)
               for i in sorted(pick)]
    report["acceptance"] = acceptance(target, draft, prompts)
    print("acceptance", report["acceptance"], flush=True)

    if a.fixture:
        cases = []
        for prompt in FIXTURE_PROMPTS + [None]:
            if prompt is None:
                ids, kind, text = chat_ids(target, FIXTURE_CHAT), "chat", FIXTURE_CHAT
            else:
                ids = [BOS] + target.tokenize(prompt.encode(), add_bos=False, special=False)
                kind, text = "completion", prompt
            case = {"kind": kind, "prompt": text, "prompt_ids": ids}
            for name, llm in (("target", target), ("draft", draft)):
                out = greedy(llm, ids, 16)
                case[name] = {"ids": out, "text": text_of(llm, out)}
            cases.append(case)
        fixture = {
            "about": "Shard's default model pair: sha256 of the shipped GGUFs and llama.cpp greedy "
                     "continuations (argmax of Llama.scores after Llama.eval; prompt_ids include BOS). "
                     "Written by tools/train/eval_llamacpp.py.",
            "llama_cpp_python": __import__("llama_cpp").__version__,
            "target": {"path": f"models/{TARGET_NAME}", "sha256": report["target"]["sha256"],
                       "bytes": report["target"]["bytes"]},
            "draft": {"path": f"models/{DRAFT_NAME}", "sha256": report["draft"]["sha256"],
                      "bytes": report["draft"]["bytes"]},
            "bos_id": BOS, "eos_id": EOS, "n_predict": 16, "cases": cases,
        }
        with open(a.fixture, "w") as f:
            json.dump(fixture, f, indent=1)
            f.write("\n")
    report["seconds"] = round(time.time() - t0, 1)
    with open(a.report, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
