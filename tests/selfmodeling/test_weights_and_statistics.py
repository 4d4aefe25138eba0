"""Weight statistics, trend statistics and the per-condition summary against hand-computed values."""

import math

import numpy as np
import pytest
import torch
from scipy import stats as st
from torch import nn

from selfmodels.complexity.weights import classification_weight_sd, identity_distance, relative_identity_distance
from selfmodels.selfmodeling.grid import summarize
from selfmodels.selfmodeling.statistics import trends
from selfmodels.stats import direction, linear_trend, welch_difference
from selfmodels.selfmodeling.wrapper import SplitHead


def test_weight_sd_uses_only_the_classification_rows():
    classify = nn.Linear(4, 2)
    rows = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    with torch.no_grad():
        classify.weight.copy_(rows)
    head = SplitHead(classify, 6, torch.Generator().manual_seed(0))
    with torch.no_grad():
        head.predict.weight.fill_(1000.0)  # would dominate any statistic that included it
    expected = np.std(np.arange(1, 9), ddof=1)
    assert classification_weight_sd(head, 2) == pytest.approx(expected)
    assert classification_weight_sd(head.weight, 2) == pytest.approx(expected)
    assert classification_weight_sd(classify, 2) == pytest.approx(expected)
    with pytest.raises(ValueError):
        classification_weight_sd(classify, 3)


def test_identity_distance_limit_cases():
    assert identity_distance(torch.eye(5)) == 0.0
    assert identity_distance(torch.zeros(4, 4)) == pytest.approx(2.0)  # ||I_4||_F = sqrt(4)
    assert relative_identity_distance(torch.zeros(9, 9)) == pytest.approx(1.0)
    assert identity_distance(2 * torch.eye(3)) == pytest.approx(math.sqrt(3))
    with pytest.raises(ValueError):
        identity_distance(torch.zeros(2, 3))


def test_linear_trend_is_exact_on_a_line_and_matches_scipy():
    fit = linear_trend([0, 1, 2, 3], [1.0, 0.8, 0.6, 0.4])
    assert fit["slope"] == pytest.approx(-0.2) and fit["ci95_high"] == pytest.approx(-0.2)
    rng = np.random.default_rng(0)
    x = np.repeat([0.0, 1.0, 10.0], 4)
    y = 0.3 - 0.01 * x + rng.normal(0, 0.02, x.size)
    fit = linear_trend(x, y)
    ref = st.linregress(x, y)
    half = st.t.ppf(0.975, x.size - 2) * ref.stderr
    assert fit["slope"] == pytest.approx(ref.slope)
    assert fit["ci95_low"] == pytest.approx(ref.slope - half) and fit["ci95_high"] == pytest.approx(ref.slope + half)
    assert math.isnan(linear_trend([1, 1, 1], [1, 2, 3])["slope"])  # no spread in strength


def test_welch_difference_matches_scipy():
    a, b = [0.20, 0.22, 0.25, 0.21], [0.30, 0.26, 0.33]
    d = welch_difference(a, b)
    ci = st.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert d["ci95_low"] == pytest.approx(ci.low) and d["ci95_high"] == pytest.approx(ci.high)
    assert math.isnan(welch_difference([1.0], [1.0, 2.0])["ci95_low"])


def test_direction_needs_the_whole_interval_on_one_side():
    assert direction(-2, -1) == "falls" and direction(1, 2) == "rises" and direction(-1, 1) == "no clear trend"
    assert direction(float("nan"), float("nan")) == "not estimable"


def _record(method, strength, seed, acc, sd):
    return {"task": "mnist", "hidden": 8, "method": method, "strength": strength, "seed": seed, "num_classes": 10,
            "test_accuracy": acc, "val_accuracy": acc, "weight_sd": sd, "identity_distance": None, "train_ce": 0.1}


def test_summary_and_trends_on_hand_made_records():
    records = [_record("baseline", 0.0, s, 0.9, 0.30 + 0.01 * s) for s in range(3)]
    records += [_record("self-model", 10.0, s, 0.9, 0.20 + 0.01 * s) for s in range(3)]
    records += [_record("self-model", 20.0, s, 0.9, 0.15 + 0.01 * s) for s in range(3)]
    records += [_record("self-model", 50.0, s, 0.11, 0.90 + 0.01 * s) for s in range(3)]
    summary = summarize(records)
    base = summary[0]
    assert (base["method"], base["n"]) == ("baseline", 3)
    assert base["weight_sd_mean"] == pytest.approx(0.31)
    assert base["weight_sd_ci95"] == pytest.approx(st.t.ppf(0.975, 2) * 0.01 / math.sqrt(3))
    assert base["paper_weight_sd"] is None  # the paper has no H = 8
    assert "llc_mean" not in base
    sd_trend = next(t for t in trends(records) if t["measure"] == "weight_sd")
    # The collapsed strength (SD 0.9) is left out of the slope: 0.30 -> 0.20 -> 0.15 falls.
    assert sd_trend["direction"] == "falls" and sd_trend["n"] == 9
    assert sd_trend["differences"][0]["difference"] == pytest.approx(-0.10)
    assert sd_trend["collapsed"] == [50.0]  # 0.11 is nearer chance (0.1) than the baseline's 0.9
