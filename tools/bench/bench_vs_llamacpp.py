"""Shard against llama.cpp on the same GGUF file, in one run, printed side by side.

Measures, for each engine with the same thread count:
  * decode tokens/s (greedy, one token per forward pass, after a context);
  * the time of one forward pass of k = 1, 2, 4, 8, 9 new tokens after that context, rolled
    back each time: the cost of verifying k drafted tokens (9: k = 8 drafted plus the next);
  * Shard's memory bound: the weight bytes a token reads over the read bandwidth measured in
    the same run (`shard-bench model`), and each engine's decode speed as a share of it.
llama.cpp runs through llama-cpp-python (`Llama.eval`); Shard through `shard-bench model`.

Usage: python tools/bench/bench_vs_llamacpp.py MODEL.gguf --shard-bench PATH [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np
from llama_cpp import Llama


def bench_llamacpp(model: str, threads: int, context: int, decode: int, reps: int) -> dict:
    t0 = time.perf_counter()
    n_ctx = context + decode + 16
    # llama-cpp-python keeps `n_batch` rows of scores without `logits_all`, and indexes them by
    # position: a batch as long as the context keeps the last position's row in range.
    llm = Llama(model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=max(512, n_ctx),
                n_ubatch=512, logits_all=False, verbose=False, use_mmap=True)
    load = time.perf_counter() - t0
    n_vocab = llm.n_vocab()
    prompt = [(i * 7919 + 13) % n_vocab for i in range(context)]
    t = time.perf_counter()
    llm.eval(prompt)
    prompt_time = time.perf_counter() - t

    forward_ms = {}
    for k in (1, 2, 4, 8, 9):
        toks = [(i * 31 + 5) % n_vocab for i in range(k)]
        times = []
        for _ in range(reps + 1):
            t = time.perf_counter()
            llm.eval(toks)
            times.append(time.perf_counter() - t)
            llm._ctx.kv_cache_seq_rm(-1, context, -1)
            llm.n_tokens = context
        forward_ms[str(k)] = statistics.median(times[1:]) * 1e3

    t = time.perf_counter()
    for _ in range(decode):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([nxt])
    decode_time = time.perf_counter() - t
    return {"engine": "llama.cpp", "threads": threads, "load_s": load, "prompt_tok_s": context / prompt_time,
            "decode_tok_s": decode / decode_time, "forward_ms": forward_ms}


def bench_shard(binary: str, model: str, threads: int, context: int, decode: int, reps: int, extra: list) -> dict:
    out = subprocess.run([binary, "--threads", str(threads), "--json", "model", model, "--context", str(context),
                          "--decode", str(decode), "--reps", str(reps), *extra], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--shard-bench", required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--kernel", help="shard's kernel (default: the fastest this CPU has)")
    p.add_argument("--shard-args", default="", help="more arguments for `shard-bench model`")
    a = p.parse_args()
    ours = bench_shard(a.shard_bench, a.model, a.threads, a.context, a.decode, a.reps,
                       ([f"--kernel={a.kernel}"] if a.kernel else []) + a.shard_args.split())
    try:
        ref = bench_llamacpp(a.model, a.threads, a.context, a.decode, a.reps)
    except ValueError as e:  # llama.cpp cannot read I2_S
        print(f"llama.cpp cannot load {a.model} ({e}); shard only")
        ref = None
    print(f"model: {a.model}\nthreads: {a.threads}, context: {a.context} tokens, decode: {a.decode} tokens, "
          f"median of {a.reps} for k-token passes; shard kernel: {ours.get('kernel')} {a.shard_args}\n")
    na = float("nan")
    r = ref or {"decode_tok_s": na, "prompt_tok_s": na, "forward_ms": {k: na for k in ours["forward_ms"]}}
    print(f"| {'metric':<28} | {'llama.cpp':>12} | {'shard':>12} | {'shard / llama.cpp':>18} |")
    print(f"|{'-' * 30}|{'-' * 14}|{'-' * 14}|{'-' * 20}|")
    print(f"| {'decode tok/s (higher=better)':<28} | {r['decode_tok_s']:>12.2f} | {ours['decode_tok_s']:>12.2f} | "
          f"{ours['decode_tok_s'] / r['decode_tok_s']:>17.2f}x |")
    b = ours["bound_tok_s"]
    print(f"| {'share of the memory bound':<28} | {r['decode_tok_s'] / b:>11.0%} | {ours['decode_tok_s'] / b:>11.0%} | "
          f"{'':>18} |")
    print(f"| {'prompt tok/s (higher=better)':<28} | {r['prompt_tok_s']:>12.2f} | {ours['prompt_tok_s']:>12.2f} | "
          f"{ours['prompt_tok_s'] / r['prompt_tok_s']:>17.2f}x |")
    for k in ("1", "2", "4", "8", "9"):
        rk, o = r["forward_ms"][k], ours["forward_ms"][k]
        print(f"| {'forward k=' + k + ' ms (lower=better)':<28} | {rk:>12.2f} | {o:>12.2f} | {rk / o:>16.2f}x speed |")
    for name, res in (("llama.cpp", ref), ("shard", ours)):
        if res is None:
            continue
        f = res["forward_ms"]
        print(f"\n{name}: k=8 pass costs {f['8'] / f['1']:.2f}x a k=1 pass, a 9-token pass (verify k=8) {f['9'] / f['1']:.2f}x",
              end="")
    print()
    print(f"memory bound: {ours['weight_bytes_per_token'] / 1e6:.0f} MB of weights per token at "
          f"{ours['read_bandwidth_gb_s']:.1f} GB/s read ({a.threads} threads) = {ours['bound_tok_s']:.2f} tok/s")

if __name__ == "__main__":
    main()
