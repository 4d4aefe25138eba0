"""The fresh observer O of a frozen closed loop: a NEW forward model (never the co-trained F), trained i -> j.

O is built by the forward-model registry (:func:`~selfmodels.forward.architectures.build_forward_model`) at the
fixed size of :class:`~selfmodels.closed_loop.battery_config.ObserverSettings` and trained for its fixed budget with
:func:`~selfmodels.forward.train.train_forward`:

    min_O  mean over elements of (O(h_i) - h_j)²

on the frozen loop's residuals of held-out windows (the first half of the held-out stream), collected once with the
injection on (the loop as trained) or off (h_m left alone); an observer is trained for each. Its fit is measured on
other held-out windows (the second half), tokens t, with h_m as block m + 1 reads it (after the injection when on):

- ``cosine`` = mean_t cos(O(h_i)_t, h_{j,t}); ``skip_cosine`` = mean_t cos(h_{i,t}, h_{j,t}) (the skip "h_j ≈ h_i");
- ``update_r2`` (the issue's pre-grid check): R² of O's implied prediction of the update u_t = h_{j,t} - h_{m,t},
  namely O(h_i)_t - h_{m,t}, whose error is h_{j,t} - O(h_i)_t::

      update_r2 = 1 - Σ_t ||h_{j,t} - O(h_i)_t||² / Σ_t ||u_t - ū||²,   ū = mean_t u_t  (per dimension)

- ``delta_r2`` (the forward package's definition): 1 - Σ_t ||h_{j,t} - O(h_i)_t||² / Σ_t ||h_{j,t} - h_{i,t}||²;
- ``mse`` = mean over elements of (O(h_i) - h_j)²; ``train_mse`` its last logged training value.

The observer's initial weights and data order come from ``seed``, inside :func:`torch.random.fork_rng`, so the
caller's global generator is left where it was.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from selfmodels.closed_loop.battery_config import ObserverSettings
from selfmodels.forward.architectures import build_forward_model, num_params
from selfmodels.forward.config import ForwardTrainConfig
from selfmodels.forward.train import train_forward


def _pairs(source: torch.Tensor, target: torch.Tensor, batch_size: int,
           generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random batches of whole windows (B, T, d) of precollected residuals."""
    while True:
        pick = torch.randint(0, source.shape[0], (batch_size,), generator=generator)
        yield source[pick], target[pick]


def train_observer(source: torch.Tensor, target: torch.Tensor, settings: ObserverSettings, seed: int,
                   device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A fresh observer trained on residuals ``source`` h_i -> ``target`` h_j (N, T, d) for ``settings.steps``
    steps; returns it (in eval mode, frozen) and ``{"train_mse", "params", "steps", "seconds"}``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        observer = build_forward_model(settings.model, source.shape[-1])
        generator = torch.Generator().manual_seed(seed)
        cfg = ForwardTrainConfig(steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                                 checkpoint_every=settings.steps)
        out = train_forward(observer, _pairs(source, target, settings.batch_size, generator), cfg, torch.device(device),
                            generator=generator, progress=False, name="observer")
    observer.eval().requires_grad_(False)
    return observer, {"train_mse": out["final_mse"], "params": num_params(observer), "steps": settings.steps,
                      "seconds": out["seconds"]}


@torch.no_grad()
def predict(observer: nn.Module, source: torch.Tensor, batch_size: int) -> torch.Tensor:
    """O(h_i) (N, T, d) on the CPU in float32, in batches of windows on the observer's device."""
    device = next(observer.parameters()).device
    return torch.cat([observer(source[s : s + batch_size].to(device)).float().cpu()
                      for s in range(0, source.shape[0], batch_size)])


def observer_fit(prediction: torch.Tensor, source: torch.Tensor, middle: torch.Tensor, target: torch.Tensor) -> dict:
    """``cosine``, ``skip_cosine``, ``update_r2``, ``delta_r2`` and ``mse`` of the module docstring, for O(h_i)
    ``prediction``, h_i ``source``, h_m ``middle`` and h_j ``target`` (N, T, d), summed in float64."""
    p, s, m, t = (a.double().flatten(0, -2) for a in (prediction, source, middle, target))  # (N·T, d)
    sse = float(((t - p) ** 2).sum())
    update = t - m
    sst = float(((update - update.mean(0)) ** 2).sum())
    skip_sse = float(((t - s) ** 2).sum())
    return {"cosine": float(F.cosine_similarity(p, t, dim=-1).mean()),
            "skip_cosine": float(F.cosine_similarity(s, t, dim=-1).mean()),
            "update_r2": 1.0 - sse / sst if sst > 0 else float("nan"),
            "delta_r2": 1.0 - sse / skip_sse if skip_sse > 0 else float("nan"),
            "mse": sse / t.numel()}
