"""The one training loop: every trainer in the package is a :class:`Task` run by :func:`train`.

A task says what is trained and how one step's loss is computed: its ``modules`` (everything the checkpoint keeps),
its ``optimizers`` (each with the parameters it steps and their gradient-norm clip), :meth:`Task.step` (one
minibatch: the scalar loss ``L`` to minimise and the numbers to log), its data position
(:meth:`Task.data_state`), and optionally :meth:`Task.evaluate`. The loop owns the rest, the same way for every
trainer:

- **the update**: ``L.backward()`` (the one backward of the package's training), under torchrun the gradients
  averaged over the ranks (``g = 1/N Σ_r g_r``, so with equal per-rank batches a step on N ranks is the step on their
  batches concatenated), then for each optimizer ``clip(‖g‖ ≤ c)`` over its parameters and its step;
- **the guard**: a loss that is NaN or infinite (on any rank) stops the run before that step's update, with one
  message naming the step and the last finite loss; the last checkpoint is left intact;
- **the schedule**: lines of ``metrics.jsonl`` every ``log_every`` steps (the ranks' mean), evaluation every
  ``eval_every`` steps, a checkpoint every ``checkpoint_every`` steps, each also at the last step;
- **resume**: ``checkpoint.safetensors`` (one layout, :mod:`selfmodels.checkpoint`, written atomically) holds the
  modules, the optimizer states, every rank's data position and process-wide RNG state, and the last logged
  metrics; a run started again in the same directory continues from it bit for bit (on CPU) and rewrites the lines
  of ``metrics.jsonl`` past it, so none is duplicated or lost;
- the ``--log`` mirrors (:mod:`selfmodels.curves`), the progress bar, seconds per step.

Writing order: a step's metrics line first, its checkpoint second, so a crash between the two repeats that step's
line on resume instead of losing it. Rank 0 alone writes; every rank reads the checkpoint back.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from selfmodels import distributed
from selfmodels.artifacts import keep_jsonl
from selfmodels.checkpoint import load_checkpoint, save_checkpoint
from selfmodels.curves import Mirror, append_curve
from selfmodels.errors import UserError, require
from selfmodels.training.rng import global_state, set_global_state

CHECKPOINT, METRICS = "checkpoint.safetensors", "metrics.jsonl"


class Diverged(UserError):
    """The loss became NaN or infinite; the run stopped before updating on it."""


@dataclass
class Schedule:
    """How long a run is and how often it logs, evaluates and saves (each also happens at the last step)."""

    steps: int
    log_every: int | None = None  # None: lines only at evaluations and at the last step
    eval_every: int | None = None  # None: the task is never evaluated
    checkpoint_every: int | None = None  # None: a checkpoint at the last step only
    until: int | None = None  # end this call after that step (a planned stop, as an interruption would); None: steps

    def validate(self) -> None:
        require(self.steps >= 1, f"a run needs at least 1 step, got {self.steps}")
        for name in ("log_every", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"{name} must be at least 1 (or None), got {value}")

    def due(self, every: int | None, step: int) -> bool:
        return step == self.steps or (every is not None and step % every == 0)


@dataclass
class Optimized:
    """One optimizer, the parameters it steps and the gradient-norm clip applied to them first (None: no clip)."""

    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    clip: float | None = None


@dataclass
class Step:
    """What one step of a task gives the loop: the scalar loss to backpropagate and the numbers to log."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class Task:
    """A trainer as the loop sees it. Subclasses set ``modules`` and ``optimizers`` and define :meth:`step`."""

    name = "training"  # the progress bar's label
    curve: str | None = None  # the mirror's curve name (None: each line's "model" label)
    step_field = "step"  # the field of a metrics line that holds its position
    unit = "step"
    modules: dict[str, nn.Module]
    optimizers: dict[str, Optimized]

    def identity(self) -> dict:
        """What a checkpoint must have been written by to be resumed here (checked on resume)."""
        return {"task": type(self).__name__}

    def step(self, step: int) -> Step:
        """The loss of step ``step`` (0-based) on its minibatch."""
        raise NotImplementedError

    def evaluate(self, step: int) -> dict:
        """Numbers measured after step ``step`` (1-based count of steps done), merged into that step's line."""
        return {}

    def lines(self, step: int, record: dict) -> list[dict]:
        """The ``metrics.jsonl`` lines of a logged step."""
        return [{"step": step, **record}]

    def kept(self, line: dict, start: int) -> bool:
        """Whether a line already in ``metrics.jsonl`` survives a (re)start at step ``start``."""
        return line.get("step", 0) <= start

    def data_state(self) -> dict:
        """This rank's data position, JSON-able (generator states as text, :mod:`selfmodels.training.rng`)."""
        return {}

    def load_data_state(self, state: dict) -> None:
        """Restore :meth:`data_state`'s output."""

    def postfix(self, record: dict) -> str:
        loss = record.get("loss")
        return "" if loss is None else f"loss={loss:.4g}"


@dataclass
class Outcome:
    """What a call of :func:`train` did."""

    start: int  # the step it resumed from (0 on a fresh start)
    step: int  # the steps done when it returned
    metrics: dict  # the last logged record (restored from the checkpoint when no step ran)
    seconds: float  # this call's wall time
    step_seconds: list[float]  # this call's time of each step's loss, backward and update

    def seconds_per_step(self, warmup: int = 1) -> float:
        """Median step time, the first ``warmup`` steps left out (NaN when no step is left)."""
        kept = self.step_seconds[warmup:]
        return statistics.median(kept) if kept else math.nan


