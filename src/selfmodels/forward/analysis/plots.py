"""One PNG per analysis, written atomically through :mod:`selfmodels.report.figures` (no pyplot, no backend
switch); each function returns the file name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from selfmodels.report.figures import save_figure as _save
from selfmodels.report.figures import subplots


def plot_attention_similarity(sim: dict[str, torch.Tensor], path: Path) -> str:
    """Heatmaps (forward heads x layer heads) of the per-example and batch-averaged attention cosines."""
    fig, axes = subplots(1, 2, figsize=(11, 2.2 + 0.3 * sim["per_example"].shape[0]), constrained_layout=True)
    for ax, key in zip(axes, ("per_example", "batch_averaged")):
        m = sim[key].numpy()
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(f"attention cosine, {key.replace('_', ' ')}")
        ax.set_xlabel("predicted layer head")
        ax.set_ylabel("forward-model head")
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        for (i, j), v in np.ndenumerate(m):
            if m.size <= 64:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8, label="cosine")
    return _save(fig, path)


def plot_decomposition(report: dict, path: Path) -> str:
    """Per head and the MLP: norm share, cos(component, residual), and residual variance fraction vs null."""
    heads = report["heads"]
    names = [f"h{h['head']}" for h in heads] + ["MLP"]
    cos = [h["cos_residual"] for h in heads] + [report["mlp_cos_residual"]]
    share = [h["norm_share"] for h in heads] + [report["mlp_norm_share"]]
    frac = [h["residual_variance_fraction"] for h in heads]
    fig, axes = subplots(1, 3, figsize=(14, 3.2))
    axes[0].bar(names, share, color=["C0"] * len(heads) + ["C3"])
    axes[0].set_title("norm share of the layer update")
    axes[1].bar(names, cos, color=["C0"] * len(heads) + ["C3"])
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set_title("cos(component, forward-model residual)")
    axes[2].bar(names[:-1], frac, color="C0")
    axes[2].axhline(report["head_null_fraction"], color="k", ls="--", lw=1, label="null d_head/d")
    axes[2].set_title("residual variance in head output subspace")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    return _save(fig, path)


def plot_residual_spectrum(s: torch.Tensor, summary: dict, path: Path) -> str:
    """Cumulative variance of the residual's principal components, with the 50/90/95% ranks marked."""
    var = s.double().pow(2)
    cumulative = (var.cumsum(0) / var.sum()).numpy()
    fig, ax = subplots(figsize=(5.5, 3.5))
    ax.plot(range(1, len(cumulative) + 1), cumulative)
    for label, k in summary["variance_ranks"].items():
        ax.axvline(k, color="grey", ls=":", lw=1)
        ax.text(k, 0.05, f"{label}: {k}", rotation=90, fontsize=7)
    ax.set_xlabel("principal components of the residual")
    ax.set_ylabel("cumulative variance")
    ax.set_title(f"eff. rank exp(H(S²))={summary['effective_rank_entropy_s2']:.1f}, "
                 f"exp(H(S))={summary['effective_rank_entropy_s']:.1f} of {summary['max_rank']}", fontsize=9)
    return _save(fig, path)


def plot_category_effects(effects: dict[str, dict], path: Path) -> str:
    """Per-category residual-norm effect sizes, both definitions side by side."""
    names = list(effects)
    x = torch.arange(len(names)).numpy()
    fig, ax = subplots(figsize=(7, 3.2))
    ax.bar(x - 0.2, [effects[n]["d_vs_overall"] for n in names], 0.4, label="(cat mean - overall mean) / overall std (paper)")
    ax.bar(x + 0.2, [effects[n]["d_pooled"] for n in names], 0.4, label="pooled two-group Cohen's d")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("effect on residual norm")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_entropy_scatter(entropy: torch.Tensor, residual_norm: torch.Tensor, r: float, path: Path) -> str:
    """Attention entropy against the normalised residual norm, one point per token (subsampled)."""
    n = entropy.numel()
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:4000]
    fig, ax = subplots(figsize=(5, 3.5))
    ax.scatter(entropy.reshape(-1)[pick].numpy(), residual_norm.reshape(-1)[pick].numpy(), s=3, alpha=0.3)
    ax.set_xlabel("attention entropy of the predicted layer (nats, head mean)")
    ax.set_ylabel("‖residual‖ / ‖layer update‖")
    ax.set_title(f"Pearson r = {r:+.3f}")
    return _save(fig, path)
