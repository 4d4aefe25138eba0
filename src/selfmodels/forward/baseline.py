"""The per-position MLP baseline: ``y = x + W_2 · GELU(W_1 x + b_1) + b_2`` applied to each position alone.

It has the forward model's MLP shape (d -> hidden_mult·d -> d, ~263K parameters at d=256) and no
attention, so it is blind to anything the predicted layers move between positions. Like the forward
model it starts as the identity (zero output layer) and predicts the update on top of the source.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfmodels.errors import require


class PerPositionMLP(nn.Module):
    def __init__(self, d_model: int, hidden_mult: int = 2):
        super().__init__()
        require(d_model >= 1 and hidden_mult >= 1, "PerPositionMLP needs d_model >= 1 and hidden_mult >= 1")
        self.d_model = d_model
        self.fc = nn.Linear(d_model, hidden_mult * d_model)
        self.proj = nn.Linear(hidden_mult * d_model, d_model)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @classmethod
    def from_config(cls, cfg) -> "PerPositionMLP":
        """The baseline of a :class:`~selfmodels.forward.config.ForwardModelConfig`: its ``d_model`` and ``mlp_mult``."""
        model = cls(cfg.d_model, cfg.mlp_mult)
        model.cfg = cfg
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require(x.shape[-1] == self.d_model, f"baseline MLP expects width {self.d_model}, got {x.shape[-1]}")
        return x + self.proj(F.gelu(self.fc(x)))  # (B, T, d)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int = 0) -> int:
        return 2 * 2 * self.fc.in_features * self.fc.out_features
