"""PNG plots of a grid's results: measures against strength (mean and 95% CI over seeds) and
training curves (mean over seeds per epoch). Each function writes one file atomically (through
:func:`selfmodels.report.figures.save_figure`; no pyplot, no backend switching) and returns its name."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from selfmodels.artifacts import read_jsonl
from selfmodels.report.figures import colormap, save_figure, subplots
from selfmodels.selfmodeling.config import METHODS

COLORS = {"baseline": "black", "self-model": "tab:blue", "activation-l2": "tab:orange", "weight-decay": "tab:green"}


def _hiddens(summary: list[dict]) -> list[int]:
    return sorted({row["hidden"] for row in summary})


def measure_vs_strength(summary: list[dict], out: Path, measure: str, label: str, paper_key: str | None, filename: str) -> str:
    """One panel per hidden size: ``<measure>_mean`` +- ``_ci95`` against strength, a line per method;
    the baseline is drawn at strength 0 on every method's line, the paper's self-model values dashed."""
    hiddens = _hiddens(summary)
    fig, axes = subplots(1, len(hiddens), figsize=(4.6 * len(hiddens), 3.6), squeeze=False, constrained_layout=True)
    for ax, hidden in zip(axes[0], hiddens):
        rows = [r for r in summary if r["hidden"] == hidden]
        base = [r for r in rows if r["method"] == "baseline"]
        for method in METHODS.names()[1:]:
            line = base + sorted((r for r in rows if r["method"] == method), key=lambda r: r["strength"])
            if len(line) == len(base):
                continue
            x = [r["strength"] for r in line]
            y = [np.nan if r.get(f"{measure}_mean") is None else r[f"{measure}_mean"] for r in line]
            err = [0 if r.get(f"{measure}_ci95") is None else r[f"{measure}_ci95"] for r in line]
            ax.errorbar(x, y, yerr=np.nan_to_num(np.asarray(err, float)), marker="o", capsize=3, color=COLORS.get(method), label=method)
        if paper_key:
            ref = sorted((r["strength"], r[paper_key]) for r in rows if r.get(paper_key) is not None and r["method"] in ("baseline", "self-model"))
            if ref:
                ax.plot([p[0] for p in ref], [p[1] for p in ref], "s--", color="grey", alpha=0.7, label="paper (self-model)")
        positive = [r["strength"] for r in rows if r["strength"] > 0]
        ax.set_xscale("symlog", linthresh=min([1.0, *positive]))  # log spacing down to the smallest strength
        ax.set_title(f"H = {hidden}")
        ax.set_xlabel("strength w (0 = baseline)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{label}: mean and 95% CI over seeds")
    return save_figure(fig, out / filename)


def _curves(records: list[dict], runs_dir: Path, key: str) -> dict[tuple, np.ndarray]:
    """Mean over seeds of ``key`` per epoch, per (hidden, method, strength)."""
    grouped: dict[tuple, list[list[float]]] = defaultdict(list)
    for r in records:
        history = read_jsonl(runs_dir / r["run_dir"] / "metrics.jsonl")
        values = [np.nan if m.get(key) is None else m[key] for m in history]
        if values:
            grouped[(r["hidden"], r["method"], r["strength"])].append(values)
    out = {}
    for cond, series in grouped.items():
        length = min(len(s) for s in series)
        out[cond] = np.nanmean(np.array([s[:length] for s in series], dtype=float), axis=0)
    return out


def training_curves(records: list[dict], runs_dir: Path, out: Path, hidden: int) -> str:
    """For one hidden size: weight SD and test accuracy per epoch, one column per method, one line per
    strength (the baseline in black in every column)."""
    methods = [m for m in METHODS.names()[1:] if any(r["method"] == m and r["hidden"] == hidden for r in records)]
    rows = [("weight_sd", "weight SD (classification rows)"), ("test_accuracy", "test accuracy")]
    fig, axes = subplots(len(rows), max(len(methods), 1), figsize=(4.6 * max(len(methods), 1), 3.2 * len(rows)), squeeze=False, constrained_layout=True)
    mine = [r for r in records if r["hidden"] == hidden]
    for i, (key, label) in enumerate(rows):
        curves = _curves(mine, runs_dir, key)
        for j, method in enumerate(methods or ["baseline"]):
            ax = axes[i][j]
            strengths = sorted({s for (_, m, s) in curves if m == method})
            cmap = colormap("viridis", max(len(strengths), 1))
            for (h, m, s), curve in curves.items():
                if m == "baseline":
                    ax.plot(np.arange(1, len(curve) + 1), curve, color="black", label="baseline")
            for k, s in enumerate(strengths):
                curve = curves[(hidden, method, s)]
                ax.plot(np.arange(1, len(curve) + 1), curve, color=cmap(k), label=f"w = {s:g}")
            ax.set_title(f"{method}, H = {hidden}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.legend(fontsize=7)
    fig.suptitle("training curves (mean over seeds)")
    return save_figure(fig, out / f"training_curves_h{hidden}.png")


def identity_curves(records: list[dict], runs_dir: Path, out: Path) -> str | None:
    """``||W_self - I||_F / sqrt(H)`` per epoch for the self-model runs (where the block is square)."""
    curves = _curves([r for r in records if r["method"] == "self-model"], runs_dir, "identity_distance")
    curves = {k: v for k, v in curves.items() if np.isfinite(v).any()}
    if not curves:
        return None
    fig, ax = subplots(figsize=(5.5, 3.8), constrained_layout=True)
    for (hidden, _, strength), curve in sorted(curves.items()):
        ax.plot(np.arange(1, len(curve) + 1), curve / np.sqrt(hidden), label=f"H = {hidden}, w = {strength:g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("||W_self - I||_F / sqrt(H)")
    ax.set_title("distance of the self-model block from the identity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out / "identity_distance.png")
