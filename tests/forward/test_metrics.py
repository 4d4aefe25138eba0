"""Metric definitions against hand-computed and limit cases."""

import math

import pytest
import torch

from selfmodels.forward import metrics


def test_recovery_hand_made_case():
    # KL_sub = [0.1, 0.3] (mean 0.2), KL_skip = [0.6, 1.0] (mean 0.8): recovery = 1 - 0.2/0.8 = 0.75.
    sub, skip = torch.tensor([0.1, 0.3]), torch.tensor([0.6, 1.0])
    assert metrics.recovery(sub.mean().item(), skip.mean().item()) == pytest.approx(0.75)
    # A ratio of means, not a mean of per-token ratios (which would be 1 - (1/6 + 3/10)/2 = 0.7667).
    assert metrics.recovery(0.2, 0.8) != pytest.approx(1 - (0.1 / 0.6 + 0.3 / 1.0) / 2)
    assert metrics.recovery(0.0, 0.0) == 1.0
    assert math.isnan(metrics.recovery(0.1, 0.0))
    assert metrics.recovery(0.9, 0.3) == pytest.approx(-2.0)  # worse than skipping is negative


def test_kl_per_token_matches_hand_computation():
    p = torch.tensor([0.5, 0.25, 0.25])
    q = torch.tensor([0.25, 0.25, 0.5])
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    kl = metrics.kl_per_token(p.log()[None], q.log()[None])
    assert kl.shape == (1,)
    assert kl.item() == pytest.approx(expected, abs=1e-6)
    assert metrics.kl_per_token(p.log()[None], p.log()[None] + 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_regression_metrics_limit_cases():
    torch.manual_seed(0)
    source = torch.randn(2, 5, 8)
    target = source + torch.randn(2, 5, 8)
    # Perfect prediction.
    assert metrics.token_cosine(target, target) == pytest.approx(1.0)
    assert metrics.mse(target, target) == 0.0
    assert metrics.delta_cosine(target, source, target) == pytest.approx(1.0)
    assert metrics.delta_r2(target, source, target) == pytest.approx(1.0)
    # Copying the source explains none of the update.
    assert metrics.delta_r2(source, source, target) == pytest.approx(0.0)
    assert metrics.skip_cosine(source, target) == pytest.approx(metrics.token_cosine(source, target))
    # Hand case: pred = source + half the update -> R² = 1 - 1/4.
    half = source + 0.5 * (target - source)
    assert metrics.delta_r2(half, source, target) == pytest.approx(0.75)
    assert metrics.delta_cosine(half, source, target) == pytest.approx(1.0)
    # Opposite vectors.
    assert metrics.token_cosine(-target, target) == pytest.approx(-1.0)


def test_totals_over_batches_equal_one_batch():
    torch.manual_seed(1)
    pred, source, target = torch.randn(3, 4, 6, 8).unbind(0)
    whole = metrics.RegressionTotals()
    whole.add(pred, source, target)
    parts = metrics.RegressionTotals()
    parts.add(pred[:1], source[:1], target[:1])
    parts.add(pred[1:], source[1:], target[1:])
    a, b = whole.result(), parts.result()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-6)
    assert a["cosine"] == pytest.approx(metrics.token_cosine(pred, target), rel=1e-6)
    assert a["mse"] == pytest.approx(metrics.mse(pred, target), rel=1e-6)
    assert a["skip_cosine"] == pytest.approx(metrics.skip_cosine(source, target), rel=1e-6)
    assert a["delta_cosine"] == pytest.approx(metrics.delta_cosine(pred, source, target), rel=1e-6)
    assert a["delta_r2"] == pytest.approx(metrics.delta_r2(pred, source, target), rel=1e-6)
