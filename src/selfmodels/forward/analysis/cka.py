"""Linear centred kernel alignment (Kornblith et al., 2019) between two representations of the same tokens.

With X (n, p) and Y (n, q) centred over the n rows::

    CKA(X, Y) = ‖Yᵀ X‖_F² / (‖Xᵀ X‖_F · ‖Yᵀ Y‖_F)

It is 1 for identical representations, invariant to orthogonal transforms and isotropic scaling of either
side, and 0 when the (centred) representations are orthogonal.
"""

from __future__ import annotations

import torch

from selfmodels.errors import require


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same tokens; (..., p) and (..., q) are flattened to rows."""
    x = x.reshape(-1, x.shape[-1]).double()  # (n, p)
    y = y.reshape(-1, y.shape[-1]).double()  # (n, q)
    require(x.shape[0] == y.shape[0], f"CKA needs the same tokens on both sides, got {x.shape[0]} and {y.shape[0]} rows")
    require(x.shape[0] >= 2, "CKA needs at least 2 tokens")
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    cross = (y.T @ x).pow(2).sum()  # ‖Yᵀ X‖_F²
    norm_x = (x.T @ x).pow(2).sum().sqrt()  # ‖Xᵀ X‖_F
    norm_y = (y.T @ y).pow(2).sum().sqrt()
    if norm_x == 0 or norm_y == 0:
        return float("nan")  # a constant representation has no geometry to compare
    return (cross / (norm_x * norm_y)).item()
