"""Training checkpoints as one safetensors file: module weights, optimizer state, data-order RNG, step.

Keys: ``{name}.{param}`` for modules, ``opt.{name}.{param_index}.{state_key}`` for optimizer tensors,
``rng.{name}`` for torch.Generator states (a tensor two names share, a tied LM head, is stored once and read back
under both: :func:`~selfmodels.artifacts.save_tensors`). The step, the optimizers' hyper-parameters, any non-tensor
optimizer state and the caller's ``extra`` travel as JSON in the file's string metadata. Nothing is
unpickled, so a checkpoint from anyone is safe to open. Used by every training loop in the package.
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
    """Write everything needed to continue training exactly, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value
    groups, plain = {}, {}
    for name, opt in optimizers.items():
        state = opt.state_dict()
        groups[name] = state["param_groups"]
        for index, entry in state["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"opt.{name}.{index}.{key}"] = value
                else:  # e.g. a step count kept as a Python number
                    plain.setdefault(name, {}).setdefault(str(index), {})[key] = value
    for name, gen in generators.items():
        tensors[f"rng.{name}"] = gen.get_state()
    meta = {"step": str(step), "param_groups": json.dumps(groups), "optim_plain": json.dumps(plain),
            "extra": json.dumps(extra or {})}
    save_tensors(path, tensors, metadata=meta)


def load_checkpoint(
    path: Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
) -> tuple[int, dict]:
    """Restore everything saved by :func:`save_checkpoint` in place; return (step, extra)."""
    tensors = load_tensors(path)  # corrupt or truncated -> UserError naming the file
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        step = int(meta["step"])
        groups = json.loads(meta["param_groups"])
        plain = json.loads(meta.get("optim_plain", "{}"))
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
            for index, entry in plain.get(name, {}).items():
                state.setdefault(int(index), {}).update(entry)
            opt.load_state_dict({"state": state, "param_groups": groups[name]})
        for name, gen in generators.items():
            gen.set_state(tensors[f"rng.{name}"])
    except (KeyError, RuntimeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise UserError(f"checkpoint {path} does not match this run ({exc}); delete it to start again") from None
    return step, extra
