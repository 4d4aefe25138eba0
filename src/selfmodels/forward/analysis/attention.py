"""Attention-pattern similarity between a forward model and the layer it predicts.

Patterns are (B, H, T, T) row-stochastic matrices (rows: queries, columns: keys). For a forward-model
head f and a layer head h, flattening the (T, T) patterns over the causal (lower-triangular) entries:

- per example: mean_b cos(A_f[b], A_h[b])  (honest: each sequence's own pattern)
- batch-averaged (the paper's way): cos(mean_b A_f[b], mean_b A_h[b]); averaging first leaves mostly the
  positional structure (recent-token and first-token bias), which any two causal heads share, so it
  scores higher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfmodels.errors import require


def _causal_entries(attn: torch.Tensor) -> torch.Tensor:
    """(..., T, T) -> (..., T(T+1)/2): the entries on and below the diagonal (the rest are zero)."""
    T = attn.shape[-1]
    rows, cols = torch.tril_indices(T, T)
    return attn[..., rows, cols]


def attention_similarity(forward_attn: torch.Tensor, layer_attn: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cosine matrices (H_forward, H_layer) between every forward-model head and every layer head.

    ``forward_attn`` (B, Hf, T, T), ``layer_attn`` (B, H, T, T) on the same tokens. Returns
    ``per_example`` (mean over b of the per-sequence cosine) and ``batch_averaged`` (cosine of the
    patterns averaged over the batch first).
    """
    require(forward_attn.shape[0] == layer_attn.shape[0] and forward_attn.shape[-1] == layer_attn.shape[-1],
            f"attention patterns of different batches: {tuple(forward_attn.shape)} vs {tuple(layer_attn.shape)}")
    f = _causal_entries(forward_attn.double())  # (B, Hf, E)
    g = _causal_entries(layer_attn.double())  # (B, H, E)
    f_unit, g_unit = F.normalize(f, dim=-1), F.normalize(g, dim=-1)
    per_example = torch.einsum("bfe,bhe->bfh", f_unit, g_unit).mean(0)  # (Hf, H)
    fm, gm = F.normalize(f.mean(0), dim=-1), F.normalize(g.mean(0), dim=-1)  # (Hf, E), (H, E)
    batch_averaged = fm @ gm.T  # (Hf, H)
    return {"per_example": per_example.float(), "batch_averaged": batch_averaged.float()}


def attention_entropy(attention: torch.Tensor) -> torch.Tensor:
    """Entropy -Σ_k a_k log a_k of each attention row (natural log): (..., T_q, T_k) -> (..., T_q)."""
    a = attention.double()
    return -(a * torch.where(a > 0, a.log(), torch.zeros_like(a))).sum(-1)
