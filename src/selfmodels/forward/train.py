"""Training forward models (or the per-position baseline): K models from one stream of activation batches.

Each model ``name -> (model, source, target)`` minimises ``L = mean over elements of (model(source) - target)²``
(in float32, source and target detached, so nothing flows back into whatever produced them) with its own AdamW
optimizer and gradient-norm clip. The batches are dicts ``{index: (B, T, d)}``: an
:class:`~selfmodels.forward.stream.ActivationStream` computes every index any model needs in one pass of the
subject, so K pairs cost one subject pass per step instead of K; :class:`PairBatches` adapts any iterator of
``(source, target)`` pairs (the on-disk cache, a frozen subject run on held-out windows). The step's loss is the sum
of the K models' losses: their graphs share nothing, so each model's gradient is exactly its own loss's, and K
models trained together end with the same weights as each trained alone on the same batches.

The loop is :func:`selfmodels.training.train`: ``metrics.jsonl`` has one line per model per logged step
(``model``, ``source``, ``target``, ``step``, ``forward_mse``), the checkpoint holds every model, every optimizer and
the batches' position (every rank's under torchrun, where each rank feeds its own batches and the gradients are
averaged over the ranks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from selfmodels import distributed
from selfmodels.curves import Mirror
from selfmodels.errors import require
from selfmodels.forward.config import ForwardTrainConfig  # defined there, torch-free
from selfmodels.forward.stream import ActivationStream
from selfmodels.optim import make_adamw
from selfmodels.training import Optimized, Step, Task, train
from selfmodels.training.rng import generator_state, set_generator_state

Pairs = Iterator[tuple[torch.Tensor, torch.Tensor]]


class PairBatches:
    """``(source, target)`` pairs seen as batches ``{source_index: s, target_index: t}``; its position is the
    generator that draws them (None: a source that cannot be resumed)."""

    def __init__(self, pairs: Pairs, source: int, target: int, generator: torch.Generator | None = None):
        self.pairs, self.source, self.target, self.generator = pairs, source, target, generator

    def __iter__(self) -> "PairBatches":
        return self

    def __next__(self) -> dict[int, torch.Tensor]:
        source, target = next(self.pairs)
        return {self.source: source, self.target: target}

    def state_dict(self) -> dict:
        return {} if self.generator is None else {"generator": generator_state(self.generator)}

    def load_state_dict(self, state: dict) -> None:
        if self.generator is not None:
            set_generator_state(self.generator, state["generator"])


class ForwardTask(Task):
    """K forward models, one AdamW each, on one stream of batches (the loop's view of :func:`train_many`)."""

    def __init__(self, models: dict[str, tuple[nn.Module, int, int]], batches, cfg: ForwardTrainConfig,
                 device: torch.device, name: str):
        self.models, self.batches, self.device, self.name = models, batches, device, name
        self.names = list(models)
        self.keys = {n: f"m{i}" for i, n in enumerate(self.names)}  # positional, so any model name is safe
        self.modules = {self.keys[n]: models[n][0].to(device).train() for n in self.names}
        self.optimizers = {key: Optimized(make_adamw(m.parameters(), cfg.lr, cfg.weight_decay),
                                          [p for p in m.parameters() if p.requires_grad], cfg.grad_clip)
                           for key, m in self.modules.items()}
        self.tokens = 0

    def identity(self) -> dict:
        return {"task": "forward", "models": self.names, "pairs": {n: list(self.models[n][1:]) for n in self.names}}

    def step(self, step: int) -> Step:
        batch = next(self.batches)  # {index: (B, T, d)}: one subject pass (at most) for every model
        losses = {}
        for name in self.names:
            model, source, target = self.models[name]
            prediction = model(batch[source].to(self.device).detach())
            losses[name] = F.mse_loss(prediction.float(), batch[target].to(self.device).detach().float())
        first = next(iter(batch.values()))
        self.tokens += first.shape[0] * first.shape[1]
        return Step(sum(losses.values()), {name: loss.item() for name, loss in losses.items()})

    def lines(self, step: int, record: dict) -> list[dict]:
        return [{"model": n, "source": self.models[n][1], "target": self.models[n][2], "step": step,
                 "forward_mse": record[n]} for n in self.names]

    def data_state(self) -> dict:
        return self.batches.state_dict() if hasattr(self.batches, "state_dict") else {}

    def load_data_state(self, state: dict) -> None:
        if hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state)

    def postfix(self, record: dict) -> str:
        return "mse=" + " ".join(f"{record[n]:.3g}" for n in self.names[:4])


