"""The pre-grid checks (issue 21): is the open-loop model one whose blocks m+1..j a forward model can study?

On held-out text, the trained open-loop model must show, before its grid's comparisons mean anything:

- ``skip_kl`` >= 0.3 nats: skipping blocks m+1..j (h_j := h_m, the rest of the pass unchanged) costs at least that
  much, ``skip_kl = mean_t KL(p_t || q_t)``, p the full pass's next-token distribution, q the skipped pass's; the
  blocks do something the head depends on;
- the fresh observer's ``update_r2`` >= 0.3: O(h_i) predicts at least that share of the update h_j - h_m
  (:mod:`selfmodels.closed_loop.observer`), so there is something to know;
- its ``cosine`` <= 0.99: and something left unknown (a near-perfect observer leaves no residual to probe).

:func:`skip_kl` measures the first on any closed loop (the injection on: the skipped pass starts from h_m as block
m + 1 reads it); the observer's numbers come from the battery (``observer.on``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfmodels.closed_loop.model import ClosedLoop
from selfmodels.closed_loop.residuals import loop_pass

SKIP_KL_MIN, UPDATE_R2_MIN, COSINE_MAX = 0.3, 0.3, 0.99
RULES = {
    "skip_kl": (">=", SKIP_KL_MIN, "mean_t KL(p_full || p_skip), nats, blocks m+1..j skipped (h_j := h_m)"),
    "update_r2": (">=", UPDATE_R2_MIN, "the fresh observer's R^2 on the update h_j - h_m from h_i"),
    "cosine": ("<=", COSINE_MAX, "the fresh observer's mean cos(O(h_i), h_j)"),
}


@torch.no_grad()
def skip_kl(closed: ClosedLoop, x: torch.Tensor, batch_size: int) -> float:
    """``mean_t KL(p_t || q_t)`` over the windows ``x`` (N, T): p the closed loop's pass, q the same pass with blocks
    m+1..j skipped (their output h_j replaced by h_m after the injection). Nats per token."""
    was_training = closed.training
    closed.eval()
    trunk, m, j = closed.trunk, closed.inject, closed.target
    n, device = trunk.n_layers, closed.gate.weight.device
    total, tokens = 0.0, 0
    try:
        for start in range(0, x.shape[0], batch_size):
            ids = x[start : start + batch_size].to(device)
            p = loop_pass(closed, ids)
            args = trunk.embed(ids)[1]  # what the blocks need for this batch (None for our GPT)
            skipped = trunk.head(trunk.blocks(p.residuals[m], j + 1, n, args), args)  # (B, T, V)
            full_log, skip_log = F.log_softmax(p.logits.float(), -1), F.log_softmax(skipped.float(), -1)
            total += float((full_log.exp() * (full_log - skip_log)).sum())
            tokens += p.logits.shape[0] * p.logits.shape[1]
    finally:
        closed.train(was_training)
    return total / tokens


def check(values: dict[str, float | None]) -> dict:
    """Each rule of :data:`RULES` against ``values`` (``skip_kl``, ``update_r2``, ``cosine``): ``{name: {"value",
    "rule", "passes"}}`` and ``passes`` (all of them; a missing value fails)."""
    out = {}
    for name, (op, bound, what) in RULES.items():
        value = values.get(name)
        ok = value is not None and (value >= bound if op == ">=" else value <= bound)
        out[name] = {"value": value, "rule": f"{op} {bound}", "what": what, "passes": bool(ok)}
    return {"checks": out, "passes": all(c["passes"] for c in out.values())}
