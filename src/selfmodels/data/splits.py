"""Seeded, stratified index splits (one function for every held-out set we carve), the raw
train/test pair every loader returns before the splits and features are made, and the prepared
train/val/test features a task's ``prepare`` step makes from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from selfmodels.errors import require


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..N-1`` into ``(kept, held)`` with ``held`` holding ``fraction`` of every class.

    ``held`` has ``round(fraction * N)`` examples in all, shared among the classes in proportion to their
    sizes n_c: each class gets ``floor(fraction * n_c)``, and the few left over go to the classes with
    the largest remainders (ties: smaller class label first). Which members of a class are held is drawn
    by a NumPy generator seeded with ``seed``. Both index arrays are returned sorted, so the data's own
    order survives within each part.
    """
    require(0.0 < fraction < 1.0, f"split fraction must be strictly between 0 and 1, got {fraction}")
    labels = np.asarray(labels)
    classes, sizes = np.unique(labels, return_counts=True)  # sorted: draws do not depend on data order
    quotas = fraction * sizes
    counts = np.floor(quotas).astype(int)
    leftover = int(round(fraction * len(labels))) - counts.sum()
    counts[np.argsort(-(quotas - counts), kind="stable")[:leftover]] += 1
    require(0 < counts.sum() < len(labels),
            f"cannot hold out {fraction:g} of {len(labels)} examples: one part would be empty; change the fraction")
    rng = np.random.default_rng(seed)
    held = [rng.permutation(np.flatnonzero(labels == cls))[:n] for cls, n in zip(classes, counts)]
    held_idx = np.sort(np.concatenate(held))
    mask = np.ones(len(labels), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


@dataclass
class RawSplits:
    """Unnormalised examples as loaded: ``x`` arrays (images uint8 (N, C, H, W), or lists of texts)."""

    train_x: object
    train_y: np.ndarray
    test_x: object
    test_y: np.ndarray
    source: str
    test_from: str  # how the test set was obtained, for ``ClassificationData.split``
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """What a task's ``prepare`` step makes from the raw train / val / test parts."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    vocab: list[str] | None = None
