"""Where a step of the ``paper-toy`` preset's GPT goes, its share of the fp32 matmul peak, and whether bf16 is faster.

The step is the preset's own (``--preset paper-toy``, read from its file): our GPT (4 x 4 x 256, context 128, its
4,096-token vocabulary) on a batch of 16 x 128 random tokens with the paper's forward model co-trained on 0 -> 1,
through the package's LM task (:class:`selfmodels.subjects.lm_training.LMTask`: cross-entropy, the detached MSE,
AdamW with decay on matrices and the gradient-norm clip for each model) and the one training loop. Printed as JSON
lines:

1. ``matmul_peak_fp32``: this machine's fp32 matmul rate (``_matmul.matmul_flops``, best of the rounds, n = 1024),
   with the same thread count.
2. ``step_fp32``: seconds per step (median after warm-up; fp32 and bf16 steps alternate, two each per round), tokens/s, the step's FLOPs counted from the shapes
   (training = 3 x the forward FLOPs: the GPT's matmuls at 2 per weight per token, its attention products over a
   causal T/2 on average, the LM head, and the forward model's ``flops_per_token``) and their share of the peak.
3. ``where_fp32``: the profiler's self CPU time of a few steps, by kind of operator (matmuls, attention kernel,
   softmax / cross-entropy, AdamW, LayerNorm, GELU, the rest), and the LM head's share (its matmul, forward and
   backward, by the shapes).
4. ``step_bf16_autocast``: the same step under ``torch.autocast("cpu", torch.bfloat16)`` (timed in alternation with
   the fp32 steps) and a bf16 matmul rate.
5. ``choice``: float32 unless bf16 autocast measured faster here (chosen now, at start-up, from 2 and 4, and
   recorded); the package's CPU default stays float32 (``subjects.registry.model_dtype``).

A shared machine changes every figure: the load averages before and after are printed with them.

    python benchmarks/paper_toy_step.py --threads 2 --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from _matmul import matmul_flops  # benchmarks/_matmul.py (this script's folder is on sys.path)

from selfmodels.forward.architectures import build_forward_model
from selfmodels.forward.config import RunConfig, load_preset
from selfmodels.nets.gpt import GPT
from selfmodels.subjects.gpt import GPTSubject
from selfmodels.subjects.lm_training import CoTrain, LMTask, WindowDraws, machine
from selfmodels.training import Schedule, train

KINDS = [("matmul", ("addmm", "aten::mm", "aten::bmm", "matmul", "linear")),
         ("attention kernel", ("scaled_dot_product", "flash_attention")),
         ("softmax / cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
         ("AdamW", ("adam", "_foreach")),
         ("LayerNorm", ("layer_norm",)),
         ("GELU", ("gelu",)),
         ("gradient clip", ("norm", "clamp"))]


def step_flops(cfg: RunConfig) -> dict:
    """FLOPs of one training step (3 x forward) of the GPT and of the co-trained forward model, from the shapes."""
    g, lm = cfg.subject.gpt, cfg.subject.lm
    d, T, L, V = g.d_model, g.block_size, g.n_layer, g.vocab_size
    tokens = lm.batch_size * T
    blocks = L * (2 * 12 * d * d + 2 * 2 * (T // 2) * d)  # qkv 3d², proj d², MLP 8d²; QKᵀ and AV over T/2 on average
    head = 2 * d * V
    fwd = build_forward_model(cfg.model, d).flops_per_token(T)
    return {"tokens": tokens, "gpt_blocks": 3 * blocks * tokens, "lm_head": 3 * head * tokens, "forward_model": 3 * fwd * tokens,
            "total": 3 * (blocks + head + fwd) * tokens}


def make_task(cfg: RunConfig, run_dir: Path, seed: int = 0) -> LMTask:
    torch.manual_seed(seed)
    gpt = GPT(cfg.subject.gpt)
    subject = GPTSubject(gpt)
    fwd = build_forward_model(cfg.model, cfg.subject.gpt.d_model)
    co = CoTrain(fwd, cfg.source, cfg.target, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, grad_clip=cfg.train.grad_clip)
    T = cfg.subject.gpt.block_size
    tokens = torch.randint(0, cfg.subject.gpt.vocab_size, (200_000,))
    val = (tokens[:T * 4].view(4, T), tokens[1:T * 4 + 1].view(4, T))
    draws = WindowDraws(tokens, T, cfg.subject.lm.batch_size, [torch.Generator().manual_seed(seed)])
    return LMTask(subject, co, 1.0, cfg.subject.lm, draws, val, run_dir, False, "subject", "main GPT")


def time_interleaved(cfg: RunConfig, steps: int) -> dict[str, list[float]]:
    """Seconds of each step for fp32 and for bf16 autocast, the two tasks stepping in alternation (two steps each per
    round, after two warm-up steps each), so that a load that changes during the run weighs on both alike."""
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    with tempfile.TemporaryDirectory() as tmp:
        tasks = {"float32": make_task(cfg, Path(tmp) / "a"), "bfloat16": make_task(cfg, Path(tmp) / "b")}
        for round_ in range(1 + -(-steps // 2)):
            for name, task in tasks.items():
                context = torch.autocast("cpu", dtype=torch.bfloat16) if name == "bfloat16" else nullcontext()
                with context:
                    out = train(task, Schedule(2), None, progress=False)  # no directory: two more steps of the same task
                if round_ > 0:  # the first round is the warm-up
                    times[name] += out.step_seconds
    return times


def profile(cfg: RunConfig, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with tempfile.TemporaryDirectory() as tmp:
        task = make_task(cfg, Path(tmp))
        train(task, Schedule(2), None, progress=False)  # warm-up
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            train(task, Schedule(steps), None, progress=False)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key.lower()
        kind = next((k for k, keys in KINDS if any(s in name for s in keys)), "other")
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total / 1e6
    whole = sum(totals.values())
    other = sorted(((e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()
                    if not any(s in e.key.lower() for _, keys in KINDS for s in keys)), key=lambda kv: -kv[1])[:6]
    return {"seconds": round(whole, 3), "share": {k: round(v / whole, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
            "other_largest": {k: round(v / whole, 3) for k, v in other}}


def loads() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="timed steps of each kind (after 2 warm-up steps)")
    p.add_argument("--profile-steps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_preset("gpt-paper-toy", RunConfig, "gpt")
    before = loads()
    info = machine(torch.device("cpu"))
    print(json.dumps({"bench": "machine", "cpu": info["cpu"], "cores": info["cores"], "threads": args.threads,
                      "torch": torch.__version__, "load_average": before}), flush=True)
    peak = matmul_flops(summary=min)
    print(json.dumps({"bench": "matmul_peak_fp32", "n": 1024, "gflops": round(peak / 1e9, 1)}), flush=True)

    flops = step_flops(cfg)
    times = time_interleaved(cfg, args.steps)
    fp32, bf16 = times["float32"], times["bfloat16"]
    s32 = statistics.median(fp32)
    print(json.dumps({"bench": "step_fp32", "steps": len(fp32), "seconds_per_step": round(s32, 4),
                      "min_seconds": round(min(fp32), 4), "tokens_per_s": round(flops["tokens"] / s32),
                      "gflop_per_step": {k: round(v / 1e9, 2) for k, v in flops.items() if k != "tokens"},
                      "gflops": round(flops["total"] / s32 / 1e9, 1), "share_of_fp32_peak": round(flops["total"] / s32 / peak, 3),
                      "lm_head_share_of_flops": round(flops["lm_head"] / flops["total"], 3)}), flush=True)

    where = profile(cfg, args.profile_steps)
    print(json.dumps({"bench": "where_fp32", "profiled_steps": args.profile_steps, **where}), flush=True)

    s16 = statistics.median(bf16)
    a, b = torch.randn(1024, 1024, dtype=torch.bfloat16), torch.randn(1024, 1024, dtype=torch.bfloat16)
    times = []
    for _ in range(8):
        tick = time.perf_counter()
        for _ in range(5):
            a @ b
        times.append((time.perf_counter() - tick) / 5)
    print(json.dumps({"bench": "step_bf16_autocast", "steps": len(bf16), "seconds_per_step": round(s16, 4),
                      "speedup_vs_fp32": round(s32 / s16, 3), "bf16_matmul_gflops": round(2 * 1024**3 / min(times[3:]) / 1e9, 1)}),
          flush=True)
    chosen = "bfloat16" if s16 < s32 else "float32"
    print(json.dumps({"bench": "choice", "dtype": chosen, "why": f"bf16 autocast {s16:.3f} s/step against fp32 {s32:.3f} s/step",
                      "load_average_before": before, "load_average_after": loads()}), flush=True)


if __name__ == "__main__":
    main()
