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

The :class:`RegressionTotals` accumulator gives the same numbers over many batches as over one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


@dataclass
class RegressionTotals:
    """Running sums for the regression metrics over any number of (pred, source, target) batches."""

    tokens: int = 0
    elements: int = 0
    cos_sum: float = 0.0
    skip_cos_sum: float = 0.0
    delta_cos_sum: float = 0.0
    sq_err_sum: float = 0.0
    update_energy_sum: float = 0.0

    @torch.no_grad()
    def add(self, pred: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> None:
        pred, source, target = pred.float(), source.float(), target.float()
        self.tokens += pred[..., 0].numel()
        self.elements += pred.numel()
        self.cos_sum += _cos(pred, target).sum().item()
        self.skip_cos_sum += _cos(source, target).sum().item()
        self.delta_cos_sum += _cos(pred - source, target - source).sum().item()
        self.sq_err_sum += (target - pred).pow(2).sum().item()
        self.update_energy_sum += (target - source).pow(2).sum().item()

    def result(self) -> dict[str, float]:
        n = max(self.tokens, 1)
        return {
            "cosine": self.cos_sum / n,
            "mse": self.sq_err_sum / max(self.elements, 1),
            "skip_cosine": self.skip_cos_sum / n,
            "delta_cosine": self.delta_cos_sum / n,
            "delta_r2": _r2(self.sq_err_sum, self.update_energy_sum),
            "tokens": self.tokens,
        }

