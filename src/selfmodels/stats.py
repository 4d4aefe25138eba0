"""The statistics of every report: means over seeds with 95% CIs, differences between conditions, trends.

Every interval is a two-sided 95% Student-t interval. Values that are ``None`` or not finite are dropped
first (a flagged LLC, a run that did not measure something); an interval that cannot be formed (too few
values) has NaN bounds, never a made-up width.

- :func:`mean_ci95`: mean and half-width over seeds.
- :func:`welch_difference`: ``mean(a) - mean(b)`` for independent groups (unequal variances, Welch-Satterthwaite).
- :func:`paired_difference`: ``mean(a_s - b_s)`` over the seeds ``s`` both conditions share (same seed, same
  data order, same initial weights), which removes the seed-to-seed variance the two have in common.
- :func:`linear_trend`: the OLS slope of a measure on a strength, with its CI; :func:`direction` reads a CI.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as _st

NAN = float("nan")


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def _t_half(df: float, standard_error: float) -> float:
    return float(_st.t.ppf(0.975, df) * standard_error)


def mean_ci95(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t confidence interval.

    half_width = t_{0.975, n-1} * s / sqrt(n), with s the sample standard deviation (ddof=1).
    With one value the half-width is NaN (unknown); with none both are NaN.
    """
    arr = _finite(values)
    if arr.size == 0:
        return NAN, NAN
    if arr.size == 1:
        return float(arr[0]), NAN
    return float(arr.mean()), float(_st.t.ppf(0.975, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size))


def _interval(difference: float, half: float) -> dict:
    return {"difference": difference, "ci95_low": difference - half, "ci95_high": difference + half}


def welch_difference(a: Sequence[float | None], b: Sequence[float | None]) -> dict:
    """``mean(a) - mean(b)`` with Welch's 95% CI: se^2 = s_a^2/n_a + s_b^2/n_b, df by Welch-Satterthwaite.

    NaN bounds when either side has fewer than 2 values; a zero-width interval when both have no spread."""
    a, b = _finite(a), _finite(b)
    if len(a) == 0 or len(b) == 0:
        return {"difference": NAN, "ci95_low": NAN, "ci95_high": NAN}
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"difference": diff, "ci95_low": NAN, "ci95_high": NAN}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return _interval(diff, 0.0)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return _interval(diff, _t_half(df, se))


def paired_difference(a: Mapping[object, float | None], b: Mapping[object, float | None]) -> dict:
    """``mean_s (a_s - b_s)`` over the keys (seeds) present and finite in both, with the 95% t interval of that
    mean (df = n - 1); ``n`` is the number of pairs. NaN bounds with fewer than 2 pairs."""
    shared = [k for k in a if k in b and _finite([a[k], b[k]]).size == 2]
    d = np.asarray([a[k] - b[k] for k in shared], dtype=float)
    if d.size == 0:
        return {"difference": NAN, "ci95_low": NAN, "ci95_high": NAN, "n": 0}
    mean = float(d.mean())
    if d.size < 2:
        return {"difference": mean, "ci95_low": NAN, "ci95_high": NAN, "n": 1}
    return {**_interval(mean, _t_half(d.size - 1, d.std(ddof=1) / math.sqrt(d.size))), "n": int(d.size)}


def linear_trend(x: Sequence[float], y: Sequence[float]) -> dict:
    """OLS slope of y on x with its 95% CI ``slope +- t_{0.975, n-2} * SE``; NaN with fewer than 3 points or no
    spread in x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.ptp(x) == 0:
        return {"slope": NAN, "ci95_low": NAN, "ci95_high": NAN, "n": int(len(x))}
    fit = _st.linregress(x, y)
    half = _t_half(len(x) - 2, fit.stderr)
    return {"slope": float(fit.slope), "ci95_low": float(fit.slope - half), "ci95_high": float(fit.slope + half), "n": int(len(x))}


def direction(low: float | None, high: float | None, unclear: str = "no clear trend") -> str:
    """``falls`` / ``rises`` when the 95% CI [low, high] excludes zero, else ``unclear``; ``not estimable`` when
    either bound is missing or NaN."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "not estimable"
    if high < 0:
        return "falls"
    if low > 0:
        return "rises"
    return unclear
