"""The classifier training loop: per-epoch metrics, a checkpoint every epoch, exact resume.

Determinism: the model is initialised from the run's seed before this loop starts; inside it the only
randomness is the data order and augmentation of epoch ``e``, drawn from a generator seeded with
``(seed, e)``. A run resumed from the checkpoint of epoch ``e`` therefore replays exactly what an
uninterrupted run does (on CPU, bit for bit).

Per epoch, ``metrics.jsonl`` gets one line with: ``epoch`` (1-based), ``train_loss`` / ``train_ce`` /
``train_aux`` (means over the epoch's batches of the total, the cross-entropy and the unweighted
regulariser R, see :mod:`~selfmodels.selfmodeling.objectives`), ``val_accuracy``, ``test_accuracy``,
``weight_sd`` (classification rows of the final layer, see :mod:`selfmodels.complexity.weights`),
``identity_distance`` (``||W_self - I||_F`` where defined, else null) and ``seconds``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from selfmodels.artifacts import read_jsonl, write_text
from selfmodels.checkpoint import load_checkpoint, save_checkpoint
from selfmodels.configs import option
from selfmodels.curves import Mirror, append_curve
from selfmodels.errors import UserError
from selfmodels.selfmodeling.augment import random_affine_flip
from selfmodels.selfmodeling.objectives import Objective

OPTIMIZERS = ("sgd", "adam")
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"


@dataclass
class OptimConfig:
    """How a classifier is optimised (the paper's per-task values live in ``presets``)."""

    optimizer: str = option("sgd", "optimizer", choices=OPTIMIZERS)
    lr: float = option(0.005, "learning rate")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "SGD with Nesterov momentum")
    batch_size: int = option(512, "minibatch size")
    epochs: int = option(50, "training epochs")
    augment: bool = option(False, "random affine (15 deg, 10% shift) + horizontal flip on images")

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not (self.lr > 0):
            raise UserError(f"learning rate must be positive, got {self.lr}")
        if not (0 <= self.momentum < 1):
            raise UserError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.batch_size < 1 or self.epochs < 1:
            raise UserError(f"batch size and epochs must be positive, got {self.batch_size} and {self.epochs}")


def make_optimizer(params, config: OptimConfig) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov momentum) or Adam, without weight decay (that is a method of its own)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    nesterov = config.nesterov and config.momentum > 0
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=nesterov)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``'s data order and augmentation (independent of resumption)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


# ---- checkpoints: one safetensors file, tensors plus JSON metadata, written atomically ----------

# ---- the loop ------------------------------------------------------------------------------------

@torch.no_grad()
def accuracy(logits_fn: Callable[[torch.Tensor], torch.Tensor], dataset: TensorDataset, device, batch_size: int = 1024) -> float:
    """Fraction of examples whose argmax over the class logits is the label."""
    x, y = dataset.tensors
    correct = 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        correct += int((logits_fn(xb).argmax(dim=1) == yb).sum())
    return correct / max(len(y), 1)


def train_objective(
    objective: Objective,
    train: TensorDataset,
    val: TensorDataset,
    test: TensorDataset,
    config: OptimConfig,
    run_dir: str | Path,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
    mirror: Mirror | None = None,
) -> list[dict]:
    """Train ``objective.module`` for ``config.epochs``, resuming from ``run_dir``'s checkpoint if any.

    ``stop_after`` ends the call after that many epochs of this call (to simulate an interruption in
    tests). Returns the metrics of every finished epoch (also those of earlier, resumed calls). ``mirror``
    also receives each epoch's line, as curve ``classifier`` over ``epoch`` (see :mod:`selfmodels.curves`).
    """
    config.validate()
    run_dir = Path(run_dir)
    device = torch.device(device)
    module = objective.module.to(device)
    optimizer = make_optimizer(module.parameters(), config)
    checkpoint, metrics_path = run_dir / CHECKPOINT, run_dir / METRICS

    start = 0
    if checkpoint.exists():
        start, _ = load_checkpoint(checkpoint, {"model": module}, {"optim": optimizer}, {})
    # Lines for epochs after the checkpoint come from an interrupted epoch: drop them.
    history = [m for m in read_jsonl(metrics_path) if m.get("epoch", 0) <= start]
    write_text(metrics_path, "".join(json.dumps(m) + "\n" for m in history))

    x_train, y_train = (t.to(device) for t in train.tensors)
    n = len(y_train)
    epochs = range(start, config.epochs if stop_after is None else min(config.epochs, start + stop_after))
    bar = tqdm(epochs, desc=run_dir.name, disable=not progress, leave=False, unit="epoch")
    for epoch in bar:
        began = time.perf_counter()
        generator = epoch_generator(seed, epoch)
        order = torch.randperm(n, generator=generator).to(device)  # (N,)
        module.train()
        sums = torch.zeros(3, dtype=torch.float64)
        batches = 0
        for first in range(0, n, config.batch_size):
            idx = order[first:first + config.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if config.augment:
                xb = random_affine_flip(xb, generator)
            terms = objective.loss(xb, yb)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            sums += torch.tensor([terms.total.item(), terms.ce.item(), terms.aux.item()], dtype=torch.float64)
            batches += 1
        module.eval()
        record = {
            "epoch": epoch + 1,
            "train_loss": float(sums[0] / batches),
            "train_ce": float(sums[1] / batches),
            "train_aux": float(sums[2] / batches),
            "val_accuracy": (val_accuracy := accuracy(objective.logits, val, device)),
            # val is test (the paper's choice, val_is_test): one evaluation serves both.
            "test_accuracy": val_accuracy if val is test else accuracy(objective.logits, test, device),
            "weight_sd": objective.weight_sd(),
            "identity_distance": objective.identity_distance(),
            "seconds": time.perf_counter() - began,
        }
        # Metrics line first, checkpoint second: a crash in between repeats this epoch on resume.
        append_curve(metrics_path, record, mirror, curve="classifier", step="epoch")
        save_checkpoint(checkpoint, epoch + 1, {"model": module}, {"optim": optimizer}, {})
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val=f"{record['val_accuracy']:.3f}")
    return history
