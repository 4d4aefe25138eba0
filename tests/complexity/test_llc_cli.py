"""`selfmodels llc RUN_DIR` and `selfmodels llc calibrate RUN_DIR` on a run trained with the self-modeling
area's own code (tiny: H = 8, one epoch on the offline MNIST subset), and bad input (exit status 2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from selfmodels.artifacts import read_json, read_jsonl
from selfmodels.cli import main
from selfmodels.complexity.llc import LLCConfig, cross_entropy, estimate_llc
from selfmodels.errors import UserError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from selfmodels.selfmodeling.runs import load_data, resolve_run, run_one

    torch.set_num_threads(1)
    config = resolve_run("mnist", hidden=8, epochs=1, source="offline")
    out = tmp_path_factory.mktemp("llc") / "run"
    run_one(config, load_data(config.data), out, progress=False)
    return out


def test_llc_command_writes_json_and_plot(run_dir, capsys):
    assert main(["llc", str(run_dir), "--draws", "20", "--chains", "2", "--quiet"]) == 0
    record = read_json(run_dir / "llc.json")
    for key in ("llc_mean", "llc_std", "llc_flags", "llc_loss_at_wstar", "llc_per_chain", "llc_nbeta",
                "llc_trace_first_half_mean", "llc_trace_second_half_mean", "llc_lambda_regular_d_over_2"):
        assert key in record
    assert len(record["llc_loss_traces"]) == 2 and len(record["llc_loss_traces"][0]) == 20
    assert record["llc_config"]["epsilon"] == 1e-4 and record["llc_config"]["gamma"] == 100.0  # the paper's MNIST
    assert record["llc_nbeta"] == pytest.approx(512 / torch.log(torch.tensor(512.0)).item())
    assert "paper_llc" not in record  # the paper published no LLC for H = 8 (see the next test for H = 64)
    assert (run_dir / "llc_trace.png").stat().st_size > 0
    assert "LLC" in capsys.readouterr().out


def test_paper_value_travels_with_the_estimate():
    from selfmodels.selfmodeling.llc_commands import _paper_reference

    run = {"data": {"task": "mnist"}, "model": {"hidden": 64}, "method": "baseline", "strength": 0.0}
    assert _paper_reference(run)["paper_llc"] == 33


def test_llc_calibrate_writes_table_and_grid_and_resumes(run_dir):
    argv = ["llc", "calibrate", str(run_dir), "--epsilons", "1e-5", "1e-4", "--gammas", "100",
            "--draws", "10", "--chains", "2", "--quiet"]
    assert main(argv) == 0
    out = run_dir / "llc_calibration"
    cells = read_json(out / "calibration.json")
    assert [(c["epsilon"], c["gamma"]) for c in cells] == [(1e-5, 100.0), (1e-4, 100.0)]
    assert "| ε | γ |" in (out / "calibration.md").read_text()
    assert (out / "calibration.png").stat().st_size > 0
    assert main(argv) == 0  # a second run finds every cell done and recomputes nothing
    assert len(read_jsonl(out / "calibration.jsonl")) == 2


@pytest.mark.parametrize("argv, message", [
    (["--epsilon", "nan"], "epsilon must be a finite number"),
    (["--chains", "0"], "chains must be at least 1"),
    (["--gamma", "inf"], "gamma must be a finite number"),
    (["--nbeta", "-1"], "nbeta must be a finite number > 0"),
    (["--epsilons", "1e-4"], "belongs to `selfmodels llc calibrate"),
])
def test_bad_llc_flags_exit_2(run_dir, capsys, argv, message):
    assert main(["llc", str(run_dir), *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_calibrate_and_missing_run_exit_2(run_dir, tmp_path, capsys):
    assert main(["llc", "calibrate", str(run_dir), "--gammas", "10"]) == 2
    assert "needs --epsilons and --gammas" in capsys.readouterr().err
    assert main(["llc", "calibrate", str(run_dir), "--epsilons", "abc", "--gammas", "10"]) == 2
    assert "is not a number" in capsys.readouterr().err
    assert main(["llc", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_library_bad_input_raises_user_error():
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    model = nn.Linear(3, 2)
    frozen = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(UserError, match="no trainable parameters"):
        estimate_llc(frozen, (x, y), cross_entropy, LLCConfig(draws=2), progress=False)
    with pytest.raises(UserError, match="dataset is empty"):
        estimate_llc(model, (x[:0], y[:0]), cross_entropy, LLCConfig(draws=2), progress=False)
    with pytest.raises(UserError, match="loader is empty"):
        estimate_llc(model, DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4), cross_entropy,
                     LLCConfig(draws=2), progress=False)
    with pytest.raises(UserError, match="chains must be at least 1"):
        estimate_llc(model, (x, y), cross_entropy, LLCConfig(chains=0), progress=False)
    with pytest.raises(UserError, match="chain_groups must be between 0"):
        estimate_llc(model, (x, y), cross_entropy, LLCConfig(chains=2, chain_groups=3), progress=False)
    with pytest.raises(UserError, match="epsilon must be a finite number"):
        estimate_llc(model, (x, y), cross_entropy, LLCConfig(epsilon=float("nan")), progress=False)
    with pytest.raises(UserError, match="burn_in must be in"):
        estimate_llc(model, (x, y), cross_entropy, LLCConfig(draws=10, burn_in=10), progress=False)
