"""Gauge symmetry: why raw weights of two attention layers with the same function need not match.

For any invertible R, (W_Q R)(W_K R^{-ᵀ})ᵀ = W_Q W_Kᵀ, and W_O R^{-1} R W_V = W_O W_V, so raw Q/K/V weight
cosines say nothing about function. Gauge-invariant comparisons (weights are (out, in) as in nn.Linear,
W_Q, W_K, W_V: (d_head, d), W_O: (d, d_head)):

- QK circuit  W_Qᵀ W_K  (d, d): the bilinear form scoring query against key (before RoPE for Llama).
- OV circuit  W_O W_V   (d, d): what a head writes given what it reads.
- principal angles between subspaces: cos θ_i are the singular values of U_Aᵀ U_B, with U_A, U_B
  orthonormal bases of the column spaces of A and B (e.g. the row spaces of two W_Q read directions, or
  the column spaces of two W_O write directions). Their mean cos² is the overlap of the subspaces; its
  expectation for random k-dim subspaces of R^d is k/d.
"""

from __future__ import annotations

import torch

from selfmodels.errors import require


def weight_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine between two weight tensors of the same shape, flattened."""
    require(a.shape == b.shape, f"raw weight cosine needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    return (a @ b / (a.norm() * b.norm())).item()


def qk_circuit(w_q: torch.Tensor, w_k: torch.Tensor) -> torch.Tensor:
    """W_Qᵀ W_K (d, d) from W_Q, W_K (d_head, d)."""
    return w_q.double().T @ w_k.double()


def ov_circuit(w_v: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """W_O W_V (d, d) from W_V (d_head, d) and W_O (d, d_head)."""
    return w_o.double() @ w_v.double()


def principal_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the column spaces of a (d, k) and b (d, l), descending."""
    require(a.shape[0] == b.shape[0], f"subspaces of different ambient dimension: {a.shape[0]} vs {b.shape[0]}")
    qa = torch.linalg.qr(a.double()).Q  # (d, k) orthonormal basis
    qb = torch.linalg.qr(b.double()).Q  # (d, l)
    return torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)  # (min(k, l),)


def subspace_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cos² of the principal angles between the column spaces of a and b (1: same subspace)."""
    return principal_cosines(a, b).pow(2).mean().item()


def head_comparison(fwd: dict[str, torch.Tensor], layer: dict[str, torch.Tensor]) -> dict[str, float]:
    """Compare one forward-model head with one layer head; each dict has ``q``, ``k``, ``v`` (d_head, d) and
    ``o`` (d, d_head). Raw cosines are reported only when the shapes agree (NaN otherwise)."""
    def raw(name: str) -> float:
        return weight_cosine(fwd[name], layer[name]) if fwd[name].shape == layer[name].shape else float("nan")

    return {
        "q_cosine": raw("q"), "k_cosine": raw("k"), "v_cosine": raw("v"),
        "qk_circuit_cosine": weight_cosine(qk_circuit(fwd["q"], fwd["k"]), qk_circuit(layer["q"], layer["k"])),
        "ov_circuit_cosine": weight_cosine(ov_circuit(fwd["v"], fwd["o"]), ov_circuit(layer["v"], layer["o"])),
        "q_read_overlap": subspace_overlap(fwd["q"].T, layer["q"].T),
        "k_read_overlap": subspace_overlap(fwd["k"].T, layer["k"].T),
        "v_read_overlap": subspace_overlap(fwd["v"].T, layer["v"].T),
        "o_write_overlap": subspace_overlap(fwd["o"], layer["o"]),
        # E[mean cos²] for random subspaces of dims k <= l in R^d is l/d; a subspace has at most d dims.
        "null_overlap": min(max(fwd["q"].shape[0], layer["q"].shape[0]), fwd["q"].shape[1]) / fwd["q"].shape[1],
    }
