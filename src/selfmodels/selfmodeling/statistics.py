"""Does a measure fall as the strength rises? Effect sizes with 95% confidence intervals.

For each task, hidden size and non-baseline method, and for each measure (weight SD, test accuracy,
LLC when present), using the baseline runs as strength 0:

- ``slope``: the ordinary least-squares slope of the measure on the strength over the runs (one point
  per run) of the baseline and of the strengths where training did not collapse (see below; a
  collapsed fit would otherwise dominate the slope), with its 95% CI ``slope +- t_{0.975, n-2} * SE``.
  ``direction`` is ``falls`` when the whole CI is below 0, ``rises`` when it is above, ``no clear
  trend`` otherwise, and ``not estimable`` with fewer than 3 runs or a single strength left.
- ``differences``: per strength, ``mean(condition) - mean(baseline)`` with Welch's 95% CI (unequal
  variances, Welch-Satterthwaite degrees of freedom).
- ``collapsed``: the strengths whose mean test accuracy is closer to chance (1/C) than to the
  baseline's mean accuracy (a failed run, not a simpler model; its weight SD and LLC mean little).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np
from scipy import stats as st

TREND_MEASURES = ("weight_sd", "test_accuracy", "llc_mean")


def linear_trend(x: Sequence[float], y: Sequence[float]) -> dict:
    """OLS slope of y on x with its 95% CI; NaN where fewer than 3 points or no spread in x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    nan = float("nan")
    if len(x) < 3 or np.ptp(x) == 0:
        return {"slope": nan, "ci95_low": nan, "ci95_high": nan, "n": int(len(x))}
    fit = st.linregress(x, y)
    half = st.t.ppf(0.975, len(x) - 2) * fit.stderr
    return {"slope": float(fit.slope), "ci95_low": float(fit.slope - half), "ci95_high": float(fit.slope + half), "n": int(len(x))}


def welch_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """``mean(a) - mean(b)`` with Welch's 95% CI (NaN bounds when either side has fewer than 2 values)."""
    a = np.asarray([v for v in a if v is not None and math.isfinite(v)], float)
    b = np.asarray([v for v in b if v is not None and math.isfinite(v)], float)
    nan = float("nan")
    if len(a) == 0 or len(b) == 0:
        return {"difference": nan, "ci95_low": nan, "ci95_high": nan}
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"difference": diff, "ci95_low": nan, "ci95_high": nan}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"difference": diff, "ci95_low": diff, "ci95_high": diff}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(st.t.ppf(0.975, df) * se)
    return {"difference": diff, "ci95_low": diff - half, "ci95_high": diff + half}


def direction(low: float, high: float) -> str:
    """``falls`` / ``rises`` when the CI excludes zero, else ``no clear trend`` (``not estimable`` if NaN)."""
    if math.isnan(low) and math.isnan(high):
        return "not estimable"
    if math.isfinite(high) and high < 0:
        return "falls"
    if math.isfinite(low) and low > 0:
        return "rises"
    return "no clear trend"


def trends(records: list[dict]) -> list[dict]:
    """One entry per (task, hidden, method != baseline, measure) with slope, differences, collapse."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["hidden"], r["method"])].append(r)
    out = []
    for (task, hidden, method), rows in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if method == "baseline":
            continue
        base = groups.get((task, hidden, "baseline"), [])
        strengths = sorted({r["strength"] for r in rows})
        chance = 1.0 / rows[0]["num_classes"] if rows[0].get("num_classes") else None
        base_acc = [r["test_accuracy"] for r in base]
        collapsed = []
        if chance is not None and base_acc:
            ref = float(np.mean(base_acc))
            for s in strengths:
                acc = float(np.mean([r["test_accuracy"] for r in rows if r["strength"] == s]))
                if abs(acc - chance) < abs(acc - ref):
                    collapsed.append(s)
        for measure in TREND_MEASURES:
            if not any(r.get(measure) is not None for r in rows + base):
                continue
            kept = base + [r for r in rows if r["strength"] not in collapsed]
            points = [(r["strength"], r.get(measure)) for r in kept if r.get(measure) is not None]
            fit = linear_trend([p[0] for p in points], [p[1] for p in points])
            diffs = []
            for s in strengths:
                d = welch_difference([r.get(measure) for r in rows if r["strength"] == s], [r.get(measure) for r in base])
                diffs.append({"strength": s, **d})
            out.append({
                "task": task, "hidden": hidden, "method": method, "measure": measure,
                **fit, "direction": direction(fit["ci95_low"], fit["ci95_high"]),
                "differences": diffs, "collapsed": collapsed,
            })
    return out
