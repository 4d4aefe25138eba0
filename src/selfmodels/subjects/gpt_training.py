"""Training the subject GPT on a token stream, optionally co-training a forward model beside it: the one
stage of the forward-self-model pipeline that exists for our GPT only.

Co-training follows the paper: in each step the GPT's residuals at the source and target indices (-1 =
embeddings, k = after block k) are taken from its own forward pass, **detached**, and the forward model takes one AdamW step on
``MSE(fwd(source), target)`` with its own optimizer; the GPT takes its own step on the LM loss. No
gradient of the forward loss reaches the GPT. Checkpoints (``checkpoint.safetensors``) hold both
models, both optimizers and the data-order RNG, so an interrupted run resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from selfmodels.artifacts import keep_jsonl, save_tensors
from selfmodels.configs import option
from selfmodels.curves import Mirror, append_curve
from selfmodels.errors import require
from selfmodels.checkpoint import load_checkpoint, save_checkpoint
from selfmodels.data.windows import consecutive_windows, random_windows
from selfmodels.nets.gpt import GPT
from selfmodels.optim import make_adamw


@dataclass
class LMTrainConfig:
    """Optimisation of the main GPT (paper: AdamW lr 3e-4, wd 0.01, clip 1.0, batch 64 x 128, 10K steps)."""

    steps: int = option(10_000, "optimizer steps for the main model")
    batch_size: int = option(64, "sequences per step")
    lr: float = option(3e-4, "main model learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay (matrices only)")
    grad_clip: float = option(1.0, "gradient-norm clip")
    eval_every: int = option(500, "steps between validation-loss evaluations (and checkpoints)")
    eval_batches: int = option(8, "validation batches per evaluation")

    def validate(self) -> None:
        require(self.steps >= 1, f"--steps must be at least 1, got {self.steps}")
        require(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        require(self.eval_every >= 1, f"--eval-every must be at least 1, got {self.eval_every}")


@dataclass
class CoTrain:
    """A module (a forward model) trained beside the GPT from residual index ``source`` to index ``target``, detached.
    ``identity`` is everything that determines its result besides the GPT's own training (its config): part of
    the key a trained GPT is cached under."""

    model: torch.nn.Module
    source: int
    target: int
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    identity: dict = field(default_factory=dict)


@torch.no_grad()
def validation_loss(gpt: GPT, val_tokens: torch.Tensor, batch_size: int, batches: int, device: torch.device) -> float:
    """Mean next-token cross-entropy (nats) over the first ``batches * batch_size`` validation windows."""
    gpt.eval()
    x, y = consecutive_windows(val_tokens, gpt.cfg.block_size, batch_size * batches, what="validation")
    total, count = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        logits = gpt(x[i : i + batch_size].to(device))  # (b, T, V)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y[i : i + batch_size].to(device).flatten(), reduction="sum").item()
        count += y[i : i + batch_size].numel()
    gpt.train()
    return total / count


def _forward_with_residuals(gpt: GPT, x: torch.Tensor, wanted: tuple[int, ...]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Logits plus the residuals at the wanted indices (-1 = embeddings, k = after block k), from one pass."""
    h = gpt.embed(x)
    saved = {-1: h} if -1 in wanted else {}
    for i, block in enumerate(gpt.blocks):
        h = block(h)
        if i in wanted:
            saved[i] = h
    return gpt.head(h), saved


def train_lm(
    gpt: GPT,
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor,
    cfg: LMTrainConfig,
    run_dir: Path,
    device: torch.device,
    seed: int,
    cotrain: CoTrain | None = None,
    progress: bool = True,
    mirror: Mirror | None = None,
) -> dict:
    """Train (or resume training) the GPT; returns ``{"val_loss", "train_loss", "steps"}``.

    Writes ``metrics.jsonl`` (one line per logged step), ``checkpoint.safetensors`` every
    ``eval_every`` steps and ``main.safetensors`` (and ``forward.safetensors`` when co-training) at the end.
    ``mirror`` also receives each line of ``metrics.jsonl``, as curve ``subject``.
    """
    cfg.validate()
    run_dir = Path(run_dir)
    gpt.to(device).train()
    opt = make_adamw(gpt.parameters(), cfg.lr, cfg.weight_decay)
    modules: dict[str, torch.nn.Module] = {"main": gpt}
    optimizers: dict[str, torch.optim.Optimizer] = {"main": opt}
    if cotrain is not None:
        cotrain.model.to(device).train()
        fwd_opt = make_adamw(cotrain.model.parameters(), cotrain.lr, cotrain.weight_decay)
        modules["forward"], optimizers["forward"] = cotrain.model, fwd_opt
    generator = torch.Generator().manual_seed(seed)
    ckpt = run_dir / "checkpoint.safetensors"
    metrics_path = run_dir / "metrics.jsonl"
    start = 0
    if ckpt.is_file():
        start, _ = load_checkpoint(ckpt, modules, optimizers, {"data": generator})
    # Keep only the curve up to the checkpoint (none on a fresh start): later lines will be written again.
    keep_jsonl(metrics_path, lambda r: r.get("step", 0) <= start)
    wanted = () if cotrain is None else (cotrain.source, cotrain.target)
    last_loss = float("nan")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="main GPT", disable=not progress, leave=False)
    for step in bar:
        x, y = random_windows(train_tokens, gpt.cfg.block_size, cfg.batch_size, generator)
        x, y = x.to(device), y.to(device)
        logits, saved = _forward_with_residuals(gpt, x, wanted)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), cfg.grad_clip)
        opt.step()
        record = {"step": step + 1, "loss": loss.item()}
        if cotrain is not None:
            source, target = saved[cotrain.source].detach(), saved[cotrain.target].detach()  # no path back to the GPT
            fwd_loss = F.mse_loss(cotrain.model(source), target)
            fwd_opt.zero_grad(set_to_none=True)
            fwd_loss.backward()
            torch.nn.utils.clip_grad_norm_(cotrain.model.parameters(), cotrain.grad_clip)
            fwd_opt.step()
            record["forward_mse"] = fwd_loss.item()
        last_loss = record["loss"]
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            record["val_loss"] = validation_loss(gpt, val_tokens, cfg.batch_size, cfg.eval_batches, device)
            save_checkpoint(ckpt, step + 1, modules, optimizers, {"data": generator})
        if (step + 1) % 10 == 0 or "val_loss" in record:
            append_curve(metrics_path, record, mirror, curve="subject")
            bar.set_postfix(loss=f"{last_loss:.3f}")
    val = validation_loss(gpt, val_tokens, cfg.batch_size, cfg.eval_batches, device)
    save_tensors(run_dir / "main.safetensors", gpt.state_dict())
    if cotrain is not None:
        save_tensors(run_dir / "forward.safetensors", cotrain.model.state_dict())
    gpt.eval()
    return {"val_loss": val, "train_loss": last_loss, "steps": cfg.steps}
