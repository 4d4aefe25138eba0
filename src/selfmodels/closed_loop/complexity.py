"""Complexity of a trained closed loop: the LLC of the network and G with F frozen, weight spread, residual norms and
the drift flag.

- **LLC** (:func:`selfmodels.complexity.lm_llc.lm_llc`, the package's SGLD estimator under mean next-token
  cross-entropy, nβ = n / ln n with n the predicted tokens of a minibatch): the sampled weights are the GPT's and
  G's only (the GPT's alone when nothing is injected: open loop's G never enters the loss, so it has no gradient and
  no effect on λ). F and the condition's signal module are held fixed at their trained values (``requires_grad`` off while
  sampling, so the estimator keeps them as constants): F is trained on its own MSE, not the LM loss, and is not at a
  minimum of the loss whose LLC is estimated. The caller's flags are restored afterwards; the estimator samples a
  copy, so no weight of the loop moves. The result is :meth:`LLCResult.summary` (``llc_*`` keys, ``llc_mean`` null
  when flagged), plus ``llc_sampled_params``, the estimator's count of the weights its chains move (tested: the
  GPT's and G's; the GPT's alone for a loop that injects nothing, open loop, whose G never enters the loss).
- **Weight spread** (as the LM self-modeling area defines it): ``unembedding_sd`` = SD (Bessel) of every entry of
  the LM head's weight (V, d), i.e. :func:`selfmodels.complexity.weights.classification_weight_sd` over all V rows;
  ``block_weight_sd[k]`` = SD of every entry of block k's matrices (parameters of 2 or more dimensions);
  ``block_weight_sd_mean`` their mean.
- **Residual norms** on held-out windows with the injection on: ``resid_norm[k]`` (k = -1 .. n-1) = mean over tokens
  of ||h_k||₂, h_m after the injection (what the stream carries), ``resid_norm_before_injection`` = the same of h_m
  before it; ``update_norm[k]`` = mean over tokens of ||h_k - h_{k-1}||₂, block k's own write (block m's is measured
  before the injection, block m + 1's from h_m after it).
- **Drift** (:func:`drift_flag`, the LM self-modeling rule; needs the open-loop baseline of the same grid): true when
  any resid_norm exceeds ``DRIFT_NORM_RATIO`` x the baseline's mean at that index, or any update_norm falls under
  ``DRIFT_UPDATE_RATIO`` x the baseline's.
"""

from __future__ import annotations

import numpy as np
import torch

from selfmodels.closed_loop.model import ClosedLoop
from selfmodels.closed_loop.residuals import Collected
from selfmodels.complexity.config import LLCConfig
from selfmodels.complexity.weights import classification_weight_sd
from selfmodels.errors import require
from selfmodels.lm_selfmodeling.grid import DRIFT_NORM_RATIO, DRIFT_UPDATE_RATIO
from selfmodels.nets.gpt import GPT


def sampled_parameters(closed: ClosedLoop) -> int:
    """The number of weights the LLC's chains move: the GPT's and G's."""
    return sum(p.numel() for p in closed.gpt.parameters()) + sum(p.numel() for p in closed.gate.parameters())


@torch.no_grad()
def injects(closed: ClosedLoop, windows: torch.Tensor) -> bool:
    """Whether the loop adds anything to h_m (False for open loop), from one pass on the first window's first tokens."""
    device = closed.gate.weight.device
    return closed.run(windows[:1, : min(2, windows.shape[1])].long().to(device)).injected is not None


def loop_llc(closed: ClosedLoop, windows: torch.Tensor, config: LLCConfig, device: torch.device | str = "cpu",
             progress: bool = False) -> dict:
    """The LLC of the GPT and G with F and the signal frozen, on training ``windows`` (N, T+1); see the module."""
    from selfmodels.complexity.lm_llc import lm_llc

    flags = {name: p.requires_grad for name, p in closed.named_parameters()}
    try:
        closed.requires_grad_(False)
        closed.gpt.requires_grad_(True)
        closed.gate.requires_grad_(injects(closed, windows))  # a gate that is never applied has no gradient
        result = lm_llc(closed, windows, config, device=device, progress=progress)
    finally:
        for name, p in closed.named_parameters():
            p.requires_grad_(flags[name])
    return {**result.summary(), "llc_sampled_params": int(result.diagnostics["num_params"])}


def weight_spread(closed: ClosedLoop) -> dict:
    """``unembedding_sd``, ``block_weight_sd`` (one per block) and ``block_weight_sd_mean``; a loop on a pretrained
    subject (``closed.subject``, not our GPT) is measured by the LM self-modeling area's own function."""
    network = closed.gpt
    if isinstance(network, GPT):
        head = network.lm_head
        blocks = [float(torch.cat([p.detach().float().flatten() for p in block.parameters() if p.ndim >= 2]).std())
                  for block in network.blocks]
        spread = {"unembedding_sd": classification_weight_sd(head, head.weight.shape[0]), "block_weight_sd": blocks}
    else:
        from selfmodels.lm_selfmodeling.measure import weight_spread as subject_weight_spread

        subject = getattr(closed, "subject", None)
        require(subject is not None, f"weight spread needs our GPT or a subject; the loop's network is a "
                                     f"{type(network).__name__} with no subject")
        spread = subject_weight_spread(subject)
    return {**spread, "block_weight_sd_mean": float(np.mean(spread["block_weight_sd"]))}


def residual_norms(collected: Collected, inject: int) -> dict:
    """``resid_norm``, ``resid_norm_before_injection`` and ``update_norm`` of the module from residuals of every
    index (:func:`~selfmodels.closed_loop.residuals.collect` with ``indices=None``)."""
    indices = sorted(collected.residuals)
    require(indices == list(range(-1, len(indices) - 1)), "residual norms need the residuals of every index -1 .. n-1")
    resid = [float(collected.residuals[k].double().norm(dim=-1).mean()) for k in indices]
    update = []
    for k in indices[1:]:
        after = collected.before_injection if k == inject else collected.residuals[k]
        update.append(float((after.double() - collected.residuals[k - 1].double()).norm(dim=-1).mean()))
    return {"resid_norm": resid, "resid_norm_before_injection": float(collected.before_injection.double().norm(dim=-1).mean()),
            "update_norm": update}


def drift_flag(norms: dict, baseline: dict) -> dict:
    """``drift`` with its ratios, for a run's ``resid_norm`` / ``update_norm`` against the open-loop baseline's (the
    mean over its seeds, same keys): ``drift_resid_ratio_max``, ``drift_update_ratio_min``."""
    resid = np.asarray(norms["resid_norm"]) / np.asarray(baseline["resid_norm"])
    update = np.asarray(norms["update_norm"]) / np.asarray(baseline["update_norm"])
    out = {"drift_resid_ratio_max": float(resid.max()), "drift_update_ratio_min": float(update.min())}
    return {**out, "drift": bool(out["drift_resid_ratio_max"] > DRIFT_NORM_RATIO
                                 or out["drift_update_ratio_min"] < DRIFT_UPDATE_RATIO)}


DRIFT_RULE = (f"any resid_norm > {DRIFT_NORM_RATIO} x the open-loop baseline's mean at that index, or any update_norm "
              f"< {DRIFT_UPDATE_RATIO} x the baseline's (the LM self-modeling rule)")
