"""Training a classifier with its objective on the one loop (:mod:`selfmodels.training`): per-epoch metrics, a
checkpoint every epoch, exact resume.

Determinism: the model is initialised from the run's seed before this loop starts; inside it the only
randomness is the data order and augmentation of epoch ``e``, drawn from a generator seeded with
``(seed, e)``. A run resumed from the checkpoint of epoch ``e`` therefore replays exactly what an
uninterrupted run does (on CPU, bit for bit).

Per epoch, ``metrics.jsonl`` gets one line with: ``epoch`` (1-based), ``train_loss`` / ``train_ce`` /
``train_aux`` (means over the epoch's batches of the total, the cross-entropy and the unweighted
regulariser R, see :mod:`~selfmodels.selfmodeling.objectives`), ``val_accuracy``, ``test_accuracy``,
``weight_sd`` (classification rows of the final layer, see :mod:`selfmodels.complexity.weights`),
``identity_distance`` (``||W_self - I||_F`` where defined, else null) and ``seconds``.

Speed: under plain SGD (no momentum) the embedding tables (``nn.Embedding`` / ``nn.EmbeddingBag``) get sparse
gradients while training (:func:`sparse_embedding_grads`): only the rows a batch looked up. The update is the
same SGD step (every other row's gradient is zero); it saves the dense pass over the table each step.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset

from selfmodels import training
from selfmodels.artifacts import read_jsonl
from selfmodels.curves import Mirror
from selfmodels.errors import UserError
from selfmodels.selfmodeling.augment import random_affine_flip
from selfmodels.selfmodeling.objectives import Objective
from selfmodels.selfmodeling.presets import OptimConfig  # defined there, torch-free
from selfmodels.training import Optimized, Schedule, Step, Task

CHECKPOINT, METRICS = training.CHECKPOINT, training.METRICS


def make_optimizer(params, config: OptimConfig) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov momentum) or Adam, without weight decay (that is a method of its own)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    nesterov = config.nesterov and config.momentum > 0
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=nesterov)


def sparse_gradients_fit(config: OptimConfig) -> bool:
    """Whether the optimizer's update is the same with sparse embedding gradients: plain SGD without momentum
    (momentum buffers and Adam's moments would treat untouched rows differently, or refuse sparse tensors)."""
    return config.optimizer == "sgd" and config.momentum == 0


@contextmanager
def sparse_embedding_grads(module: nn.Module, enabled: bool = True):
    """While inside, every embedding table of ``module`` gives a sparse gradient (``sparse=True``, a documented
    attribute the forward reads); afterwards each is as it was (the LLC's vmap path needs dense gradients)."""
    tables = [m for m in module.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))] if enabled else []
    before = [m.sparse for m in tables]
    for m in tables:
        m.sparse = True
    try:
        yield
    finally:
        for m, sparse in zip(tables, before):
            m.sparse = sparse


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``'s data order and augmentation (independent of resumption)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


@torch.no_grad()
def accuracy(logits_fn: Callable[[torch.Tensor], torch.Tensor], dataset: TensorDataset, device, batch_size: int = 1024) -> float:
    """Fraction of examples whose argmax over the class logits is the label."""
    x, y = dataset.tensors
    correct = 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        correct += int((logits_fn(xb).argmax(dim=1) == yb).sum())
    return correct / max(len(y), 1)


