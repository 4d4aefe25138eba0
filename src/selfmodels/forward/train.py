"""Training a forward model (or the per-position baseline) from any stream of activation batches.

The loop is model-agnostic: it sees an iterator of ``(source, target)`` pairs of shape (B, T, d),
from a main model run on the fly or from the on-disk cache, and minimises
``L = mean over elements of (model(source) - target)²`` with AdamW and gradient clipping. Sources and
targets are detached before use, so nothing flows back into whatever produced them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from selfmodels.artifacts import append_jsonl, keep_jsonl
from selfmodels.configs import option
from selfmodels.errors import require
from selfmodels.checkpoint import load_checkpoint, save_checkpoint
from selfmodels.data.windows import random_windows
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
) -> dict:
    """Train ``model`` for ``cfg.steps`` steps; returns ``{"final_mse", "steps", "tokens", "seconds"}``.

    With ``checkpoint``, the model, optimizer and ``generator`` (the one feeding ``batches``) are saved
    every ``checkpoint_every`` steps and restored on the next call, which continues where it stopped.
    """
    cfg.validate()
    model.to(device).train()
    opt = make_adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    gens = {"data": generator} if generator is not None else {}
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        start, _ = load_checkpoint(checkpoint, {"forward": model}, {"forward": opt}, gens)
    if metrics_path is not None:  # this run's lines past the checkpoint (all, on a fresh start) come again
        def other_run_or_kept(record: dict) -> bool:
            record_tag = {k: v for k, v in record.items() if k not in ("step", "forward_mse")}
            return record_tag != (tag or {}) or record.get("step", 0) <= start
        keep_jsonl(metrics_path, other_run_or_kept)
    tokens, last, began = 0, float("nan"), time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc, disable=not progress, leave=False)
    for step in bar:
        source, target = next(batches)
        source, target = source.to(device).detach(), target.to(device).detach()  # (B, T, d) each
        loss = F.mse_loss(model(source).float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        tokens += source.shape[0] * source.shape[1]
        last = loss.item()
        if metrics_path is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            append_jsonl(metrics_path, {**(tag or {}), "step": step + 1, "forward_mse": last})
            bar.set_postfix(mse=f"{last:.4g}")
        if checkpoint is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            save_checkpoint(checkpoint, step + 1, {"forward": model}, {"forward": opt}, gens)
    model.eval()
    return {"final_mse": last, "steps": cfg.steps, "tokens": tokens, "seconds": time.perf_counter() - began}


def on_the_fly_batches(
    tokens: torch.Tensor,
    seq_len: int,
    batch_size: int,
    generator: torch.Generator,
    collect: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> Batches:
    """Endless (source, target) batches from random whole windows of a token stream.

    ``collect(token_ids (B, T)) -> (source, target)`` runs the frozen subject, stopping after the target.
    """
    while True:
        ids, _ = random_windows(tokens, seq_len, batch_size, generator)  # (B, T)
        with torch.no_grad():
            pair = collect(ids)
        yield pair  # outside no_grad: grad mode is global, and the consumer trains while we are suspended
