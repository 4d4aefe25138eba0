"""Metrics of a forward model's prediction and of causal substitution.

Regression (``pred``, ``source``, ``target`` all (B, T, d); every mean is over tokens)::

    token_cosine  = mean_t cos(pred_t, target_t)
    mse           = mean over all elements of (pred - target)²
    skip_cosine   = mean_t cos(source_t, target_t)             (copying the source: the "skip" baseline)
    delta_cosine  = mean_t cos(pred_t - source_t, target_t - source_t)   (the layer's update)
    delta_r2      = 1 - Σ‖target - pred‖² / Σ‖target - source‖²          (share of update energy explained)

Substitution (logits (..., V))::

    kl_per_token(normal, other) = Σ_v p_normal(v) (log p_normal(v) - log p_other(v))   = KL(normal ‖ other)
    recovery = 1 - mean KL_sub / mean KL_skip        (a ratio of means, as the paper)

Each regression metric is a :class:`RegressionMetric` in :data:`METRICS` (:func:`register_metric` adds one): the
:class:`RegressionTotals` accumulator sums every registered metric over batches (the same numbers over many batches
as over one), the evaluation reports them, ``results.json`` defines them and the report shows them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from selfmodels.errors import require
from selfmodels.registries import Registry

_EPS = 1e-8  # a zero vector has cosine 0 with anything (torch's convention for cosine_similarity)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-token cosine along the last dimension, computed in fp32: (..., d) -> (...)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=_EPS)


def token_cosine(pred: torch.Tensor, target: torch.Tensor) -> float:
    return _cos(pred, target).mean().item()


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return (pred.float() - target.float()).pow(2).mean().item()


def skip_cosine(source: torch.Tensor, target: torch.Tensor) -> float:
    return token_cosine(source, target)


def delta_cosine(pred: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> float:
    return token_cosine(pred.float() - source.float(), target.float() - source.float())


def delta_r2(pred: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> float:
    residual = (target.float() - pred.float()).pow(2).sum().item()
    update = (target.float() - source.float()).pow(2).sum().item()
    return _r2(residual, update)


def _r2(residual_energy: float, update_energy: float) -> float:
    if update_energy == 0.0:
        return 1.0 if residual_energy == 0.0 else float("nan")
    return 1.0 - residual_energy / update_energy


def kl_per_token(logits_normal: torch.Tensor, logits_other: torch.Tensor) -> torch.Tensor:
    """KL(normal ‖ other) per position: (..., V) -> (...), in nats, computed in fp32."""
    logp = F.log_softmax(logits_normal.float(), dim=-1)
    logq = F.log_softmax(logits_other.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1).clamp_min(0.0)  # clamp: fp rounding can give -1e-9


def recovery(kl_sub_mean: float, kl_skip_mean: float) -> float:
    """``1 - kl_sub_mean / kl_skip_mean``. When skipping costs nothing (``kl_skip_mean == 0``) there is
    nothing to recover: recovery is 1 if substitution also costs nothing, else undefined (NaN)."""
    if kl_skip_mean == 0.0:
        return 1.0 if kl_sub_mean == 0.0 else float("nan")
    return 1.0 - kl_sub_mean / kl_skip_mean


@dataclass(frozen=True)
class RegressionMetric:
    """A metric of a forward model's prediction, defined once for batch evaluation, running totals, the results'
    definitions and the report.

    ``sums(pred, source, target)`` gives this batch's additive sums (tensors (B, T, d) in fp32); ``value(totals)``
    turns the running sums (its own, plus ``tokens`` and ``elements``, the counts of positions and of entries) into
    the metric. Over many batches it is therefore exactly what one batch of all of them gives."""

    name: str
    definition: str
    label: str  # the report's row name
    sums: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, float]]
    value: Callable[[dict[str, float]], float]
    digits: int | None = None  # the report's digits (None: the table's)


METRICS: Registry[RegressionMetric] = Registry("metric")


def register_metric(metric: RegressionMetric, *, replace: bool = False) -> RegressionMetric:
    """Add ``metric``: every evaluation from then on reports it, ``results.json`` defines it, the report shows it."""
    require(metric.name not in ("tokens", "elements"), f"{metric.name!r} names a count every metric reads: give the "
                                                       "metric another name")
    return METRICS.register(metric.name, metric, replace=replace)


def metric_names() -> tuple[str, ...]:
    """The registered metrics' names, in the order they were registered (the report's order)."""
    return METRICS.names()


def metric_definitions() -> dict[str, str]:
    return {name: m.definition for name, m in METRICS.items()}


def _sum(x: torch.Tensor) -> float:
    return x.sum().item()


register_metric(RegressionMetric(
    "cosine", "mean over held-out tokens of cos(prediction_t, target_t)", "cosine",
    lambda p, s, t: {"cos": _sum(_cos(p, t))}, lambda n: n["cos"] / max(n["tokens"], 1)))
register_metric(RegressionMetric(
    "skip_cosine", "skip baseline: mean over tokens of cos(source_t, target_t) (what copying the source scores)",
    "skip cosine (copy the source)", lambda p, s, t: {"cos": _sum(_cos(s, t))}, lambda n: n["cos"] / max(n["tokens"], 1)))
register_metric(RegressionMetric(
    "delta_cosine", "mean over tokens of cos(prediction_t - source_t, target_t - source_t) (the update)", "update cosine",
    lambda p, s, t: {"cos": _sum(_cos(p - s, t - s))}, lambda n: n["cos"] / max(n["tokens"], 1)))
register_metric(RegressionMetric(
    "delta_r2", "1 - sum ||target - prediction||^2 / sum ||target - source||^2 (share of the update's energy explained)",
    "update R²", lambda p, s, t: {"residual": _sum((t - p).pow(2)), "update": _sum((t - s).pow(2))},
    lambda n: _r2(n["residual"], n["update"])))
register_metric(RegressionMetric(
    "mse", "mean over all elements of (prediction - target)^2, in the subject's activation units", "MSE",
    lambda p, s, t: {"squared_error": _sum((t - p).pow(2))}, lambda n: n["squared_error"] / max(n["elements"], 1), digits=4))


@dataclass
class RegressionTotals:
    """Running sums of every registered metric over any number of (pred, source, target) batches."""

    tokens: int = 0
    elements: int = 0
    sums: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> its sums

    @torch.no_grad()
    def add(self, pred: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> None:
        pred, source, target = pred.float(), source.float(), target.float()
        self.tokens += pred[..., 0].numel()
        self.elements += pred.numel()
        for name, metric in METRICS.items():
            mine = self.sums.setdefault(name, {})
            for key, value in metric.sums(pred, source, target).items():
                mine[key] = mine.get(key, 0.0) + value

    def result(self) -> dict[str, float]:
        def totals(name: str) -> dict[str, float]:  # a sum never added (no batch yet) is 0
            return defaultdict(float, {**self.sums.get(name, {}), "tokens": self.tokens, "elements": self.elements})

        return {**{name: metric.value(totals(name)) for name, metric in METRICS.items()}, "tokens": self.tokens}
