"""Our language-model LLC (``selfmodels.complexity.lm_llc``) against devinterp 1.3.2's on the same model.

Two models:
- ``unigram``: V = 7 logits that ignore the input, at the exact maximum-likelihood logits of 32 windows
  of 8 i.i.d. tokens (λ = (V - 1) / 2 = 3; the exact finite-nβ value is printed as ``exact``; see
  tests/complexity/test_lm_llc.py), γ = 0;
- ``gpt``: a byte-level GPT (2 blocks x 32 wide, 2 heads, context 32, 256 tokens; about 42k
  parameters) trained ``--train-steps`` Adam steps on the offline corpus (KJV + Wikipedia sample),
  its LLC taken on 64 training windows of 32 predicted tokens in batches of 16.

Both estimators read the same windows in the same order (a non-shuffling DataLoader of (inputs,
targets); ours with ``shuffle=False``; every chain starts at the first batch), with the same ε, γ, nβ
(n / ln n, n = predicted tokens per batch, passed explicitly to both: devinterp's own default counts
windows), chains, draws and burn-in (ours: ``burn_in`` of ``draws``; devinterp: ``num_burnin_steps``
= burn-in and ``num_draws`` = draws - burn-in), and the same L(w*) rule (mean loss over the first
``chains`` batches, devinterp's ``get_init_loss_multi_batch``). Samplers: plain SGLD (devinterp
``SGLD``) and RMSprop-SGLD (devinterp ``SGMCMC.rmsprop_sgld``, same α and eps). The noise streams
differ, so the estimates agree only up to their chain-to-chain spread.

Prints one JSON line per (model, sampler): ``ours_llc`` / ``devinterp_llc`` with chain std and
standard error (std / sqrt(chains)), ``ratio`` = ours / devinterp, ``z`` = difference / combined
standard error, the seconds of each (side by side, same process, ours first), the settings, the
threads and the CPU. Usage::

    python benchmarks/lm_llc_vs_devinterp.py [--models unigram gpt] [--samplers sgld rmsprop_sgld]
        [--chains C] [--draws D] [--burn-in B] [--threads N] [--out benchmarks/lm_llc_vs_devinterp.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from selfmodels.complexity.llc import LLCConfig
from selfmodels.complexity.lm_llc import lm_llc, next_token_cross_entropy
from selfmodels.nets.gpt import GPT, GPTConfig
from _machine import cpu_name  # benchmarks/ (this script's folder is on sys.path)

# Step sizes from a small calibration (docs/llc.md, "Language models"): traces flat within the burn-in, no flags.
SETTINGS = {
    ("unigram", "sgld"): dict(epsilon=1e-2, gamma=0.0),
    ("unigram", "rmsprop_sgld"): dict(epsilon=1.5e-3, gamma=0.0),
    ("gpt", "sgld"): dict(epsilon=1e-4, gamma=100.0),
    ("gpt", "rmsprop_sgld"): dict(epsilon=1e-5, gamma=100.0),
}
# chains, draws, burn-in per model (the GPT's traces rise for about 120 draws at these settings).
RUNS = {"unigram": dict(chains=16, draws=400, burn_in=100), "gpt": dict(chains=4, draws=400, burn_in=200)}


class Unigram(nn.Module):
    """Logits (B, T, V) that ignore the input: one learned logit per token."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*ids.shape, -1)


def unigram_case(vocab: int = 7, windows: int = 32, tokens: int = 8):
    probs = torch.linspace(2.0, 1.0, vocab, dtype=torch.float64)
    probs /= probs.sum()
    g = torch.Generator().manual_seed(0)
    ids = torch.multinomial(probs, windows * (tokens + 1), replacement=True, generator=g).view(windows, tokens + 1)
    f = torch.bincount(ids[:, 1:].flatten(), minlength=vocab).double()
    f /= f.sum()
    nbeta = windows * tokens / math.log(windows * tokens)
    psi = torch.special.digamma
    exact = float(nbeta * (f * (f.log() - psi(nbeta * f) + psi(torch.tensor(nbeta, dtype=torch.float64)))).sum())
    return Unigram(f.log().float()), ids, windows, {"exact": exact, "lambda": (vocab - 1) / 2}


