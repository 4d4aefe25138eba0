"""Flags: each rule of selfmodels.complexity.diagnostics on traces built to trigger it, and end to end."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from selfmodels.artifacts import read_json, write_json
from selfmodels.complexity.diagnostics import diagnose
from selfmodels.complexity.llc import LLCConfig, classifier_llc, cross_entropy, estimate_llc


def _flat(chains=4, draws=100, level=0.2, init=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return level + 0.01 * torch.randn(chains, draws, generator=g, dtype=torch.float64), init


def test_clean_traces_give_the_estimate_and_no_flags():
    traces, init = _flat()
    d = diagnose(traces, init, nbeta=10.0, burn_in=50, num_params=100)
    assert d.flags == []
    expected = 10.0 * (traces[:, 50:].mean(dim=1) - init)
    assert d.mean == pytest.approx(float(expected.mean()))
    assert d.std == pytest.approx(float(expected.std()))
    assert d.per_chain == pytest.approx(expected.tolist())
    assert d.diagnostics["fraction_below_init_loss"] == 0.0


def test_nonfinite_chain_is_flagged_and_left_out():
    traces, init = _flat()
    traces[2, 70] = float("nan")
    d = diagnose(traces, init, nbeta=10.0, burn_in=50, num_params=100)
    assert "nonfinite_chain_2" in d.flags
    assert d.diagnostics["valid_chains"] == [0, 1, 3]
    assert math.isfinite(d.mean)


def test_diverged_chain_exceeding_d_is_flagged():
    traces, init = _flat()
    traces[1] += 50.0  # nβ * 50 = 500 > d = 100
    d = diagnose(traces, init, nbeta=10.0, burn_in=50, num_params=100)
    assert d.flags == ["diverged_chain_1"]
    assert d.diagnostics["valid_chains"] == [0, 2, 3]


def test_all_chains_invalid_gives_null():
    traces, init = _flat()
    traces[:] = float("inf")
    d = diagnose(traces, init, nbeta=10.0, burn_in=50, num_params=100)
    assert "no_valid_chains" in d.flags and math.isnan(d.mean)


def test_draws_below_the_initial_loss_mean_not_at_minimum():
    traces, init = _flat(level=0.05, init=0.1)  # SGLD found lower loss than at w*
    d = diagnose(traces, init, nbeta=10.0, burn_in=50, num_params=100)
    assert "not_at_minimum" in d.flags
    assert math.isnan(d.mean) and math.isnan(d.std)  # not reported as a value...
    assert d.diagnostics["raw_mean"] < 0  # ...but kept for inspection
    assert d.diagnostics["fraction_below_init_loss"] == 1.0


def test_drifting_trace_is_not_converged():
    traces, init = _flat()
    traces += torch.linspace(0, 0.1, 100, dtype=torch.float64)  # still rising after burn-in
    d = diagnose(traces, init, nbeta=10.0, burn_in=50, num_params=100)
    assert "not_converged" in d.flags
    assert d.diagnostics["trace_second_half_mean"] > d.diagnostics["trace_first_half_mean"]
    tolerant = diagnose(traces, init, nbeta=10.0, burn_in=50, num_params=100, convergence_tolerance=1.0)
    assert "not_converged" not in tolerant.flags


def test_untrained_classifier_is_flagged_not_at_minimum():
    """w* = random initial weights: SGLD descends, most draws fall below L(w*): flagged, value null."""
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x[:, :2].sum(dim=1) > 0).long()
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    config = LLCConfig(epsilon=1e-3, gamma=1.0, nbeta=500.0, chains=2, draws=100, batch_size=64, seed=0)
    record = classifier_llc(model, (x, y), config)
    assert "not_at_minimum" in record["llc_flags"]
    assert record["llc_mean"] != record["llc_mean"]  # NaN in memory...
    assert record["llc_raw_mean"] < 0


def test_summary_is_json_ready_and_null_when_flagged(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    model = nn.Linear(3, 2)
    result = estimate_llc(model, (x, y), cross_entropy, LLCConfig(epsilon=1e-3, gamma=1.0, chains=2, draws=30,
                                                                   batch_size=32), progress=False)
    summary = result.summary()
    for key in ("llc_mean", "llc_std", "llc_flags", "llc_loss_at_wstar", "llc_per_chain",
                "llc_trace_first_half_mean", "llc_trace_second_half_mean", "llc_config"):
        assert key in summary
    write_json(tmp_path / "r.json", summary)
    back = read_json(tmp_path / "r.json")
    assert isinstance(back["llc_flags"], list) and all(isinstance(f, str) for f in back["llc_flags"])
    if "not_at_minimum" in back["llc_flags"]:
        assert back["llc_mean"] is None  # ...and null in JSON
    assert len(summary["llc_trace_windows"]) == 10
