"""What is measured on a trained LM, on held-out windows (inputs x (N, T), next tokens y (N, T)):

- ``val_loss``: mean next-token cross-entropy, nats/token; ``bits_per_byte`` = val_loss · tokens / (ln 2 · bytes),
  ``bytes`` the UTF-8 length of the predicted text; ``accuracy``: share of positions whose argmax is the next token.
- Weight spread: ``unembedding_sd`` = SD (Bessel) of every entry of the LM head's weight (V, d) (its rows are the
  classification rows' analogue; extra self-model outputs live in a separate head and are not included);
  ``block_weight_sd[k]`` = SD of every entry of block k's matrices (parameters with 2 or more dimensions).
- ``resid_norm[i]`` (i = -1 .. n-1): mean over tokens of ‖h_i‖₂; ``update_norm[k]`` = mean over tokens of
  ‖h_k - h_{k-1}‖₂, block k's write into the residual stream.
- The self-model's own fit on held-out text: for a predicting method ``fit_mse``, ``fit_scaled_mse`` (mse / mean
  target²) and ``fit_cosine`` of P against T; ``site_mean_square`` = mean(a²) at the site.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfmodels.lm_selfmodeling.objective import AuxiliaryObjective
from selfmodels.lm_selfmodeling.sites import capture, head_module, logits_of
from selfmodels.subjects.base import EMBED, Subject


def bits_per_byte(nats_per_token: float, tokens: int, n_bytes: int) -> float:
    """Total nats / (ln 2 · bytes): the model's code length per byte of the text it predicted."""
    return nats_per_token * tokens / (math.log(2) * n_bytes) if n_bytes > 0 else float("nan")


@torch.no_grad()
def lm_metrics(subject: Subject, x: torch.Tensor, y: torch.Tensor, n_bytes: int, batch_size: int) -> dict:
    """``val_loss`` (nats/token), ``bits_per_byte``, ``accuracy`` and ``tokens`` on (x, y)."""
    total, correct = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        logits = logits_of(subject, x[i : i + batch_size].to(subject.device)).float()
        yy = y[i : i + batch_size].to(subject.device)
        total += F.cross_entropy(logits.flatten(0, 1), yy.flatten(), reduction="sum").item()
        correct += int((logits.argmax(-1) == yy).sum())
    n = y.numel()
    return {"val_loss": total / n, "bits_per_byte": bits_per_byte(total / n, n, n_bytes), "accuracy": correct / n,
            "tokens": n, "bytes": n_bytes}


def weight_spread(subject: Subject) -> dict:
    """``unembedding_sd`` and ``block_weight_sd`` (one per block)."""
    head = head_module(subject).weight.detach().float()
    blocks = []
    for block in subject.blocks:
        flat = torch.cat([p.detach().float().flatten() for p in block.parameters() if p.ndim >= 2])
        blocks.append(float(flat.std()))
    return {"unembedding_sd": float(head.std()), "block_weight_sd": blocks}


@torch.no_grad()
def residual_norms(subject: Subject, x: torch.Tensor, batch_size: int) -> dict:
    """``resid_norm`` for indices -1 .. n-1 and ``update_norm`` for blocks 0 .. n-1 (means over tokens)."""
    indices = list(range(EMBED, subject.n_layers))
    resid = torch.zeros(len(indices), dtype=torch.float64)
    update = torch.zeros(subject.n_layers, dtype=torch.float64)
    for i in range(0, x.shape[0], batch_size):
        acts = subject.residuals(x[i : i + batch_size], indices)
        for j, k in enumerate(indices):
            resid[j] += acts[k].float().norm(dim=-1).double().sum()
            if k >= 0:
                update[k] += (acts[k].float() - acts[k - 1].float()).norm(dim=-1).double().sum()
    n = x.numel()
    return {"resid_norm": (resid / n).tolist(), "update_norm": (update / n).tolist()}


@torch.no_grad()
def objective_fit(subject: Subject, objective: AuxiliaryObjective, x: torch.Tensor, batch_size: int) -> dict:
    """The self-model's own fit on held-out windows: for a method that predicts (P, T), its MSE, scaled MSE and
    cosine; for one that only reads its site (activation-l2), the site's mean square; empty for baseline and weight
    decay (no sites)."""
    sites = objective.sites()
    if not sites:
        return {}
    sq_err = target_sq = cos_sum = site_sq = 0.0
    elements = tokens = site_elements = 0
    predicts = True
    for i in range(0, x.shape[0], batch_size):
        with capture(subject, sites) as acts:
            logits_of(subject, x[i : i + batch_size].to(subject.device))
        pair = objective.prediction_and_target(acts)
        if pair is None:
            predicts = False
            a = acts[objective.site].float()
            site_sq += a.pow(2).sum().item()
            site_elements += a.numel()
            continue
        pred, target = (t.float() for t in pair)
        sq_err += (pred - target).pow(2).sum().item()
        target_sq += target.pow(2).sum().item()
        cos_sum += F.cosine_similarity(pred, target, dim=-1, eps=1e-8).sum().item()
        elements += pred.numel()
        tokens += pred[..., 0].numel()
    if not predicts:
        return {"site_mean_square": site_sq / site_elements}
    return {"fit_mse": sq_err / elements, "fit_scaled_mse": sq_err / target_sq if target_sq else float("nan"),
            "fit_cosine": cos_sum / tokens}
