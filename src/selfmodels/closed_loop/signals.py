"""The signals the conditions inject: ``u = signal(sg(h_i), F(h_i))``, added through the gate as ``h_m <- h_m + G(u)``.

A :class:`Signal` receives the source residual h_i (B, T, d), already detached from the network, and the forward
model's prediction F(h_i) (B, T, d) (detached unless ``LoopConfig.lm_into_forward``), and returns ``u`` (B, T, d),
or None for no injection, with its own training loss (None when it has nothing to train). A signal's trainable
parameters learn from that loss only: ``u`` reaches the LM loss detached. Every signal here is causal: u at
position t depends on positions <= t only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfmodels.forward.architectures import build_forward_model
from selfmodels.forward.config import ForwardModelConfig


class Signal(nn.Module):
    """Base of the conditions' signals; ``d_model`` the residual width, ``shift`` and ``bottleneck`` the conditions'
    settings (:class:`~selfmodels.closed_loop.config.LoopConfig`), ``forward_cfg`` F's architecture."""

    def __init__(self, d_model: int, *, shift: int, bottleneck: int, forward_cfg: ForwardModelConfig):
        super().__init__()
        self.d_model = d_model

    def forward(self, source: torch.Tensor, prediction: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(u, loss)``: the vector G reads (None: nothing injected) and the signal's own training loss."""
        raise NotImplementedError

    def trainable(self) -> list[nn.Parameter]:
        """The parameters the signal's own loss trains (empty: nothing to train)."""
        return [p for p in self.parameters() if p.requires_grad]


class OpenLoop(Signal):
    """u = None: nothing is injected."""

    def forward(self, source, prediction):
        return None, None


class Forward(Signal):
    """u_t = F(h_i)_t: the forward model's prediction of h_j."""

    def forward(self, source, prediction):
        return prediction, None


class Shifted(Signal):
    """u_t = F(h_i)_{t-k} for t >= k, zeros for t < k: a prediction for an earlier position."""

    def __init__(self, d_model: int, *, shift: int, bottleneck: int, forward_cfg: ForwardModelConfig):
        super().__init__(d_model, shift=shift, bottleneck=bottleneck, forward_cfg=forward_cfg)
        self.shift = shift

    def forward(self, source, prediction):
        B, T, d = prediction.shape
        k = min(self.shift, T)
        zeros = prediction.new_zeros(B, k, d)
        return torch.cat([zeros, prediction[:, : T - k]], dim=1), None  # (B, T, d)


class RandomProjection(Signal):
    """u_t = R h_{i,t}, R (d, d) frozen with entries N(0, 1/d)."""

    def __init__(self, d_model: int, *, shift: int, bottleneck: int, forward_cfg: ForwardModelConfig):
        super().__init__(d_model, shift=shift, bottleneck=bottleneck, forward_cfg=forward_cfg)
        self.register_buffer("projection", torch.randn(d_model, d_model) / math.sqrt(d_model))

    def forward(self, source, prediction):
        return source @ self.projection.T, None  # (B, T, d)


class Autoencoder(Signal):
    """u_t = sg(A(h_{i,t})), A(h) = W2 GELU(W1 h + b1) + b2 (d -> b -> d, no skip path, torch's default init),
    trained on MSE(A(h_i), h_i)."""

    def __init__(self, d_model: int, *, shift: int, bottleneck: int, forward_cfg: ForwardModelConfig):
        super().__init__(d_model, shift=shift, bottleneck=bottleneck, forward_cfg=forward_cfg)
        self.encode, self.decode = nn.Linear(d_model, bottleneck), nn.Linear(bottleneck, d_model)

    def forward(self, source, prediction):
        reconstruction = self.decode(F.gelu(self.encode(source)))  # (B, T, d)
        return reconstruction.detach(), F.mse_loss(reconstruction.float(), source.float())


class ForwardFrozen(Signal):
    """u_t = F0(h_i)_t, F0 a forward model of F's architecture frozen at a random init; its zero-initialised linear
    maps (ForwardModel's output projections, which make it the identity) are given torch's default init instead."""

    def __init__(self, d_model: int, *, shift: int, bottleneck: int, forward_cfg: ForwardModelConfig):
        super().__init__(d_model, shift=shift, bottleneck=bottleneck, forward_cfg=forward_cfg)
        self.frozen = build_forward_model(forward_cfg, d_model)
        for module in self.frozen.modules():
            if isinstance(module, nn.Linear) and not module.weight.any():
                module.reset_parameters()
        self.frozen.requires_grad_(False)

    def forward(self, source, prediction):
        return self.frozen(source), None
