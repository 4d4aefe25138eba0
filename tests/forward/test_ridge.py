"""The closed-form ridge baseline: exact recovery, batching, the numpy reference, its limits, its errors."""

import numpy as np
import pytest
import torch

from selfmodels.errors import UserError
from selfmodels.forward.ridge import RidgeMap

D = 6


def _data(n=400, d=D, seed=0, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(n, d, generator=g, dtype=torch.float64) + 3.0  # off-centre, as residual streams are
    w = torch.randn(d, d, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    y = x @ w + b + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, y, w, b


def _numpy_ridge(x: np.ndarray, y: np.ndarray, ridge: float):
    """Independent reference: least squares on [X 1] with sqrt(n λ) I rows appended for W only (bias unpenalised),
    λ = ridge · (sum of the source's per-coordinate population variances) / d."""
    n, d = x.shape
    lam = ridge * x.var(axis=0).sum() / d
    xa = np.hstack([x, np.ones((n, 1))])  # (n, d+1)
    penalty = np.hstack([np.sqrt(n * lam) * np.eye(d), np.zeros((d, 1))])  # (d, d+1)
    theta, *_ = np.linalg.lstsq(np.vstack([xa, penalty]), np.vstack([y, np.zeros((d, y.shape[1]))]), rcond=None)
    return theta[:d], theta[d]


def test_recovers_a_noise_free_affine_map_exactly():
    x, y, w, b = _data()
    ridge = RidgeMap(D, ridge=1e-9)
    ridge.accumulate(x.view(20, 20, D).float(), y.view(20, 20, D).float())  # (B, T, d), float32 in
    ridge.fit()
    assert ridge.weight.dtype == torch.float32 and ridge.bias.dtype == torch.float32
    # float32 inputs carry ~1e-7 relative error; the map itself is recovered to that precision.
    ridge64 = RidgeMap(D, ridge=1e-9)
    ridge64.accumulate(x, y)
    ridge64.fit()
    torch.testing.assert_close(ridge64.weight.double(), w, atol=1e-6, rtol=0)
    torch.testing.assert_close(ridge64.bias.double(), b, atol=1e-6, rtol=0)
    torch.testing.assert_close(ridge.weight.double(), w, atol=1e-4, rtol=0)
    out = ridge64(x.view(4, 100, D))
    assert out.shape == (4, 100, D) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), y.view(4, 100, D), atol=1e-5, rtol=1e-6)


