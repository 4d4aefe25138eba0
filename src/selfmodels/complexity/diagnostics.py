"""Diagnostics that say whether an LLC estimate can be trusted, and the flags they raise.

Inputs are the loss traces ``L_batch(w_t)`` (chains x draws), the loss at w* (``init_loss``), nβ, the
burn-in and the parameter count d. With ``lam[c, t] = nbeta * (trace[c, t] - init_loss)`` and ``kept``
the draws after burn-in, the rules (documented in docs/llc.md) are:

- ``nonfinite_chain_<c>``: chain c produced a non-finite loss. It is left out of the estimate.
- ``diverged_chain_<c>``: chain c's kept mean ``lam`` exceeds d, twice the learning coefficient d/2
  of a regular model with d parameters (an upper bound on any true LLC; twice, so that a regular
  model's chains, which scatter around d/2, are not caught): the chain left the basin of w* (step
  size too large or localization too weak). It is left out of the estimate.
- ``no_valid_chains``: every chain was left out; the estimate is null.
- ``not_at_minimum``: more than half of the kept draws (over the valid chains) have a loss below
  L(w*), or the estimate is negative. w* is then not a local minimum (e.g. a collapsed training run)
  and the estimate is not an LLC: it is reported as null, its raw value kept in the diagnostics.
- ``not_converged``: the mean of ``lam`` over the first and the second half of the kept draws differ
  by more than ``convergence_tolerance * max(|estimate|, 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class TraceDiagnosis:
    """What :func:`diagnose` found: the estimate (null when flagged untrustworthy) and why."""

    mean: float
    std: float
    per_chain: list[float]
    flags: list[str] = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else float("nan")


def diagnose(traces: torch.Tensor, init_loss: float, nbeta: float, burn_in: int, num_params: int,
             convergence_tolerance: float = 0.1) -> TraceDiagnosis:
    """Estimate λ̂ = mean over valid chains of nβ (mean kept loss - L(w*)) and raise the flags above.

    ``traces`` is (chains, draws); ``std`` is the sample standard deviation (ddof=1) across valid chains.
    """
    traces = traces.detach().to("cpu", torch.float64)              # (C, D)
    lam = nbeta * (traces - init_loss)                               # (C, D)
    kept = lam[:, burn_in:]                                          # (C, K)
    chains = traces.shape[0]
    flags: list[str] = []
    finite = torch.isfinite(traces).all(dim=1)                       # (C,)
    per_chain = kept.mean(dim=1)                                     # (C,)
    valid = []
    for c in range(chains):
        if not bool(finite[c]):
            flags.append(f"nonfinite_chain_{c}")
        elif float(per_chain[c]) > num_params:
            flags.append(f"diverged_chain_{c}")
        else:
            valid.append(c)
    per_chain_list = [float(v) if math.isfinite(float(v)) else float("nan") for v in per_chain]
    raw_mean, std = _mean_std([per_chain_list[c] for c in valid])
    diagnostics: dict = {
        "valid_chains": valid,
        "raw_mean": raw_mean,
        "kept_draws": int(kept.shape[1]),
        "lambda_d_over_2": num_params / 2,
    }
    if not valid:
        flags.append("no_valid_chains")
        return TraceDiagnosis(float("nan"), float("nan"), per_chain_list, flags, diagnostics)

    good = kept[valid]                                               # (V, K)
    below = float((traces[valid, burn_in:] < init_loss).double().mean())
    diagnostics["fraction_below_init_loss"] = below
    diagnostics["fraction_below_init_loss_per_chain"] = \
        (traces[:, burn_in:] < init_loss).double().mean(dim=1).tolist()
    half = good.shape[1] // 2
    first, second = float(good[:, :half].mean()), float(good[:, half:].mean())
    diagnostics["trace_first_half_mean"] = first
    diagnostics["trace_second_half_mean"] = second
    mean = raw_mean
    if below > 0.5 or raw_mean < 0:
        flags.append("not_at_minimum")
        mean, std = float("nan"), float("nan")
    if half == 0 or abs(second - first) > convergence_tolerance * max(abs(raw_mean), 1.0):
        flags.append("not_converged")
    return TraceDiagnosis(mean, std, per_chain_list, flags, diagnostics)