def gpt_case(train_steps: int, windows: int = 64, tokens: int = 32):
    from selfmodels.data.corpora import load_corpus

    corpus = load_corpus("offline", max_chars=400_000)
    stream = torch.tensor(list(corpus.text.encode("utf-8")), dtype=torch.long)  # byte-level: ids 0..255
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=256, block_size=tokens, n_layer=2, n_head=2, d_model=32))
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(gpt.parameters(), lr=3e-3)
    loss = float("nan")
    for _ in range(train_steps):
        starts = torch.randint(0, len(stream) - tokens - 1, (32,), generator=g)
        batch = torch.stack([stream[s:s + tokens + 1] for s in starts.tolist()])
        opt.zero_grad()
        out = next_token_cross_entropy(gpt(batch[:, :-1]), batch[:, 1:])
        out.backward()
        opt.step()
        loss = float(out.detach())
    starts = torch.randint(0, len(stream) - tokens - 1, (windows,), generator=g)
    ids = torch.stack([stream[s:s + tokens + 1] for s in starts.tolist()])
    return gpt, ids, 16, {"train_loss": loss, "train_steps": train_steps, "params": gpt.num_params(),
                          "corpus": corpus.source}


def devinterp_llc(model, ids, batch, config: LLCConfig, nbeta: float) -> dict:
    from devinterp.optim.sgld import SGLD
    from devinterp.optim.sgmcmc import SGMCMC
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    loader = DataLoader(TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=batch, shuffle=False)

    def evaluate(m, data):
        x, y = data
        logits = m(x)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten()), {}

    kwargs = dict(lr=config.epsilon, localization=config.gamma, nbeta=nbeta)
    if config.sampler == "rmsprop_sgld":
        method, kwargs = SGMCMC.rmsprop_sgld, {**kwargs, "alpha": config.rmsprop_alpha, "eps": config.rmsprop_eps}
    else:
        method = SGLD
    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.simplefilter("ignore")  # deprecations; more draws than batches
        return estimate_learning_coeff_with_summary(
            model, loader, evaluate=evaluate, sampling_method=method, optimizer_kwargs=kwargs,
            num_chains=config.chains, num_draws=config.draws - config.kept_from(),
            num_burnin_steps=config.kept_from(), seed=config.seed, verbose=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unigram", "gpt"], choices=["unigram", "gpt"])
    parser.add_argument("--samplers", nargs="+", default=["sgld", "rmsprop_sgld"], choices=["sgld", "rmsprop_sgld"])
    parser.add_argument("--chains", type=int, default=None, help="default: per model (RUNS)")
    parser.add_argument("--draws", type=int, default=None, help="default: per model (RUNS)")
    parser.add_argument("--burn-in", type=int, default=None, help="default: per model (RUNS)")
    parser.add_argument("--train-steps", type=int, default=400, help="Adam steps of the GPT before its LLC")
    parser.add_argument("--seed", type=int, default=0, help="chain c of both estimators is seeded seed + c")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    for name in args.models:
        model, ids, batch, extra = unigram_case() if name == "unigram" else gpt_case(args.train_steps)
        tokens = batch * (ids.shape[1] - 1)
        nbeta = tokens / math.log(tokens)
        run = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in RUNS[name].items()}
        for sampler in args.samplers:
            config = LLCConfig(batch_size=batch, shuffle=False, init_loss_batches=run["chains"], seed=args.seed, nbeta=nbeta,
                               sampler=sampler, **run, **SETTINGS[(name, sampler)])
            start = time.perf_counter()
            ours = lm_llc(model, ids, config)
            ours_s = time.perf_counter() - start
            start = time.perf_counter()
            theirs = devinterp_llc(model, ids, batch, config, nbeta)
            theirs_s = time.perf_counter() - start
            o_se = ours.std / math.sqrt(config.chains)
            d_mean, d_std = float(theirs["llc/mean"]), float(theirs["llc/std"])
            d_se = d_std / math.sqrt(config.chains)
            record = {
                "model": name, "sampler": sampler, "ours_llc": ours.mean, "ours_raw": ours.diagnostics["raw_mean"],
                "ours_std": ours.std, "ours_se": o_se, "ours_flags": ours.flags, "ours_path": ours.diagnostics["path"],
                "devinterp_llc": d_mean, "devinterp_std": d_std, "devinterp_se": d_se,
                "ratio": ours.diagnostics["raw_mean"] / d_mean,
                "z": (ours.diagnostics["raw_mean"] - d_mean) / math.sqrt(o_se ** 2 + d_se ** 2),
                "ours_loss_at_wstar": ours.init_loss, "ours_s": ours_s, "devinterp_s": theirs_s,
                "epsilon": config.epsilon, "gamma": config.gamma, "nbeta": nbeta, "tokens_per_batch": tokens,
                "seed": config.seed, "chains": config.chains, "draws": config.draws, "burn_in": config.burn_in,
                "rmsprop_alpha": config.rmsprop_alpha, "rmsprop_eps": config.rmsprop_eps,
                "threads": torch.get_num_threads(), "cpu": cpu_name() + " (2 cores, shared with other jobs)",
                "torch": torch.__version__, **extra,
            }
            line = json.dumps(record)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(line + "\n")


if __name__ == "__main__":
    main()