def train_many(models: dict[str, tuple[nn.Module, int, int]], batches, cfg: ForwardTrainConfig, device: torch.device,
               directory: Path | None, progress: bool = True, mirror: Mirror | None = None, after_step=None,
               name: str | None = None) -> dict[str, dict]:
    """Train every ``name -> (model, source, target)`` for ``cfg.steps`` steps on ``batches`` (dicts
    ``{index: (B, T, d)}``: an ActivationStream, or :class:`PairBatches`).

    Returns per model ``{"final_mse", "steps", "tokens", "seconds"}`` (``tokens``, ``seconds``:
    this call's, tokens summed over the ranks; ``final_mse``: the last logged loss, the ranks' mean, also after a
    resume that had nothing left to do). With ``directory``, writes ``metrics.jsonl`` and ``checkpoint.safetensors``
    there and resumes from that checkpoint when it exists. ``mirror`` also receives each line, as the curve of the
    model it names; ``after_step`` as in :func:`selfmodels.training.train`.
    """
    cfg.validate()
    require(len(models) >= 1, "train_many needs at least one forward model")
    for key, (_, source, target) in models.items():
        require(isinstance(key, str) and key != "", f"forward model names must be non-empty strings, got {key!r}")
        _check_batches(batches, key, source, target, cfg)
    device = distributed.local_device(device)
    task = ForwardTask(models, batches, cfg, device, name or (next(iter(models)) if len(models) == 1 else f"{len(models)} forward models"))
    outcome = train(task, cfg.schedule(), directory, progress=progress, mirror=mirror, after_step=after_step)
    for module in task.modules.values():
        module.eval()
    tokens = sum(distributed.all_gather_object(task.tokens))
    return {n: {"final_mse": outcome.metrics.get(n, float("nan")), "steps": cfg.steps, "tokens": tokens,
                "seconds": outcome.seconds} for n in task.names}


def train_forward(model: nn.Module, pairs: Pairs, cfg: ForwardTrainConfig, device: torch.device,
                  directory: Path | None = None, generator: torch.Generator | None = None, progress: bool = True,
                  name: str = "forward model", pair: tuple[int, int] = (0, 1), mirror: Mirror | None = None,
                  after_step=None) -> dict:
    """One forward model on ``(source, target)`` pairs: :func:`train_many`'s one-model case. ``generator`` (the one
    drawing ``pairs``) is the data position a checkpoint keeps; ``pair`` labels the metrics lines."""
    batches = PairBatches(pairs, *pair, generator=generator)
    return train_many({name: (model, *pair)}, batches, cfg, device, directory, progress, mirror, after_step)[name]


def _check_batches(batches, name: str, source: int, target: int, cfg: ForwardTrainConfig) -> None:
    """An activation stream must compute both indices of every model, at the training batch size, on this rank's shard."""
    if not isinstance(batches, ActivationStream):
        return
    require(cfg.batch_size == batches.batch_size,
            f"the forward batch size ({cfg.batch_size}) differs from the activation stream's ({batches.batch_size}): "
            "build the stream with the training config's batch size")
    batches.subject.check_pair(source, target)
    missing = [k for k in (source, target) if k not in batches.indices]
    require(not missing, f"forward model {name!r} needs residual indices {missing} that the activation stream does not "
                         f"compute (it has {batches.indices}): add them to the stream's indices")
    rank, ranks = distributed.world()
    require((batches.rank, batches.world) == (rank, ranks),
            f"the activation stream is shard {batches.rank} of {batches.world} but this process is rank {rank} of {ranks}: "
            "build the stream with shard=distributed.world()")
