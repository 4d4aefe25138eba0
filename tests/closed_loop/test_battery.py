"""The whole battery on a tiny loop: one JSON-able dict with its definitions, the loop left as it was, open loop's
"off" the same computation as "on", and bad settings refused with one message."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from closed_loop_tiny import FORWARD, SEQ, tiny_loop, token_stream, wake
from selfmodels.closed_loop.battery import DEFINITIONS, held_out_parts, measure_battery
from selfmodels.closed_loop.battery_config import BatteryConfig, ObserverSettings, ProbeSettings, RobustnessSettings
from selfmodels.closed_loop.data import LoopData
from selfmodels.complexity.config import LLCConfig
from selfmodels.errors import UserError


def tiny_data() -> LoopData:
    stream = token_stream(6000)
    train, held = stream[:4000], stream[4000:]
    x = held[1000:1000 + 4 * SEQ].view(4, SEQ)
    return LoopData(None, train, held, x, held[1001:1001 + 4 * SEQ].view(4, SEQ), 4 * SEQ, {})


def tiny_settings(**changes) -> BatteryConfig:
    base = BatteryConfig(observer=ObserverSettings(model=FORWARD, steps=5, batch_size=4, train_windows=16),
                         probes=ProbeSettings(windows=8, folds=2), robustness=RobustnessSettings(directions=4, windows=2),
                         llc=LLCConfig(chains=1, draws=4, batch_size=4, init_loss_batches=1, batched="sequential"),
                         llc_windows=8, norm_windows=4, batch_size=8)
    return dataclasses.replace(base, **changes)


def test_the_battery_returns_every_part_as_json_and_leaves_the_loop_alone():
    closed = wake(tiny_loop("forward"))
    closed.train()
    before = {k: v.clone() for k, v in closed.state_dict().items()}
    flags = {k: p.requires_grad for k, p in closed.named_parameters()}
    state = torch.get_rng_state()
    out = measure_battery(closed, tiny_data(), tiny_settings())
    assert torch.equal(torch.get_rng_state(), state)
    assert closed.training and {k: p.requires_grad for k, p in closed.named_parameters()} == flags
    for k, v in closed.state_dict().items():
        assert torch.equal(v, before[k]), k
    text = json.dumps(out)  # JSON-able as it stands
    assert json.loads(text)["definitions"] == DEFINITIONS
    assert set(out) >= {"observer", "probes", "robustness", "llc", "weights", "norms", "windows", "seconds", "settings"}
    for mode in ("on", "off"):
        assert {"cosine", "skip_cosine", "update_r2", "delta_r2", "mse", "train_mse"} <= set(out["observer"][mode])
        layers = out["probes"][mode]["layers"]
        assert sorted(layers, key=int) == ["-1", "0", "1", "2"]
        assert layers["2"]["r2"] > 0.99  # h_j and O(h_i) give r = h_j - O(h_i) exactly
    assert out["probes"]["on"]["covariates_used"] == ["h_i", "O(h_i)", "G(u)"]
    assert out["probes"]["off"]["covariates_used"] == ["h_i", "O(h_i)"]
    assert set(out["robustness"]["sites"]) == {"inject", "source"}
    assert set(out["robustness"]["sites"]["inject"]) == {"0.1", "0.3", "1.0"}
    assert out["llc"]["llc_sampled_params"] > 0 and len(out["norms"]["resid_norm"]) == 4
    assert out["windows"]["observer"] == 16 and out["windows"]["probe_fit"] == 8


def test_open_loop_measures_off_as_a_copy_of_on_and_the_llc_can_be_skipped():
    out = measure_battery(tiny_loop("open-loop"), tiny_data(), tiny_settings(estimate_llc=False))
    assert out["observer"]["off"]["same_as_on"] and out["probes"]["off"]["same_as_on"]
    assert out["observer"]["off"]["cosine"] == out["observer"]["on"]["cosine"]
    assert out["probes"]["on"]["covariates_used"] == ["h_i", "O(h_i)"]
    assert "llc_skipped" in out["llc"]


def test_the_held_out_parts_are_the_half_and_the_quarters():
    parts = held_out_parts(torch.arange(10))
    assert parts["first_half"].tolist() == [0, 1, 2, 3, 4]
    assert parts["third_quarter"].tolist() == [5, 6] and parts["fourth_quarter"].tolist() == [7, 8, 9]


@pytest.mark.parametrize("changes,message", [
    ({"observer": ObserverSettings(steps=0)}, "--steps"),
    ({"probes": ProbeSettings(windows=4, folds=5)}, "--folds"),
    ({"probes": ProbeSettings(lambdas=[])}, "--lambdas"),
    ({"robustness": RobustnessSettings(radii=[0.1, -1.0])}, "radii"),
    ({"robustness": RobustnessSettings(directions=0)}, "directions"),
    ({"llc": LLCConfig(chains=0)}, "chains"),
    ({"norm_windows": 0}, "--norm-windows"),
])
def test_bad_settings_are_one_clear_message(changes, message):
    with pytest.raises(UserError, match=message):
        dataclasses.replace(BatteryConfig(), **changes).validate()


def test_nested_in_a_run_config_the_message_names_the_flag_a_user_types():
    from selfmodels.configs import validate

    with pytest.raises(UserError, match=r"--battery\.probes\.folds must be between 2"):
        validate(dataclasses.replace(BatteryConfig(), probes=ProbeSettings(folds=1)), "battery.")


def test_the_settings_import_no_torch():
    code = "import sys; import selfmodels.closed_loop.battery_config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