def test_many_batches_equal_one_batch():
    x, y, _, _ = _data(noise=0.5)
    one, many = RidgeMap(D, ridge=1e-2), RidgeMap(D, ridge=1e-2)
    one.accumulate(x, y)
    for xs, ys in zip(x.split(37), y.split(37)):  # uneven batches
        many.accumulate(xs.unsqueeze(0), ys.unsqueeze(0))
    assert many.tokens == one.tokens == len(x)
    for key, value in one.statistics().items():
        torch.testing.assert_close(many.statistics()[key], value, rtol=1e-12, atol=1e-9)
    one.fit(), many.fit()
    torch.testing.assert_close(many.weight, one.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(many.bias, one.bias, rtol=1e-6, atol=1e-7)


def test_statistics_add_up_across_processes():
    x, y, _, _ = _data(noise=0.5)
    whole, parts = RidgeMap(D), RidgeMap(D)
    whole.accumulate(x, y)
    ranks = [RidgeMap(D) for _ in range(3)]
    for rank, xs, ys in zip(ranks, x.chunk(3), y.chunk(3)):
        rank.accumulate(xs, ys)
    empty = RidgeMap(D).statistics()  # a rank that saw nothing contributes zeros
    summed = {k: sum(r.statistics()[k] for r in ranks) + empty[k] for k in empty}  # what an all-reduce gives
    parts.add_statistics(summed)
    whole.fit(), parts.fit()
    torch.testing.assert_close(parts.weight, whole.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(parts.bias, whole.bias, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ridge", [1e-3, 0.3])
def test_matches_numpy_least_squares_with_the_same_lambda(ridge):
    x, y, _, _ = _data(n=300, noise=1.0, seed=2)
    model = RidgeMap(D, ridge=ridge)
    model.accumulate(x, y)
    model.fit()
    w_ref, b_ref = _numpy_ridge(x.numpy(), y.numpy(), ridge)
    np.testing.assert_allclose(model.weight.numpy(), w_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.bias.numpy(), b_ref, rtol=1e-5, atol=1e-5)
    assert model.last_lambda == pytest.approx(ridge * x.numpy().var(axis=0).sum() / D, rel=1e-9)


def test_the_penalty_is_scale_free():
    x, y, _, _ = _data(noise=1.0, seed=3)
    a, b = RidgeMap(D, ridge=0.1), RidgeMap(D, ridge=0.1)
    a.accumulate(x, y)
    b.accumulate(1000.0 * x, y)
    a.fit(), b.fit()
    torch.testing.assert_close(b(1000.0 * x), a(x), rtol=1e-4, atol=1e-4)


def test_infinite_ridge_gives_the_mean_map():
    x, y, _, _ = _data(noise=0.5)
    model = RidgeMap(D, ridge=1e12)
    model.accumulate(x, y)
    model.fit()
    assert model.weight.abs().max() < 1e-9
    torch.testing.assert_close(model.bias.double(), y.mean(0), rtol=1e-6, atol=1e-6)


def test_identity_target_recovers_the_identity():
    x, _, _, _ = _data()
    model = RidgeMap(D, ridge=1e-9)
    model.accumulate(x, x)
    model.fit()
    torch.testing.assert_close(model.weight, torch.eye(D), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.bias, torch.zeros(D), atol=1e-6, rtol=0)


def test_constant_source_and_singular_covariance_still_fit():
    model = RidgeMap(D, ridge=1e-3)
    model.accumulate(torch.ones(5, D), torch.arange(5 * D, dtype=torch.float32).view(5, D))
    model.fit()  # no variance in the source: the mean map
    assert torch.equal(model.weight, torch.zeros(D, D))
    ols = RidgeMap(D, ridge=0.0)  # ridge 0 with 3 tokens in 6 dimensions: singular, minimum-norm solution
    x, y, _, _ = _data(n=3)
    ols.accumulate(x, y)
    ols.fit()
    torch.testing.assert_close(ols(x).double(), y, atol=1e-4, rtol=1e-5)


def test_state_dict_round_trips():
    x, y, _, _ = _data(noise=0.5)
    model = RidgeMap(D)
    model.accumulate(x, y)
    model.fit()
    loaded = RidgeMap(D)
    loaded.load_state_dict(model.state_dict())
    assert set(model.state_dict()) == {"weight", "bias", "fitted"}
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded(x.half()).dtype == torch.float32  # any float dtype in


def test_user_errors():
    with pytest.raises(UserError, match="no data"):
        RidgeMap(D).fit()
    with pytest.raises(UserError, match="not fitted"):
        RidgeMap(D)(torch.zeros(2, D))
    model = RidgeMap(D)
    with pytest.raises(UserError, match="width 6"):
        model.accumulate(torch.zeros(2, 3, D + 1), torch.zeros(2, 3, D + 1))
    with pytest.raises(UserError, match="same shape"):
        model.accumulate(torch.zeros(2, 3, D), torch.zeros(2, 4, D))
    with pytest.raises(UserError, match="shape"):
        model.add_statistics({k: v[..., :2] if v.ndim else v for k, v in RidgeMap(D).statistics().items()})
    with pytest.raises(UserError, match="missing"):
        model.add_statistics({"n": torch.tensor(1.0)})
    model.accumulate(*_data()[:2])
    model.fit()
    with pytest.raises(UserError, match="width 6"):
        model(torch.zeros(2, D - 1))
    with pytest.raises(UserError):
        RidgeMap(0)
    with pytest.raises(UserError):
        RidgeMap(D, ridge=-1.0)
