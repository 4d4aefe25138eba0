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

from collections import defaultdict

import numpy as np

from selfmodels.stats import direction, linear_trend, welch_difference

TREND_MEASURES = ("weight_sd", "test_accuracy", "llc_mean")


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
