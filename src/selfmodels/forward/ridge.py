"""The ridge baseline: a closed-form affine map from source to target residuals, ``y ≈ x W + b``.

Fitted on the same tokens a forward model trains on, it is a cheap, always-available baseline beside
the skip (identity) map: whatever a forward model gains over it is what a linear map cannot do.

With ``n`` tokens (rows ``x_i``, ``y_i`` of width d), the means ``x̄ = Σx / n``, ``ȳ = Σy / n`` and the
centred covariances ``C_xx = Σ x xᵀ / n - x̄ x̄ᵀ``, ``C_xy = Σ x yᵀ / n - x̄ ȳᵀ``, the fit is::

    W = (C_xx + λ I)⁻¹ C_xy,   b = ȳ - x̄ W,   λ = ridge · trace(C_xx) / d

which minimises ``Σ_i ||y_i - x_i W - b||² + n λ ||W||²_F`` (the bias is not penalised). Because ``λ``
is ``ridge`` times the mean variance of the source's coordinates, the penalty is scale-free: scaling the
source by ``s`` scales ``W`` by ``1 / s`` and leaves the predictions unchanged, so one ``ridge`` (default
1e-3) suits a subject of any activation scale. ``ridge -> 0`` is ordinary least squares; ``ridge -> ∞``
is the mean map (``W -> 0``, ``b -> ȳ``).

The fit needs only the sufficient statistics (``n``, ``Σx``, ``Σy``, ``Σ x xᵀ``, ``Σ x yᵀ``), kept in
float64 and fed batch by batch with :meth:`RidgeMap.accumulate`. They are plain sums, so several
processes can all-reduce them::

    stats = ridge.statistics()                       # dict of float64 tensors (copies)
    for t in stats.values(): dist.all_reduce(t)      # sum over ranks
    ridge.reset(); ridge.add_statistics(stats); ridge.fit()

The fitted ``W`` (d, d) and ``b`` (d,) are float32 buffers, so ``state_dict`` round-trips the map (the
statistics are not part of it).
"""

from __future__ import annotations

import torch
from torch import nn

from selfmodels.errors import UserError, require

STATISTICS = ("n", "sum_x", "sum_y", "sum_xx", "sum_xy")


