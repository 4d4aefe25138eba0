"""Evaluating forward models on a subject's held-out sequences: regression metrics and causal substitution.

Both go through the subject interface only: the source and target residuals from ``subject.residuals``
(stopping after the target), the substitution through ``subject.split``. A forward model runs in float32
whatever the subject's dtype; its prediction is cast back where it re-enters the subject.
"""

from __future__ import annotations

from typing import Callable

import torch

from selfmodels.forward.categories import TokenCategories
from selfmodels.forward.metrics import RegressionTotals, metric_names
from selfmodels.forward.substitution import substitution_eval
from selfmodels.subjects.base import Subject

def batches_of(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, next tokens) in fixed batches of ``size`` sequences, in order."""
    return [(x[i : i + size], y[i : i + size]) for i in range(0, x.shape[0], size)]


def as_predictor(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``h -> model(h)`` computed in float32 on the model's own device (the subject may run in bf16, its source block
    on another GPU than the forward model), the prediction handed back on ``h``'s device."""
    weight = next(model.parameters(), None)  # a parameter-free model (a baseline) runs where h is

    def predict(h: torch.Tensor) -> torch.Tensor:
        device = h.device if weight is None else weight.device
        return model(h.to(device=device, dtype=torch.float32)).to(h.device)

    return predict


@torch.no_grad()
def regression(subject: Subject, models: dict[str, torch.nn.Module], batches, source: int, target: int) -> dict[str, dict]:
    """Every registered metric (:data:`selfmodels.forward.metrics.METRICS`: cosine, skip cosine, update cosine, update R²,
    MSE and any added) of each model on the held-out ``batches``."""
    totals = {name: RegressionTotals() for name in models}
    for x, _ in batches:
        acts = subject.residuals(x, [source, target])
        src, tgt = acts[source].float(), acts[target].float()  # (B, T, d)
        for name, model in models.items():
            totals[name].add(model(src), src, tgt)
    return {name: t.result() for name, t in totals.items()}


def evaluate(subject: Subject, model: torch.nn.Module, batches, source: int, target: int,
             categories: TokenCategories | None = None, progress: bool = False) -> dict:
    """Regression metrics and causal substitution (per category with ``categories``) of one forward model."""
    metrics = regression(subject, {"model": model}, batches, source, target)["model"]
    moved = [(x.to(subject.device), y.to(subject.device)) for x, y in batches]
    substitution = substitution_eval(subject.split(source, target), as_predictor(model), moved, categories=categories,
                                     progress=progress)
    return {**{k: metrics[k] for k in metric_names()}, "tokens": metrics["tokens"], "substitution": substitution}
