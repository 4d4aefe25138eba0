"""Self-modeling for any ``nn.Module``: its final Linear also predicts named hidden activations.

Given a classifier whose last layer is the Linear ``head`` (C outputs) and the names of target
modules, :class:`SelfModeling` extends the head to C + D outputs,

    head(x) = [ logits | prediction ] = W x + b,   W = [ W_cls ; W_self ],  W_self: (D, in_features)

where D is the total flattened size of the targets' outputs. The first C rows are the original
classifier, untouched; the D new rows are a fresh Linear initialised like ``nn.Linear`` (uniform in
+-1/sqrt(in_features)) from a generator of their own, so adding them does not change the classifier's
initial weights nor the random stream the rest of training sees. A forward pass captures the targets
with hooks (detached by default: stop-gradient on the target, gradient still reaches the hidden layer
through the prediction) and returns logits, prediction and target; the loss lives in
:mod:`selfmodels.selfmodeling.objectives`.

Usage::

    model = SelfModeling(MyNet(), targets=["hidden_act"], example_input=x[:2])
    out = model(x)                       # out.logits (B, C), out.prediction / out.target (B, D)
    loss = self_modeling_loss(out, y, weight=10.0).total
    classifier = model.classifier_only() # the pruned model: exactly the classification rows
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from selfmodels.errors import UserError
from selfmodels.selfmodeling.targets import capture_outputs, flatten_targets, module_names, resolve_modules


@dataclass
class SelfModelOutput:
    """One forward pass of a self-modeling network."""

    logits: torch.Tensor  # (B, C) class scores: rows 0..C-1 of the head
    prediction: torch.Tensor  # (B, D) the head's self-model rows
    target: torch.Tensor  # (B, D) the flattened, concatenated target activations


class SplitHead(nn.Module):
    """A Linear with C + D outputs stored as two blocks: ``[classify(x) | predict(x)]``.

    The same function as one ``Linear(in, C + D)`` with ``weight = cat(classify.weight, predict.weight)``;
    keeping the blocks apart makes the classifier rows (and pruning them out) exact.
    """

    def __init__(self, classify: nn.Linear, predict_dim: int, generator: torch.Generator):
        super().__init__()
        self.classify = classify
        # skip_init: build without touching torch's global RNG, then draw from our own generator.
        self.predict = nn.utils.skip_init(
            nn.Linear, classify.in_features, predict_dim, bias=classify.bias is not None,
            device=classify.weight.device, dtype=classify.weight.dtype,
        )
        bound = 1.0 / math.sqrt(classify.in_features)  # what nn.Linear's default init gives
        with torch.no_grad():
            weight = torch.empty(self.predict.weight.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
            self.predict.weight.copy_(weight)
            if self.predict.bias is not None:
                bias = torch.empty(self.predict.bias.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
                self.predict.bias.copy_(bias)

    @property
    def num_classes(self) -> int:
        return self.classify.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The full (C + D, in_features) weight matrix, classification rows first."""
        return torch.cat([self.classify.weight, self.predict.weight], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.classify(x), self.predict(x)], dim=-1)  # (..., C + D)


def _get_linear(model: nn.Module, name: str) -> nn.Linear:
    modules = dict(model.named_modules())
    if name not in modules:
        raise UserError(f"the model has no module {name!r} to use as the final layer; it has: {', '.join(module_names(model))}")
    layer = modules[name]
    if not isinstance(layer, nn.Linear):
        raise UserError(f"final layer {name!r} is a {type(layer).__name__}; self-modeling extends an nn.Linear")
    return layer


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


class SelfModeling(nn.Module):
    """Wrap ``model`` so that its final Linear (``head``) also predicts the outputs of ``targets``.

    ``model`` is modified in place (its head becomes a :class:`SplitHead`) and owned by the wrapper.
    ``example_input`` (a small batch) is run once in eval mode without gradients to learn the target
    sizes; it changes no weights, no BatchNorm statistics and no random state. A target whose output
    is called several times in one forward pass contributes its last output.
    """

    def __init__(
        self,
        model: nn.Module,
        targets: Sequence[str],
        example_input: torch.Tensor,
        *,
        head: str = "head",
        detach: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.targets = tuple(targets)
        self.detach = detach
        self.head_name = head
        resolve_modules(model, self.targets)  # unknown names -> UserError listing the available ones
        linear = _get_linear(model, head)
        if head in self.targets:
            raise UserError(f"the final layer {head!r} cannot be its own self-modeling target")
        sizes, feeds_head = self._probe(model, linear, example_input)
        self.target_sizes = sizes
        generator = torch.Generator().manual_seed(seed)
        self.model = model
        _set_module(self.model, head, SplitHead(linear, sum(sizes.values()), generator))
        # Rows of the prediction block for each target whose output is exactly the head's input:
        # there the block W_self[rows] is square and its distance from the identity is defined.
        self.identity_rows: dict[str, tuple[int, int]] = {}
        start = 0
        for name in self.targets:
            if feeds_head[name]:
                self.identity_rows[name] = (start, start + sizes[name])
            start += sizes[name]

    def _probe(self, model: nn.Module, linear: nn.Linear, example_input: torch.Tensor):
        seen: dict[str, torch.Tensor] = {}
        handle = linear.register_forward_pre_hook(lambda module, args: seen.__setitem__("head_input", args[0]))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), capture_outputs(model, self.targets, detach=True) as outputs:
                model(example_input)
        finally:
            handle.remove()
            model.train(was_training)
        sizes = {name: int(outputs[name][0].numel()) for name in self.targets}
        head_input = seen["head_input"].flatten(1)
        feeds = {
            name: outputs[name].flatten(1).shape == head_input.shape and torch.equal(outputs[name].flatten(1), head_input)
            for name in self.targets
        }
        return sizes, feeds

    @property
    def head(self) -> SplitHead:
        return self.model.get_submodule(self.head_name)  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, x: torch.Tensor) -> SelfModelOutput:
        with capture_outputs(self.model, self.targets, detach=self.detach) as outputs:
            out = self.model(x)  # (B, C + D)
        target = flatten_targets(outputs, self.targets)  # (B, D)
        c = self.num_classes
        return SelfModelOutput(logits=out[:, :c], prediction=out[:, c:], target=target)

    def classifier_only(self) -> nn.Module:
        """A copy of the model with the head cut back to its classification rows (the pruned classifier)."""
        pruned = copy.deepcopy(self.model)
        _set_module(pruned, self.head_name, copy.deepcopy(self.head.classify))
        return pruned

    def identity_blocks(self) -> dict[str, torch.Tensor]:
        """For each target that is the head's own input: its square block of self-model rows, (H, H)."""
        weight = self.head.predict.weight
        return {name: weight[a:b] for name, (a, b) in self.identity_rows.items()}
