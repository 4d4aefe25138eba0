"""A causal LM seen as ids (B, T) -> logits (B, T, V), and its loss: what the LM LLC samples.

Kept apart from :mod:`selfmodels.complexity.lm_llc` so that the samplers below it
(:mod:`selfmodels.complexity.stacked_gpt`) can recognise our GPT behind the wrapper without an import circle.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from selfmodels.complexity.losses import cross_entropy
from selfmodels.nets.gpt import GPT

LogitsFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (model, ids (B, T)) -> logits (B, T, V)


class LogitsOf(nn.Module):
    """``model`` seen as ids (B, T) -> logits (B, T, V): its output itself, its ``.logits`` (Hugging Face
    outputs), or ``logits_fn(model, ids)``. The wrapped model is a submodule, so ``functional_call`` on
    this wrapper swaps the wrapped model's parameters."""

    def __init__(self, model: nn.Module, logits_fn: LogitsFn | None = None):
        super().__init__()
        self.model = model
        self.logits_fn = logits_fn

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.logits_fn is not None:
            return self.logits_fn(self.model, ids)
        out = self.model(ids)
        return out if isinstance(out, torch.Tensor) else out.logits


def gpt_logits_explicit_attention(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """Our GPT's logits (B, T, V) with attention computed in plain tensor ops (batched by vmap)."""
    return model(ids, explicit_attention=True)


def next_token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-mean_{b,t} log softmax(logits[b, t])[targets[b, t]]`` for logits (B, T, V), targets (B, T)."""
    return cross_entropy(logits, targets)


__all__ = ["LogitsOf", "LogitsFn", "gpt_logits_explicit_attention", "next_token_cross_entropy"]