class RidgeMap(nn.Module):
    """Closed-form ridge regression ``y ≈ x W + b`` from (..., d) source to (..., d) target activations."""

    def __init__(self, d_model: int, ridge: float = 1e-3):
        super().__init__()
        require(int(d_model) >= 1, f"RidgeMap needs d_model >= 1, got {d_model}")
        require(float(ridge) >= 0, f"RidgeMap ridge must be >= 0, got {ridge}")
        self.d_model, self.ridge = int(d_model), float(ridge)
        self.register_buffer("weight", torch.zeros(self.d_model, self.d_model))  # W: (d_in, d_out)
        self.register_buffer("bias", torch.zeros(self.d_model))  # b: (d,)
        self.register_buffer("fitted", torch.tensor(False))
        self._stats: dict[str, torch.Tensor] | None = None  # float64 sums, created on the first batch's device
        self.last_lambda: float | None = None  # the λ of the last fit

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, ridge={self.ridge}, fitted={bool(self.fitted)}"

    # --- statistics ------------------------------------------------------------------------------------
    def _empty(self, device) -> dict[str, torch.Tensor]:
        d, f64 = self.d_model, torch.float64
        return {"n": torch.zeros((), dtype=f64, device=device), "sum_x": torch.zeros(d, dtype=f64, device=device),
                "sum_y": torch.zeros(d, dtype=f64, device=device), "sum_xx": torch.zeros(d, d, dtype=f64, device=device),
                "sum_xy": torch.zeros(d, d, dtype=f64, device=device)}

    @property
    def tokens(self) -> int:
        """Tokens accumulated so far."""
        return 0 if self._stats is None else int(self._stats["n"].item())

    def reset(self) -> None:
        """Forget the accumulated statistics (the fitted map, if any, stays)."""
        self._stats = None

    @torch.no_grad()
    def accumulate(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of paired activations, each (..., d) (e.g. (B, T, d)), to the float64 sums."""
        require(source.shape == target.shape,
                f"RidgeMap.accumulate needs source and target of the same shape, got {tuple(source.shape)} and {tuple(target.shape)}")
        require(source.ndim >= 1 and source.shape[-1] == self.d_model,
                f"RidgeMap expects activations of width {self.d_model}, got shape {tuple(source.shape)}")
        if self._stats is None:
            self._stats = self._empty(source.device)
        device = self._stats["n"].device
        x = source.detach().reshape(-1, self.d_model).to(device=device, dtype=torch.float64)  # (N, d)
        y = target.detach().reshape(-1, self.d_model).to(device=device, dtype=torch.float64)  # (N, d)
        s = self._stats
        s["n"] += x.shape[0]
        s["sum_x"] += x.sum(0)
        s["sum_y"] += y.sum(0)
        s["sum_xx"] += x.T @ x
        s["sum_xy"] += x.T @ y

    def statistics(self) -> dict[str, torch.Tensor]:
        """Copies of the float64 sums ``n``, ``sum_x``, ``sum_y``, ``sum_xx``, ``sum_xy`` (zeros before any
        data, so a process that saw none can still take part in an all-reduce)."""
        stats = self._stats if self._stats is not None else self._empty(self.weight.device)
        return {k: v.clone() for k, v in stats.items()}

    @torch.no_grad()
    def add_statistics(self, stats: dict[str, torch.Tensor]) -> None:
        """Add sums from :meth:`statistics` (of another process, or all-reduced) to this map's own."""
        missing = [k for k in STATISTICS if k not in stats]
        require(not missing, f"RidgeMap.add_statistics: missing {', '.join(missing)} (expected {', '.join(STATISTICS)})")
        d = self.d_model
        shapes = {"n": (), "sum_x": (d,), "sum_y": (d,), "sum_xx": (d, d), "sum_xy": (d, d)}
        for key, shape in shapes.items():
            got = tuple(torch.as_tensor(stats[key]).shape)
            require(got == shape, f"RidgeMap.add_statistics: {key} has shape {got}, expected {shape} for width {d}")
        if self._stats is None:
            self._stats = self._empty(torch.as_tensor(stats["sum_x"]).device)
        for key in STATISTICS:
            self._stats[key] += torch.as_tensor(stats[key]).to(device=self._stats[key].device, dtype=torch.float64)

    # --- fitting and applying --------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self) -> "RidgeMap":
        """Solve for ``W`` and ``b`` from the accumulated statistics (see the module docstring); returns self."""
        if self._stats is None or self._stats["n"].item() < 1:
            raise UserError("RidgeMap.fit: no data accumulated; call accumulate(source, target) first")
        s, d = self._stats, self.d_model
        n = s["n"]
        mean_x, mean_y = s["sum_x"] / n, s["sum_y"] / n  # (d,)
        c_xx = s["sum_xx"] / n - torch.outer(mean_x, mean_x)  # (d, d)
        c_xx = (c_xx + c_xx.T) / 2
        c_xy = s["sum_xy"] / n - torch.outer(mean_x, mean_y)  # (d, d)
        trace = float(torch.diagonal(c_xx).clamp_min(0).sum())
        lam = self.ridge * trace / d
        if trace <= 0:  # constant source: nothing to regress on, the mean map
            weight = torch.zeros_like(c_xy)
        else:
            a = c_xx + lam * torch.eye(d, dtype=c_xx.dtype, device=c_xx.device)
            chol, info = torch.linalg.cholesky_ex(a)
            if int(info) == 0:
                weight = torch.cholesky_solve(c_xy, chol)
            else:  # singular (ridge 0 and fewer distinct tokens than dimensions): the minimum-norm solution
                weight = torch.linalg.pinv(a, hermitian=True) @ c_xy
        bias = mean_y - mean_x @ weight
        self.weight.copy_(weight.to(self.weight.device, torch.float32))
        self.bias.copy_(bias.to(self.bias.device, torch.float32))
        self.fitted.fill_(True)
        self.last_lambda = lam
        return self

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h @ W + b`` for ``h`` of shape (..., d), in float32."""
        require(bool(self.fitted), "RidgeMap is not fitted: accumulate(source, target) batches, then call fit()")
        require(h.ndim >= 1 and h.shape[-1] == self.d_model,
                f"RidgeMap expects activations of width {self.d_model}, got shape {tuple(h.shape)}")
        w, b = self.weight.float(), self.bias.float()
        return h.to(device=w.device, dtype=torch.float32) @ w + b  # (..., d)

    def num_params(self) -> int:
        return self.d_model * self.d_model + self.d_model

    def flops_per_token(self, seq_len: int = 0) -> int:
        return 2 * self.d_model * self.d_model


@torch.no_grad()
def fit_ridge_maps(subject, windows: torch.Tensor, pairs: list[tuple[int, int]], ridge: float, batch_size: int) -> dict[tuple[int, int], RidgeMap]:
    """One fitted :class:`RidgeMap` per (source, target) pair, from one pass of ``subject`` (anything with
    ``residuals(ids, at)`` and ``d_model``) per batch of ``windows`` (N, T) at every index the pairs need."""
    indices = sorted({k for pair in pairs for k in pair})
    maps = {pair: RidgeMap(subject.d_model, ridge) for pair in pairs}
    for i in range(0, windows.shape[0], batch_size):
        acts = subject.residuals(windows[i : i + batch_size], indices)
        for (s, t), ridge_map in maps.items():
            ridge_map.accumulate(acts[s].float(), acts[t].float())
    for ridge_map in maps.values():
        ridge_map.fit()
    return maps
