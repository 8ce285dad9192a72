#!/usr/bin/env python3
"""Serving benchmark: N concurrent streams against the real HTTP servers.

For each N it starts `shard-oracle --parallel N` and, when given, llama.cpp's own
`llama-server -np N` (continuous batching) on the same GGUF file and thread count, one after
the other, and runs N streamed completions at once with prompts of mixed length (about 16 to
400 tokens). It prints, per server and N: aggregate generated tokens per second (wall clock
from the first request to the last token; N = 1 serves the same mix of prompt lengths one
request after another), time to first token and inter-token latency
(p50 and p99 over every stream), and the ratio shard / llama-server.

    tools/bench/bench_serve.py --model models/shard-target-bitnet-tq2_0.gguf \\
        --shard-oracle target/release/shard-oracle --llama-server ~/.cache/shard/llama.cpp/bin/llama-server

Tokens are counted as streamed chunks (both servers send one per generated token).
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

TEXT = (
    "The river wound through the valley, past farms and mills, until it reached the old town "
    "where the bridge had stood for three hundred years. Merchants crossed it every morning with "
    "carts of grain and wool, and children ran along its parapet while their parents argued about "
    "prices in the square. "
)


def prompt_of(words: int, i: int) -> str:
    base = (f"Story {i}. " + TEXT * 40).split()
    return " ".join(base[:words])


# Prompt lengths in words, cycled over the streams: short chats to long contexts.
PROMPT_WORDS = [12, 60, 150, 300]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, path: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become healthy")


def one_stream(port: int, model: str, prompt: str, max_tokens: int, extra: dict, out: list, start: threading.Event):
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    body.update(extra)
    start.wait()
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        out.append({"error": f"{r.status} {r.read()[:200]!r}"})
        return
    times = []
    for raw in r:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            ev = json.loads(data)
        except json.JSONDecodeError:
            continue
        choices = ev.get("choices") or []
        if choices and choices[0].get("text") is not None and choices[0].get("finish_reason") is None:
            times.append(time.perf_counter())
    out.append({"t0": t0, "times": times})


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    k = max(1, min(len(v), int(-(-q * len(v) // 1))))
    return v[k - 1]


def served_model(port: int) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/v1/models")
    return json.loads(c.getresponse().read())["data"][0]["id"]


def run_load(port: int, model: str, n: int, max_tokens: int, extra: dict, first: int = 0) -> list:
    """N streams at once; stream i gets the prompt length PROMPT_WORDS[(first + i) % 4]."""
    results: list = []
    start = threading.Event()
    threads = [
        threading.Thread(
            target=one_stream,
            args=(port, model, prompt_of(PROMPT_WORDS[(first + i) % len(PROMPT_WORDS)], i), max_tokens, extra,
                  results, start),
        )
        for i in range(n)
    ]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"{len(errors)} streams failed: {errors[0]}")
    return results


def measure(port: int, model: str, n: int, max_tokens: int, extra: dict) -> dict:
    """Aggregate figures for N streams. One stream runs the same mix of prompt lengths as the
    others, one request after another, so that N = 1 is the same work served one at a time."""
    rounds = [run_load(port, model, 1, max_tokens, extra, first=k) for k in range(len(PROMPT_WORDS))] if n == 1 \
        else [run_load(port, model, n, max_tokens, extra)]
    tokens = sum(len(r["times"]) for rs in rounds for r in rs)
    wall = sum(max(r["times"][-1] for r in rs if r["times"]) - min(r["t0"] for r in rs) for rs in rounds)
    results = [r for rs in rounds for r in rs]
    ttft = [(r["times"][0] - r["t0"]) * 1e3 for r in results if r["times"]]
    itl = [(b - a) * 1e3 for r in results for a, b in zip(r["times"], r["times"][1:])]
    return {
        "tokens": tokens,
        "tok_s": tokens / wall,
        "ttft_p50": pct(ttft, 0.5),
        "ttft_p99": pct(ttft, 0.99),
        "itl_p50": pct(itl, 0.5),
        "itl_p99": pct(itl, 0.99),
    }


def start_shard(binary: str, model: str, n: int, threads: int, ctx: int, extra_args):
    port = free_port()
    state = tempfile.mkdtemp(prefix="shard-bench-serve-")
    args = [binary, "--model", model, "--port", str(port), "--threads", str(threads), "--parallel", str(n),
            "--queue-capacity", "256", "--max-requests-per-client", "256", "--no-p2p", "--state-dir", state, "-c", str(ctx)] + extra_args
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "SHARD_LOG": "warn"})
    wait_healthy(port, proc, "/health")
    return proc, port


def start_llama(binary: str, model: str, n: int, threads: int, ctx: int):
    port = free_port()
    args = [binary, "-m", model, "--port", str(port), "-t", str(threads), "-tb", str(threads), "-np", str(n),
            "-c", str(ctx * n), "-cb", "-ngl", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(port, proc, "/health")
    return proc, port


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--shard-oracle", default="target/release/shard-oracle")
    ap.add_argument("--llama-server", help="llama.cpp's llama-server binary (omit to run shard alone)")
    ap.add_argument("--streams", default="1,4,8,16,32")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=1024, help="context per stream")
    ap.add_argument("--shard-args", default="", help="extra shard-oracle arguments")
    ap.add_argument("--prompt-words", default=",".join(map(str, PROMPT_WORDS)),
                    help="prompt lengths in words, cycled over the streams")
    a = ap.parse_args()
    PROMPT_WORDS[:] = [int(w) for w in a.prompt_words.split(",")]
    name = os.path.basename(a.model)
    print(f"# serving: {name}, {a.threads} threads, {a.max_tokens} tokens per stream, prompts of "
          f"{PROMPT_WORDS} words cycled; tok/s is generated tokens over wall time, all streams together")
    print()
    print("| N | server | tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | shard/llama tok/s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    one_stream_rate = None
    for n in [int(x) for x in a.streams.split(",")]:
        rows = []
        proc, port = start_shard(a.shard_oracle, a.model, n, a.threads, a.ctx, a.shard_args.split())
        try:
            model = served_model(port)
            run_load(port, model, 1, 4, {})  # warm up
            rows.append(("shard", measure(port, model, n, a.max_tokens, {})))
        finally:
            stop(proc)
        if a.llama_server:
            proc, port = start_llama(a.llama_server, a.model, n, a.threads, a.ctx)
            try:
                model = served_model(port)
                run_load(port, model, 1, 4, {"ignore_eos": True})
                rows.append(("llama-server", measure(port, model, n, a.max_tokens, {"ignore_eos": True})))
            finally:
                stop(proc)
        ratio = f"{rows[0][1]['tok_s'] / rows[1][1]['tok_s']:.2f}" if len(rows) == 2 else ""
        for server, r in rows:
            print(f"| {n} | {server} | {r['tok_s']:.1f} | {r['ttft_p50']:.0f} | {r['ttft_p99']:.0f} | "
                  f"{r['itl_p50']:.1f} | {r['itl_p99']:.1f} | {ratio if server == 'shard' else ''} |", flush=True)
        if n == 1:
            one_stream_rate = rows[0][1]["tok_s"]
        elif one_stream_rate:
            print(f"|  | shard {n} streams / 1 stream | {rows[0][1]['tok_s'] / one_stream_rate:.2f}× |  |  |  |  |  |",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
