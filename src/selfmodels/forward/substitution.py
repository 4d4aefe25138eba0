"""Causal substitution: how much of the predicted layers' effect on the output the forward model carries.

A subject is split at the source and target layers into three callables
(:class:`selfmodels.subjects.base.LayerSplit`, from ``subject.split(source, target)``):
``prefix(tokens) -> a_i``, ``middle(a_i) -> a_j`` (the layers being predicted) and
``suffix(a_j) -> logits``. On the same tokens we compare four runs that share the prefix (computed
once):

- normal:       suffix(middle(a_i))
- substituted:  suffix(fwd(a_i))          (the predicted layers replaced by the forward model)
- skipped:      suffix(a_i)               (the predicted layers skipped: the paper's "ablated")
- zero-ablated: suffix(0)                 (the target residual set to zero, as SAE tooling does)

Reported per mode: next-token accuracy (argmax), cross-entropy, and KL(normal ‖ mode) per token,
averaged; ``recovery = 1 - mean KL_sub / mean KL_skip`` (see :func:`metrics.recovery`).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from selfmodels.forward.categories import CATEGORIES, TokenCategories
from selfmodels.forward.metrics import kl_per_token, recovery
from selfmodels.subjects.base import LayerSplit

MODES = ("normal", "substituted", "skipped", "zero")


class _Totals:
    def __init__(self):
        self.n = 0
        self.sums = {f"{k}_{m}": 0.0 for m in MODES for k in ("correct", "ce", "kl")}

    def add(self, mask: torch.Tensor | None, per_token: dict[str, torch.Tensor]) -> None:
        for key, values in per_token.items():
            self.sums[key] += (values if mask is None else values[mask]).double().sum().item()
        self.n += per_token["kl_normal"].numel() if mask is None else int(mask.sum())

    def result(self) -> dict:
        n = max(self.n, 1)
        out = {"tokens": self.n}
        for mode in MODES:
            out[f"accuracy_{mode}"] = self.sums[f"correct_{mode}"] / n
            out[f"ce_{mode}"] = self.sums[f"ce_{mode}"] / n
            if mode != "normal":
                out[f"kl_{mode}"] = self.sums[f"kl_{mode}"] / n
        out["recovery"] = recovery(out["kl_substituted"], out["kl_skipped"]) if self.n else float("nan")
        out["recovery_vs_zero"] = recovery(out["kl_substituted"], out["kl_zero"]) if self.n else float("nan")
        return out


def _per_token(logits: torch.Tensor, normal: torch.Tensor, y: torch.Tensor, mode: str) -> dict[str, torch.Tensor]:
    """Correctness, cross-entropy and KL(normal || mode) per position of one mode's logits (B, T, V)."""
    return {
        f"correct_{mode}": (logits.argmax(-1) == y).float(),  # (B, T)
        f"ce_{mode}": F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view_as(y),
        f"kl_{mode}": kl_per_token(normal, logits) if mode != "normal" else torch.zeros_like(y, dtype=torch.float),
    }


@torch.no_grad()
def substitution_eval_many(
    split: LayerSplit,
    predictors: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    categories: TokenCategories | None = None,
    shared_prefix: bool = True,
    progress: bool = False,
) -> dict[str, dict]:
    """Substitution metrics of several predictors of the same split over ``batches`` of (inputs (B, T), next
    tokens (B, T)): the normal, skipped and zero-ablated runs are computed once and shared, each predictor adds
    one substituted run. Returns ``{name: the _Totals result}`` (with ``categories`` when given).

    ``shared_prefix=False`` recomputes the prefix for every mode (naive full passes): the same numbers, more
    work; kept for the benchmark.
    """
    overall = {name: _Totals() for name in predictors}
    per_cat = {name: {c: _Totals() for c in CATEGORIES} for name in predictors} if categories is not None else {}
    for x, y in tqdm(batches, desc="substitution", disable=not progress, leave=False):
        src = split.prefix(x)  # (B, T, d)
        fresh = (lambda: src) if shared_prefix else (lambda: split.prefix(x))
        normal = split.suffix(split.middle(src))  # (B, T, V)
        shared = {}
        for mode, logits in (("normal", normal), ("skipped", split.suffix(fresh())), ("zero", split.suffix(torch.zeros_like(fresh())))):
            shared.update(_per_token(logits, normal, y, mode))
        masks = categories.masks(x, y, normal) if categories is not None else {}
        for name, predictor in predictors.items():
            per_token = {**shared, **_per_token(split.suffix(predictor(fresh())), normal, y, "substituted")}
            per_token = {k: v.cpu() for k, v in per_token.items()}
            overall[name].add(None, per_token)
            for category, mask in masks.items():
                per_cat[name][category].add(mask, per_token)
    results = {name: totals.result() for name, totals in overall.items()}
    for name in per_cat:
        results[name]["categories"] = {c: totals.result() for c, totals in per_cat[name].items()}
    return results


def substitution_eval(split: LayerSplit, predictor: Callable[[torch.Tensor], torch.Tensor],
                      batches: Iterable[tuple[torch.Tensor, torch.Tensor]], categories: TokenCategories | None = None,
                      shared_prefix: bool = True, progress: bool = False) -> dict:
    """:func:`substitution_eval_many` for one predictor."""
    return substitution_eval_many(split, {"model": predictor}, batches, categories, shared_prefix, progress)["model"]
