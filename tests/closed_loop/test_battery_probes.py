"""Ridge probes against known answers: a linear target's analytic R², no gain over covariates that already explain the
target, a small penalty on noiseless data, and the closed form itself."""

from __future__ import annotations

import pytest
import torch

from selfmodels.closed_loop.probes import fit_ridge, layer_gains, r_squared, ridge_r2
from selfmodels.errors import UserError

LAMBDAS = [1e-6, 1e-4, 1e-2, 1.0, 100.0]


def _gaussian(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_a_linear_target_with_known_noise_recovers_its_analytic_r2():
    # y = A x + e, x ~ N(0, I_p), e ~ N(0, s² I_k): pooled R² = tr(A Aᵀ) / (tr(A Aᵀ) + k s²)
    g = torch.Generator().manual_seed(0)
    windows, T, p, k, s = 200, 16, 6, 3, 0.7
    A = _gaussian(g, k, p) * 0.5
    analytic = float((A @ A.T).trace() / ((A @ A.T).trace() + k * s**2))
    x_fit, x_test = _gaussian(g, windows, T, p), _gaussian(g, windows, T, p)
    y_fit = x_fit @ A.T + s * _gaussian(g, windows, T, k)
    y_test = x_test @ A.T + s * _gaussian(g, windows, T, k)
    got = ridge_r2(x_fit, y_fit, x_test, y_test, LAMBDAS, folds=4)
    assert abs(got["r2"] - analytic) < 0.01, (got, analytic)


def test_a_target_linear_in_the_covariates_gains_nothing_from_any_layer():
    g = torch.Generator().manual_seed(1)
    windows, T, d, c = 120, 16, 5, 4

    def sample():
        cov = _gaussian(g, windows, T, c)
        layer = _gaussian(g, windows, T, d)  # independent of the target
        mixed = layer + cov[..., :1]  # a layer that also carries a covariate: still nothing new about the target
        target = cov @ _fixed + 0.5 * _gaussian(g, windows, T, 3)
        return {0: layer, 1: mixed}, cov, target

    _fixed = _gaussian(torch.Generator().manual_seed(2), c, 3)
    fit, test = sample(), sample()
    out = layer_gains(fit[0], fit[1], fit[2], test[0], test[1], test[2], LAMBDAS, folds=4)
    assert out["covariates"]["r2"] > 0.5  # the covariates explain the target ...
    for layer in ("0", "1"):
        assert abs(out["layers"][layer]["gain"]) < 0.01, out  # ... and no layer adds anything


def test_a_layer_holding_the_target_beyond_the_covariates_gains_its_share():
    # target = B c + a·z + e with z in the layer only: the layer's gain is the part of the variance z explains
    g = torch.Generator().manual_seed(3)
    windows, T = 400, 16  # 6,400 test tokens: the sample R² scatters by about 0.01 around the population value
    B, a, s = torch.tensor([[1.0], [0.5]], dtype=torch.float64), 1.0, 0.5

    def sample():
        cov, z = _gaussian(g, windows, T, 2), _gaussian(g, windows, T, 1)
        return {0: z}, cov, cov @ B + a * z + s * _gaussian(g, windows, T, 1)

    fit, test = sample(), sample()
    total = float(B.pow(2).sum()) + a**2 + s**2
    out = layer_gains(fit[0], fit[1], fit[2], test[0], test[1], test[2], LAMBDAS, folds=4)
    assert abs(out["covariates"]["r2"] - float(B.pow(2).sum()) / total) < 0.03
    assert abs(out["layers"]["0"]["gain"] - a**2 / total) < 0.03


def test_noiseless_data_choose_the_smallest_penalty_and_fit_exactly():
    g = torch.Generator().manual_seed(4)
    x = _gaussian(g, 40, 8, 5)
    W = _gaussian(g, 5, 2)
    y = x @ W + 3.0
    ridge = fit_ridge(x, y, LAMBDAS, folds=4)
    assert ridge.lam == min(LAMBDAS)
    assert r_squared(y, ridge.predict(x.flatten(0, 1)).view_as(y)) > 1 - 1e-6
    assert ridge_r2(x, y, x, y, list(reversed(LAMBDAS)), folds=4)["lambda"] == min(LAMBDAS)  # order given is irrelevant


def test_the_closed_form_is_the_normal_equations_and_duplicate_columns_are_harmless():
    g = torch.Generator().manual_seed(5)
    x, y = _gaussian(g, 30, 4, 3), _gaussian(g, 30, 4, 2)
    lam = 0.3
    ridge = fit_ridge(x, y, [lam], folds=3)
    flat_x, flat_y = x.flatten(0, 1), y.flatten(0, 1)
    xs = (flat_x - flat_x.mean(0)) / flat_x.std(0, correction=0)
    n = flat_x.shape[0]
    expected = torch.linalg.solve(xs.T @ xs / n + lam * torch.eye(3, dtype=torch.float64), xs.T @ (flat_y - flat_y.mean(0)) / n)
    torch.testing.assert_close(ridge.weight, expected, rtol=1e-10, atol=1e-12)
    # h_l = h_i: a singular Gram matrix; the weight splits evenly over the copies, so penalty λ on [x, x] is λ / 2 on x
    twice = fit_ridge(torch.cat([x, x], dim=-1), y, [1e-2], folds=3)
    assert torch.isfinite(twice.weight).all()
    torch.testing.assert_close(twice.predict(torch.cat([x, x], -1).flatten(0, 1)),
                               fit_ridge(x, y, [5e-3], folds=3).predict(flat_x), rtol=1e-8, atol=1e-10)


def test_r_squared_of_the_mean_is_zero_and_bad_shapes_are_refused():
    y = torch.randn(50, 3, dtype=torch.float64)
    assert abs(r_squared(y, y.mean(0).expand_as(y))) < 1e-12
    assert r_squared(y, y) == 1.0
    with pytest.raises(UserError, match="folds"):
        fit_ridge(torch.randn(3, 4, 2), torch.randn(3, 4, 1), LAMBDAS, folds=5)
    with pytest.raises(UserError, match="differ in windows"):
        fit_ridge(torch.randn(3, 4, 2), torch.randn(2, 4, 1), LAMBDAS, folds=2)
