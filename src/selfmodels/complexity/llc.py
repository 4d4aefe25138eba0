"""The local learning coefficient (LLC, the local RLCT) of trained weights w*, estimated with SGLD.

Estimator (Lau et al. 2023; the self-modeling paper's settings are in :func:`paper_llc_config`)::

    λ̂ = nβ * ( E_{w ~ p_local}[ L_batch(w) ] - L(w*) ),   p_local(w) ∝ exp(-nβ L(w) - γ/2 |w - w*|²)

- the expectation is the mean of the SGLD draws ``L_batch(w_t)`` after burn-in (default: the first
  half of the draws is dropped), per chain; λ̂ is the mean over chains, its ``std`` the spread
  across chains (ddof=1);
- L(w*) (``init_loss``) is the mean loss over the first ``init_loss_batches`` minibatches;
- nβ defaults to ``b / ln b`` with b the batch size (``use_dataset_size_for_nbeta``: ``n / ln n``);
- SGLD: see :mod:`selfmodels.complexity.sgld` for the update and its argument names
  (``sampler="rmsprop_sgld"``: RMSprop-preconditioned SGLD, on the vmap and sequential paths);
- language models (per-token loss, nβ over tokens): :mod:`selfmodels.complexity.lm_llc`.

Sampling mode, chosen explicitly: by default (``model_mode="eval"``) the model is sampled in eval
mode, so BatchNorm uses its running statistics (a fixed function of w) and dropout is off; the data are
used as given, with no augmentation. ``model_mode="train"`` reproduces the paper's code (BatchNorm on
batch statistics; each chain keeps its own running statistics) and runs the chains sequentially.

Across processes (``torchrun``, see :mod:`selfmodels.distributed`): chain c runs on rank c % world with
the seed and noise generator it has on one process, and the traces are gathered to every rank, so every
rank returns the estimate, traces and flags of a one-process run.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from selfmodels import distributed
from selfmodels.complexity.batches import as_batch_cycle
from selfmodels.complexity.diagnostics import diagnose
from selfmodels.complexity.losses import cross_entropy
from selfmodels.complexity.config import PATHS, LLCConfig  # LLCConfig: defined there, torch-free
from selfmodels.complexity.sgld import SGLDChains
from selfmodels.complexity.stacked_mlp import Unsupported
from selfmodels.configs import to_dict
from selfmodels.errors import UserError, require
from selfmodels.runtime import resolve_device


# The self-modeling paper's settings (../shared/reference/self-modeling-setup.md, "Complexity measures").
_PAPER = {
    "mnist": dict(epsilon=1e-4, gamma=100.0, chains=4, draws=1000),
    "cifar10": dict(epsilon=1e-4, gamma=100.0, chains=4, draws=400),
    "imdb": dict(epsilon=1e-3, gamma=10.0, chains=4, draws=1000),
}


def paper_llc_config(task: str, batch_size: int) -> LLCConfig:
    """The paper's ε, γ, chains x draws for ``task`` (mnist, cifar10, imdb); nβ = b/ln b, seeds 42.."""
    if task not in _PAPER:
        raise UserError(f"no paper LLC settings for task {task!r}; known: {', '.join(_PAPER)}")
    return LLCConfig(batch_size=batch_size, seed=42, **_PAPER[task])


def default_nbeta(size: int) -> float:
    """``size / ln(size)``: the default inverse temperature for a batch (or dataset) of ``size``."""
    require(size > 1, f"default nbeta = b/ln(b) needs b > 1, got {size}; pass nbeta explicitly")
    return size / math.log(size)


