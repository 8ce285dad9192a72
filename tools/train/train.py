"""Trains Shard's default pair: the BitNet b1.58 target (quantization-aware), then the draft,
distilled from the target's logits. Time-bounded: each phase measures its step time and
sizes its cosine schedule to fit its budget of minutes.

Usage: python train.py --data CACHE/tok --out CACHE/run [--preset gpu|cpu] [--target-minutes M]
                       [--draft-minutes M] [--phase both|target|draft]
Writes OUT/target.pt, OUT/draft.pt (state dicts + configs) and OUT/train_report.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from model import LM, Config, save_compact

EVAL_WINDOW = 512   # held-out perplexity: non-overlapping windows of this many tokens
PRESETS = {
    # name: (target config, draft config, batch, seq, target lr, draft lr)
    "gpu": dict(target=dict(embd=512, layers=8, heads=8, kv_heads=4, ff=1536, ctx=1024),
                draft=dict(embd=256, layers=4, heads=4, kv_heads=2, ff=640, ctx=1024),
                batch=32, seq=1024, target_lr=2e-3, draft_lr=1.5e-3, dropout=0.1),
    "cpu": dict(target=dict(embd=256, layers=6, heads=4, kv_heads=2, ff=768, ctx=512),
                draft=dict(embd=256, layers=2, heads=4, kv_heads=2, ff=640, ctx=512),
                batch=4, seq=512, target_lr=1.5e-3, draft_lr=1e-3),
    "smoke": dict(target=dict(embd=256, layers=1, heads=4, kv_heads=2, ff=256, ctx=256),
                  draft=dict(embd=64, layers=1, heads=2, kv_heads=1, ff=128, ctx=256),
                  batch=4, seq=64, target_lr=2e-3, draft_lr=2e-3),
}


def batches(stream: np.ndarray, batch: int, seq: int, rng: np.random.Generator, device):
    while True:
        starts = rng.integers(0, len(stream) - seq - 1, size=batch)
        x = np.stack([stream[s:s + seq + 1] for s in starts]).astype(np.int64)
        t = torch.from_numpy(x).to(device, non_blocking=True)
        yield t[:, :-1], t[:, 1:]


@torch.no_grad()
def heldout_nll(model: LM, held: np.ndarray, device, fp32: bool = False, max_windows: int | None = None) -> float:
    """Mean NLL over non-overlapping EVAL_WINDOW-token windows; each window starts fresh and
    its first token is only context (the same protocol as eval_llamacpp.py)."""
    model.eval()
    n = (len(held) // EVAL_WINDOW) * EVAL_WINDOW
    w = torch.from_numpy(held[:n].astype(np.int64)).view(-1, EVAL_WINDOW).to(device)
    if max_windows:
        w = w[:max_windows]
    total, count = 0.0, 0
    for i in range(0, w.shape[0], 16):
        x = w[i:i + 16]
        with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda" and not fp32):
            logits = model(x[:, :-1]).float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
        count += x[:, 1:].numel()
    model.train()
    return total / count


def lr_at(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine to 10% as `progress` goes 0 -> 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, progress)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def train_phase(name, model, loss_fn, data, held, device, minutes, lr, log, teacher=None):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95),
                            fused=device.type == "cuda")
    budget = minutes * 60.0
    t0 = time.time()
    total, warmup = None, 100
    best = (float("inf"), None, 0)
    step = 0
    timing_start = None
    evals = 0
    while True:
        if total is None and step == 5:
            timing_start = time.time()
        if total is None and step == 25:
            per = (time.time() - timing_start) / 20
            total = max(50, int((budget - (time.time() - t0)) / per * 0.9) + step)
            warmup = min(300, total // 10)
            eval_every = max(25, total // (12 if device.type == "cuda" else 8))
            log(f"[{name}] {per * 1000:.1f} ms/step -> {total} steps")
        # Progress is the larger of steps done and time spent, so a machine that slows down
        # mid-run (shared CPU) still ends on time, with the schedule annealed.
        progress = 0.0 if total is None else max(step / total, (time.time() - t0) / budget)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress, lr, warmup if total else 100)
        x, y = next(data)
        with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        done = total is not None and (step >= total or time.time() - t0 >= budget)
        if total is not None and (step % eval_every == 0 or done):
            if done and step < total:
                log(f"[{name}] time budget reached at step {step} of {total}")
            nll = heldout_nll(model, held, device, max_windows=None if device.type == "cuda" else 40)
            evals += 1
            if nll < best[0]:
                best = (nll, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}, step)
            log(f"[{name}] step {step}/{total} loss {loss.item():.3f} held-out ppl {math.exp(nll):.2f} "
                f"({time.time() - t0:.0f}s)")
        if done:
            break
    model.load_state_dict(best[1])
    return {"steps": step, "best_step": best[2], "seconds": round(time.time() - t0, 1)}


@torch.no_grad()
def greedy_acceptance(target, draft, held, device, k=4, prompts=32, prompt_len=32, gen=48):
    """Speculative-decoding acceptance of greedy drafts against greedy target output (torch)."""
    target.eval(); draft.eval()
    rng = np.random.default_rng(0)
    acc = drafted = 0
    for _ in range(prompts):
        s = int(rng.integers(0, len(held) - prompt_len))
        seq = torch.from_numpy(held[s:s + prompt_len].astype(np.int64)).to(device)[None]
        for _ in range(gen):  # target greedy continuation
            nxt = target(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
        p = prompt_len
        while p < seq.shape[1]:
            d = seq[:, :p]
            for _ in range(k):
                d = torch.cat([d, draft(d)[:, -1].argmax(-1, keepdim=True)], 1)
            prop, truth = d[0, p:p + k], seq[0, p:p + k]
            a = 0
            while a < len(truth) and prop[a] == truth[a]:
                a += 1
            acc += a
            drafted += k
            p += a + 1
    target.train(); draft.train()
    return acc / drafted


@torch.no_grad()
def target_rollouts(target, train, device, deadline, rng, batch=64, prompt_len=16, gen=64):
    """Greedy continuations by the target of prompts from the training stream (half of them
    document openings after a BOS, like the acceptance prompts), until `deadline`."""
    target.eval()
    bos = np.flatnonzero(train[:-prompt_len - 1] == 0)
    out = []
    while time.time() < deadline or not out:
        starts = np.where(rng.random(batch) < 0.5, rng.choice(bos, batch),
                          rng.integers(0, len(train) - prompt_len, batch))
        seq = torch.from_numpy(np.stack([train[s:s + prompt_len] for s in starts]).astype(np.int64)).to(device)
        for _ in range(gen):
            with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
                nxt = target(seq)[:, -1].float().argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
        out.append(seq.cpu())
    return torch.cat(out), prompt_len


def seqkd_phase(target, draft, train, held, device, minutes, lr, log, seed):
    """Sequence-level distillation: the acceptance rate is top-1 agreement on the target's
    own greedy text, so the draft also learns from that text. Two fifths of the budget make
    rollouts; the rest trains on them (KL to the target + cross-entropy on the target's
    greedy tokens), alternating with ordinary distillation batches on corpus text."""
    t0 = time.time()
    rng = np.random.default_rng(seed + 7)
    roll, plen = target_rollouts(target, train, device, t0 + 0.4 * minutes * 60, rng)
    log(f"[seqkd] {roll.shape[0]} rollouts of {roll.shape[1] - plen} tokens in {time.time() - t0:.0f}s")
    corpus = batches(train, 8, 256, np.random.default_rng(seed + 8), device)

    def loss_fn(model, x, y, gen_from):
        with torch.no_grad():
            t_logp = F.log_softmax(target(x).float(), -1)
        logp = F.log_softmax(model(x).float(), -1)
        kl = (t_logp.exp() * (t_logp - logp)).sum(-1)[:, gen_from:].mean()
        ce = F.nll_loss(logp[:, gen_from:].reshape(-1, logp.shape[-1]), y[:, gen_from:].reshape(-1))
        return kl + ce

    opt = torch.optim.AdamW(draft.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    budget = minutes * 60 - (time.time() - t0)
    t1, step = time.time(), 0
    draft.train()
    while time.time() - t1 < budget:
        prog = (time.time() - t1) / budget
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
        if step % 2 == 0:
            idx = torch.from_numpy(rng.integers(0, roll.shape[0], 16))
            seq = roll[idx].to(device)
            x, y, gen_from = seq[:, :-1], seq[:, 1:], plen - 1
        else:
            (x, y), gen_from = next(corpus), 0
        with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(draft, x, y, gen_from)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            log(f"[seqkd] step {step} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    return {"rollouts": int(roll.shape[0]), "steps": step, "seconds": round(time.time() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default=None, help="gpu or cpu (default: by device)")
    p.add_argument("--target-minutes", type=float, default=None)
    p.add_argument("--draft-minutes", type=float, default=None)
    p.add_argument("--seqkd-minutes", type=float, default=None,
                   help="sequence-level distillation of the draft on target rollouts")
    p.add_argument("--phase", default="both", choices=["both", "target", "draft", "seqkd"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="CPU threads (default: all cores but one; oversubscribed OpenMP threads "
                        "slow PyTorch down many times over when other work shares the CPU)")
    p.add_argument("--compact-only", action="store_true", help="write only the small *_q.pt checkpoints")
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset_name = a.preset or ("gpu" if device.type == "cuda" else "cpu")
    pr = PRESETS[preset_name]
    tm = a.target_minutes if a.target_minutes is not None else (6.0 if device.type == "cuda" else 50.0)
    dm = a.draft_minutes if a.draft_minutes is not None else (2.5 if device.type == "cuda" else 20.0)
    sm = a.seqkd_minutes if a.seqkd_minutes is not None else (1.5 if device.type == "cuda" else 26.0)
    torch.manual_seed(a.seed)
    if device.type == "cpu":
        torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    os.makedirs(a.out, exist_ok=True)
    logf = open(os.path.join(a.out, "train.log"), "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n"); logf.flush()

    train = np.load(os.path.join(a.data, "train.npy"))
    held = np.load(os.path.join(a.data, "heldout.npy"))
    with open(os.path.join(a.data, "tokenizer.json")) as f:
        vocab = len(json.load(f)["model"]["vocab"]) + 0
    vocab = int(max(vocab, int(train.max()) + 1))
    log(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
        f"preset {preset_name}, vocab {vocab}, train {len(train)} tokens, held-out {len(held)}")
    report_path = os.path.join(a.out, "train_report.json")
    report = json.load(open(report_path)) if os.path.exists(report_path) and a.phase in ("draft", "seqkd") else {}
    report.update(device=str(device), preset=preset_name, eval_window=EVAL_WINDOW,
                  threads=torch.get_num_threads() if device.type == "cpu" else None)

    tcfg = Config(vocab=vocab, **pr["target"])
    target = LM(tcfg, bitnet=True, dropout=pr.get("dropout", 0.0)).to(device)

    def ce(model, x, y):
        logits = model(x).float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    if a.phase in ("both", "target"):
        log(f"target: {tcfg} {target.n_params() / 1e6:.2f} M params")
        data = batches(train, pr["batch"], pr["seq"], np.random.default_rng(a.seed), device)
        info = train_phase("target", target, ce, data, held, device, tm, pr["target_lr"], log)
        nll = heldout_nll(target, held, device, fp32=True)
        info.update(config=tcfg.to_dict(), params=target.n_params(), heldout_nll=nll, heldout_ppl=math.exp(nll))
        report["target"] = info
        if not a.compact_only:
            torch.save({"config": tcfg.to_dict(), "state": target.state_dict()}, os.path.join(a.out, "target.pt"))
        save_compact(target, os.path.join(a.out, "target_q.pt"))
        with open(report_path, "w") as f:
            json.dump(report, f, indent=1)
        log(f"target held-out ppl (fp32) {math.exp(nll):.3f}")
    else:
        ck = torch.load(os.path.join(a.out, "target.pt"), map_location=device)
        target = LM(Config(**ck["config"]), bitnet=True).to(device)
        target.load_state_dict(ck["state"])

    if a.phase in ("both", "draft", "seqkd"):
        target.eval()
        for q in target.parameters():
            q.requires_grad_(False)
        dcfg = Config(vocab=vocab, **pr["draft"])
        draft = LM(dcfg, bitnet=False).to(device)
        log(f"draft: {dcfg} {draft.n_params() / 1e6:.2f} M params")

        def distil(model, x, y):
            with torch.no_grad():
                t_logp = F.log_softmax(target(x).float(), -1)
            logits = model(x).float()
            logp = F.log_softmax(logits, -1)
            kl = (t_logp.exp() * (t_logp - logp)).sum(-1).mean()
            return kl + 0.2 * F.nll_loss(logp.reshape(-1, logp.shape[-1]), y.reshape(-1))

        if a.phase == "seqkd":
            ck = torch.load(os.path.join(a.out, "draft.pt"), map_location=device)
            draft.load_state_dict(ck["state"])
            info = dict(report["draft"])
        else:
            data = batches(train, pr["batch"], pr["seq"], np.random.default_rng(a.seed + 1), device)
            info = train_phase("draft", draft, distil, data, held, device, dm, pr["draft_lr"], log)
            info["distil_heldout_ppl"] = math.exp(heldout_nll(draft, held, device, fp32=True))
            info["distil_torch_acceptance_k4"] = greedy_acceptance(target, draft, held, device,
                                                                   prompts=32 if device.type == "cuda" else 16)
            log(f"draft after corpus distillation: held-out ppl {info['distil_heldout_ppl']:.3f}, "
                f"torch acceptance {info['distil_torch_acceptance_k4']:.3f}")
        if sm > 0:
            r = seqkd_phase(target, draft, train, held, device, sm, pr["draft_lr"] * 0.5, log, a.seed)
            prev = info.get("seqkd") if a.phase == "seqkd" else None
            if prev:  # a further round on top of an earlier one: report the sums
                r = {k: prev.get(k, 0) + r[k] for k in r} | {"rounds": prev.get("rounds", 1) + 1}
            info["seqkd"] = r
        nll = heldout_nll(draft, held, device, fp32=True)
        info.update(config=dcfg.to_dict(), params=draft.n_params(), heldout_nll=nll, heldout_ppl=math.exp(nll))
        info["torch_acceptance_k4"] = greedy_acceptance(target, draft, held, device,
                                                        prompts=32 if device.type == "cuda" else 16)
        report["draft"] = info
        if not a.compact_only:
            torch.save({"config": dcfg.to_dict(), "state": draft.state_dict()}, os.path.join(a.out, "draft.pt"))
        save_compact(draft, os.path.join(a.out, "draft_q.pt"))
        log(f"draft held-out ppl (fp32) {math.exp(nll):.3f}, torch greedy acceptance k=4 "
            f"{info['torch_acceptance_k4']:.3f}")
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
