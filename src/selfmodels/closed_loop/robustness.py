"""Robustness of a frozen closed loop to random perturbations of its residual stream.

For each of D random unit directions v (seeded) and each radius r, the perturbation at position t is

    δ_t = r ||h_{m,t}|| v          (h_m of the clean pass, as block m + 1 reads it: after the injection)

added at one of two sites (:func:`~selfmodels.closed_loop.residuals.loop_pass`): ``inject``, to h_m after the
injection (F's input is untouched: the injected vector is an unperturbed bypass), or ``source``, to h_i before F
reads it (F's input, the injection and the stream all see it; the same δ_t, so the two sites compare directly). With
Δh_j = h_j(perturbed) - h_j(clean), per direction, over the N·T tokens of the windows:

- ``response`` = mean_t ||Δh_{j,t}|| / ||δ_t||  (1 for blocks m+1..j that pass a perturbation through unchanged);
- ``cosine`` = mean_t cos(Δh_{j,t}, δ_t);
- ``loss_increase`` = CE(perturbed) - CE(clean), mean next-token cross-entropy, nats/token.

Each is averaged over the directions (``*_mean``, with the SD over directions ``*_sd``) for every site and radius.
All passes run with the injection on (the loop as trained).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfmodels.closed_loop.battery_config import RobustnessSettings
from selfmodels.closed_loop.model import ClosedLoop
from selfmodels.closed_loop.residuals import SITES, loop_pass
from selfmodels.training.rng import derived_seed

MEASURES = ("response", "cosine", "loss_increase")


def directions(count: int, d: int, seed: int) -> torch.Tensor:
    """``count`` random unit vectors (count, d), v = z / ||z||, z ~ N(0, I_d), from a generator of their own."""
    g = torch.Generator().manual_seed(derived_seed("closed-loop robustness", seed))
    z = torch.randn(count, d, generator=g, dtype=torch.float64)
    return z / z.norm(dim=-1, keepdim=True)


def _loss_per_copy(logits: torch.Tensor, y: torch.Tensor, copies: int) -> torch.Tensor:
    """Mean next-token CE of each of ``copies`` stacked copies of the windows: logits (copies·N, T, V) -> (copies,)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), y.repeat(copies, 1).flatten(), reduction="none")
    return ce.view(copies, -1).mean(-1).double()


@torch.no_grad()
def robustness(closed: ClosedLoop, x: torch.Tensor, y: torch.Tensor, settings: RobustnessSettings, seed: int,
               chunk: int = 16) -> dict:
    """The measures of the module docstring on windows ``x`` (N, T) with next tokens ``y`` (N, T): per site and
    radius, ``{measure}_mean`` and ``{measure}_sd`` over the directions, plus ``clean_loss``. ``chunk``: directions
    per batched pass (each pass holds chunk·N windows)."""
    was_training = closed.training
    closed.eval()
    device = closed.gate.weight.device
    x, y = x.to(device), y.to(device)
    j, m = closed.target, closed.inject
    try:
        clean = loop_pass(closed, x)
        clean_loss = float(F.cross_entropy(clean.logits.float().flatten(0, 1), y.flatten()))
        h_m, h_j = clean.residuals[m], clean.residuals[j]  # (N, T, d)
        scale = h_m.norm(dim=-1, keepdim=True)  # ||h_{m,t}|| (N, T, 1)
        dtype = h_m.dtype
        units = directions(settings.directions, h_m.shape[-1], seed).to(device=device, dtype=dtype)  # (D, d)
        out: dict = {"clean_loss": clean_loss, "directions": settings.directions, "windows": int(x.shape[0]),
                     "sites": {}}
        for site in SITES:
            per_radius = {}
            for r in settings.radii:
                values = {name: [] for name in MEASURES}
                for start in range(0, units.shape[0], chunk):
                    v = units[start : start + chunk]  # (c, d)
                    c = v.shape[0]
                    delta = (r * scale.unsqueeze(0) * v[:, None, None, :]).flatten(0, 1)  # (c·N, T, d)
                    p = loop_pass(closed, x.repeat(c, 1), True, delta, site)
                    dh = p.residuals[j] - h_j.repeat(c, 1, 1)  # Δh_j (c·N, T, d)
                    ratio = dh.norm(dim=-1) / delta.norm(dim=-1)  # (c·N, T)
                    cos = F.cosine_similarity(dh.double(), delta.double(), dim=-1)
                    values["response"].append(ratio.double().view(c, -1).mean(-1))
                    values["cosine"].append(cos.view(c, -1).mean(-1))
                    values["loss_increase"].append(_loss_per_copy(p.logits, y, c) - clean_loss)
                entry = {}
                for name, parts in values.items():
                    per_direction = torch.cat(parts)  # (D,)
                    entry[f"{name}_mean"] = float(per_direction.mean())
                    entry[f"{name}_sd"] = float(per_direction.std()) if per_direction.numel() > 1 else float("nan")
                per_radius[repr(float(r))] = entry
            out["sites"][site] = per_radius
    finally:
        closed.train(was_training)
    return out
