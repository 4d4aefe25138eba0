"""The optimizer every forward-self-model training loop uses."""

from __future__ import annotations

import torch


def make_adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (not biases, LayerNorms), fused where torch supports it."""
    params = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr)
