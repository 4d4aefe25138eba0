"""Losses for the LLC estimator, and the closed-form logit gradients the stacked-MLP path may use."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy ``-mean_i log softmax(logits_i)[y_i]`` (the loss of ``classifier_llc``).

    Written with log_softmax + gather rather than ``F.cross_entropy``: under ``vmap`` the latter goes
    through a decomposition whose first use costs seconds of imports; the numbers are the same.
    """
    return -F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).mean()


def cross_entropy_with_logit_gradient(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cross_entropy` of every chain at once, and its gradient with respect to the logits.

    ``logits`` (C, B, K), ``targets`` (B,) class indices. Returns L (C,) with
    ``L_c = -mean_b log softmax(z_cb)[y_b]`` and ``dL_c/dz_cb = (softmax(z_cb) - onehot(y_b)) / B``.
    """
    log_probs = F.log_softmax(logits, dim=-1)
    index = targets.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    losses = -log_probs.gather(-1, index).mean(dim=(1, 2))
    grad = log_probs.exp_().scatter_add_(-1, index, torch.full_like(index, -1, dtype=logits.dtype))
    return losses, grad.div_(logits.shape[1])


# loss_fn -> function(logits (C, B, K), *targets) -> (losses (C,), dL/dlogits (C, B, K)).
# Other losses go through autograd, one chain at a time.
LOGIT_GRADIENTS: dict[Callable, Callable] = {cross_entropy: cross_entropy_with_logit_gradient}
