"""The LM LLC's SGLD chains of our GPT: stacked (the default), vmap and one chain at a time, fused or explicit attention.

Model and LLC settings are the quick LM grid's (``selfmodels.lm_selfmodeling.presets.quick_run``: a
4 x 4 x 64 GPT, 512-token vocabulary, context 64; 2 chains x 200 draws, batches of 16 windows, ε = 3e-4,
γ = 100) on ``--windows`` windows of 65 tokens (the grid's ``llc_windows``). The GPT is trained
``--train-steps`` Adam steps on synthetic windows (a noisy walk over the vocabulary: timing does not
depend on the text, and the LLC then starts near a minimum as in the grid). Torch runs ``--threads``
intra-op threads (1: as the grid's workers).

Ways to run the same chains (same seeds, batches and noise), in one process on the same model:

- ``old``: ``batched="vmap"``, the default before the stacked GPT: the fused
  ``F.scaled_dot_product_attention`` has no vmap batching rule on CPU, so vmap runs it once per chain;
- ``new``: ``batched="auto"``, which picks ``stacked`` for our GPT on CPU
  (:mod:`selfmodels.complexity.stacked_gpt`: chains stacked along a leading axis, the backward written
  out, the fused attention kernel over the merged chains x windows axis);
- ``vmap_explicit`` / ``stacked_explicit``: those two with ``explicit_attention=True``
  (softmax(Q Kᵀ / sqrt(d_head) + M_causal) V in plain tensor ops);
- ``sequential_fused`` / ``sequential_explicit``: ``batched="sequential"``, one chain at a time (the reference).

Each variant runs ``--repeats`` times, interleaved (old, new, ..., old, new, ...), and its time is the
fastest repeat (the sampling alone, L(w*) included: ``diagnostics["seconds"]``). Prints one JSON line per
variant, then a summary line: ``old_seconds``, ``new_seconds``, ``ratio`` (old / new),
``ratio_vs_sequential`` (sequential_fused / new), the fastest variant, the CPU (``model name`` in
/proc/cpuinfo), the load average before and after, and ``max_rel_trace_diff`` = max |L_new - L_ref| / |L_ref|
over all draws against ``sequential_fused`` (and each variant's against it).

``--breakdown`` adds where an SGLD step's time goes for ``old``, ``new`` and ``sequential_fused``
(torch.profiler over 5 steps on the first batch, after 3 unprofiled ones; milliseconds per step): the
self time of the tensor operations by kind (matmul, attention, gelu, layernorm, loss, noise, update,
copies, other) and the rest of the step's wall time (Python, dispatcher, autograd and vmap
bookkeeping). Usage::

    python benchmarks/lm_llc_batched.py [--draws 200] [--repeats 1] [--threads 1] [--train-steps 100] [--breakdown]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import warnings

import torch

from selfmodels.complexity.llc import default_nbeta
from selfmodels.complexity.lm_llc import lm_llc, next_token_cross_entropy
from selfmodels.lm_selfmodeling.presets import quick_run
from selfmodels.nets.gpt import GPT
from _machine import cpu_name  # benchmarks/ (this script's folder is on sys.path)

VARIANTS = {  # name: (LLCConfig.batched, explicit_attention)
    "old": ("vmap", False),
    "new": ("auto", False),
    "vmap_explicit": ("vmap", True),
    "stacked_explicit": ("auto", True),
    "sequential_fused": ("sequential", False),
    "sequential_explicit": ("sequential", True),
}
REFERENCE = "sequential_fused"
# Kinds of tensor operations in --breakdown (aten names, by prefix); the rest of a step is "python+dispatch".
KINDS = {
    "matmul": ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm", "aten::matmul"),
    "attention": ("aten::_scaled_dot_product", "aten::_softmax", "aten::softmax", "aten::_softmax_backward_data"),
    "gelu": ("aten::gelu",),
    "layernorm": ("aten::native_layer_norm", "aten::addcmul"),
    "loss": ("aten::_log_softmax", "aten::log_softmax", "aten::exp", "aten::scatter", "aten::gather", "aten::nll"),
    "noise": ("aten::normal_",),
    "update": ("aten::_foreach",),
    "copies": ("aten::copy_", "aten::cat", "aten::stack", "aten::clone", "aten::contiguous", "aten::fill_",
               "aten::zero_", "aten::index"),
}


def synthetic_windows(n: int, tokens: int, vocab: int, seed: int) -> torch.Tensor:
    """(n, tokens) ids: x[t+1] = x[t] + 1 mod vocab, with 10% of the tokens redrawn uniformly."""
    g = torch.Generator().manual_seed(seed)
    ids = (torch.randint(0, vocab, (n, 1), generator=g) + torch.arange(tokens)) % vocab
    noise = torch.rand(ids.shape, generator=g) < 0.1
    return torch.where(noise, torch.randint(0, vocab, ids.shape, generator=g), ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=None, help="draws per chain (default: the quick preset's)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant, interleaved; the fastest counts")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the grid's workers use 1)")
    parser.add_argument("--windows", type=int, default=None, help="LLC windows (default: the quick preset's)")
    parser.add_argument("--train-steps", type=int, default=100, help="Adam steps before the LLC")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--breakdown", action="store_true", help="also profile one step of old, new and sequential")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*batching rule.*")  # the fallback's performance warning

    run = quick_run()
    gpt_cfg = dataclasses.replace(run.gpt, vocab_size=run.corpus.vocab_size, block_size=run.seq_len)
    llc = run.llc if args.draws is None else dataclasses.replace(run.llc, draws=args.draws)
    n_windows = run.llc_windows if args.windows is None else args.windows
    torch.manual_seed(0)
    gpt = GPT(gpt_cfg)
    windows = synthetic_windows(n_windows, run.seq_len + 1, gpt_cfg.vocab_size, seed=0)
    opt = torch.optim.Adam(gpt.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(args.train_steps):
        batch = windows[torch.randint(0, n_windows, (run.lm.batch_size,), generator=g)]
        opt.zero_grad()
        next_token_cross_entropy(gpt(batch[:, :-1]), batch[:, 1:]).backward()
        opt.step()

    load_before = os.getloadavg()[0]
    best: dict[str, float] = {}
    traces: dict[str, torch.Tensor] = {}
    paths: dict[str, str] = {}
    for _ in range(args.repeats):
        for name in args.variants:
            batched, explicit = VARIANTS[name]
            result = lm_llc(gpt, windows, dataclasses.replace(llc, batched=batched), explicit_attention=explicit)
            best[name] = min(best.get(name, float("inf")), result.diagnostics["seconds"])
            traces[name], paths[name] = result.loss_traces, result.diagnostics["path"]

    reference = REFERENCE if REFERENCE in traces else args.variants[0]
    steps = llc.draws * llc.steps_between_draws

    def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a.double() - b.double()).abs() / b.double().abs()).max())

    for name in args.variants:
        print(json.dumps({"variant": name, "path": paths[name], "explicit_attention": VARIANTS[name][1],
                          "seconds": round(best[name], 3), "ms_per_step": round(1000 * best[name] / steps, 2),
                          f"max_rel_trace_diff_vs_{reference}": rel_diff(traces[name], traces[reference])}))
    summary = {
        "benchmark": "lm_llc_batched", "model": dataclasses.asdict(gpt_cfg), "num_params": gpt.num_params(),
        "chains": llc.chains, "draws": llc.draws, "batch_size": llc.batch_size, "windows": n_windows,
        "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__, "cpu": cpu_name(),
        "load_average_1min_before": round(load_before, 2), "load_average_1min_after": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(), "fastest": min(best, key=best.get),
    }
    if "old" in best and "new" in best:
        summary.update(old_seconds=round(best["old"], 3), new_seconds=round(best["new"], 3),
                       ratio=round(best["old"] / best["new"], 3))
    if "new" in best and REFERENCE in best:
        summary.update(ratio_vs_sequential=round(best[REFERENCE] / best["new"], 3),
                       max_rel_trace_diff=rel_diff(traces["new"], traces[REFERENCE]))
    print(json.dumps(summary))
    if args.breakdown:
        for name in ("old", "new", REFERENCE):
            print(json.dumps({"breakdown": name, **step_breakdown(gpt, windows, llc, *VARIANTS[name])}))


def step_breakdown(gpt: GPT, windows: torch.Tensor, llc, batched: str, explicit: bool, steps: int = 5) -> dict:
    """Milliseconds per SGLD step (mean over ``steps`` profiled steps, after 3 unprofiled ones) by kind of
    tensor operation (self time, :data:`KINDS`), and ``python+dispatch``: the step's wall time not inside any
    tensor operation."""
    from torch.profiler import ProfilerActivity, profile

    from selfmodels.complexity.lm_logits import LogitsOf, gpt_logits_explicit_attention
    from selfmodels.complexity.sgld import SGLDChains

    model = LogitsOf(gpt, gpt_logits_explicit_attention if explicit else None)
    path = "stacked" if batched == "auto" else batched
    chains = SGLDChains(model, next_token_cross_entropy, chains=llc.chains, epsilon=llc.epsilon, gamma=llc.gamma,
                        nbeta=default_nbeta(llc.batch_size * (windows.shape[1] - 1)), seeds=list(range(llc.chains)),
                        path=path)
    batch = (windows[: llc.batch_size, :-1], windows[: llc.batch_size, 1:])
    for _ in range(3):
        chains.step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            chains.step(batch)
        wall = time.perf_counter() - start
    kinds = {kind: 0.0 for kind in (*KINDS, "other")}
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        kind = next((k for k, prefixes in KINDS.items() if event.key.startswith(prefixes)), "other")
        kinds[kind] += event.self_cpu_time_total / 1e3 / steps  # µs over all steps -> ms per step
    step_ms = 1e3 * wall / steps
    out = {"path": path, "explicit_attention": explicit, "step_ms_profiled": round(step_ms, 2)}
    out.update({f"{k}_ms": round(v, 2) for k, v in kinds.items()})
    out["python+dispatch_ms"] = round(step_ms - sum(kinds.values()), 2)
    return out


if __name__ == "__main__":
    main()
