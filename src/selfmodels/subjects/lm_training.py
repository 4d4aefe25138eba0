"""Training a causal language model (any subject) on next-token cross-entropy, with an optional auxiliary term.

Each step draws ``batch_size`` random training windows and minimises ``L = CE + w · A``: CE the mean next-token
cross-entropy of the subject's logits, A the term of an auxiliary (None: the plain LM). The main model takes one AdamW
step (decay on matrices only, gradient-norm clip); the auxiliary's parameters, if any, take one with their own
optimizer and clip. An auxiliary runs the subject's pass itself (:meth:`Auxiliary.forward_pass`), capturing what its
term needs, so the term and the logits come from one pass:

- :class:`CoTrain`: our GPT with a forward model beside it, as the forward-self-models paper co-trains one: the GPT's
  residuals at ``source`` and ``target`` (-1 = embeddings, k = after block k) are **detached** and
  ``A = MSE(fwd(source), target)`` reaches only the forward model (w = 1), so the GPT trains exactly as the plain LM;
- the self-modeling objectives of :mod:`selfmodels.lm_selfmodeling.objective` (sites captured by hooks).

Every ``eval_every`` steps: the validation loss on fixed held-out windows, a checkpoint (both models, both optimizers,
the window generators) and, with ``snapshots``, the main model's weights as ``snapshots/step_N.safetensors`` with
``snapshots.jsonl`` (step, val_loss), for comparisons at matched validation loss. With ``snapshot_tokens``, when
training has seen each of those token counts: the weights as ``snapshots/tokens_N.safetensors`` and a line of
``token_snapshots.jsonl`` (:class:`TokenSnapshots`: held-out and training loss, every block's skip KL). The loop is
:func:`selfmodels.training.train`: under torchrun each rank draws its own windows (a generator seeded by
``(seed, rank)``) and the gradients are averaged, so N ranks train as one process fed all N ranks' windows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from selfmodels import distributed
from selfmodels.artifacts import append_jsonl, keep_jsonl, save_tensors
from selfmodels.curves import Mirror
from selfmodels.data.windows import consecutive_windows, random_windows, spread_windows
from selfmodels.errors import require
from selfmodels.optim import make_adamw
from selfmodels.subjects.base import Subject
from selfmodels.subjects.config import LMTrainConfig  # defined there, torch-free
from selfmodels.training import Optimized, Step, Task, train
from selfmodels.training.rng import derived_seed, generator_state, set_generator_state

def logits_of(subject: Subject, ids: torch.Tensor) -> torch.Tensor:
    """The subject's full forward pass: logits (B, T, V) (gradients flow when enabled)."""
    if subject.family == "gpt":
        return subject.model(ids)
    return subject.model(input_ids=ids, use_cache=False).logits


