"""Summary statistics used in every report: means with 95% confidence intervals over seeds."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as _scipy_stats


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t confidence interval.

    half_width = t_{0.975, n-1} * s / sqrt(n), with s the sample standard deviation (ddof=1).
    Non-finite values are dropped; with fewer than two values the half-width is NaN (unknown).
    """
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    if arr.size == 1:
        return float(arr[0]), float("nan")
    half = _scipy_stats.t.ppf(0.975, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size)
    return float(arr.mean()), float(half)
