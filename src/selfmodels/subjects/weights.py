"""Per-head attention weights in one layout, whatever the model stores: the gauge analyses compare these."""

from __future__ import annotations

import torch


def fused_qkv_heads(qkv: torch.Tensor, out: torch.Tensor, gain: torch.Tensor, n_head: int, d_head: int) -> list[dict[str, torch.Tensor]]:
    """Per head of a fused-QKV attention: ``qkv`` (3·H·d_head, d) as [Q; K; V] blocks and ``out`` (d, H·d_head),
    both in nn.Linear's (out, in) layout, read after a norm with gain γ (d,). Returns q, k, v (d_head, d) with
    the gain folded in (W · diag(γ)) and the write weight o (d, d_head) per head."""
    inner = n_head * d_head
    w_q, w_k, w_v = qkv.detach().float().split(inner, dim=0)  # (inner, d) each
    return split_heads(w_q, w_k, w_v, out, gain, n_head, n_head, d_head)


def split_heads(w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor, w_o: torch.Tensor, gain: torch.Tensor,
                n_heads: int, n_kv_heads: int, d_head: int) -> list[dict[str, torch.Tensor]]:
    """Per query head from separate projections in nn.Linear layout: ``w_q`` (H·dh, d), ``w_k``/``w_v``
    (G·dh, d) for G KV groups, ``w_o`` (d, H·dh); query head h reads KV group h // (H / G)."""
    g = gain.detach().float()  # (d,)
    w_q, w_k, w_v, w_o = (w.detach().float() for w in (w_q, w_k, w_v, w_o))
    per_group = n_heads // n_kv_heads
    rows = lambda w, i: w[i * d_head:(i + 1) * d_head] * g  # noqa: E731  (d_head, d)
    return [{"q": rows(w_q, h), "k": rows(w_k, h // per_group), "v": rows(w_v, h // per_group),
             "o": w_o[:, h * d_head:(h + 1) * d_head]} for h in range(n_heads)]


def head_writes(o_proj_in: torch.Tensor, w_o: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    """Each head's write into the residual, W_O[:, h] z_h: o_proj_in (..., H·dh), w_o (d, H·dh) -> (..., H, d)."""
    z = o_proj_in.reshape(*o_proj_in.shape[:-1], n_heads, d_head)  # (..., H, dh)
    w = w_o.reshape(w_o.shape[0], n_heads, d_head)  # (d, H, dh)
    return torch.einsum("...hk,dhk->...hd", z.to(w.dtype), w)  # (..., H, d)
