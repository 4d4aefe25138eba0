"""Plots of LLC loss traces: one estimate's chains, and a calibration grid of ε x γ (PNG files written
by :func:`selfmodels.report.figures.save_figure`; no pyplot, no backend switching)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from selfmodels.report.figures import colors, save_figure, subplots


def _draw_chains(ax, lam: torch.Tensor, burn_in: int, color=None, label: str | None = None) -> None:
    """λ̂ traces (chains x draws) as thin lines, burn-in shaded."""
    draws = lam.shape[1]
    for c in range(lam.shape[0]):
        ax.plot(range(draws), lam[c].tolist(), lw=0.7, alpha=0.8, color=color, label=label if c == 0 else None)
    ax.axvspan(0, burn_in, color="0.9", zorder=0)


def plot_trace(result, path: str | Path, title: str = "") -> None:
    """Per-chain λ̂_t = nβ (L_batch(w_t) - L(w*)) against the draw, with the burn-in shaded and the
    estimate as a horizontal line."""
    lam = result.lambda_traces()
    burn_in = result.config.get("burn_in")
    burn_in = lam.shape[1] // 2 if burn_in is None else burn_in
    fig, ax = subplots(figsize=(7, 4))
    _draw_chains(ax, lam, burn_in)
    estimate = result.mean if math.isfinite(result.mean) else result.diagnostics.get("raw_mean")
    if estimate is not None and math.isfinite(estimate):
        ax.axhline(estimate, color="k", ls="--", lw=1, label=f"estimate {estimate:.3g}")
        ax.legend(loc="lower right")
    flags = ", ".join(result.flags) or "no flags"
    ax.set(xlabel="draw", ylabel="nβ (L_batch(w_t) - L(w*))",
           title=(title + "\n" if title else "") + f"L(w*) = {result.init_loss:.4g}; {flags}")
    fig.tight_layout()
    save_figure(fig, path)


def plot_calibration(cells: Sequence[dict], traces: dict, epsilons: Sequence[float], gammas: Sequence[float],
                     nbetas: Sequence[float], path: str | Path) -> None:
    """Grid: rows ε, columns γ; each panel shows every chain's λ̂ trace, one colour per nβ."""
    fig, axes = subplots(len(epsilons), len(gammas), figsize=(max(6.5, 3.6 * len(gammas)), 2.6 * len(epsilons) + 0.6),
                             squeeze=False, sharex=True)
    palette = colors()
    by_key = {(c["epsilon"], c["gamma"], c["nbeta"]): c for c in cells}
    for i, eps in enumerate(epsilons):
        for j, gamma in enumerate(gammas):
            ax = axes[i][j]
            notes = []
            for k, nbeta in enumerate(nbetas):
                cell = by_key.get((eps, gamma, nbeta))
                key = (eps, gamma, nbeta)
                if cell is None or key not in traces:
                    continue
                _draw_chains(ax, traces[key], cell["burn_in"], color=palette[k % len(palette)],
                             label=f"nβ={nbeta:.3g}" if len(nbetas) > 1 else None)
                value = cell["llc_mean"] if cell["llc_mean"] is not None else cell["llc_raw_mean"]
                notes.append(f"{value:.3g}" + ("*" if cell["llc_flags"] else "") if value is not None else "-")
            ax.set_title(f"ε={eps:g}, γ={gamma:g}: λ̂ " + " / ".join(notes), fontsize=8)
            if len(nbetas) > 1 and i == 0 and j == 0:
                ax.legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("draw")
    for row in axes:
        row[0].set_ylabel("nβ (L - L(w*))")
    fig.suptitle("LLC calibration: λ̂ traces per chain (* = flagged; grey = burn-in)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
