"""The quick reproduction's self-modeling effects beside the paper's: directions and relative changes.

For the self-model method at each hidden size and auxiliary weight (AW), against the baseline of the
same hidden size:

- ours: ``difference`` = mean(AW) - mean(baseline) with Welch's 95% CI (from
  :func:`~selfmodels.selfmodeling.statistics.trends`), and ``relative`` = difference / mean(baseline),
  whose CI is the difference's CI over the same baseline mean (the baseline mean's own uncertainty is
  left out of it);
- the paper's relative change, read off its figures for the same setup (:mod:`~selfmodels.selfmodeling.reference`):
  MNIST for our MNIST and Fashion-MNIST runs, IMDB for our sentiment runs (IMDB or the Rotten Tomatoes snippets);
- ``verdict``: ``agrees`` when our CI excludes 0 on the paper's side, ``differs`` when it excludes 0 on
  the other side, ``unclear`` when it includes 0, ``collapsed`` where our fit or the paper's failed
  (accuracy near chance: its weight SD and LLC describe a failed fit). A paper change under 1% counts
  as ``about equal``; ours is then ``agrees`` when its CI includes 0.
"""

from __future__ import annotations

import math

from selfmodels.report.markdown import fmt, table
from selfmodels.selfmodeling import reference
from selfmodels.stats import direction

PAPER_TASK = "mnist"  # the paper's only task with an MLP grid; Fashion-MNIST runs are compared with it
# Our task -> the paper's task whose figures it is compared with, and that task's name in the report.
PAPER_TASKS = {"mnist": "mnist", "fashion-mnist": "mnist", "imdb": "imdb"}
PAPER_LABELS = {"mnist": "MNIST", "imdb": "IMDB"}
# The measures compared per paper task: the paper's IMDB accuracy changes with AW (0.819 -> 0.836); its MNIST
# accuracy is flat (~0.965) outside the collapsed runs, so there only weight SD and LLC are compared.
COMPARED = {"mnist": ("weight_sd", "llc_mean"), "imdb": ("weight_sd", "llc_mean", "test_accuracy")}
MEASURES = {"weight_sd": ("weight SD", reference.WEIGHT_SD), "llc_mean": ("LLC", reference.RLCT),
            "test_accuracy": ("test accuracy", reference.ACCURACY)}
PAPER_COLLAPSE_ACCURACY = 0.5  # the paper's runs below this accuracy had collapsed (0.11-0.27)
ABOUT_EQUAL = 0.01


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def paper_task(task: str) -> str:
    """The paper's task our ``task`` is compared with (MNIST's for an unknown one)."""
    return PAPER_TASKS.get(task, PAPER_TASK)


def paper_change(measure: str, hidden: int, strength: float, task: str = PAPER_TASK) -> dict | None:
    """The paper's baseline and AW values and relative change for a measure on the paper's ``task``, or None if
    not published."""
    table_ = MEASURES[measure][1].get(task, {}).get(hidden, {})
    base, value = table_.get(0), table_.get(float(strength), table_.get(strength))
    if base is None or value is None:
        return None
    collapsed = reference.ACCURACY[task].get(hidden, {}).get(strength, 1.0) < PAPER_COLLAPSE_ACCURACY
    relative = (value - base) / abs(base)
    direction = "about equal" if abs(relative) < ABOUT_EQUAL else ("falls" if relative < 0 else "rises")
    return {"base": base, "value": value, "relative": relative, "direction": direction, "collapsed": collapsed}


def our_direction(low: float | None, high: float | None) -> str:
    """``falls`` / ``rises`` when the 95% CI excludes 0, else ``no clear change``."""
    return direction(low, high, unclear="no clear change")


def _verdict(ours: str, paper: dict | None, collapsed: bool) -> str:
    if paper is None:
        return "no paper value"
    if collapsed or paper["collapsed"]:
        return "collapsed" + (" (both)" if collapsed and paper["collapsed"] else " (ours)" if collapsed else " (paper)")
    if ours == "not estimable":
        return "not estimable"
    if paper["direction"] == "about equal":
        return "agrees" if ours == "no clear change" else "differs"
    if ours == "no clear change":
        return "unclear"
    return "agrees" if ours == paper["direction"] else "differs"


