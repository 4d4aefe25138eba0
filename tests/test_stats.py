"""The one statistics module against scipy's own tests and against limit cases."""

import math

import numpy as np
import pytest
from scipy import stats as st

from selfmodels.stats import direction, paired_difference, welch_difference


def test_paired_difference_matches_scipy_paired_t_interval():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 1.0, 6)
    b = a - 0.3 + rng.normal(0, 0.1, 6)
    got = paired_difference(dict(enumerate(a)), dict(enumerate(b)))
    test = st.ttest_rel(a, b)
    low, high = test.confidence_interval(0.95)
    assert got["n"] == 6
    assert got["difference"] == pytest.approx(float(np.mean(a - b)))
    assert (got["ci95_low"], got["ci95_high"]) == pytest.approx((low, high))


def test_paired_difference_removes_the_shared_seed_variance():
    # b is a plus a constant: the paired interval has zero width, while Welch's (which ignores the pairing) does not.
    a = {0: 1.0, 1: 5.0, 2: -3.0}
    b = {s: v + 0.5 for s, v in a.items()}
    paired = paired_difference(a, b)
    assert paired["difference"] == pytest.approx(-0.5)
    assert paired["ci95_high"] - paired["ci95_low"] == pytest.approx(0.0, abs=1e-12)
    welch = welch_difference(list(a.values()), list(b.values()))
    assert welch["ci95_high"] - welch["ci95_low"] > 5


def test_paired_difference_uses_only_shared_finite_seeds():
    a = {0: 1.0, 1: 2.0, 2: float("nan"), 3: 4.0}
    b = {0: 0.0, 1: 1.0, 2: 0.0, 5: 9.0}
    got = paired_difference(a, b)
    assert got["n"] == 2 and got["difference"] == pytest.approx(1.0)
    one = paired_difference({0: 1.0}, {0: 0.5})
    assert one["n"] == 1 and one["difference"] == 0.5 and math.isnan(one["ci95_low"])
    assert paired_difference({}, {})["n"] == 0


def test_direction_reads_the_interval():
    assert direction(-2.0, -1.0) == "falls"
    assert direction(1.0, 2.0) == "rises"
    assert direction(-1.0, 1.0) == "no clear trend"
    assert direction(-1.0, 1.0, unclear="no clear change") == "no clear change"
    assert direction(float("nan"), float("nan")) == "not estimable"
    assert direction(None, 1.0) == "not estimable"
