"""Training checkpoints as one safetensors file: module weights, optimizer state, data-order RNG, step.

Keys: ``{name}.{param}`` for modules, ``opt.{name}.{param_index}.{state_key}`` for optimizer tensors,
``rng.{name}`` for torch.Generator states; the step and the optimizers' hyper-parameters travel in the
file's string metadata. Nothing is unpickled, so a checkpoint from anyone is safe to open.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from selfmodels.artifacts import load_tensors, save_tensors
from selfmodels.errors import UserError


def save_checkpoint(
    path: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
    extra: dict | None = None,
) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value
    groups = {}
    for name, opt in optimizers.items():
        state = opt.state_dict()
        groups[name] = state["param_groups"]
        for index, entry in state["state"].items():
            for key, value in entry.items():
                tensors[f"opt.{name}.{index}.{key}"] = torch.as_tensor(value)
    for name, gen in generators.items():
        tensors[f"rng.{name}"] = gen.get_state()
    meta = {"step": str(step), "param_groups": json.dumps(groups), "extra": json.dumps(extra or {})}
    save_tensors(path, tensors, metadata=meta)


def load_checkpoint(
    path: Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
) -> tuple[int, dict]:
    """Restore everything saved by :func:`save_checkpoint` in place; return (step, extra)."""
    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    try:
        step = int(meta["step"])
        groups = json.loads(meta["param_groups"])
        extra = json.loads(meta.get("extra", "{}"))
        for name, module in modules.items():
            prefix = f"{name}."
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        for name, opt in optimizers.items():
            state: dict[int, dict] = {}
            prefix = f"opt.{name}."
            for key, value in tensors.items():
                if key.startswith(prefix):
                    index, field = key[len(prefix):].split(".", 1)
                    state.setdefault(int(index), {})[field] = value
            opt.load_state_dict({"state": state, "param_groups": groups[name]})
        for name, gen in generators.items():
            gen.set_state(tensors[f"rng.{name}"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"checkpoint {path} does not match this run ({exc}); delete it to start again") from None
    return step, extra


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