def effect(summary: list[dict], trends: list[dict], hidden: int, strength: float, measure: str,
           method: str = "self-model") -> dict | None:
    """Our change of ``measure`` at (hidden, method, strength) against the baseline, with the paper's."""
    trend = next((t for t in trends if t["hidden"] == hidden and t["method"] == method and t["measure"] == measure), None)
    base = next((r for r in summary if r["hidden"] == hidden and r["method"] == "baseline"), None)
    if trend is None or base is None:
        return None
    name = {"test_accuracy": "accuracy", "llc_mean": "llc"}.get(measure, measure)
    diff = next((d for d in trend["differences"] if d["strength"] == strength), None)
    base_mean = base.get(f"{name}_mean")
    if diff is None or not _finite(base_mean):
        return None
    scale = abs(base_mean) if base_mean else float("nan")
    relative = {k: (diff[k] / scale if _finite(diff[k]) else None) for k in ("difference", "ci95_low", "ci95_high")}
    ours = our_direction(diff["ci95_low"], diff["ci95_high"])
    collapsed = strength in trend["collapsed"]
    task = base.get("task", PAPER_TASK)
    paper = paper_change(measure, hidden, strength, paper_task(task)) if method == "self-model" else None
    return {
        "hidden": hidden, "strength": strength, "measure": measure, "baseline": base_mean,
        "difference": diff["difference"], "ci95_low": diff["ci95_low"], "ci95_high": diff["ci95_high"],
        "relative": relative["difference"], "relative_low": relative["ci95_low"], "relative_high": relative["ci95_high"],
        "direction": ours, "collapsed": collapsed, "paper": paper, "verdict": _verdict(ours, paper, collapsed),
    }


def compare_with_paper(summary: list[dict], trends: list[dict]) -> list[dict]:
    """One row per (hidden, self-model AW, measure compared for the paper's task: weight SD, LLC, and for IMDB
    accuracy): ours beside the paper's."""
    rows = []
    measures = COMPARED[paper_task(summary[0]["task"])] if summary else ()
    for hidden in sorted({r["hidden"] for r in summary}):
        strengths = sorted({r["strength"] for r in summary if r["hidden"] == hidden and r["method"] == "self-model"})
        for strength in strengths:
            for measure in measures:
                row = effect(summary, trends, hidden, strength, measure)
                if row is not None:
                    rows.append(row)
    return rows


def _pct(value: float | None) -> str:
    return "-" if not _finite(value) else f"{100 * value:+.1f}%"


def _change_cell(row: dict) -> str:
    return f"{_pct(row['relative'])} [{_pct(row['relative_low'])}, {_pct(row['relative_high'])}]"


def paper_table(rows: list[dict], task: str = PAPER_TASK) -> str:
    """The comparison as a markdown table; ``task`` is the paper's task the rows are compared with."""
    headers = ["H", "AW", "measure", "ours: baseline", "ours: change (95% CI)", "ours",
               f"paper ({PAPER_LABELS.get(task, task)}): baseline -> AW", "paper change", "paper", "verdict"]
    body = []
    for r in rows:
        p = r["paper"]
        digits = {"weight_sd": 4, "llc_mean": 1}.get(r["measure"], 3)
        body.append([r["hidden"], f"{r['strength']:g}", MEASURES[r["measure"]][0], fmt(r["baseline"], digits), _change_cell(r),
                     r["direction"], "-" if p is None else f"{p['base']:g} -> {p['value']:g}",
                     "-" if p is None else _pct(p["relative"]), "-" if p is None else p["direction"], r["verdict"]])
    return table(headers, body)


def paper_sentences(rows: list[dict]) -> list[str]:
    """Counts of agreeing / differing / unclear effects, and every one that differs, in words."""
    lines = []
    for measure in MEASURES:
        mine = [r for r in rows if r["measure"] == measure]
        if not mine:
            continue
        counts = {v: sum(r["verdict"].startswith(v) for r in mine) for v in ("agrees", "differs", "unclear", "collapsed")}
        text = (f"- {MEASURES[measure][0]}: of {len(mine)} self-model conditions, {counts['agrees']} agree with the paper's "
                f"direction, {counts['differs']} differ, {counts['unclear']} are unclear (95% CI includes 0) and "
                f"{counts['collapsed']} have a collapsed fit (ours or the paper's).")
        only_paper = [r for r in mine if r["verdict"] == "collapsed (paper)"]
        if only_paper:
            text += (" **Unlike the paper, training did not collapse** at " + ", ".join(
                f"H {r['hidden']}, AW {r['strength']:g}" for r in only_paper) + " (a finding; the paper's values there describe a failed fit).")
        only_ours = [r for r in mine if r["verdict"] == "collapsed (ours)"]
        if only_ours:
            text += (" **Training collapsed where the paper's did not** at " + ", ".join(
                f"H {r['hidden']}, AW {r['strength']:g}" for r in only_ours) + " (a finding).")
        differing = [r for r in mine if r["verdict"] == "differs"]
        if differing:
            text += " **Differs from the paper (a finding)**: " + "; ".join(
                f"H {r['hidden']}, AW {r['strength']:g}: ours {r['direction']} ({_change_cell(r)}), paper {r['paper']['direction']} "
                f"({_pct(r['paper']['relative'])})" for r in differing) + "."
        lines.append(text)
    return lines


