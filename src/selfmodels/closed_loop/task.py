"""Training one condition on the one loop (:func:`selfmodels.training.train`): :class:`ClosedLoopTask`.

Each step draws ``batch_size`` random training windows, runs one closed-loop pass (injection on) and minimises::

    L = CE(logits, next tokens) + MSE(F(sg(h_i)), sg(h_j)) [+ the signal's own loss, e.g. ||A(h_i) - h_i||²]

The terms' graphs are disjoint (:mod:`selfmodels.closed_loop.model`), so one backward gives each optimizer its own
loss's gradient: the GPT and G the LM's, F its MSE's (plus the LM's through the injection with
``lm_into_forward``), a signal's module its own loss's. Four AdamW optimizers, decay on matrices only: ``main``
(the GPT) and ``gate`` (G) at the LM's lr, decay and clip; ``forward`` (F) and ``signal`` (a trainable signal, the
autoencoder) at F's lr, decay and clip. F is co-trained in every condition, open loop included. The loop owns the
rest: the NaN guard, checkpoints and resume (the window generators are the data position), ``metrics.jsonl``.

With ``snapshots`` (a directory), every evaluation also keeps the whole closed loop's weights as
``step_N.safetensors`` (as :func:`~selfmodels.closed_loop.load.save_model` writes the final model: tied tensors once)
beside ``step_N.json`` (``step``, ``val_loss``): the open-loop snapshots the grid compares
the other conditions with at matched validation loss. An evaluation repeated on resume rewrites its pair (atomic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pathlib import Path

from selfmodels.artifacts import write_json
from selfmodels.closed_loop.config import LoopConfig
from selfmodels.closed_loop.load import save_model
from selfmodels.closed_loop.measure import evaluate, gate_norm
from selfmodels.closed_loop.model import ClosedLoop
from selfmodels.optim import make_adamw
from selfmodels.subjects.config import LMTrainConfig
from selfmodels.subjects.lm_training import WindowDraws
from selfmodels.training import Optimized, Step, Task


class ClosedLoopTask(Task):
    """The loop's view of one condition's training. ``val``: held-out windows (x, y) evaluated every
    ``lm.eval_every`` steps (with and without the injection); ``identity``: what a resumed checkpoint must match;
    ``snapshots``: where to keep the weights at every evaluation (None: nowhere)."""

    unit = "step"
    curve = "closed-loop"

    def __init__(self, closed: ClosedLoop, lm: LMTrainConfig, loop: LoopConfig, draws: WindowDraws,
                 val: tuple[torch.Tensor, torch.Tensor], identity: dict | None = None, snapshots: Path | None = None):
        self.closed, self.lm, self.draws, self.val = closed, lm, draws, val
        self.snapshots = None if snapshots is None else Path(snapshots)
        self.name = f"closed loop ({loop.condition})"
        self._identity = {"task": "closed-loop", "condition": loop.condition, **(identity or {})}
        closed.train()
        closed.gpt.requires_grad_(True)
        parts = {"main": closed.gpt, "gate": closed.gate, "forward": closed.forward_model, "signal": closed.signal}
        self.modules = parts
        settings = {"main": (lm.lr, lm.weight_decay, lm.grad_clip), "gate": (lm.lr, lm.weight_decay, lm.grad_clip),
                    "forward": (loop.forward_lr, loop.forward_weight_decay, loop.forward_grad_clip),
                    "signal": (loop.forward_lr, loop.forward_weight_decay, loop.forward_grad_clip)}
        self.optimizers = {}
        for name, module in parts.items():
            params = closed.signal.trainable() if name == "signal" else list(module.parameters())
            if params:
                lr, decay, clip = settings[name]
                self.optimizers[name] = Optimized(make_adamw(params, lr, decay), params, clip)

    def identity(self) -> dict:
        return {**self._identity, "optimizers": list(self.optimizers)}

    def step(self, step: int) -> Step:
        x, y = next(self.draws)
        device = self.closed.gate.weight.device
        p = self.closed.run(x.to(device))
        ce = F.cross_entropy(p.logits.flatten(0, 1).float(), y.to(device).flatten())  # logits (B, T, V)
        forward_mse = F.mse_loss(p.prediction.float(), p.target.float())  # the on-policy target, detached
        loss = ce + forward_mse + (0.0 if p.signal_loss is None else p.signal_loss)
        injection = 0.0 if p.injected is None else p.injected.detach().float().norm(dim=-1).mean().item()
        metrics = {"loss": loss.item(), "ce": ce.item(), "forward_mse": forward_mse.item(),
                   "signal_loss": None if p.signal_loss is None else p.signal_loss.item(),
                   "gate_norm": gate_norm(self.closed), "injection_norm": injection}
        return Step(loss, metrics)

    def evaluate(self, step: int) -> dict:
        """The held-out measures (:func:`~selfmodels.closed_loop.measure.evaluate`), named apart from the step's own
        numbers in the same line: ``val_loss``, ``val_loss_without_injection``, ``dependency`` as they are, every
        other measure prefixed ``val_`` (``val_forward_mse`` beside the training batch's ``forward_mse``)."""
        measured = evaluate(self.closed, *self.val, self.lm.batch_size)
        kept = ("val_loss", "val_loss_without_injection", "dependency")
        if self.snapshots is not None:  # weights first, then the line naming them (a crash leaves no dangling line)
            save_model(self.closed, self.snapshots / f"step_{step}.safetensors", self._identity.get("key", ""))
            write_json(self.snapshots / f"step_{step}.json", {"step": step, "val_loss": measured["val_loss"]})
        return {(k if k in kept else f"val_{k}"): v for k, v in measured.items() if k != "gate_norm"}

    def data_state(self) -> dict:
        return self.draws.state_dict()

    def load_data_state(self, state: dict) -> None:
        self.draws.load_state_dict(state)

    def postfix(self, record: dict) -> str:
        return f"ce={record['ce']:.3f}"
