"""The LM LLC's SGLD chains through our GPT's attention: fused kernel vs explicit, batched (vmap) vs sequential.

Model and LLC settings are the quick LM grid's (``selfmodels.lm_selfmodeling.presets.quick_run``: a
4 x 4 x 64 GPT, 512-token vocabulary, context 64; 2 chains x 200 draws, batches of 16 windows, ε = 3e-4,
γ = 100) on ``--windows`` windows of 65 tokens (the grid's ``llc_windows``). The GPT is trained
``--train-steps`` Adam steps on synthetic windows (a noisy walk over the vocabulary: timing does not
depend on the text, and the LLC then starts near a minimum as in the grid). Torch runs ``--threads``
intra-op threads (1: as the grid's workers).

Four ways to run the same chains (same seeds, batches and noise), in one process on the same model:

- ``old``: ``batched="auto"`` picks vmap; the fused ``F.scaled_dot_product_attention`` has no vmap
  batching rule on CPU, so vmap runs it once per chain (what ``lm_llc`` does by default);
- ``new``: vmap with ``explicit_attention=True``: softmax(Q Kᵀ / sqrt(d_head) + M_causal) V in plain tensor
  ops, batched over the chains;
- ``sequential_fused`` / ``sequential_explicit``: ``batched="sequential"``, one chain at a time.

Each variant runs ``--repeats`` times, interleaved (old, new, sequential..., old, new, ...), and its
time is the fastest repeat (the sampling alone, L(w*) included: ``diagnostics["seconds"]``). Prints
one JSON line per variant, then a summary line: ``old_seconds``, ``new_seconds``, ``ratio`` (old / new),
the fastest variant, the CPU (``model name`` in /proc/cpuinfo), the load average, and
``max_rel_trace_diff`` = max |L_new - L_old| / |L_old| over all draws (and each variant's against
``old``). Usage::

    python benchmarks/lm_llc_batched.py [--draws 200] [--repeats 1] [--threads 1] [--train-steps 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import warnings

import torch

from selfmodels.complexity.lm_llc import lm_llc, next_token_cross_entropy
from selfmodels.lm_selfmodeling.presets import quick_run
from selfmodels.nets.gpt import GPT
from _machine import cpu_name  # benchmarks/ (this script's folder is on sys.path)

VARIANTS = {  # name: (LLCConfig.batched, explicit_attention)
    "old": ("auto", False),
    "new": ("auto", True),
    "sequential_fused": ("sequential", False),
    "sequential_explicit": ("sequential", True),
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

    best: dict[str, float] = {}
    traces: dict[str, torch.Tensor] = {}
    paths: dict[str, str] = {}
    for _ in range(args.repeats):
        for name in args.variants:
            batched, explicit = VARIANTS[name]
            result = lm_llc(gpt, windows, dataclasses.replace(llc, batched=batched), explicit_attention=explicit)
            best[name] = min(best.get(name, float("inf")), result.diagnostics["seconds"])
            traces[name], paths[name] = result.loss_traces, result.diagnostics["path"]

    reference = traces[args.variants[0]]
    steps = llc.draws * llc.steps_between_draws

    def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a.double() - b.double()).abs() / b.double().abs()).max())

    for name in args.variants:
        print(json.dumps({"variant": name, "path": paths[name], "explicit_attention": VARIANTS[name][1],
                          "seconds": round(best[name], 3), "ms_per_step": round(1000 * best[name] / steps, 2),
                          f"max_rel_trace_diff_vs_{args.variants[0]}": rel_diff(traces[name], reference)}))
    summary = {
        "benchmark": "lm_llc_batched", "model": dataclasses.asdict(gpt_cfg), "num_params": gpt.num_params(),
        "chains": llc.chains, "draws": llc.draws, "batch_size": llc.batch_size, "windows": n_windows,
        "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__, "cpu": cpu_name(),
        "load_average_1min": round(os.getloadavg()[0], 2), "cores": os.cpu_count(),
        "fastest": min(best, key=best.get),
    }
    if "old" in best and "new" in best:
        summary.update(old_seconds=round(best["old"], 3), new_seconds=round(best["new"], 3),
                       ratio=round(best["old"] / best["new"], 3),
                       max_rel_trace_diff=rel_diff(traces["new"], traces["old"]))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
