"""Every residual of one closed-loop pass, optionally with a perturbation added: what the measurement battery reads.

:func:`loop_pass` runs :meth:`ClosedLoop.run`'s pass through the same pieces of the network, block by block (the
loop's ``trunk`` where it has one, else our GPT's public ``embed``, ``run_blocks`` and ``head``), and keeps every
residual index -1 .. n-1::

    h_{-1} = embed(ids);  h_k = block_k(h_{k-1})
    h_i   <- h_i + δ                      (only with ``at="source"``: F's input and the stream both see it)
    u      = signal(h_i, F(h_i));  h_m <- h_m + G(u)
    h_m   <- h_m + δ                      (only with ``at="inject"``: after the injection, F's input untouched)
    logits = head(h_{n-1})

``residuals[m]`` is h_m as block m + 1 reads it (after the injection and any δ); ``before_injection`` is h_m
before G(u) was added (when i = m, the residual F read, δ included). Without δ the pass is ``ClosedLoop.run``'s op
for op (tested bit for bit: logits, source, target, prediction and the injected vector).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfmodels.closed_loop.model import ClosedLoop
from selfmodels.errors import require

SITES = ("inject", "source")  # where a perturbation δ goes: h_m after the injection, or h_i before F reads it


@dataclass
class LoopResiduals:
    """``residuals[k]`` (B, T, d) for k = -1 .. n-1; ``before_injection`` h_m before G(u); ``prediction`` F(h_i);
    ``injected`` G(u) (None when nothing was injected); ``logits`` (B, T, V)."""

    residuals: dict[int, torch.Tensor]
    before_injection: torch.Tensor
    prediction: torch.Tensor
    injected: torch.Tensor | None
    logits: torch.Tensor


def _pieces(closed: ClosedLoop):
    """``(embed, blocks, head, n_layers)`` of the loop's network: its trunk's when it has one, else our GPT's."""
    trunk = getattr(closed, "trunk", None)
    if trunk is not None:
        return trunk.embed, trunk.blocks, trunk.head, trunk.n_layers
    gpt = closed.gpt
    return (lambda ids: (gpt.embed(ids), None), lambda h, start, stop, args: gpt.run_blocks(h, start, stop),
            lambda h, args: gpt.head(h), gpt.cfg.n_layer)


def n_layers(closed: ClosedLoop) -> int:
    """The number of blocks of the loop's network."""
    return _pieces(closed)[3]


def loop_pass(closed: ClosedLoop, ids: torch.Tensor, inject: bool = True, delta: torch.Tensor | None = None,
              at: str = "inject") -> LoopResiduals:
    """One closed-loop pass on ``ids`` (B, T) keeping every residual; ``delta`` (B, T, d) is added at ``at``
    (``"inject"``: to h_m after the injection; ``"source"``: to h_i, before F reads it). See the module."""
    require(at in SITES, f"a perturbation goes at one of {', '.join(SITES)}, got {at!r}")
    embed, blocks, head, n = _pieces(closed)
    i, m = closed.source, closed.inject
    residuals: dict[int, torch.Tensor] = {}
    h, args = embed(ids)  # h_{-1} (B, T, d)
    before = injected = prediction = None
    for k in range(-1, n):
        if k >= 0:
            h = blocks(h, k, k + 1, args)  # h_k
        if k == i:
            if delta is not None and at == "source":
                h = h + delta
            source = h.detach()
            prediction = closed.forward_model(source)  # F(h_i) (B, T, d)
        if k == m:
            before = h
            signal, _ = closed.signal(source, prediction if closed.lm_into_forward else prediction.detach())
            if inject and signal is not None:
                injected = closed.gate(signal)  # G(u) (B, T, d)
                h = h + injected
            if delta is not None and at == "inject":
                h = h + delta
        residuals[k] = h
    return LoopResiduals(residuals, before, prediction, injected, head(h, args))


@dataclass
class Collected:
    """Residuals of many windows (N, T, d) on the CPU in float32, keyed by index (-1 .. n-1, h_m after the
    injection); ``before_injection`` h_m before G(u); ``injected`` G(u) (None when nothing was injected)."""

    residuals: dict[int, torch.Tensor]
    before_injection: torch.Tensor
    injected: torch.Tensor | None


@torch.no_grad()
def collect(closed: ClosedLoop, x: torch.Tensor, inject: bool, batch_size: int,
            indices: tuple[int, ...] | None = None) -> Collected:
    """:func:`loop_pass` over the windows ``x`` (N, T) in batches, keeping ``indices`` (None: every index)."""
    was_training = closed.training
    closed.eval()
    device = closed.gate.weight.device
    keep = tuple(range(-1, n_layers(closed))) if indices is None else tuple(indices)
    parts: dict = {k: [] for k in keep}
    before, injected = [], []
    try:
        for start in range(0, x.shape[0], batch_size):
            p = loop_pass(closed, x[start : start + batch_size].to(device), inject)
            for k in keep:
                parts[k].append(p.residuals[k].float().cpu())
            before.append(p.before_injection.float().cpu())
            if p.injected is not None:
                injected.append(p.injected.float().cpu())
    finally:
        closed.train(was_training)
    return Collected({k: torch.cat(v) for k, v in parts.items()}, torch.cat(before),
                     torch.cat(injected) if injected else None)