def _all_parameters(task: Task) -> list[nn.Parameter]:
    return [p for o in task.optimizers.values() for p in o.params]


def _resume(task: Task, path: Path | None, rank: int, ranks: int) -> tuple[int, dict]:
    if path is None or not path.is_file():
        return 0, {}
    start, extra = load_checkpoint(path, task.modules, {k: o.optimizer for k, o in task.optimizers.items()}, {})
    if extra.get("task") != task.identity():
        raise UserError(f"checkpoint {path} was written by another run ({extra.get('task')}), this one is "
                        f"{task.identity()}: use another directory or delete the checkpoint")
    states = extra.get("ranks") or []
    if len(states) != ranks:
        raise UserError(f"checkpoint {path} was written by a run on {len(states)} process(es), this one has {ranks}: "
                        "resume with the same number of processes, or use another directory")
    task.load_data_state(states[rank]["data"])
    set_global_state(states[rank]["rng"])
    return start, extra.get("metrics") or {}


def _save(task: Task, path: Path, step: int, record: dict, rank: int) -> None:
    states = distributed.all_gather_object({"data": task.data_state(), "rng": global_state()})
    if rank == 0:
        extra = {"task": task.identity(), "ranks": states, "metrics": record}
        save_checkpoint(path, step, task.modules, {k: o.optimizer for k, o in task.optimizers.items()}, {}, extra)


def _mean_over_ranks(record: dict, ranks: int) -> dict:
    """Every numeric value of ``record`` averaged over the ranks (the others as rank 0 has them)."""
    if ranks == 1:
        return record
    gathered = distributed.all_gather_object(record)
    return {key: (sum(g[key] for g in gathered) / ranks if isinstance(value, (int, float)) and not isinstance(value, bool)
                  and value is not None else value) for key, value in record.items()}


def _update(task: Task, loss: torch.Tensor, ranks: int) -> float:
    """Backward, the ranks' gradients averaged, then each optimizer's clip and step; returns the loss (the ranks'
    mean). A non-finite loss returns before any update."""
    for o in task.optimizers.values():
        o.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    value = loss.item() if ranks == 1 else distributed.average_gradients(_all_parameters(task), loss.detach())
    if not math.isfinite(value):
        return value
    for o in task.optimizers.values():
        if o.clip is not None:
            torch.nn.utils.clip_grad_norm_(o.params, o.clip)
        o.optimizer.step()
    return value


def train(task: Task, schedule: Schedule, directory: str | Path | None = None, *, progress: bool = True,
          mirror: Mirror | None = None, after_step: Callable[[int], None] | None = None) -> Outcome:
    """Run ``task`` to ``schedule.steps`` steps (or ``schedule.until``), resuming from ``directory``'s checkpoint.

    With ``directory``, writes ``metrics.jsonl`` (each line also to ``mirror``) and ``checkpoint.safetensors``
    there; without, nothing is written and nothing resumed. ``after_step(n)`` is called after step ``n`` (1-based)
    is complete, its line and checkpoint written: a hook for callers that stop a run (tests interrupt it there).
    """
    schedule.validate()
    rank, ranks = distributed.world()
    directory = None if directory is None else Path(directory)
    checkpoint = None if directory is None else directory / CHECKPOINT
    metrics_path = None if directory is None or rank != 0 else directory / METRICS
    start, record = _resume(task, checkpoint, rank, ranks)
    if metrics_path is not None:  # the lines past the checkpoint (all, on a fresh start) are written again
        keep_jsonl(metrics_path, lambda line: task.kept(line, start))
    if ranks > 1:
        distributed.broadcast_parameters(task.modules.values())
    stop = schedule.steps if schedule.until is None else min(schedule.steps, schedule.until)
    began, step_seconds = time.perf_counter(), []
    last_finite = (start, record.get("loss"))
    bar = tqdm(range(start, stop), initial=start, total=schedule.steps, desc=task.name, unit=task.unit,
               disable=not progress or rank != 0, leave=False)
    for step in bar:
        tick = time.perf_counter()
        out = task.step(step)
        value = _update(task, out.loss, ranks)
        step_seconds.append(time.perf_counter() - tick)
        if not math.isfinite(value):
            raise Diverged(f"{task.name}: the loss became {value} at step {step + 1} (last finite loss "
                           f"{last_finite[1]} at step {last_finite[0]}); stopped before updating on it, so the last "
                           "checkpoint is intact: lower the learning rate (or fix the data) and run again")
        last_finite = (step + 1, value)
        done = step + 1
        evaluating = schedule.eval_every is not None and schedule.due(schedule.eval_every, done)
        if evaluating or schedule.due(schedule.log_every or schedule.steps, done):
            record = {**_mean_over_ranks(out.metrics, ranks), **(task.evaluate(done) if evaluating else {})}
            if metrics_path is not None:
                for line in task.lines(done, record):
                    append_curve(metrics_path, line, mirror, curve=task.curve, step=task.step_field)
            bar.set_postfix_str(task.postfix(record))
        if checkpoint is not None and schedule.due(schedule.checkpoint_every, done):
            _save(task, checkpoint, done, record, rank)
        if after_step is not None:
            after_step(done)
    bar.close()
    return Outcome(start, max(start, stop), record, time.perf_counter() - began, step_seconds)
