"""The fresh observer: its fit measures against their limit cases, and its training (a new model, seeded, leaving
the caller's generator alone, learning the map it is shown)."""

from __future__ import annotations

import torch

from closed_loop_tiny import FORWARD
from selfmodels.closed_loop.battery_config import ObserverSettings
from selfmodels.closed_loop.observer import observer_fit, predict, train_observer


def _residuals(seed=0, n=6, T=8, d=16):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, T, d, generator=g) for _ in range(3)]


def test_a_perfect_prediction_scores_one_and_predicting_h_m_scores_the_update_mean_share():
    source, middle, target = _residuals()
    perfect = observer_fit(target, source, middle, target)
    assert abs(perfect["update_r2"] - 1) < 1e-12 and abs(perfect["cosine"] - 1) < 1e-6 and perfect["mse"] == 0
    assert abs(perfect["delta_r2"] - 1) < 1e-12
    # predicting h_j by h_m predicts no update: R² = 1 - Σ||u||² / Σ||u - ū||² (0 when the update has mean zero)
    u = (target - middle).double().flatten(0, 1)
    stay = observer_fit(middle, source, middle, target)
    assert abs(stay["update_r2"] - (1 - float(u.pow(2).sum() / (u - u.mean(0)).pow(2).sum()))) < 1e-10
    # the skip: delta_r2 of predicting h_i is 0, and its cosine is the skip cosine
    skip = observer_fit(source, source, middle, target)
    assert abs(skip["delta_r2"]) < 1e-12 and abs(skip["cosine"] - skip["skip_cosine"]) < 1e-12
    # predicting the mean update on top of h_m: update_r2 exactly 0
    mean_update = middle + (target - middle).flatten(0, 1).mean(0)
    assert abs(observer_fit(mean_update, source, middle, target)["update_r2"]) < 1e-6


def test_the_observer_is_seeded_leaves_the_global_generator_and_learns_a_linear_map():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(64, 8, 16, generator=g)
    W = torch.randn(16, 16, generator=g) * 0.3
    target = source + source @ W.T  # a per-position map the observer's MLP can learn
    settings = ObserverSettings(model=FORWARD, steps=50, batch_size=8, lr=1e-2, train_windows=64)
    state = torch.get_rng_state()
    observer, info = train_observer(source, target, settings, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    again, _ = train_observer(source, target, settings, seed=5)
    for a, b in zip(observer.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    untrained = float((source - target).pow(2).mean())  # a fresh ForwardModel is the identity
    assert info["train_mse"] < 0.5 * untrained and info["params"] > 0
    fit = observer_fit(predict(observer, source, 16), source, source, target)
    assert fit["delta_r2"] > 0.5
    assert not any(p.requires_grad for p in observer.parameters()) and not observer.training