@dataclass
class LLCResult:
    """An LLC estimate with everything needed to judge it.

    ``mean`` is null (NaN) when the flags say the number is not an LLC (``not_at_minimum``,
    ``no_valid_chains``); the raw value is then in ``diagnostics["raw_mean"]``.
    """

    mean: float
    std: float
    per_chain: list[float]
    loss_traces: torch.Tensor  # (chains, draws): L_batch(w_t) at each draw, burn-in included
    init_loss: float           # L(w*), the training loss the estimate starts from
    nbeta: float
    flags: list[str]
    diagnostics: dict
    config: dict = field(default_factory=dict)

    def lambda_traces(self) -> torch.Tensor:
        """nβ (L_batch(w_t) - L(w*)), (chains, draws)."""
        return self.nbeta * (self.loss_traces.double() - self.init_loss)

    def trace_windows(self, windows: int = 10) -> list[float]:
        """The chain-averaged λ̂ trace (valid chains, burn-in included) as ``windows`` window means."""
        valid = self.diagnostics.get("valid_chains") or list(range(self.loss_traces.shape[0]))
        lam = self.lambda_traces()[valid].mean(dim=0)                     # (D,)
        return [float(chunk.mean()) for chunk in torch.tensor_split(lam, min(windows, lam.numel()))]

    def trace_records(self) -> list[dict[str, float]]:
        """The traces draw by draw, as curve records (:mod:`selfmodels.curves`): ``draw`` (0-based, burn-in
        included), ``loss_chain{c}`` = L_batch(w_t), ``lambda_chain{c}`` = nβ (L_batch(w_t) - L(w*)) and
        ``lambda_mean``, the mean of the latter over the valid chains."""
        valid = self.diagnostics.get("valid_chains") or list(range(self.loss_traces.shape[0]))
        loss, lam = self.loss_traces.double(), self.lambda_traces()  # (chains, draws) each
        mean = lam[valid].mean(dim=0) if valid else torch.full(lam.shape[1:], float("nan"), dtype=torch.float64)
        return [{"draw": t, **{f"loss_chain{c}": float(loss[c, t]) for c in range(loss.shape[0])},
                 **{f"lambda_chain{c}": float(lam[c, t]) for c in range(lam.shape[0])}, "lambda_mean": float(mean[t])}
                for t in range(loss.shape[1])]

    def summary(self, prefix: str = "llc_") -> dict[str, Any]:
        """A JSON-ready dict without the full traces (for results.json)."""
        d = self.diagnostics
        return {
            f"{prefix}mean": self.mean,
            f"{prefix}std": self.std,
            f"{prefix}flags": list(self.flags),
            f"{prefix}loss_at_wstar": self.init_loss,
            f"{prefix}per_chain": list(self.per_chain),
            f"{prefix}raw_mean": d.get("raw_mean"),
            f"{prefix}nbeta": self.nbeta,
            f"{prefix}fraction_below_init_loss": d.get("fraction_below_init_loss"),
            f"{prefix}trace_first_half_mean": d.get("trace_first_half_mean"),
            f"{prefix}trace_second_half_mean": d.get("trace_second_half_mean"),
            f"{prefix}trace_windows": self.trace_windows(),
            f"{prefix}path": d.get("path"),
            f"{prefix}seconds": d.get("seconds"),
            f"{prefix}config": dict(self.config),
        }


def _trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _candidate_paths(config: LLCConfig) -> tuple[str, ...]:
    """The paths to try, fastest first; ``auto`` moves on when a path cannot run the model."""
    if config.batched != "auto":
        return (config.batched,)
    return ("sequential",) if config.model_mode == "train" else PATHS


