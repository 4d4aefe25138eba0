"""The closed-loop grid's plots, from results.json's ``runs`` (means over seeds; error bars are 95% t intervals):

- ``loss_curves.png``: validation loss over training with the injection (solid) and without it (dashed), per condition,
  beside the held-out injection norm ||G(u)|| over training;
- ``probe_gain_by_depth.png``: the probes' R² gain over the covariates by residual index, per condition (injection on
  and off), the injection point marked;
- ``robustness.png``: the loss increase against the perturbation's radius r, after the injection and at h_i.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from selfmodels.report.figures import save_figure, subplots
from selfmodels.stats import mean_ci95

COLORS = {"open-loop": "black", "forward": "tab:purple", "shifted": "tab:orange", "random-projection": "tab:green",
          "autoencoder": "tab:blue", "forward-frozen": "tab:red", "open-loop-equal-flops": "grey"}


def _group(runs: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[r["condition"] if r["role"] == "condition" else "open-loop-equal-flops"].append(r)
    return groups


def _mean_by(rows: list[dict], keys: list, value) -> tuple[np.ndarray, np.ndarray]:
    """Mean and CI half-width over ``rows`` of ``value(row, key)`` for each key (None where missing)."""
    stats = [mean_ci95([value(r, k) for r in rows]) for k in keys]
    return np.asarray([s[0] for s in stats], float), np.nan_to_num(np.asarray([s[1] for s in stats], float))


def loss_curves(runs: list[dict], out: Path) -> str:
    """Left: validation loss with (solid) and without (dashed) the injection; right: the held-out injection norm."""
    fig, axes = subplots(1, 2, figsize=(13, 4.5), squeeze=False, constrained_layout=True)
    ax, norm_ax = axes[0]
    for name, rows in _group(runs).items():
        steps = sorted({line["step"] for r in rows for line in r["curve"]})
        at = lambda r, s, key: next((line.get(key) for line in r["curve"] if line["step"] == s), None)  # noqa: E731
        on, _ = _mean_by(rows, steps, lambda r, s: at(r, s, "val_loss"))
        ax.plot(steps, on, color=COLORS.get(name), label=name, lw=1.5)
        if name not in ("open-loop", "open-loop-equal-flops"):
            off, _ = _mean_by(rows, steps, lambda r, s: at(r, s, "val_loss_without_injection"))
            ax.plot(steps, off, color=COLORS.get(name), ls="--", lw=1)
            norm, _ = _mean_by(rows, steps, lambda r, s: at(r, s, "val_injection_norm"))
            norm_ax.plot(steps, norm, color=COLORS.get(name), label=name, lw=1.5)
    ax.set(xlabel="step", ylabel="validation loss (nats/token)",
           title="validation loss with the injection (solid) and without (dashed), mean over seeds")
    norm_ax.set(xlabel="step", ylabel="mean ||G(u)_t||", title="injection norm on held-out windows")
    for a in (ax, norm_ax):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    return save_figure(fig, out / "loss_curves.png")


def probe_gain_by_depth(runs: list[dict], inject: int, out: Path) -> str:
    fig, axes = subplots(1, 2, figsize=(11, 4), squeeze=False, constrained_layout=True)
    for ax, suffix, title in ((axes[0][0], "", "injection on (primary)"), (axes[0][1], "_off", "injection off")):
        for name, rows in _group(runs).items():
            layers = sorted({int(l) for r in rows for l in (r["scalars"].get(f"probe_gain_by_layer{suffix}") or {})})
            if not layers:
                continue
            mean, half = _mean_by(rows, layers, lambda r, l: (r["scalars"].get(f"probe_gain_by_layer{suffix}") or {}).get(str(l)))
            ax.errorbar(layers, mean, yerr=half, marker="o", capsize=3, color=COLORS.get(name), label=name)
        ax.axvline(inject, color="grey", ls=":", lw=1)
        ax.set_xticks(sorted({int(l) for r in runs for l in (r["scalars"].get(f"probe_gain_by_layer{suffix}") or {})}))
        ax.set(xlabel="residual index l (-1 = embeddings; dotted: the injection point m)",
               ylabel="R²([h_l, covariates]) - R²(covariates)", title=f"probe gain by depth, {title}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, out / "probe_gain_by_depth.png")


def robustness(runs: list[dict], out: Path) -> str:
    fig, axes = subplots(1, 2, figsize=(11, 4), squeeze=False, constrained_layout=True)
    for ax, site, title in ((axes[0][0], "inject", "δ added to h_m after the injection"),
                            (axes[0][1], "source", "δ added to h_i (F's input)")):
        for name, rows in _group(runs).items():
            tables = [r["scalars"].get("robustness", {}).get(site, {}) for r in rows]
            radii = sorted({float(k) for t in tables for k in t})
            if not radii:
                continue
            value = lambda r, radius: (r["scalars"].get("robustness", {}).get(site, {}).get(repr(radius)) or {}).get(  # noqa: E731
                "loss_increase_mean")
            mean, half = _mean_by(rows, radii, value)
            ax.errorbar(radii, mean, yerr=half, marker="o", capsize=3, color=COLORS.get(name), label=name)
        ax.set(xlabel="r (||δ_t|| = r ||h_m,t||)", ylabel="loss increase (nats/token)", title=title, xscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, out / "robustness.png")
