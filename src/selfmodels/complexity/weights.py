"""Weight statistics of a classifier's final layer.

- **Weight spread** (the paper's first complexity measure): the standard deviation of the final
  layer's weight matrix restricted to its classification rows 0..C-1,

      weight_sd = sqrt( 1/(C*H - 1) * sum_{i<C, j} (W_ij - mean(W_{<C}))^2 )

  (torch's default, Bessel-corrected std; biases are not included). Self-model rows C.. are left out,
  so the number describes the pruned classifier.
- **Distance of the self-model block from the identity**: when a self-modeled target is the very
  input of the final layer (so its prediction block P = W[rows of that target, :] is square, H x H),

      identity_distance = || P - I_H ||_F

  (Frobenius norm; ``|| I_H ||_F = sqrt(H)`` sets the scale, so the relative form divides by sqrt(H)).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _weight(final_layer: nn.Module | torch.Tensor) -> torch.Tensor:
    weight = final_layer if isinstance(final_layer, torch.Tensor) else final_layer.weight
    return weight.detach()


def classification_weight_sd(final_linear: nn.Module | torch.Tensor, num_classes: int) -> float:
    """Standard deviation (Bessel-corrected) of rows ``0..num_classes-1`` of the final layer's weight."""
    weight = _weight(final_linear)  # (C [+ D], H)
    if not 0 < num_classes <= weight.shape[0]:
        raise ValueError(f"num_classes={num_classes} does not fit a final layer with {weight.shape[0]} rows")
    return float(weight[:num_classes].float().std())


def identity_distance(block: torch.Tensor) -> float:
    """``|| block - I ||_F`` for a square block (the self-model rows that predict the head's own input)."""
    block = block.detach().float()
    if block.ndim != 2 or block.shape[0] != block.shape[1]:
        raise ValueError(f"identity distance needs a square block, got shape {tuple(block.shape)}")
    eye = torch.eye(block.shape[0], dtype=block.dtype, device=block.device)
    return float(torch.linalg.matrix_norm(block - eye))


def relative_identity_distance(block: torch.Tensor) -> float:
    """``|| block - I ||_F / || I ||_F``: 1 for a zero block, 0 for the identity."""
    return identity_distance(block) / math.sqrt(block.shape[0])
