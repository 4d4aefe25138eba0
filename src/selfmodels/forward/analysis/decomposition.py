"""Per-component decomposition of one block's update, and where the forward model's residual lies.

A block maps its input residual h to ``h + Δ`` with, exactly (a bias b_O of the attention output
projection is kept as its own component; zero when there is none)::

    Δ = Σ_h  W_O[:, h] z_h  +  b_O  +  MLP(...)                       z_h = head h's attention output

where ``W_O[:, h]`` (d, d_head) are the columns of the output projection that read head h, so
``W_O[:, h] z_h`` is head h's write into the residual: the ``heads`` a subject's ``block_parts`` returns
(:meth:`selfmodels.subjects.base.Subject.block_parts`), and ``W_O[:, h]`` is ``head_weights(k)[h]["o"]``.
``reconstruction_error`` is ‖Δ - Σ components‖_F / ‖Δ‖_F over all tokens (float rounding only, ~1e-7 in fp32).

For each component c (a head, a KV group = the sum of its heads, the attention total, the MLP), with the
forward model's residual r = target - prediction, per token t:

- ``norm``: mean_t ‖c_t‖;  ``norm_share``: norm / (norm of the attention total + norm of the MLP)
  (``heads_norm_share`` uses the attention total; ``heads_norm_share_sum_of_heads`` the sum of per-head
  norms over that sum plus the MLP's norm);
- ``cos_residual``: mean_t cos(c_t, r_t);
- ``norm_corr``: Pearson correlation over tokens of ‖c_t‖ and ‖r_t‖;
- ``residual_variance_fraction``: the share of the centred residual's variance inside the component's
  output subspace (the column space of its W_O columns), against the null expectation
  ``null_fraction`` = subspace dimension / d for a residual with no preferred direction.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from selfmodels.errors import require
from selfmodels.forward.analysis.residual import pearson


def decompose_update(layer_input: torch.Tensor, layer_output: torch.Tensor, heads: torch.Tensor,
                     bias: torch.Tensor | None, mlp_out: torch.Tensor) -> dict[str, torch.Tensor | float]:
    """Split Δ = output - input into the per-head writes ``heads`` (..., H, d), the attention output
    projection's ``bias`` (d,) (None: no bias) and the MLP output; check that they sum to Δ.

    ``layer_input``, ``layer_output``, ``mlp_out`` are (..., d) on the same tokens as ``heads``. Returns
    ``heads`` (N, H, d), ``mlp`` (N, d), ``bias`` (d,) (zeros if none), ``update`` (N, d) with N = all tokens
    flattened, and ``reconstruction_error`` (relative Frobenius) and ``max_abs_error``.
    """
    d = layer_input.shape[-1]
    update = (layer_output - layer_input).reshape(-1, d)  # (N, d)
    require(heads.shape[-1] == d and heads.reshape(-1, *heads.shape[-2:]).shape[0] == update.shape[0],
            f"per-head writes of shape {tuple(heads.shape)} do not match the layer's {update.shape[0]} tokens x {d}")
    heads = heads.reshape(-1, *heads.shape[-2:])  # (N, H, d)
    mlp = mlp_out.reshape(-1, d)  # (N, d)
    bias = bias if bias is not None else torch.zeros(d, dtype=update.dtype)
    recon = heads.sum(1) + bias + mlp  # (N, d)
    error = (update - recon).norm() / update.norm().clamp_min(1e-30)
    return {"heads": heads, "mlp": mlp, "bias": bias, "update": update,
            "reconstruction_error": error.item(), "max_abs_error": (update - recon).abs().max().item()}


def subspace_variance_fraction(residual: torch.Tensor, columns: torch.Tensor) -> float:
    """Share of the centred residual's variance in the column space of ``columns`` (d, k):
    Σ_t ‖P r_t‖² / Σ_t ‖r_t‖² with P the orthogonal projector onto that space."""
    r = residual.reshape(-1, residual.shape[-1]).double()  # (N, d)
    r = r - r.mean(0, keepdim=True)
    q = torch.linalg.qr(columns.double()).Q  # (d, k)
    return ((r @ q).pow(2).sum() / r.pow(2).sum()).item()


def _stats(component: torch.Tensor, residual: torch.Tensor) -> dict[str, float]:
    """norm, cos_residual, norm_corr of one component (N, d) against the residual (N, d)."""
    c, r = component.double(), residual.double()
    return {
        "norm": c.norm(dim=-1).mean().item(),
        "cos_residual": F.cosine_similarity(c, r, dim=-1, eps=1e-30).mean().item(),
        "norm_corr": pearson(c.norm(dim=-1), r.norm(dim=-1)),
    }


def decomposition_report(layer_input: torch.Tensor, layer_output: torch.Tensor, heads: torch.Tensor,
                         bias: torch.Tensor | None, mlp_out: torch.Tensor, residual: torch.Tensor,
                         head_o: Sequence[torch.Tensor], n_kv_heads: int) -> dict:
    """All per-component numbers for one block (see the module docstring for definitions).

    ``layer_input``, ``layer_output``, ``mlp_out`` (B, T, d) or (N, d), ``heads`` (B, T, H, d) or (N, H, d)
    (each head's write, without the bias) and ``bias`` (d,) or None describe the block on the same tokens as
    ``residual`` (target - prediction, target = the block's output). ``head_o`` holds each head's write
    weight W_O[:, h] (d, d_head), e.g. ``[w["o"] for w in subject.head_weights(k)]``. Consecutive heads share
    a KV group: heads g*n_rep..(g+1)*n_rep-1 form group g (n_rep = H / n_kv_heads), as in grouped-query
    attention.
    """
    n_heads = heads.shape[-2]
    require(len(head_o) == n_heads, f"{len(head_o)} head write weights for {n_heads} heads")
    require(n_kv_heads >= 1 and n_heads % n_kv_heads == 0, f"{n_heads} heads do not split into {n_kv_heads} KV groups")
    d_head = head_o[0].shape[1]
    dec = decompose_update(layer_input, layer_output, heads, bias, mlp_out)
    r = residual.reshape(-1, residual.shape[-1]).double()  # (N, d)
    require(r.shape[0] == dec["update"].shape[0], "residual and layer parts must come from the same tokens")
    d = r.shape[1]
    heads, mlp = dec["heads"], dec["mlp"]
    attention_total = heads.sum(1)  # (N, H, d) -> (N, d)
    n_rep = n_heads // n_kv_heads
    require(all(o.shape == (d, d_head) for o in head_o), f"head write weights must each be ({d}, {d_head})")
    w = torch.stack([o.detach().to(r.device, torch.float64) for o in head_o], dim=1)  # (d, H, dh)

    per_head = []
    for h in range(n_heads):
        s = _stats(heads[:, h], r)
        s["residual_variance_fraction"] = subspace_variance_fraction(r, w[:, h])
        per_head.append({"head": h, "kv_group": h // n_rep, **s})
    per_group = []
    for g in range(n_kv_heads):
        members = slice(g * n_rep, (g + 1) * n_rep)
        s = _stats(heads[:, members].sum(1), r)
        s["residual_variance_fraction"] = subspace_variance_fraction(r, w[:, members].reshape(d, -1))
        per_group.append({"kv_group": g, "heads": list(range(g * n_rep, (g + 1) * n_rep)), **s})
    mlp_stats = _stats(mlp, r)
    attn_stats = _stats(attention_total, r)
    denom = attn_stats["norm"] + mlp_stats["norm"]
    sum_of_heads = sum(p["norm"] for p in per_head)
    for entry in per_head + per_group:
        entry["norm_share"] = entry["norm"] / denom
    head_cos = torch.tensor([p["cos_residual"] for p in per_head])
    head_frac = torch.tensor([p["residual_variance_fraction"] for p in per_head])
    return {
        "reconstruction_error": dec["reconstruction_error"],
        "max_abs_error": dec["max_abs_error"],
        "update_norm": dec["update"].norm(dim=-1).mean().item(),
        "heads_norm_share": attn_stats["norm"] / denom,
        "heads_norm_share_sum_of_heads": sum_of_heads / (sum_of_heads + mlp_stats["norm"]),
        "mlp_norm_share": mlp_stats["norm"] / denom,
        "mlp_cos_residual": mlp_stats["cos_residual"],
        "mlp_norm_corr": mlp_stats["norm_corr"],
        "attention_cos_residual": attn_stats["cos_residual"],
        "attention_norm_corr": attn_stats["norm_corr"],
        "heads_cos_residual_mean": head_cos.mean().item(),
        "heads_cos_residual_min": head_cos.min().item(),
        "heads_cos_residual_max": head_cos.max().item(),
        "heads_norm_corr_mean": sum(p["norm_corr"] for p in per_head) / n_heads,
        "head_residual_variance_fraction_min": head_frac.min().item(),
        "head_residual_variance_fraction_max": head_frac.max().item(),
        "head_null_fraction": d_head / d,
        "group_null_fraction": n_rep * d_head / d,
        "mlp": mlp_stats, "attention_total": attn_stats, "heads": per_head, "kv_groups": per_group,
    }