@torch.no_grad()
def held_out_loss(subject: Subject, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Mean next-token cross-entropy (nats/token) of the subject on the windows (x, y), in eval mode."""
    model = subject.model
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        logits = logits_of(subject, x[i : i + batch_size].to(subject.device))
        total += F.cross_entropy(logits.flatten(0, 1).float(), y[i : i + batch_size].to(subject.device).flatten(),
                                 reduction="sum").item()
    model.train(was_training)
    return total / y.numel()


class Auxiliary(Protocol):
    """What the LM trainer needs of an auxiliary term (an ``nn.Module``)."""

    metric: str  # the name of its term A in metrics.jsonl
    lr: float | None  # its optimizer's learning rate (None: the main model's)

    def forward_pass(self, subject: Subject, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The subject's logits (B, T, V) on ``ids`` and the term A (None: no term), from one pass."""


class CoTrain(nn.Module):
    """A forward model trained beside our GPT from residual index ``source`` to index ``target``, detached.
    ``identity`` is everything that determines its result besides the GPT's own training (its config): part of
    the key a trained GPT is cached under."""

    metric = "forward_mse"

    def __init__(self, model: nn.Module, source: int, target: int, lr: float = 1e-3, weight_decay: float = 0.01,
                 grad_clip: float = 1.0, identity: dict | None = None):
        super().__init__()
        self.model, self.source, self.target = model, source, target
        self.lr, self.weight_decay, self.grad_clip, self.identity = lr, weight_decay, grad_clip, identity or {}

    def forward_pass(self, subject: Subject, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gpt = subject.model
        h = gpt.embed(ids)
        saved = {-1: h}
        for i, block in enumerate(gpt.blocks):
            h = block(h)
            saved[i] = h
        source, target = saved[self.source].detach(), saved[self.target].detach()  # no path back to the GPT
        return gpt.head(h), F.mse_loss(self.model(source), target)


class WindowDraws:
    """Random training windows (x, y), ``batch_size`` from each generator, concatenated: one generator per process
    (seeded by the run's seed, or by (seed, rank) under torchrun); a list of them is one process fed every rank's."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, generators: list[torch.Generator]):
        self.tokens, self.seq_len, self.batch_size, self.generators = tokens, seq_len, batch_size, generators

    @classmethod
    def for_rank(cls, tokens: torch.Tensor, seq_len: int, batch_size: int, seed: int) -> "WindowDraws":
        rank, ranks = distributed.world()
        return cls(tokens, seq_len, batch_size, [torch.Generator().manual_seed(seed if ranks == 1 else derived_seed("lm", seed, rank, ranks))])

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [random_windows(self.tokens, self.seq_len, self.batch_size, g) for g in self.generators]
        return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])

    def state_dict(self) -> dict:
        return {"generators": [generator_state(g) for g in self.generators]}

    def load_state_dict(self, state: dict) -> None:
        require(len(state["generators"]) == len(self.generators), "the checkpoint's window generators do not match this run")
        for g, text in zip(self.generators, state["generators"]):
            set_generator_state(g, text)


@torch.no_grad()
def skip_kl(subject: Subject, x: torch.Tensor, batch_size: int) -> list[float]:
    """Per block k: mean over the tokens of ``x`` of KL(normal || block k skipped) in nats (block k as the identity)."""
    model = subject.model
    was_training = model.training
    model.eval()
    totals = [0.0] * subject.n_layers
    for i in range(0, x.shape[0], batch_size):
        ids = x[i : i + batch_size].to(subject.device)
        normal = F.log_softmax(logits_of(subject, ids).float(), dim=-1)
        for k in range(subject.n_layers):
            with subject.skip(k - 1, k):
                skipped = F.log_softmax(logits_of(subject, ids).float(), dim=-1)
            totals[k] += (normal.exp() * (normal - skipped)).sum().item()  # KL summed over tokens
    model.train(was_training)
    return [t / x.numel() for t in totals]


class TokenSnapshots:
    """The main model when training has seen each of ``tokens`` tokens (``tokens_per_step`` a step, counted over every
    window the step draws): at the first step whose count reaches it, ``snapshots/tokens_N.safetensors`` and a line of
    ``token_snapshots.jsonl``: ``tokens`` (asked), ``step``, ``tokens_seen``, ``val_loss`` (the validation windows),
    ``train_loss`` (as many training windows, spread over the training stream, in eval mode: the same measurement, so
    ``train_loss - val_loss`` is the generalisation gap), ``skip_kl`` (per block, on the validation windows; see
    :func:`skip_kl`) and ``seconds`` (since this process started training). Taken before the next step's update (or
    after the last), so a run resumed from any checkpoint writes every snapshot, and the training is unchanged."""

    LOG = "token_snapshots.jsonl"

    def __init__(self, tokens: list[int], tokens_per_step: int, run_dir: Path, train: tuple[torch.Tensor, torch.Tensor],
                 val: tuple[torch.Tensor, torch.Tensor], batch_size: int):
        self.tokens_per_step, self.run_dir, self.val, self.batch_size = tokens_per_step, Path(run_dir), val, batch_size
        self.train = train
        self.at: dict[int, list[int]] = {}  # step -> the counts first reached there
        for n in sorted(set(tokens)):
            self.at.setdefault(-(-n // tokens_per_step), []).append(n)
        self.began = None

    @classmethod
    def for_run(cls, tokens: list[int], draws: "WindowDraws", train_tokens: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor],
                run_dir: Path, batch_size: int) -> "TokenSnapshots | None":
        if not tokens:
            return None
        seq_len = draws.seq_len
        train = spread_windows(train_tokens, seq_len, val[0].shape[0], what="training")
        return cls(tokens, draws.batch_size * len(draws.generators) * seq_len, run_dir, train, val, batch_size)

    def take(self, subject: Subject, done: int) -> None:
        """The snapshots due after ``done`` steps (none when none is)."""
        if self.began is None:
            self.began = time.perf_counter()
        if done not in self.at or not distributed.is_main():
            return
        val_loss = held_out_loss(subject, *self.val, self.batch_size)
        train_loss = held_out_loss(subject, *self.train, self.batch_size)
        kl = skip_kl(subject, self.val[0], self.batch_size)
        log = self.run_dir / self.LOG
        for n in self.at[done]:
            save_tensors(self.run_dir / "snapshots" / f"tokens_{n}.safetensors", subject.model.state_dict())
            keep_jsonl(log, lambda r, n=n: r.get("tokens") != n)  # a resumed run takes it again
            append_jsonl(log, {"tokens": n, "step": done, "tokens_seen": done * self.tokens_per_step, "val_loss": val_loss,
                               "train_loss": train_loss, "skip_kl": kl, "seconds": time.perf_counter() - self.began})

    def records(self) -> list[dict]:
        from selfmodels.artifacts import read_jsonl

        return sorted(read_jsonl(self.run_dir / self.LOG), key=lambda r: r["tokens"])


class LMTask(Task):
    """The loop's view of :func:`train_language_model`. An auxiliary ``aux`` (a co-trained forward model,
    :class:`CoTrain`, or a self-modeling objective) has ``forward_pass(subject, ids) -> (logits, A)``, ``metric`` (the
    name of A in metrics.jsonl) and its optimizer's ``lr``, ``weight_decay`` and ``grad_clip`` (None: the main model's)."""

    unit = "step"

    def __init__(self, subject: Subject, aux: nn.Module | None, strength: float, cfg: LMTrainConfig, draws: WindowDraws,
                 val: tuple[torch.Tensor, torch.Tensor], run_dir: Path, snapshots: bool, curve: str, name: str,
                 token_snapshots: TokenSnapshots | None = None):
        self.subject, self.aux, self.strength, self.cfg, self.draws, self.val = subject, aux, strength, cfg, draws, val
        self.token_snapshots = token_snapshots
        self.run_dir, self.snapshots, self.curve, self.name = Path(run_dir), snapshots, curve, name
        model = subject.model
        model.train().requires_grad_(True)
        self.modules = {"main": model}
        main = list(model.parameters())
        self.optimizers = {"main": Optimized(make_adamw(main, cfg.lr, cfg.weight_decay), main, cfg.grad_clip)}
        if aux is not None:
            aux.to(subject.device).train()
            self.modules["aux"] = aux
            params = list(aux.parameters())
            if params:  # an auxiliary's lr, weight_decay and grad_clip: None means the main model's
                decay = cfg.weight_decay if aux.weight_decay is None else aux.weight_decay
                clip = cfg.grad_clip if aux.grad_clip is None else aux.grad_clip
                self.optimizers["aux"] = Optimized(make_adamw(params, aux.lr or cfg.lr, decay), params, clip)

    def identity(self) -> dict:
        return {"task": "lm", "aux": None if self.aux is None else self.aux.metric, "optimizers": list(self.optimizers)}

    def step(self, step: int) -> Step:
        if self.token_snapshots is not None:  # the weights after ``step`` updates, before this one's
            self.token_snapshots.take(self.subject, step)
        x, y = next(self.draws)
        x, y = x.to(self.subject.device), y.to(self.subject.device)
        logits, term = (logits_of(self.subject, x), None) if self.aux is None else self.aux.forward_pass(self.subject, x)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())  # logits (B, T, V)
        loss = ce if term is None else ce + self.strength * term
        metrics = {"loss": loss.item(), "ce": ce.item()}
        if self.aux is not None:
            metrics[self.aux.metric] = None if term is None else term.item()
        return Step(loss, metrics)

    def evaluate(self, step: int) -> dict:
        val_loss = held_out_loss(self.subject, *self.val, self.cfg.batch_size)
        if self.snapshots and distributed.is_main():
            save_tensors(self.run_dir / "snapshots" / f"step_{step}.safetensors", self.subject.model.state_dict())
            log = self.run_dir / "snapshots.jsonl"
            keep_jsonl(log, lambda r: r.get("step", 0) < step)  # a resumed run writes its snapshots again
            append_jsonl(log, {"step": step, "val_loss": val_loss})
        return {"val_loss": val_loss}

    def data_state(self) -> dict:
        return self.draws.state_dict()

    def load_data_state(self, state: dict) -> None:
        self.draws.load_state_dict(state)

    def postfix(self, record: dict) -> str:
        return f"loss={record['loss']:.3f}"


def train_language_model(subject: Subject, aux: nn.Module | None, strength: float, cfg: LMTrainConfig,
                         train_tokens: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor], seq_len: int, run_dir: Path,
                         seed: int, snapshots: bool = False, progress: bool = True, mirror: Mirror | None = None,
                         curve: str = "lm", draws: WindowDraws | None = None, after_step=None, name: str | None = None,
                         snapshot_tokens: list[int] = ()) -> dict:
    """Train (or resume) ``subject.model`` and ``aux`` on ``L = CE + strength · A``; returns ``{"steps",
    "train_loss", "train_ce", "train_aux", "val_loss"}`` (the last logged step's L, CE and A; the final validation
    loss). Writes ``metrics.jsonl`` (each line also to ``mirror``, as ``curve``), ``checkpoint.safetensors`` and,
    with ``snapshots``, the snapshot files in ``run_dir``. ``draws``: the training windows (default: this rank's,
    from ``seed``); ``after_step`` as in :func:`selfmodels.training.train`; ``snapshot_tokens``: see
    :class:`TokenSnapshots` (their records are then under ``"snapshots"``)."""
    cfg.validate()
    draws = draws or WindowDraws.for_rank(train_tokens, seq_len, cfg.batch_size, seed)
    name = name or ("LM" if aux is None else f"LM ({getattr(aux, 'method', aux.metric)})")
    shots = TokenSnapshots.for_run(list(snapshot_tokens), draws, train_tokens, val, run_dir, cfg.batch_size)
    task = LMTask(subject, aux, strength, cfg, draws, val, run_dir, snapshots, curve, name, shots)
    last = train(task, cfg.schedule(), run_dir, progress=progress, mirror=mirror, after_step=after_step).metrics
    if shots is not None:
        shots.take(subject, cfg.steps)  # those due at the last step (again, if a finished run is resumed: the same)
    subject.model.eval().requires_grad_(False)
    if aux is not None:
        aux.eval()
    out = {"steps": cfg.steps, "train_loss": last.get("loss"), "train_ce": last.get("ce"),
           "train_aux": None if aux is None else last.get(aux.metric), "val_loss": held_out_loss(subject, *val, cfg.batch_size)}
    return out if shots is None else {**out, "snapshots": shots.records()}


def train_lm(gpt: nn.Module, train_tokens: torch.Tensor, val_tokens: torch.Tensor, cfg: LMTrainConfig, run_dir: Path,
             device: torch.device, seed: int, cotrain: CoTrain | None = None, progress: bool = True,
             mirror: Mirror | None = None, after_step=None, snapshot_tokens: list[int] = ()) -> dict:
    """Train (or resume training) our GPT, with a co-trained forward model when ``cotrain`` is given; returns
    ``{"val_loss", "train_loss", "steps"}`` (train_loss: the LM's cross-entropy at the last logged step) and, with
    ``snapshot_tokens`` (:class:`TokenSnapshots`), ``"snapshots"`` (their records) and ``"seconds"`` (this call's).

    Validation: the first ``eval_batches * batch_size`` consecutive windows of ``val_tokens``. Writes ``metrics.jsonl``
    (curve ``subject``), ``checkpoint.safetensors`` every ``eval_every`` steps and ``main.safetensors`` (and
    ``forward.safetensors`` when co-training) at the end."""
    from selfmodels.subjects.gpt import GPTSubject

    run_dir = Path(run_dir)
    block = gpt.cfg.block_size
    val = consecutive_windows(val_tokens, block, cfg.batch_size * cfg.eval_batches, what="validation")
    subject = GPTSubject(gpt.to(device))
    began = time.perf_counter()
    loads = machine(device)["load_after"] if snapshot_tokens else None
    out = train_language_model(subject, cotrain, 1.0, cfg, train_tokens, val, block, run_dir, seed, progress=progress,
                               mirror=mirror, curve="subject", after_step=after_step, name="main GPT",
                               snapshot_tokens=snapshot_tokens)
    gpt.requires_grad_(True)
    save_tensors(run_dir / "main.safetensors", gpt.state_dict())
    if cotrain is not None:
        save_tensors(run_dir / "forward.safetensors", cotrain.model.state_dict())
    result = {"val_loss": out["val_loss"], "train_loss": out["train_ce"], "steps": cfg.steps}
    if "snapshots" in out:
        result.update(snapshots=out["snapshots"], seconds=time.perf_counter() - began, machine=machine(device, loads))
    return result


def machine(device: torch.device, load_before: tuple[float, float, float] | None = None) -> dict:
    """Where a run trained: the CPU's model name (/proc/cpuinfo), torch's threads, the device, the load averages
    (1 / 5 / 15 min) before and after."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = lambda: tuple(round(x, 2) for x in os.getloadavg()) if hasattr(os, "getloadavg") else None  # noqa: E731
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(device),
            "load_before": load_before, "load_after": load()}