# ---- the regime arm: dataset change vs regime change -------------------------------------------------------

def _grid_label(settings: dict, task: str) -> str:
    size = settings.get("train_size")
    steps = settings.get("steps")
    return f"{task}, {size:,} training images, {steps:,} steps" if size and steps else task


def arm_condition(arm: dict) -> tuple[int, float]:
    """The arm's hidden size and self-model AW (the smallest H, the largest AW it ran: H 64, AW 10)."""
    hidden = min(r["hidden"] for r in arm["summary"])
    return hidden, max(r["strength"] for r in arm["summary"] if r["method"] == "self-model" and r["hidden"] == hidden)


def regime_rows(main: dict, arm: dict) -> list[dict]:
    """The arm's condition (H 64, AW 10) against its baseline in the arm (MNIST 5k at the paper's steps) and in
    the main grid, with the paper's change: one row per grid and measure."""
    hidden, strength = arm_condition(arm)
    rows = []
    for label, results in (("arm", arm), ("main", main)):
        task = results["summary"][0]["task"] if results.get("summary") else "?"
        for measure in ("weight_sd", "llc_mean", "test_accuracy"):
            row = effect(results["summary"], results["trends"], hidden, strength, measure)
            if row is not None:
                rows.append({**row, "grid": label, "label": _grid_label(results.get("settings", {}), task)})
    return rows


def regime_table(rows: list[dict]) -> str:
    strength = rows[0]["strength"] if rows else 10.0
    headers = ["data and steps", "measure", "baseline", f"AW {strength:g}", "change (95% CI)", "direction",
               "paper (MNIST 60k, 5,900 steps)"]
    body = []
    for r in rows:
        p = r["paper"]
        digits = 4 if r["measure"] == "weight_sd" else 1 if r["measure"] == "llc_mean" else 3
        value = r["baseline"] + r["difference"] if _finite(r["difference"]) else None
        body.append([r["label"], MEASURES[r["measure"]][0], fmt(r["baseline"], digits), fmt(value, digits), _change_cell(r),
                     r["direction"] + (" (collapsed)" if r["collapsed"] else ""),
                     "-" if p is None else f"{p['base']:g} -> {p['value']:g} ({_pct(p['relative'])}, {p['direction']})"])
    return table(headers, body)


def regime_sentence(rows: list[dict], main_is_paper_regime: bool) -> str:
    """What the arm says about weight SD at its condition (H 64, AW 10): the step count, or the data?"""
    by = {r["grid"]: r for r in rows if r["measure"] == "weight_sd"}
    if "arm" not in by or "main" not in by:
        return "The regime arm or the main grid has no weight SD at the arm's condition to compare."
    if by["arm"]["paper"] is None:
        return "The paper published no weight SD at the arm's condition."
    arm, main = by["arm"]["direction"], by["main"]["direction"]
    paper = by["arm"]["paper"]["direction"]
    where = f"H {by['arm']['hidden']}, AW {by['arm']['strength']:g}"
    head = (f"Weight SD at {where} against the baseline: {arm} on {by['arm']['label']} ({_change_cell(by['arm'])}); "
            f"{main} on {by['main']['label']} ({_change_cell(by['main'])}); the paper's {paper} ({_pct(by['arm']['paper']['relative'])}). ")
    if "not estimable" in (arm, main):
        return head + "With fewer than 2 seeds on a side there is no CI, so no conclusion is drawn."
    if not main_is_paper_regime:
        if arm == paper:
            return head + "On the same MNIST 5k subset the paper's step count brings back the paper's direction: the short run explains the difference."
        return head + ("On the same MNIST 5k subset the paper's step count does not show the paper's direction: the short run "
                       "alone does not explain the difference (the full-size dataset could not be tested here).")
    if arm == paper and main == paper:
        return head + "Both the paper's step count on MNIST 5k and the paper's regime on the full-size set show the paper's direction: the 800-step run was too short."
    if arm != paper and main == paper:
        return head + ("At the paper's step count the MNIST 5k subset still does not show the paper's direction, while the 60,000-image "
                       "set in the same regime does: the step count alone does not explain it; the data (its size, or Fashion-MNIST "
                       "against MNIST) does.")
    if arm == paper and main != paper:
        return head + ("The paper's step count shows the paper's direction on MNIST 5k, but the paper's regime on Fashion-MNIST does "
                       "not: the dataset changes the effect, a difference from the paper (a finding).")
    return head + ("Neither the paper's step count on MNIST 5k nor the paper's regime on the full-size set shows the paper's "
                   "direction, so the short run does not explain it: a difference from the paper (a finding).")
