"""Predictability by a fresh observer: a NEW forward model, trained after the LM is frozen, on a fixed layer pair.

The observer is never the co-trained model: a :class:`~selfmodels.forward.model.ForwardModel` of fixed size
(``ObserverConfig``) is trained with :func:`~selfmodels.forward.train.train_forward` for a fixed number of steps on
residuals the frozen subject computes from held-out windows (the first part of the validation stream), then
evaluated with :func:`~selfmodels.forward.evaluate.evaluate` on other held-out windows: update R²
(``delta_r2``), cosine beside the skip cosine, and causal-substitution recovery beside the KL of skipping.
A pair whose KL of skipping is under ``MIN_KL_SKIPPED`` nats does not count (``counts`` false): the skipped
blocks do too little for recovery to mean anything.
"""

from __future__ import annotations

from typing import Iterator

import torch

from selfmodels.forward.evaluate import batches_of, evaluate
from selfmodels.forward.architectures import build_forward_model
from selfmodels.forward.config import ForwardModelConfig
from selfmodels.forward.train import ForwardTrainConfig, train_forward
from selfmodels.lm_selfmodeling.config import ObserverConfig, check_disjoint  # defined there, torch-free
from selfmodels.subjects.base import Subject

MIN_KL_SKIPPED = 0.3  # nats


def _batches(subject: Subject, windows: torch.Tensor, source: int, target: int, batch_size: int,
             generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of (source, target) residuals of random held-out windows, computed by the frozen subject."""
    while True:
        pick = torch.randint(0, windows.shape[0], (batch_size,), generator=generator)
        with torch.no_grad():
            acts = subject.residuals(windows[pick], [source, target])
        yield acts[source].float(), acts[target].float()


def observe(subject: Subject, pair: tuple[int, int], train_x: torch.Tensor, eval_xy: tuple[torch.Tensor, torch.Tensor],
            cfg: ObserverConfig, seed: int) -> dict:
    """Train a fresh observer on ``pair`` and evaluate it; the numbers of the module docstring."""
    source, target = pair
    subject.check_pair(source, target)
    torch.manual_seed(seed)
    model = build_forward_model(ForwardModelConfig(n_head=cfg.n_head, d_head=cfg.d_head, mlp_mult=cfg.mlp_mult), subject.d_model)
    generator = torch.Generator().manual_seed(seed)
    train = train_forward(model, _batches(subject, train_x, source, target, cfg.batch_size, generator),
                          ForwardTrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, checkpoint_every=cfg.steps),
                          subject.device, progress=False)
    x, y = eval_xy
    result = evaluate(subject, model, batches_of(x, y, cfg.batch_size), source, target)
    sub = result["substitution"]
    return {
        "source": source, "target": target, "params": sum(p.numel() for p in model.parameters()),
        "train_mse": train["final_mse"], "delta_r2": result["delta_r2"], "cosine": result["cosine"],
        "skip_cosine": result["skip_cosine"], "recovery": sub["recovery"], "kl_substituted": sub["kl_substituted"],
        "kl_skipped": sub["kl_skipped"], "counts": bool(sub["kl_skipped"] >= MIN_KL_SKIPPED),
    }