def estimate_llc(model: nn.Module, data: Any, loss_fn: Callable[..., torch.Tensor], config: LLCConfig,
                 device: str | torch.device = "cpu", progress: bool = True) -> LLCResult:
    """Estimate the LLC of ``model``'s current weights w* (see the module docstring for the estimator).

    ``data``: a ``TensorDataset`` / tuple of tensors ``(inputs, *targets)`` (batched by
    ``config.batch_size`` in a seeded order) or a ``DataLoader`` (its batches, replayed in order).
    ``loss_fn(model(inputs), *targets)`` must return the mean loss of the batch. The model itself is
    not modified (sampling runs on a copy).
    """
    config.validate()
    require(_trainable_count(model) > 0, "the model has no trainable parameters: there is nothing to sample "
            "(set requires_grad=True on the parameters whose LLC you want)")
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    device = distributed.local_device(device)  # under torchrun: this rank's GPU
    progress = progress and distributed.is_main()
    batches = as_batch_cycle(data, config.batch_size, seed=config.seed, shuffle=config.shuffle, device=device)
    if config.nbeta is not None:
        nbeta = float(config.nbeta)
    else:
        nbeta = default_nbeta(batches.num_examples if config.use_dataset_size_for_nbeta else batches.batch_size)

    model = copy.deepcopy(model).to(device)
    model.train(config.model_mode == "train")
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)  # only train-mode dropout draws from the global generator
        with torch.no_grad():  # L(w*): mean loss over the first few minibatches of the sampling order
            stream = iter(batches)
            n_init = min(config.init_loss_batches, batches.batches_per_epoch)
            init = [loss_fn(model(b[0]), *b[1:]).double() for b in (next(stream) for _ in range(n_init))]
            init_loss = float(torch.stack(init).mean())
        require(math.isfinite(init_loss), f"the loss at the trained weights is {init_loss}: check the model and data")
        traces, path, fallback, groups = _sample(model, batches, loss_fn, config, nbeta, progress, device)
    seconds = time.perf_counter() - start

    verdict = diagnose(traces, init_loss, nbeta, config.kept_from(), _trainable_count(model),
                       config.convergence_tolerance)
    verdict.diagnostics.update(path=path, seconds=seconds, chain_groups=groups, batches_per_epoch=batches.batches_per_epoch,
                               num_examples=batches.num_examples, batch_size=batches.batch_size,
                               num_params=_trainable_count(model))
    if fallback:
        verdict.diagnostics["fallback_reasons"] = fallback
    if distributed.world()[1] > 1:
        verdict.diagnostics["ranks"] = distributed.world()[1]
    return LLCResult(verdict.mean, verdict.std, verdict.per_chain, traces.cpu(), init_loss, nbeta,
                     verdict.flags, verdict.diagnostics, {**to_dict(config), "nbeta_used": nbeta})


def _chain_groups(config: LLCConfig, device: torch.device, chains: list[int]) -> list[list[int]]:
    """The seeds of ``chains`` (this process's), split into groups that advance in parallel threads (one
    group on GPU)."""
    seeds = [config.seed + c for c in chains]
    count = config.chain_groups or (min(len(chains), torch.get_num_threads()) if device.type == "cpu" else 1)
    return [[int(seed) for seed in part] for part in np.array_split(seeds, min(count, len(chains)))]


def _gather_chains(traces: torch.Tensor, chains: list[int], config: LLCConfig) -> torch.Tensor:
    """Every rank's (its chains, draws) traces, put together as (config.chains, draws) in chain order."""
    full = torch.empty(config.chains, config.draws, dtype=traces.dtype, device=traces.device)
    for indices, part in distributed.all_gather_object((chains, traces.cpu())):
        full[indices] = part.to(traces.device)
    return full


