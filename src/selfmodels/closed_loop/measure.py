"""What is measured on a closed loop, on held-out windows (inputs x (N, T), next tokens y (N, T)), with the
injection on (the trained model) and off (``h_m`` left alone: the dependency on the injection).

Per pass (means over the N·T tokens unless stated):

- ``loss``: next-token cross-entropy, nats/token; ``accuracy``: share of positions whose argmax is the next token;
- ``forward_mse``: mean over elements of (F(h_i) - h_j)²; ``forward_cosine``: mean of cos(F(h_i)_t, h_{j,t});
  ``skip_cosine``: mean of cos(h_{i,t}, h_{j,t}) (the skip, "h_j ≈ h_i", F's baseline); h_j is this pass's, so
  with the injection on it is F's on-policy target;
- ``injection_norm``: mean of ||G(u)_t||₂ (0 when nothing is injected).

:func:`evaluate` gives both passes: ``val_loss`` (on) and ``val_loss_without_injection``, ``dependency`` = the
second minus the first (how much worse the model is without its injection), bits per byte, and the gate's
``gate_norm`` = ||W_G||_F.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfmodels.closed_loop.model import ClosedLoop
from selfmodels.lm_selfmodeling.measure import bits_per_byte

DEFINITIONS = {
    "val_loss": "mean next-token cross-entropy (nats/token) on held-out windows, injection on",
    "val_loss_without_injection": "the same with h_m left alone (G's output not added)",
    "dependency": "val_loss_without_injection - val_loss (nats/token): how much the model relies on its injection",
    "bits_per_byte": "total nats / (ln 2 * UTF-8 bytes of the predicted text)",
    "forward_cosine": "mean over tokens of cos(F(h_i), h_j), h_j of the same pass (on-policy with the injection on)",
    "skip_cosine": "mean over tokens of cos(h_i, h_j): the skip baseline F is compared with",
    "forward_mse": "mean over elements of (F(h_i) - h_j)^2",
    "injection_norm": "mean over tokens of ||G(u)_t||_2, the vector added to h_m",
    "gate_norm": "Frobenius norm of G's weight matrix",
}


def gate_norm(closed: ClosedLoop) -> float:
    """||W_G||_F."""
    return float(closed.gate.weight.detach().float().norm())


@torch.no_grad()
def measure(closed: ClosedLoop, x: torch.Tensor, y: torch.Tensor, batch_size: int, inject: bool = True) -> dict:
    """``loss``, ``accuracy``, ``forward_mse``, ``forward_cosine``, ``skip_cosine``, ``injection_norm`` (see the module)."""
    was_training = closed.training
    closed.eval()
    device = closed.gate.weight.device
    sums = dict.fromkeys(("loss", "correct", "se", "forward_cos", "skip_cos", "injection"), 0.0)
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        p = closed.run(xb, inject=inject)
        logits, prediction = p.logits.float(), p.prediction.float()
        source, target = p.source.float(), p.target.float()
        sums["loss"] += F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="sum").item()
        sums["correct"] += float((logits.argmax(-1) == yb).sum())
        sums["se"] += float(((prediction - target) ** 2).sum())
        sums["forward_cos"] += float(F.cosine_similarity(prediction, target, dim=-1).sum())
        sums["skip_cos"] += float(F.cosine_similarity(source, target, dim=-1).sum())
        if p.injected is not None:
            sums["injection"] += float(p.injected.float().norm(dim=-1).sum())
    closed.train(was_training)
    tokens, d = y.numel(), closed.gate.weight.shape[0]
    return {"loss": sums["loss"] / tokens, "accuracy": sums["correct"] / tokens, "forward_mse": sums["se"] / (tokens * d),
            "forward_cosine": sums["forward_cos"] / tokens, "skip_cosine": sums["skip_cos"] / tokens,
            "injection_norm": sums["injection"] / tokens}


def evaluate(closed: ClosedLoop, x: torch.Tensor, y: torch.Tensor, batch_size: int, n_bytes: int | None = None) -> dict:
    """Both passes' measures, the dependency, bits per byte (given ``n_bytes``, the UTF-8 length of y's text) and
    the gate's norm; the pass without the injection's keys end in ``_without_injection``."""
    on, off = measure(closed, x, y, batch_size, True), measure(closed, x, y, batch_size, False)
    out = {"val_loss": on["loss"], "val_loss_without_injection": off["loss"], "dependency": off["loss"] - on["loss"]}
    if n_bytes is not None:
        out["bits_per_byte"] = bits_per_byte(on["loss"], y.numel(), n_bytes)
        out["bits_per_byte_without_injection"] = bits_per_byte(off["loss"], y.numel(), n_bytes)
    for name in ("accuracy", "forward_mse", "forward_cosine", "skip_cosine"):
        out[name], out[f"{name}_without_injection"] = on[name], off[name]
    return {**out, "injection_norm": on["injection_norm"], "gate_norm": gate_norm(closed)}
