"""Ridge probes without leakage: how much of O's residual each layer holds beyond what a probe could read off the
observer's own inputs and outputs.

The target is O's residual ``r_t = h_{j,t} - O(h_i)_t`` (what the fresh observer could not predict). For each
residual index l (-1 .. n-1; h_m as block m + 1 reads it), the regressors are ``[h_l, c]`` with the covariates
``c = [h_i, O(h_i), G(u)]`` (G(u) left out when nothing is injected): after the injection point G·F(h_i) is inside
every later residual, so a probe could read a prediction of h_j off it; the covariates-only probe has ``c`` alone.
Every probe is fitted on the third quarter of the held-out stream and scored on the fourth:

- **Ridge** (closed form, float64): regressors standardised with the fit set's mean and SD, target centred on the
  fit set's mean, ``W(λ) = argmin (1/n) Σ_t ||y_t - W x̃_t||² + λ ||W||_F² = (X̃ᵀX̃/n + λ I)⁻¹ X̃ᵀY/n``, solved
  through one eigendecomposition of X̃ᵀX̃/n for every λ (directions with no variance get no weight).
- **λ** is chosen on the fit set alone by k-fold cross-validation over whole windows (``folds`` contiguous blocks of
  windows; tokens of one window never sit on both sides): the λ of least pooled held-out squared error (ties: the
  smaller λ), then refitted on the whole fit set.
- **R²** on the test set, pooled over the target's dimensions:
  ``R² = 1 - Σ_{t,k} (y_{tk} - ŷ_{tk})² / Σ_{t,k} (y_{tk} - ȳ_k)²``, ȳ the test set's own mean (so a probe that
  predicts nothing scores 0 or below).
- ``gain(l) = R²(l) - R²(covariates)``: what layer l holds about O's residual beyond the covariates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfmodels.errors import require


@dataclass
class Ridge:
    """A fitted ridge map ``ŷ = ((x - mean) / scale) W + bias``; ``lam`` the penalty used, ``cv_sse`` the pooled
    cross-validated squared error of each penalty tried."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    lam: float
    cv_sse: list[float]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.scale) @ self.weight + self.bias


def _solve_all(x: torch.Tensor, y: torch.Tensor, lambdas: list[float]) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                                torch.Tensor, torch.Tensor]:
    """Standardise x (n, p), centre y (n, k) and return ``W(λ)`` for every λ, with the mean, scale and bias."""
    mean, scale = x.mean(0), x.std(0, correction=0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant column carries nothing
    xs = (x - mean) / scale
    bias = y.mean(0)
    n = x.shape[0]
    evals, evecs = torch.linalg.eigh(xs.T @ xs / n)  # (p,), (p, p)
    evals = evals.clamp(min=0)
    rhs = evecs.T @ (xs.T @ (y - bias) / n)  # (p, k)
    floor = 1e-12 * max(float(evals.max()), 1e-300)
    weights = []
    for lam in lambdas:
        denom = evals + lam
        inverse = torch.where(denom > floor, 1.0 / denom, torch.zeros_like(denom))  # no weight along null directions
        weights.append(evecs @ (inverse[:, None] * rhs))
    return weights, mean, scale, bias


def fit_ridge(x: torch.Tensor, y: torch.Tensor, lambdas: list[float], folds: int) -> Ridge:
    """Ridge from ``x`` (N, T, p) to ``y`` (N, T, k), windows first, with λ among ``lambdas`` chosen by ``folds``-fold
    cross-validation over whole windows (module docstring)."""
    require(x.shape[:2] == y.shape[:2], f"probe regressors {tuple(x.shape)} and target {tuple(y.shape)} differ in windows")
    windows = x.shape[0]
    require(2 <= folds <= windows, f"ridge cross-validation needs 2 <= folds <= windows ({windows}), got {folds}")
    x, y = x.double(), y.double()
    fold_of = torch.arange(windows) * folds // windows  # contiguous blocks of whole windows
    sse = torch.zeros(len(lambdas), dtype=torch.float64)
    for f in range(folds):
        held = fold_of == f
        train_x, train_y = x[~held].flatten(0, 1), y[~held].flatten(0, 1)
        test_x, test_y = x[held].flatten(0, 1), y[held].flatten(0, 1)
        weights, mean, scale, bias = _solve_all(train_x, train_y, lambdas)
        xs = (test_x - mean) / scale
        for a, w in enumerate(weights):
            sse[a] += ((test_y - bias - xs @ w) ** 2).sum()
    best = int(torch.argmin(sse))  # the first (smallest, lambdas in the order given) of equal errors
    weights, mean, scale, bias = _solve_all(x.flatten(0, 1), y.flatten(0, 1), [lambdas[best]])
    return Ridge(weights[0], bias, mean, scale, float(lambdas[best]), sse.tolist())


def r_squared(y: torch.Tensor, prediction: torch.Tensor) -> float:
    """``1 - Σ (y - ŷ)² / Σ (y - ȳ)²`` pooled over tokens and dimensions, ȳ the per-dimension mean of ``y``."""
    y, prediction = y.double().flatten(0, -2), prediction.double().flatten(0, -2)
    sst = float(((y - y.mean(0)) ** 2).sum())
    return 1.0 - float(((y - prediction) ** 2).sum()) / sst if sst > 0 else float("nan")


def ridge_r2(x_fit: torch.Tensor, y_fit: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
             lambdas: list[float], folds: int) -> dict:
    """``{"r2", "lambda"}``: a ridge fitted (and its λ chosen) on the fit windows, R² on the test windows."""
    ridge = fit_ridge(x_fit, y_fit, sorted(lambdas), folds)
    return {"r2": r_squared(y_test, ridge.predict(x_test.flatten(0, 1))), "lambda": ridge.lam}


def layer_gains(layers_fit: dict[int, torch.Tensor], covariates_fit: torch.Tensor, target_fit: torch.Tensor,
                layers_test: dict[int, torch.Tensor], covariates_test: torch.Tensor, target_test: torch.Tensor,
                lambdas: list[float], folds: int) -> dict:
    """Per layer l: R²([h_l, c] -> r), the covariates-only R²(c -> r) and the gain, all (N, T, ·) windows first.

    Returns ``{"covariates": {"r2", "lambda"}, "layers": {l: {"r2", "lambda", "gain"}}}`` (layer keys as strings,
    JSON's)."""
    cov = ridge_r2(covariates_fit, target_fit, covariates_test, target_test, lambdas, folds)
    layers = {}
    for index in sorted(layers_fit):
        fit = torch.cat([layers_fit[index], covariates_fit], dim=-1)
        test = torch.cat([layers_test[index], covariates_test], dim=-1)
        probe = ridge_r2(fit, target_fit, test, target_test, lambdas, folds)
        layers[str(index)] = {**probe, "gain": probe["r2"] - cov["r2"]}
    return {"covariates": cov, "layers": layers}
