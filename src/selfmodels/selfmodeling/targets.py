"""Capturing named modules' outputs with forward hooks (the one place hooks are registered here).

Hooks only store tensors; losses and ``backward()`` stay in the training loop. They are registered
inside a context manager that always removes them, also when the forward pass raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from selfmodels.errors import UserError


def module_names(model: nn.Module) -> list[str]:
    """The names a target may use: every named submodule (the root, named '', excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Map target names to modules; an unknown name is a UserError listing the available ones."""
    if not names:
        raise UserError("no self-modeling target given: name at least one module of the model")
    modules = dict(model.named_modules())
    unknown = [name for name in names if not name or name not in modules]
    if unknown:
        available = ", ".join(module_names(model))
        raise UserError(f"unknown target module(s) {', '.join(map(repr, unknown))}; the model has: {available}")
    if len(set(names)) != len(names):
        raise UserError(f"target modules listed twice: {', '.join(names)}")
    return {name: modules[name] for name in names}


@contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str], *, detach: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward pass stores ``outputs[name]`` = that module's output.

    ``detach=True`` stores a stop-gradient copy (the self-modeling target); ``detach=False`` keeps the
    graph (activation regularisation, or the non-detached self-modeling variant).
    """
    outputs: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor):
                raise UserError(f"target module {name!r} returns {type(output).__name__}, not a tensor")
            outputs[name] = output.detach() if detach else output

        return hook

    try:
        for name, module in resolve_modules(model, names).items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def flatten_targets(outputs: dict[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """Concatenate the captured outputs, each flattened per example, in ``names`` order: (B, D)."""
    missing = [name for name in names if name not in outputs]
    if missing:
        raise UserError(f"target module(s) {', '.join(missing)} did not run in the forward pass")
    return torch.cat([outputs[name].flatten(1) for name in names], dim=1)  # (B, sum of sizes)