class ClassifierTask(Task):
    """The loop's view of :func:`train_objective`: step s is minibatch ``s mod B`` of epoch ``s div B`` (B minibatches
    an epoch), so the data position is the step itself; evaluation and checkpoint close every epoch."""

    curve, step_field, unit = "classifier", "epoch", "batch"

    def __init__(self, objective: Objective, train: TensorDataset, val: TensorDataset, test: TensorDataset,
                 config: OptimConfig, seed: int, device: torch.device, name: str):
        self.objective, self.val, self.test, self.config, self.seed, self.device = objective, val, test, config, seed, device
        self.name = name
        module = objective.module.to(device)
        self.modules = {"model": module}
        self.optimizers = {"optim": Optimized(make_optimizer(module.parameters(), config), list(module.parameters()))}
        self.x, self.y = (t.to(device) for t in train.tensors)
        self.batches = -(-len(self.y) // config.batch_size)  # minibatches per epoch, the last one possibly short

    def identity(self) -> dict:
        return {"task": "classifier", "batches_per_epoch": self.batches}

    def step(self, step: int) -> Step:
        epoch, batch = divmod(step, self.batches)
        if batch == 0:  # the epoch's data order and augmentation, independent of resumption
            self.generator = epoch_generator(self.seed, epoch)
            self.order = torch.randperm(len(self.y), generator=self.generator).to(self.device)  # (N,)
            self.objective.module.train()
            self.sums, self.began = torch.zeros(3, dtype=torch.float64, device=self.device), time.perf_counter()
        idx = self.order[batch * self.config.batch_size:(batch + 1) * self.config.batch_size]
        xb, yb = self.x[idx], self.y[idx]
        if self.config.augment:
            xb = random_affine_flip(xb, self.generator)
        terms = self.objective.loss(xb, yb)
        self.sums += torch.stack([terms.total, terms.ce, terms.aux]).detach().to(self.sums)  # summed where they are
        return Step(terms.total)

    def evaluate(self, step: int) -> dict:
        objective = self.objective
        objective.module.eval()
        val_accuracy = accuracy(objective.logits, self.val, self.device)
        return {
            "epoch": step // self.batches,
            "train_loss": float(self.sums[0] / self.batches),
            "train_ce": float(self.sums[1] / self.batches),
            "train_aux": float(self.sums[2] / self.batches),
            "val_accuracy": val_accuracy,
            # val is test (the paper's choice, val_is_test): one evaluation serves both.
            "test_accuracy": val_accuracy if self.val is self.test else accuracy(objective.logits, self.test, self.device),
            "weight_sd": objective.weight_sd(),
            "identity_distance": objective.identity_distance(),
            "seconds": time.perf_counter() - self.began,
        }

    def lines(self, step: int, record: dict) -> list[dict]:
        return [record]

    def kept(self, line: dict, start: int) -> bool:
        return line.get("epoch", 0) <= start // self.batches

    def postfix(self, record: dict) -> str:
        return f"loss={record['train_loss']:.3f} val={record['val_accuracy']:.3f}"


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
    after_step: Callable[[int], None] | None = None,
    sparse_embeddings: bool | None = None,
) -> list[dict]:
    """Train ``objective.module`` for ``config.epochs``, resuming from ``run_dir``'s checkpoint if any.

    ``stop_after`` ends the call once epoch ``stop_after`` is done (a planned interruption); ``after_step`` as in
    :func:`selfmodels.training.train` (steps are minibatches). Returns the metrics of every finished epoch (also
    those of earlier, resumed calls). ``mirror`` also receives each epoch's line, as curve ``classifier`` over
    ``epoch`` (see :mod:`selfmodels.curves`). ``sparse_embeddings``: sparse gradients for the embedding tables
    (:func:`sparse_embedding_grads`); None = where the update is the same (:func:`sparse_gradients_fit`), False = dense.
    """
    config.validate()
    run_dir = Path(run_dir)
    task = ClassifierTask(objective, train, val, test, config, seed, torch.device(device), run_dir.name)
    epochs = config.epochs if stop_after is None else min(config.epochs, stop_after)
    schedule = Schedule(config.epochs * task.batches, eval_every=task.batches, checkpoint_every=task.batches,
                        until=epochs * task.batches)
    if sparse_embeddings and not sparse_gradients_fit(config):
        raise UserError(f"sparse embedding gradients need plain SGD without momentum, not {config.optimizer} with "
                        f"momentum {config.momentum}")
    sparse = sparse_gradients_fit(config) if sparse_embeddings is None else sparse_embeddings
    with sparse_embedding_grads(objective.module, sparse):
        training.train(task, schedule, run_dir, progress=progress, mirror=mirror, after_step=after_step)
    objective.module.eval()
    return read_jsonl(run_dir / METRICS)
