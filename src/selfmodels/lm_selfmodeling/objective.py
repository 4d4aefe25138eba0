"""The self-modeling objective on a language model, and its controls.

For logits from the LM on inputs x with next tokens y, and a strength w >= 0::

    L = CE(logits, y) + w * A

with the auxiliary term A chosen by ``method``:

- ``self-model`` (paper form): the LM head gets extra outputs ``P = W_aux · u + b_aux`` on its own input u (the
  head's input at the same position) that predict the site's activation a: ``A = D(P, sg(a))``, sg = stop-gradient
  by default (the paper's detached target), so the gradient reaches the network through the prediction path.
- ``random-target`` (control): the same head predicts the site's activation of *another* sequence of the batch
  (sequence b predicts sequence b-1's, cyclically): an auxiliary prediction that is not of itself.
- ``forward`` (forward form): a co-trained forward model F predicts residual j from residual i,
  ``A = D(F(h_i'), h_j')`` where ``h_i' = h_i`` if the gradient may flow into the source (``flow`` = source or
  both) else ``sg(h_i)``, and likewise for the target (``flow`` = target or both); ``none`` detaches both.
- ``activation-l2`` (control): ``A = mean(a²)`` over the site's elements.
- ``weight-decay`` (control): ``A = 0``; the strength is AdamW's decoupled decay coefficient (matrices only).
- ``baseline``: ``A = 0``.

The discrepancy D (``loss``): ``mse`` = mean over elements of (P - T)²; ``scaled-mse`` = mse / sg(mean(T²)) (scale-
free: the target's mean square is detached, else shrinking or growing the target would change the loss by itself);
``cosine`` = mean over tokens of 1 - cos(P_t, T_t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfmodels.errors import UserError, require
from selfmodels.lm_selfmodeling.config import FLOWS, LOSSES, METHODS, check_objective  # defined there, torch-free
from selfmodels.lm_selfmodeling.sites import capture, logits_of
from selfmodels.registries import resolve
from selfmodels.subjects.base import Subject

def discrepancy(pred: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """D(P, T) of the module docstring, a scalar in float32."""
    pred, target = pred.float(), target.float()
    if loss == "mse":
        return (pred - target).pow(2).mean()
    if loss == "scaled-mse":
        return (pred - target).pow(2).mean() / target.detach().pow(2).mean().clamp_min(1e-12)
    if loss == "cosine":
        return (1 - F.cosine_similarity(pred, target, dim=-1, eps=1e-8)).mean()
    raise UserError(f"unknown self-model loss {loss!r}; choose from {', '.join(LOSSES)}")


class Term:
    """What one method adds to the LM's loss: the sites it reads in the training pass and A computed from them
    (None: no term). The built-in methods' terms below; a new method subclasses this (see
    :func:`selfmodels.lm_selfmodeling.config.register_method`). ``o`` is the :class:`AuxiliaryObjective` holding
    the settings and the auxiliary parameters (``aux_head``, ``forward_model``)."""

    def sites(self, o: "AuxiliaryObjective") -> list[str]:
        return []

    def prediction_and_target(self, o: "AuxiliaryObjective", acts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(P, T) of a predicting method, detached as configured; None for the others."""
        return None

    def term(self, o: "AuxiliaryObjective", acts: dict[str, torch.Tensor]) -> torch.Tensor | None:
        pair = self.prediction_and_target(o, acts)
        return None if pair is None else discrepancy(*pair, o.loss)


class SelfModelTerm(Term):
    """The LM head's extra outputs on the head's input predict the site: A = D(P, sg(a))."""

    def sites(self, o):
        return ["head-input", o.site]

    def target(self, o, acts):
        return acts[o.site].detach() if o.detach_target else acts[o.site]

    def prediction_and_target(self, o, acts):
        return o.aux_head(acts["head-input"]), self.target(o, acts)


class RandomTargetTerm(SelfModelTerm):
    """The self-model's head predicts another sequence's site: sequence b gets sequence b-1's activations."""

    def target(self, o, acts):
        target = super().target(o, acts)
        require(target.shape[0] >= 2, "the random-target control needs batches of at least 2 sequences")
        return target.roll(1, dims=0)


class ForwardTerm(Term):
    """A co-trained forward model F predicts residual j from residual i: A = D(F(h_i'), h_j'), detached by ``flow``."""

    def sites(self, o):
        return [f"resid:{o.source}", f"resid:{o.target}"]

    def prediction_and_target(self, o, acts):
        src, tgt = acts[f"resid:{o.source}"], acts[f"resid:{o.target}"]
        if o.flow not in ("source", "both"):
            src = src.detach()
        if o.flow not in ("target", "both"):
            tgt = tgt.detach()
        return o.forward_model(src.float()), tgt


class ActivationL2Term(Term):
    """A = mean(a^2) over the site's elements."""

    def sites(self, o):
        return [o.site]

    def term(self, o, acts):
        return acts[o.site].float().pow(2).mean()


class AuxiliaryObjective(nn.Module):
    """The auxiliary parameters (extra LM-head outputs, or a co-trained forward model) and the term A of the
    registered ``method`` (:data:`selfmodels.lm_selfmodeling.config.METHODS`).

    ``lr`` is the auxiliary optimizer's learning rate (None: the main model's). ``sites()`` lists the activations the training loop must capture; :meth:`term` computes A from them.
    """

    def __init__(self, method: str, site: str, loss: str = "mse", detach_target: bool = True, d_model: int = 0,
                 site_width: int = 0, forward_model: nn.Module | None = None, source: int = 0, target: int = 1,
                 flow: str = "both", lr: float | None = None):
        super().__init__()
        # The auxiliary optimizer's settings (None: the main model's), as every auxiliary the LM trainer takes has.
        self.lr, self.weight_decay, self.grad_clip = lr, None, None
        self.method, self.site, self.loss, self.detach_target = method, site, loss, detach_target
        self.source, self.target, self.flow = source, target, flow
        entry = METHODS.get(method)
        self.kind: Term = resolve(entry.term)()
        self.aux_head = None
        self.forward_model = forward_model
        if entry.predicting:
            self.aux_head = nn.Linear(d_model, site_width)  # the extra rows of the LM head (with a bias)
            nn.init.normal_(self.aux_head.weight, std=0.02)
            nn.init.zeros_(self.aux_head.bias)
        require(not entry.forward_form or forward_model is not None, "the forward form needs a forward model")

    metric = "aux"  # the name of the term A in metrics.jsonl

    def forward_pass(self, subject: Subject, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The subject's logits (B, T, V) on ``ids`` with :meth:`sites` captured in the same pass, and A."""
        with capture(subject, self.sites()) as acts:
            logits = logits_of(subject, ids)
        return logits, self.term(acts)

    def sites(self) -> list[str]:
        return self.kind.sites(self)

    def prediction_and_target(self, acts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(P, T) of the predicting methods and the forward form (None for the others), detached as configured."""
        return self.kind.prediction_and_target(self, acts)

    def term(self, acts: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The auxiliary term A (None for baseline and weight decay)."""
        return self.kind.term(self, acts)

