"""Structure of the forward model's residual r = target - prediction.

Spectrum (of the centred residual matrix R (n, d), singular values S, variances S²):

- ``variance_ranks``: the smallest k whose top-k principal components hold >= 50 / 90 / 95% of the variance.
- ``effective_rank_entropy_s2`` = exp(H(S² / ΣS²)): entropy of the variance spectrum (the paper's 199.8).
- ``effective_rank_entropy_s``  = exp(H(S / ΣS)):  entropy of the singular values (Roy & Vetterli 2007;
  the paper's 247 / 250 / 235). H is the natural-log Shannon entropy. Both are labelled everywhere.

Per-category effect sizes of a per-token value v (e.g. the residual norm) for a category mask m:

- ``effect_vs_overall`` (the paper's "Cohen's d") = (mean v[m] - mean v) / std v, std over all tokens.
- ``cohens_d_pooled`` = (mean v[m] - mean v[~m]) / s_pooled,
  s_pooled² = ((n₁-1) s₁² + (n₀-1) s₀²) / (n₁ + n₀ - 2): the textbook two-group d.

Categories are defined from token strings and the predicted layer's attention (:func:`token_categories`).
"""

from __future__ import annotations

import math

import torch

from selfmodels.errors import require
from selfmodels.forward.analysis.attention import attention_entropy

THRESHOLDS = (0.5, 0.9, 0.95)


def singular_values(residual: torch.Tensor) -> torch.Tensor:
    """Singular values of the centred residual matrix; (..., d) flattened to (n, d) rows first."""
    r = residual.reshape(-1, residual.shape[-1]).double()  # (n, d)
    r = r - r.mean(0, keepdim=True)
    return torch.linalg.svdvals(r)  # (min(n, d),)


def variance_ranks(s: torch.Tensor, thresholds=THRESHOLDS) -> dict[str, int]:
    """For each threshold q: the smallest k with Σ_{i<=k} S_i² / Σ S² >= q."""
    var = s.double().pow(2)
    cumulative = var.cumsum(0) / var.sum()
    # Tolerance: a spectrum that reaches q exactly must count as reaching it despite rounding.
    return {f"{round(q * 100)}%": int((cumulative < q - 1e-12).sum().item()) + 1 for q in thresholds}


def _entropy_rank(p: torch.Tensor) -> float:
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def effective_rank_entropy_s2(s: torch.Tensor) -> float:
    """exp(H(S²/ΣS²)): the exponentiated entropy of the variance spectrum."""
    var = s.double().pow(2)
    return _entropy_rank(var / var.sum())


def effective_rank_entropy_s(s: torch.Tensor) -> float:
    """exp(H(S/ΣS)): the exponentiated entropy of the normalised singular values."""
    s = s.double()
    return _entropy_rank(s / s.sum())


def spectrum_summary(residual: torch.Tensor) -> dict:
    """Ranks for 50/90/95% variance, both effective ranks, top-1 and top-5 variance shares, max rank."""
    s = singular_values(residual)
    var = s.pow(2)
    return {
        "variance_ranks": variance_ranks(s),
        "effective_rank_entropy_s2": effective_rank_entropy_s2(s),
        "effective_rank_entropy_s": effective_rank_entropy_s(s),
        "top1_variance": (var[0] / var.sum()).item(),
        "top5_variance": (var[:5].sum() / var.sum()).item(),
        "max_rank": int(residual.shape[-1]),
    }


def effect_vs_overall(values: torch.Tensor, mask: torch.Tensor) -> float:
    """(mean of the category - overall mean) / overall std (the paper's "Cohen's d")."""
    v = values.reshape(-1).double()
    m = mask.reshape(-1).bool()
    if m.sum() == 0:
        return float("nan")
    std = v.std()
    return ((v[m].mean() - v.mean()) / std).item() if std > 0 else float("nan")


def cohens_d_pooled(values: torch.Tensor, mask: torch.Tensor) -> float:
    """(mean in the category - mean outside) / pooled standard deviation (two-group Cohen's d)."""
    v = values.reshape(-1).double()
    m = mask.reshape(-1).bool()
    a, b = v[m], v[~m]
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    pooled = (((len(a) - 1) * a.var() + (len(b) - 1) * b.var()) / (len(a) + len(b) - 2)).sqrt()
    return ((a.mean() - b.mean()) / pooled).item() if pooled > 0 else float("nan")


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two equally long series (flattened)."""
    x, y = x.reshape(-1).double(), y.reshape(-1).double()
    require(x.numel() == y.numel(), f"correlation needs equal lengths, got {x.numel()} and {y.numel()}")
    x, y = x - x.mean(), y - y.mean()
    denom = (x.norm() * y.norm())
    return (x @ y / denom).item() if denom > 0 else float("nan")


SENTENCE_END = (".", "!", "?")
PUNCTUATION = set(".,;:!?")
OPENERS = ("(", "[", "{")
CLOSERS = (")", "]", "}")


def token_categories(tokens: list[list[str]], attention: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Boolean masks (B, T) over token positions, from decoded token strings (B lists of T strings) and,
    optionally, the predicted layer's attention (B, H, T, T):

    - ``sentence_start``: position 0, or the previous token (stripped) ends with . ! ? or contains a newline.
    - ``after_punctuation``: the previous token (stripped) is non-empty and all punctuation (.,;:!?).
    - ``after_opener``: the previous token contains an opening bracket ( [ {.
    - ``before_closer``: the *next* token (stripped) starts with a closing bracket ) ] }.
    - ``focused_attention``: the head-averaged maximum attention weight of the position's row > 0.5.
    - ``distributed_attention``: the head-averaged attention entropy of the row is above its median.
    """
    B, T = len(tokens), len(tokens[0])
    masks = {name: torch.zeros(B, T, dtype=torch.bool) for name in
             ("sentence_start", "after_punctuation", "after_opener", "before_closer")}
    for b, row in enumerate(tokens):
        for t, text in enumerate(row):
            prev = row[t - 1] if t > 0 else None
            nxt = row[t + 1] if t + 1 < T else None
            masks["sentence_start"][b, t] = prev is None or prev.strip().endswith(SENTENCE_END) or "\n" in prev
            if prev is not None:
                stripped = prev.strip()
                masks["after_punctuation"][b, t] = bool(stripped) and all(c in PUNCTUATION for c in stripped)
                masks["after_opener"][b, t] = any(c in prev for c in OPENERS)
            if nxt is not None:
                masks["before_closer"][b, t] = nxt.strip().startswith(CLOSERS)
    if attention is not None:
        max_weight = attention.max(dim=-1).values.mean(dim=1)  # (B, T): per head row max, head-averaged
        entropy = attention_entropy(attention).mean(dim=1)  # (B, T)
        masks["focused_attention"] = max_weight > 0.5
        masks["distributed_attention"] = entropy > entropy.median()
    return masks


def category_effects(values: torch.Tensor, masks: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per category: token count, mean value, the paper's d vs overall mean, and the pooled two-group d."""
    return {
        name: {
            "tokens": int(mask.sum().item()),
            "mean": values.reshape(-1)[mask.reshape(-1)].double().mean().item() if mask.any() else float("nan"),
            "d_vs_overall": effect_vs_overall(values, mask),
            "d_pooled": cohens_d_pooled(values, mask),
        }
        for name, mask in masks.items()
    }
