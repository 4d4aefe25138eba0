"""The training objectives: self-modeling and its two controls, all of the form ``CE + w * R``.

| method          | R (the regulariser, logged as ``aux``)                                  |
|-----------------|-------------------------------------------------------------------------|
| ``baseline``    | none (plain classifier, no extra outputs)                               |
| ``self-model``  | ``mse(prediction, target) = mean_{b,d} (p_bd - a_bd)^2`` over batch and units |
| ``activation-l2`` | ``mean_{b,d} a_bd^2`` on the same target modules (gradient through a)  |
| ``weight-decay``| ``1/2 * sum_theta theta^2`` over all trainable parameters (weights, biases, BatchNorm) |

With ``w`` the strength. The weight-decay term is added to the loss (coupled L2), so its gradient
``w * theta`` is exactly what ``torch.optim.SGD(weight_decay=w)`` adds, and it is the same term under
Adam (not AdamW's decoupled decay). Each objective knows which module the optimizer trains, how to get
logits for evaluation, and how to hand back the pruned classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfmodels.complexity.weights import classification_weight_sd, identity_distance
from selfmodels.errors import UserError
from selfmodels.registries import resolve
from selfmodels.selfmodeling.config import METHODS  # the registry, beside the grid settings that use it
from selfmodels.selfmodeling.targets import capture_outputs, flatten_targets, resolve_modules
from selfmodels.selfmodeling.wrapper import SelfModelOutput, SelfModeling


@dataclass
class LossTerms:
    """The named terms of one training step's loss: ``total = ce + strength * aux``."""

    total: torch.Tensor
    ce: torch.Tensor
    aux: torch.Tensor  # the unweighted regulariser R


def self_modeling_loss(out: SelfModelOutput, labels: torch.Tensor, weight: float) -> LossTerms:
    """``CE(logits, y) + w * mse(prediction, target)``, mse averaged over batch and units."""
    ce = F.cross_entropy(out.logits, labels)
    aux = F.mse_loss(out.prediction, out.target)
    return LossTerms(ce + weight * aux, ce, aux)


def activation_l2_loss(logits: torch.Tensor, activations: torch.Tensor, labels: torch.Tensor, weight: float) -> LossTerms:
    """``CE(logits, y) + w * mean(a^2)``, the mean over batch and units."""
    ce = F.cross_entropy(logits, labels)
    aux = activations.pow(2).mean()
    return LossTerms(ce + weight * aux, ce, aux)


def weight_decay_loss(logits: torch.Tensor, labels: torch.Tensor, parameters: Iterable[torch.Tensor], weight: float) -> LossTerms:
    """``CE(logits, y) + w * 1/2 * ||theta||^2`` (coupled L2: gradient ``w * theta``)."""
    ce = F.cross_entropy(logits, labels)
    aux = 0.5 * sum(p.pow(2).sum() for p in parameters)
    return LossTerms(ce + weight * aux, ce, aux)


class Objective:
    """A classifier together with the loss it is trained under (the ``baseline`` objective: plain CE)."""

    method = "baseline"

    def __init__(self, model: nn.Module, strength: float = 0.0, head: str = "head"):
        if not (strength >= 0):  # also rejects NaN
            raise UserError(f"strength must be a non-negative number, got {strength}")
        self.model = model
        self.strength = float(strength)
        self.head_name = head

    @classmethod
    def build(cls, model: nn.Module, strength: float, *, targets: Sequence[str], example_input: torch.Tensor,
              head: str = "head", detach: bool = True, seed: int = 0) -> "Objective":
        """The objective of one run (a registered method's entry point): each takes what it needs of the run."""
        return cls(model, strength, head)

    @property
    def module(self) -> nn.Module:
        """What the optimizer trains and the checkpoint saves."""
        return self.model

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> LossTerms:
        ce = F.cross_entropy(self.model(x), y)
        return LossTerms(ce, ce, torch.zeros((), device=ce.device))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def classifier(self) -> nn.Module:
        """The trained classifier alone (for self-modeling: the pruned model)."""
        return self.model

    def final_weight(self) -> torch.Tensor:
        """The final layer's full weight matrix (classification rows first)."""
        return self.module.get_submodule(self._head_path()).weight

    def _head_path(self) -> str:
        return self.head_name

    def weight_sd(self) -> float:
        return classification_weight_sd(self.final_weight(), self.num_classes)

    @property
    def num_classes(self) -> int:
        return self.classifier().get_submodule(self.head_name).out_features

    def identity_distance(self) -> float | None:
        """``|W_self - I|_F`` where the self-model block is square; None when it does not exist."""
        return None


class SelfModelObjective(Objective):
    """``CE + w * mse(prediction, target)`` with the head extended by :class:`SelfModeling`."""

    method = "self-model"

    def __init__(self, model, strength, *, targets: Sequence[str], example_input, head="head", detach=True, seed=0):
        super().__init__(model, strength, head)
        self.wrapper = SelfModeling(model, targets, example_input, head=head, detach=detach, seed=seed)

    @classmethod
    def build(cls, model, strength, *, targets, example_input, head="head", detach=True, seed=0):
        return cls(model, strength, targets=targets, example_input=example_input, head=head, detach=detach, seed=seed)

    @property
    def module(self) -> nn.Module:
        return self.wrapper

    def loss(self, x, y):
        return self_modeling_loss(self.wrapper(x), y, self.strength)

    def logits(self, x):
        return self.wrapper(x).logits

    def classifier(self):
        return self.wrapper.classifier_only()

    def _head_path(self):
        return f"model.{self.head_name}"

    @property
    def num_classes(self):
        return self.wrapper.num_classes

    def identity_distance(self):
        blocks = self.wrapper.identity_blocks()
        if not blocks:
            return None
        # With several square blocks (rare), report the first target's.
        return identity_distance(next(iter(blocks.values())))


class ActivationL2Objective(Objective):
    """``CE + w * mean(a^2)`` on the target modules' outputs (no extra outputs)."""

    method = "activation-l2"

    def __init__(self, model, strength, *, targets: Sequence[str], head="head"):
        super().__init__(model, strength, head)
        resolve_modules(model, targets)
        self.targets = tuple(targets)

    @classmethod
    def build(cls, model, strength, *, targets, example_input, head="head", detach=True, seed=0):
        return cls(model, strength, targets=targets, head=head)

    def loss(self, x, y):
        with capture_outputs(self.model, self.targets, detach=False) as outputs:
            logits = self.model(x)  # (B, C)
        activations = flatten_targets(outputs, self.targets)  # (B, D)
        return activation_l2_loss(logits, activations, y, self.strength)


class WeightDecayObjective(Objective):
    """``CE + w/2 * ||theta||^2`` over every trainable parameter."""

    method = "weight-decay"

    def loss(self, x, y):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return weight_decay_loss(self.model(x), y, params, self.strength)


def build_objective(
    method: str,
    model: nn.Module,
    strength: float,
    *,
    targets: Sequence[str],
    example_input: torch.Tensor,
    head: str = "head",
    detach: bool = True,
    seed: int = 0,
) -> Objective:
    """The objective of the registered ``method`` (:data:`selfmodels.selfmodeling.config.METHODS`), around ``model``
    (which a self-model objective extends in place)."""
    objective = resolve(METHODS.get(method).objective)
    return objective.build(model, strength, targets=targets, example_input=example_input, head=head, detach=detach, seed=seed)
