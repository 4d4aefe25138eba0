"""The paper's published numbers (Premakumar et al. 2024, arXiv 2407.10188), read off its figures.

Values are approximate (read from plots; ``~`` in the reference notes). Keys: task -> hidden size ->
auxiliary weight (0 = baseline) -> value. Only the self-modeling method was published; the controls
(activation-l2, weight-decay) have no paper values.
"""

from __future__ import annotations

PAPER = "Premakumar et al. 2024 (arXiv 2407.10188), values read off its figures"

# Final-layer weight SD (classification rows) at the end of training.
WEIGHT_SD: dict[str, dict[int, dict[float, float]]] = {
    "mnist": {
        64: {0: 0.262, 1: 0.234, 5: 0.221, 10: 0.230, 20: 0.118, 50: 0.094},
        128: {0: 0.189, 1: 0.175, 5: 0.165, 10: 0.158, 20: 0.171, 50: 0.079},
        256: {0: 0.136, 1: 0.129, 5: 0.121, 10: 0.117, 20: 0.113, 50: 0.112},
        512: {0: 0.097, 1: 0.093, 5: 0.091, 10: 0.088, 20: 0.085, 50: 0.081},
    },
    "cifar10": {2000: {0: 0.060, 0.5: 0.053, 1: 0.055, 2: 0.057}},
    "imdb": {128: {0: 2.05, 100: 1.6, 500: 0.75}},
}

# RLCT (LLC) of the pruned classifier. MNIST's negative values are the collapsed runs.
RLCT: dict[str, dict[int, dict[float, float]]] = {
    "mnist": {
        64: {0: 33, 1: 32, 5: 29.5, 10: 25.5, 20: -3.5, 50: -5.5},
        128: {0: 38.5, 1: 37.5, 5: 34.5, 10: 32, 20: 28, 50: -16},
        256: {0: 46.5, 1: 45.5, 5: 42, 10: 39.5, 20: 37, 50: 28},
        512: {0: 58, 1: 58, 5: 56, 10: 53, 20: 49, 50: 37},
    },
    "cifar10": {2000: {0: 81.5, 0.5: 72.5, 1: 69.3, 2: 66.7}},
    "imdb": {128: {0: 13.6, 100: 11.2, 500: 5.2}},
}

# Test accuracy. MNIST: ~0.96-0.97 except the collapsed runs listed; CIFAR ~0.92 for all.
_MNIST_ACC = 0.965
ACCURACY: dict[str, dict[int, dict[float, float]]] = {
    "mnist": {
        h: {w: _MNIST_ACC for w in (0, 1, 5, 10, 20, 50)} for h in (64, 128, 256, 512)
    },
    "cifar10": {2000: {0: 0.92, 0.5: 0.92, 1: 0.92, 2: 0.92}},
    "imdb": {128: {0: 0.819, 100: 0.821, 500: 0.836}},
}
ACCURACY["mnist"][64].update({20: 0.27, 50: 0.11})
ACCURACY["mnist"][128][50] = 0.14

TABLES = {"weight_sd": WEIGHT_SD, "rlct": RLCT, "accuracy": ACCURACY}


def paper_value(measure: str, task: str, hidden: int, method: str, strength: float) -> float | None:
    """The paper's ``measure`` for a condition, or None when it published none (controls, other grids)."""
    if method not in ("baseline", "self-model"):
        return None
    key = 0.0 if method == "baseline" else float(strength)
    return TABLES[measure].get(task, {}).get(hidden, {}).get(key)
