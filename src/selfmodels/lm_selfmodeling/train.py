"""Training a causal LM (any subject) with the objective of :mod:`~selfmodels.lm_selfmodeling.objective`.

Each step draws ``batch_size`` random training windows, runs the subject once with the sites captured, and takes
one AdamW step on ``L = CE + w * A`` for the main model (decay on matrices only, gradient-norm clip) and one for
the auxiliary parameters with their own optimizer and clip, so that at w = 0 the main model's update is exactly
the plain LM's (its gradient is the CE gradient plus an exact zero; tested bit for bit).

Every ``eval_every`` steps: the validation loss on the fixed held-out windows, a resumable checkpoint (both
models, both optimizers, the data generator) and, with ``snapshots``, the main model's weights as
``snapshots/step_N.safetensors`` with ``snapshots.jsonl`` (step, val_loss): the baseline's checkpoints along its
training, for comparisons at matched validation loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pathlib import Path
from tqdm import tqdm

from selfmodels.artifacts import append_jsonl, keep_jsonl, read_jsonl, save_tensors
from selfmodels.checkpoint import load_checkpoint, save_checkpoint
from selfmodels.curves import Mirror, append_curve
from selfmodels.data.windows import random_windows
from selfmodels.lm_selfmodeling.objective import AuxiliaryObjective
from selfmodels.lm_selfmodeling.sites import capture, logits_of
from selfmodels.optim import make_adamw
from selfmodels.subjects.base import Subject
from selfmodels.subjects.gpt_training import LMTrainConfig


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


def train_with_objective(subject: Subject, objective: AuxiliaryObjective, strength: float, cfg: LMTrainConfig,
                         train_tokens: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor], seq_len: int,
                         run_dir: Path, seed: int, snapshots: bool = False, progress: bool = True,
                         mirror: Mirror | None = None) -> dict:
    """Train (or resume) ``subject.model`` and ``objective``; returns ``{"steps", "train_loss", "train_ce",
    "train_aux", "val_loss"}``. Writes ``metrics.jsonl`` (each line also to ``mirror``, curve ``lm``),
    ``checkpoint.safetensors`` and, with ``snapshots``, the snapshot files."""
    cfg.validate()
    run_dir = Path(run_dir)
    model, device = subject.model, subject.device
    model.train().requires_grad_(True)
    objective.to(device).train()
    opt = make_adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    modules = {"main": model, "aux": objective}
    optimizers = {"main": opt}
    aux_params = list(objective.parameters())
    if aux_params:
        optimizers["aux"] = make_adamw(aux_params, objective.lr or cfg.lr, cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    ckpt, metrics_path = run_dir / "checkpoint.safetensors", run_dir / "metrics.jsonl"
    snap_log = run_dir / "snapshots.jsonl"
    start = 0
    if ckpt.is_file():
        start, _ = load_checkpoint(ckpt, modules, optimizers, {"data": generator})
    keep_jsonl(metrics_path, lambda r: r.get("step", 0) <= start)
    keep_jsonl(snap_log, lambda r: r.get("step", 0) <= start)
    sites = objective.sites()
    val_x, val_y = val
    record: dict = {}
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"LM ({objective.method})",
               disable=not progress, leave=False)
    for step in bar:
        x, y = random_windows(train_tokens, seq_len, cfg.batch_size, generator)
        x, y = x.to(device), y.to(device)
        with capture(subject, sites) as acts:
            logits = logits_of(subject, x)  # (B, T, V)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        aux = objective.term(acts)
        loss = ce if aux is None else ce + strength * aux
        for o in optimizers.values():
            o.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), cfg.grad_clip)
        opt.step()
        if "aux" in optimizers:
            torch.nn.utils.clip_grad_norm_(aux_params, cfg.grad_clip)
            optimizers["aux"].step()
        record = {"step": step + 1, "loss": loss.item(), "ce": ce.item(), "aux": None if aux is None else aux.item()}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            record["val_loss"] = held_out_loss(subject, val_x, val_y, cfg.batch_size)
            if snapshots:
                save_tensors(run_dir / "snapshots" / f"step_{step + 1}.safetensors", model.state_dict())
                append_jsonl(snap_log, {"step": step + 1, "val_loss": record["val_loss"]})
            save_checkpoint(ckpt, step + 1, modules, optimizers, {"data": generator})
        if (step + 1) % 10 == 0 or "val_loss" in record:
            append_curve(metrics_path, record, mirror, curve="lm")
            bar.set_postfix(loss=f"{record['loss']:.3f}")
    model.eval().requires_grad_(False)
    objective.eval()
    last = read_jsonl(metrics_path)[-1] if not record else record
    return {"steps": cfg.steps, "train_loss": last.get("loss"), "train_ce": last.get("ce"), "train_aux": last.get("aux"),
            "val_loss": held_out_loss(subject, val_x, val_y, cfg.batch_size)}
