"""Trains Shard's byte-level BPE tokenizer and turns the corpus into token streams.

Special tokens (control tokens in the GGUF):
  0 <|endoftext|>   BOS, and the separator between documents
  1 <|end|>         EOS: ends a chat turn
  2 <|system|>, 3 <|user|>, 4 <|assistant|>   chat roles

Chat format (the GGUF's chat template renders exactly this, after the BOS):
  <|user|>{opening of a passage}<|end|><|assistant|>{its continuation}<|end|>
  <|user|>{opening of a later passage}<|end|><|assistant|>{its continuation}<|end|> ...
The corpus has no dialogue, so training mixes in such conversations, cut from training
documents: one to five turns, each turn's passage taken further along the same document, so
that a reply follows the whole conversation, and a chat request is answered with corpus-like
text. (The first pair was trained on single turns only, and fell apart on a second turn.)

Outputs under CACHE/tok/: tokenizer.json, train.npy, heldout.npy (uint16 streams),
heldout_prompts.json (plain-text prompts cut from held-out documents).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
BOS, EOS, SYSTEM, USER, ASSISTANT = range(5)
CHAT_FRACTION = 0.2    # share of training tokens in chat-formatted conversations
# Turns per conversation and their weights: most conversations run past the first turn.
TURNS, TURN_WEIGHTS = [1, 2, 3, 4, 5], [3, 3, 2, 1, 1]
CHAT_MAX_TOKENS = 512  # the models' context: a conversation never spans more
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are Shard, a small language model.",
    "Continue the passage.",
    "You are a helpful assistant. Answer briefly.",
]
SEED = 4321


def load(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def train_tokenizer(texts: list[str], vocab: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, min_frequency=2, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


SENT = re.compile(r"(?<=[.!?;:])\s+")


def chat_turn(sents: list[str], start: int, rng: random.Random, words_max: int = 90) -> tuple[str, str, int] | None:
    """A user turn holding the opening of a passage (sentences from `start`) and an assistant
    turn continuing it; also the index of the first sentence not used."""
    if len(sents) - start < 3:
        return None
    n_user = rng.choice([1, 1, 2])
    user = " ".join(sents[start:start + n_user])
    reply, words, end = [], 0, start + n_user
    target = rng.randint(min(30, words_max // 3), words_max)
    for s in sents[start + n_user:]:
        reply.append(s)
        end += 1
        words += len(s.split())
        if words >= target:
            break
    if rng.random() < 0.2:  # sometimes a bare fragment instead of whole sentences
        cut = user.split()
        if len(cut) > 6:
            k = rng.randint(3, len(cut) - 2)
            user, reply = " ".join(cut[:k]), cut[k:] + reply
    return user, " ".join(reply), end


def conversation(text: str, rng: random.Random) -> list[tuple[str, str]]:
    """One to five (user, assistant) turns from one document, in the document's order: each
    turn picks up a little further along, as a conversation moves on."""
    sents = [x for para in text.split("\n") if len(para) > 200 for x in SENT.split(para)]
    if len(sents) < 3:
        return []
    n_turns = rng.choices(TURNS, TURN_WEIGHTS)[0]
    i = rng.randrange(0, max(1, len(sents) - 12))
    # Longer conversations get shorter replies, so that most of them fit the context.
    words_max = {1: 90, 2: 70, 3: 50}.get(n_turns, 40)
    turns = []
    while len(turns) < n_turns:
        t = chat_turn(sents, i, rng, words_max)
        if t is None:
            break
        turns.append(t[:2])
        i = t[2] + rng.choice([0, 0, 1, 2])
    return turns


def encode_docs(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch(texts)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True)
    p.add_argument("--vocab", type=int, default=6144)
    a = p.parse_args()
    rng = random.Random(SEED)
    train = load(os.path.join(a.cache, "corpus", "train.jsonl"))
    held = load(os.path.join(a.cache, "corpus", "heldout.jsonl"))
    out = os.path.join(a.cache, "tok")
    os.makedirs(out, exist_ok=True)

    tok = train_tokenizer([d["text"] for d in train], a.vocab)
    tok.save(os.path.join(out, "tokenizer.json"))
    assert [tok.token_to_id(s) for s in SPECIALS] == list(range(5))

    docs = encode_docs(tok, [d["text"] for d in train])
    n_plain = sum(len(d) + 1 for d in docs)
    # Chat samples until they make up CHAT_FRACTION of the stream.
    chats: list[list[int]] = []
    n_chat = 0
    turn_counts = [0] * (len(TURNS) + 1)
    while n_chat < CHAT_FRACTION / (1 - CHAT_FRACTION) * n_plain:
        turns = conversation(rng.choice(train)["text"], rng)
        if not turns:
            continue
        ids = [BOS]
        if rng.random() < 0.1:
            ids += [SYSTEM] + tok.encode(rng.choice(SYSTEM_PROMPTS)).ids + [EOS]
        kept = 0
        for user, reply in turns:
            turn = [USER] + tok.encode(user).ids + [EOS, ASSISTANT] + tok.encode(reply).ids + [EOS]
            if kept and len(ids) + len(turn) > CHAT_MAX_TOKENS:
                break  # the web app keeps the most recent turns that fit; train on what fits
            ids += turn
            kept += 1
        turn_counts[kept] += 1
        chats.append(ids)
        n_chat += len(ids)
    seqs = [[BOS] + d for d in docs] + chats
    rng.shuffle(seqs)
    stream = np.array([t for s in seqs for t in s], dtype=np.uint16)
    np.save(os.path.join(out, "train.npy"), stream)

    held_stream = np.array([t for d in encode_docs(tok, [d["text"] for d in held]) for t in [BOS] + d],
                           dtype=np.uint16)
    np.save(os.path.join(out, "heldout.npy"), held_stream)

    # Prompts for generations / acceptance: openings of held-out passages.
    prompts = []
    for d in held:
        for para in d["text"].split("\n"):
            words = para.split()
            if len(words) >= 40:
                prompts.append({"source": d["source"], "text": " ".join(words[:12]),
                                "reference": " ".join(words[12:40])})
    with open(os.path.join(out, "heldout_prompts.json"), "w") as f:
        json.dump(prompts, f, indent=1)
    chars = sum(len(d["text"]) for d in train)
    print(f"conversations by turns: {dict((n, c) for n, c in enumerate(turn_counts) if c)}")
    print(f"vocab {tok.get_vocab_size()}; train {len(stream)} tokens ({n_chat} in {len(chats)} chat samples), "
          f"{chars / n_plain:.2f} chars/token; held-out {len(held_stream)} tokens; {len(prompts)} prompts")


if __name__ == "__main__":
    main()
