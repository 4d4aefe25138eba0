"""Training a forward model (or the per-position baseline) from any stream of activation batches.

The loop is model-agnostic: it sees an iterator of ``(source, target)`` pairs of shape (B, T, d),
from a main model run on the fly or from the on-disk cache, and minimises
``L = mean over elements of (model(source) - target)²`` with AdamW and gradient clipping. Sources and
targets are detached before use, so nothing flows back into whatever produced them.

Under ``torchrun`` (see :mod:`selfmodels.distributed`) the model is wrapped in
``DistributedDataParallel``: each rank feeds its own batches and the gradients are averaged across the
ranks (with equal batch sizes, a step on the mean of the ranks' mean losses = a step on their batches
concatenated); rank 0 alone writes the metrics and checkpoints, which every rank resumes from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from selfmodels import distributed
from selfmodels.artifacts import keep_jsonl
from selfmodels.configs import option
from selfmodels.curves import Mirror, append_curve
from selfmodels.errors import require
from selfmodels.checkpoint import load_checkpoint, save_checkpoint
from selfmodels.optim import make_adamw

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ForwardTrainConfig:
    """Optimisation of the forward model (paper: AdamW lr 1e-3, wd 0.01, clip 1.0, 10K steps, batch 64)."""

    steps: int = option(10_000, "forward-model optimizer steps")
    batch_size: int = option(64, "sequences per step")
    lr: float = option(1e-3, "forward-model learning rate (the paper needed 1e-4 at d=2048)")
    weight_decay: float = option(0.01, "AdamW weight decay (matrices only)")
    grad_clip: float = option(1.0, "gradient-norm clip")
    log_every: int = option(25, "steps between lines of metrics.jsonl")
    checkpoint_every: int = option(500, "steps between checkpoints")

    def validate(self) -> None:
        require(self.steps >= 1, f"forward --steps must be at least 1, got {self.steps}")
        require(self.batch_size >= 1, f"forward --batch-size must be at least 1, got {self.batch_size}")
        require(self.lr > 0, f"forward --lr must be positive, got {self.lr}")


def train_forward(
    model: torch.nn.Module,
    batches: Batches,
    cfg: ForwardTrainConfig,
    device: torch.device,
    metrics_path: Path | None = None,
    checkpoint: Path | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    desc: str = "forward model",
    tag: dict | None = None,
    mirror: Mirror | None = None,
) -> dict:
    """Train ``model`` for ``cfg.steps`` steps; returns ``{"final_mse", "steps", "tokens", "seconds"}``.

    With ``checkpoint``, the model, optimizer and ``generator`` (the one feeding ``batches``) are saved
    every ``checkpoint_every`` steps and restored on the next call, which continues where it stopped.
    Under torchrun every rank's generator is saved (rank r > 0 as ``data.rank{r}``); the reported
    ``final_mse`` is the mean over the ranks and ``tokens`` their sum. ``mirror`` also receives each line of
    ``metrics.jsonl``, as curve ``desc``.
    """
    cfg.validate()
    rank, ranks = distributed.world()
    device = distributed.local_device(device)
    model.to(device).train()
    opt = make_adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    gens = {("data" if rank == 0 else f"data.rank{rank}"): generator} if generator is not None else {}
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        start, _ = load_checkpoint(checkpoint, {"forward": model}, {"forward": opt}, gens)
    net = distributed.data_parallel(model, device)  # averages gradients across ranks
    progress = progress and rank == 0
    if rank != 0:  # rank 0 writes the curve and checkpoints
        metrics_path = None
    if metrics_path is not None:  # this run's lines past the checkpoint (all, on a fresh start) come again
        def other_run_or_kept(record: dict) -> bool:
            record_tag = {k: v for k, v in record.items() if k not in ("step", "forward_mse")}
            return record_tag != (tag or {}) or record.get("step", 0) <= start
        keep_jsonl(metrics_path, other_run_or_kept)
    tokens, last, began = 0, float("nan"), time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc, disable=not progress, leave=False)
    for step in bar:
        source, target = next(batches)
        source, target = source.to(device), target.to(device)  # (B, T, d) each
        last = forward_step(model, opt, source, target, cfg.grad_clip, net)
        tokens += source.shape[0] * source.shape[1]
        logging = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
        if ranks > 1 and logging:
            last = sum(distributed.all_gather_object(last)) / ranks
        if metrics_path is not None and logging:
            append_curve(metrics_path, {**(tag or {}), "step": step + 1, "forward_mse": last}, mirror, curve=desc, labels=tuple(tag or {}))
            bar.set_postfix(mse=f"{last:.4g}")
        if checkpoint is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            _save(checkpoint, step + 1, model, opt, gens, rank, ranks)
    model.eval()
    if ranks > 1:
        tokens = sum(distributed.all_gather_object(tokens))
    return {"final_mse": last, "steps": cfg.steps, "tokens": tokens, "seconds": time.perf_counter() - began}


def forward_step(model: torch.nn.Module, opt: torch.optim.Optimizer, source: torch.Tensor, target: torch.Tensor,
                 grad_clip: float, net: torch.nn.Module | None = None) -> float:
    """One optimizer step: ``L = MSE in float32 of net(source) against target`` (both detached), gradient-norm
    clip of ``model``'s parameters, AdamW step; returns L. ``net`` is ``model`` or its DDP wrapper."""
    loss = F.mse_loss((net or model)(source.detach()).float(), target.detach().float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item()


def _save(path: Path, step: int, model, opt, gens: dict, rank: int, ranks: int) -> None:
    """The checkpoint, written by rank 0 with every rank's data generator (the weights and optimizer
    state are the same on every rank)."""
    if ranks > 1 and gens:
        mine = next(iter(gens.values()))
        states = distributed.all_gather_object((str(mine.device), mine.get_state()))
        gens = {("data" if r == 0 else f"data.rank{r}"): _generator(*state) for r, state in enumerate(states)}
    if rank == 0:
        save_checkpoint(path, step, {"forward": model}, {"forward": opt}, gens)


def _generator(device: str, state: torch.Tensor) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.set_state(state)
    return generator