@contextmanager
def _intra_op_threads(threads: int):
    """torch's intra-op thread count set to ``threads`` inside the block (process-wide), then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sample(model, batches, loss_fn, config: LLCConfig, nbeta: float, progress: bool, device: torch.device):
    """Run the chains; return the (chains, draws) loss traces, the path used, why faster paths were
    passed over ({path: reason}) and the number of chain groups.

    Chains are independent, so on a CPU with several threads they run as groups in parallel threads,
    each group with its share of the intra-op threads: small products parallelize better across
    chains than inside one product, and the Gaussian noise (drawn serially by torch's CPU generator)
    is drawn for several groups at once. Each chain's numbers do not depend on the grouping, nor on
    the process that runs it: under torchrun this process runs its share of the chains (chain c on
    rank c % world), then the traces of all chains are gathered.
    """
    rank, ranks = distributed.world()
    chains = distributed.shard(range(config.chains), rank, ranks, what="LLC chains")  # which chains run here
    groups = _chain_groups(config, device, chains)
    total = config.draws * config.steps_between_draws
    bar = tqdm(total=total * len(groups), disable=not progress, leave=False,
               desc=f"LLC SGLD ({len(chains)} chains in {len(groups)} group{'s' * (len(groups) > 1)})")
    lock = threading.Lock()

    def advance():
        with lock:
            bar.update(1)

    try:
        # The first group picks the path, in this thread (torch.fx tracing is not thread-safe); every
        # other group samples its own copy of the model (functional_call swaps a module's parameters).
        stream = iter(batches)
        first, path, fallback = _first_step(model, next(stream), loss_fn, config, nbeta, groups[0])
        runs = [lambda: _run_chains(first[0], stream, config, advance, first_losses=first[1])]
        for seeds in groups[1:]:
            sampler = SGLDChains(copy.deepcopy(model), loss_fn, chains=len(seeds), epsilon=config.epsilon,
                                 gamma=config.gamma, nbeta=nbeta, seeds=seeds, path=path, stacked=first[0].stacked,
                                 **_update_rule(config))
            runs.append(lambda sampler=sampler: _run_chains(sampler, iter(batches), config, advance))
        if len(runs) == 1:
            traces = [runs[0]()]
        else:
            with _intra_op_threads(max(1, torch.get_num_threads() // len(runs))), \
                    ThreadPoolExecutor(len(runs), thread_name_prefix="llc-chains") as pool:
                traces = list(pool.map(lambda run: run(), runs))
    finally:
        bar.close()
    traces = torch.cat(traces)
    if ranks > 1:
        traces = _gather_chains(traces, chains, config)
    return traces, path, fallback, len(groups)


def _update_rule(config: LLCConfig) -> dict:
    """The SGLDChains arguments that choose the update (plain or RMSprop-preconditioned SGLD)."""
    return dict(sampler=config.sampler, rmsprop_alpha=config.rmsprop_alpha, rmsprop_eps=config.rmsprop_eps)


def _first_step(model, batch, loss_fn, config: LLCConfig, nbeta: float, seeds: list[int]):
    """Build the sampler for ``seeds`` on the fastest path that runs the model and take its first step:
    ((sampler, losses), path, {passed-over path: reason})."""
    candidates, fallback = _candidate_paths(config), {}
    for path in candidates:
        try:
            sampler = SGLDChains(model, loss_fn, chains=len(seeds), epsilon=config.epsilon, gamma=config.gamma,
                                 nbeta=nbeta, seeds=seeds, path=path, **_update_rule(config))
            return (sampler, sampler.step(batch)), path, fallback
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            if path == candidates[-1]:
                if isinstance(exc, Unsupported):  # asked for explicitly: a user error, not a crash
                    raise UserError(f"batched=stacked cannot run this model: {exc}; use auto or vmap") from exc
                raise
            # This path cannot run the model (not a plain MLP; an op without a vmap rule): try the next.
            # A failed first step changed nothing (gradients come before the update).
            fallback[path] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    raise AssertionError("unreachable: the last candidate path raises")


def _run_chains(sampler: SGLDChains, stream, config: LLCConfig, advance, first_losses=None) -> torch.Tensor:
    """All draws of ``sampler``'s chains, (chains, draws); ``first_losses``: step 0 was already taken."""
    k = config.steps_between_draws
    params = sampler.params[0]
    traces = torch.empty(sampler.chains, config.draws, dtype=params.dtype, device=params.device)  # (C, D)
    for i in range(config.draws * k):
        losses = first_losses if i == 0 and first_losses is not None else sampler.step(next(stream))
        if (i + 1) % k == 0:  # draw d records the loss at w_i, i = (d + 1) k - 1 (as devinterp does)
            traces[:, (i + 1) // k - 1] = losses
        advance()
    return traces


def classifier_llc(model: nn.Module, dataset: Any, config: LLCConfig, device: str | torch.device = "cpu",
                   progress: bool = False) -> dict:
    """LLC of a classifier under mean cross-entropy on ``dataset`` = (inputs, labels); JSON-ready dict.

    Keys: ``llc_mean`` (null when flagged not an LLC), ``llc_std``, ``llc_flags``, ``llc_loss_at_wstar``,
    ``llc_per_chain``, ``llc_raw_mean``, ``llc_nbeta``, ``llc_fraction_below_init_loss``,
    ``llc_trace_first_half_mean``, ``llc_trace_second_half_mean``, ``llc_trace_windows``, ``llc_path``,
    ``llc_seconds``, ``llc_config``.
    """
    return estimate_llc(model, dataset, cross_entropy, config, device=device, progress=progress).summary()


__all__ = ["LLCConfig", "LLCResult", "paper_llc_config", "estimate_llc", "classifier_llc", "default_nbeta",
           "cross_entropy"]
