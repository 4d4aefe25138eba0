"""Speed of our LLC estimator against devinterp 1.3.2 on the paper's MNIST MLP.

Setup (issue 3): MLP 784-256-10 (``selfmodels.nets.classifiers.MLPClassifier``) briefly trained on
the offline MNIST subset (falls back to random data of the same shape if that loader is missing), batch
512, 4 chains x 200 draws, the paper's ε = 1e-4, γ = 100, nβ = 512 / ln 512. Both estimators read the
same non-shuffling DataLoader (same data order; ``drop_last``, so every step is a full batch of 512)
in the same process, alternating, ``--reps`` times. Ours runs with its defaults (``batched="auto"``:
the stacked-MLP path for this model; chain groups = min(chains, threads)).

Prints one JSON line per repetition and, last, one JSON object:
- ``ours_s`` / ``devinterp_s``: median wall-clock seconds of one full estimate (L(w*) included);
- ``speedup``: devinterp_s / ours_s;
- ``ours_llc`` / ``devinterp_llc`` (+ ``_std``): the estimates (all draws kept, as devinterp does with
  no burn-in steps); ``agree``: |difference| <= sqrt(std_ours² + std_devinterp²) (chain stds);
- ``peak_fraction``: model FLOPs of our sampling per second / fp32 matmul throughput (1024 x 1024 x
  1024, same process and threads, measured right before each of our runs), median over repetitions. Model FLOPs per SGLD step per chain =
  forward 2B(784·256 + 256·10) + weight gradients 2B(784·256 + 256·10) + input gradient of the second
  layer 2B(256·10) (the first layer's input gradient is not needed and not computed);
- ``threads``: torch intra-op threads; ``ours_path`` and ``ours_chain_groups``: how ours ran.

Usage: ``python benchmarks/llc_vs_devinterp.py [--threads N] [--reps R] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _matmul import matmul_flops  # benchmarks/_matmul.py (this script's folder is on sys.path)

from selfmodels.complexity.llc import LLCConfig, cross_entropy, estimate_llc
from selfmodels.nets.classifiers import MLPClassifier

HIDDEN, BATCH, CHAINS, DRAWS, EPSILON, GAMMA = 256, 512, 4, 200, 1e-4, 100.0


def mnist_like(device) -> tuple[TensorDataset, str]:
    try:
        from selfmodels.data.classification import load_classification

        data = load_classification("mnist", source="offline")
        return data.train, "offline MNIST subset"
    except Exception as exc:  # noqa: BLE001 - a benchmark falls back to data of the same shape
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3600, 1, 28, 28, generator=g)
        return TensorDataset(x, torch.randint(0, 10, (3600,), generator=g)), f"random data ({exc})"


def train_briefly(model: nn.Module, data: TensorDataset, epochs: int = 10) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        for (x, y) in DataLoader(data, batch_size=64, shuffle=True, generator=g):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
    return float(loss.detach())


def step_flops(batch_sizes: list[int]) -> float:
    """FLOPs of all SGLD steps of one estimate (see the module docstring)."""
    per_example = 2 * (784 * HIDDEN + HIDDEN * 10) * 2 + 2 * HIDDEN * 10
    steps = DRAWS
    mean_batch = sum(batch_sizes) / len(batch_sizes)  # steps cycle through the loader's batches
    return CHAINS * steps * mean_batch * per_example


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    torch.manual_seed(0)
    data, source = mnist_like(device)
    model = MLPClassifier(784, HIDDEN, 10)
    train_loss = train_briefly(model, data)
    model = model.to(device)
    # One fixed random order (the offline subset is sorted by class), the same for both estimators.
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(*(t[order].to(device) for t in data.tensors)), batch_size=BATCH, shuffle=False,
                        drop_last=True)  # every step a full batch of 512, as the setup specifies
    nbeta = BATCH / math.log(BATCH)
    config = LLCConfig(epsilon=EPSILON, gamma=GAMMA, chains=CHAINS, draws=DRAWS, burn_in=0, seed=0)

    def evaluate(m, batch):
        x, y = batch
        return nn.functional.cross_entropy(m(x), y), {}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    ours_t, theirs_t, ours, theirs, peaks = [], [], [], [], []
    for rep in range(args.reps):
        for who in (("ours", "devinterp") if rep % 2 == 0 else ("devinterp", "ours")):
            sync()
            t = time.perf_counter()
            if who == "ours":
                peaks.append(matmul_flops(device) / 1e9)  # measured next to each of our runs: the machine may be busy
                sync()
                t = time.perf_counter()
                r = estimate_llc(model, loader, cross_entropy, config, device=device, progress=False)
                sync()
                ours_t.append(time.perf_counter() - t)
                ours.append(r)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = estimate_learning_coeff_with_summary(
                        model, loader, evaluate=evaluate, sampling_method=SGLD,
                        optimizer_kwargs=dict(lr=EPSILON, localization=GAMMA, nbeta=nbeta),
                        num_chains=CHAINS, num_draws=DRAWS, num_burnin_steps=0, seed=0, device=device, verbose=False)
                sync()
                theirs_t.append(time.perf_counter() - t)
                theirs.append(r)
        print(json.dumps({"rep": rep, "ours_s": ours_t[-1], "devinterp_s": theirs_t[-1],
                          "ours_llc": ours[-1].mean, "devinterp_llc": theirs[-1]["llc/mean"],
                          "ours_path": ours[-1].diagnostics["path"]}), flush=True)
    ours_s, theirs_s = statistics.median(ours_t), statistics.median(theirs_t)
    o, d = ours[-1], theirs[-1]
    flops = step_flops([len(b[0]) for b in loader])
    print(json.dumps({
        "ours_s": ours_s, "devinterp_s": theirs_s, "speedup": theirs_s / ours_s,
        "ours_llc": o.mean, "ours_llc_std": o.std, "devinterp_llc": d["llc/mean"], "devinterp_llc_std": d["llc/std"],
        "agree": abs(o.mean - d["llc/mean"]) <= math.sqrt(o.std ** 2 + d["llc/std"] ** 2),
        "peak_fraction": statistics.median(flops / t / 1e9 / p for t, p in zip(ours_t, peaks)),
        "ours_gflops": flops / ours_s / 1e9, "matmul_gflops": statistics.median(peaks),
        "threads": torch.get_num_threads(), "device": str(device), "reps": args.reps, "data": source,
        "train_loss": train_loss, "ours_flags": o.flags, "ours_path": o.diagnostics["path"],
        "ours_chain_groups": o.diagnostics["chain_groups"],
    }))


if __name__ == "__main__":
    main()
