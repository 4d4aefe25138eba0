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


@torch.no_grad()
def substitution_eval(
    split: LayerSplit,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    categories: TokenCategories | None = None,
    shared_prefix: bool = True,
    progress: bool = False,
) -> dict:
    """Substitution metrics over ``batches`` of (inputs (B, T), next tokens (B, T)).

    ``shared_prefix=False`` recomputes the prefix for every mode (three naive full passes and one
    more for zero-ablation): the same numbers, more work; kept for the benchmark.
    Returns the ``_Totals`` result over all tokens, plus ``categories: {name: {...}}`` when given.
    """
    overall = _Totals()
    per_cat = {name: _Totals() for name in CATEGORIES} if categories is not None else {}
    for x, y in tqdm(batches, desc="substitution", disable=not progress, leave=False):
        src = split.prefix(x)  # (B, T, d)
        tgt = split.middle(src)
        logits = {"normal": split.suffix(tgt)}  # (B, T, V)
        fresh = (lambda: src) if shared_prefix else (lambda: split.prefix(x))
        logits["substituted"] = split.suffix(predictor(fresh()))
        logits["skipped"] = split.suffix(fresh())
        logits["zero"] = split.suffix(torch.zeros_like(fresh()))
        per_token = {}
        for mode, lg in logits.items():
            per_token[f"correct_{mode}"] = (lg.argmax(-1) == y).float()  # (B, T)
            per_token[f"ce_{mode}"] = F.cross_entropy(lg.flatten(0, 1).float(), y.flatten(), reduction="none").view_as(y)
            per_token[f"kl_{mode}"] = kl_per_token(logits["normal"], lg) if mode != "normal" else torch.zeros_like(y, dtype=torch.float)
        per_token = {k: v.cpu() for k, v in per_token.items()}
        overall.add(None, per_token)
        if categories is not None:
            for name, mask in categories.masks(x, y, logits["normal"]).items():
                per_cat[name].add(mask, per_token)
    result = overall.result()
    if categories is not None:
        result["categories"] = {name: totals.result() for name, totals in per_cat.items()}
    return result
