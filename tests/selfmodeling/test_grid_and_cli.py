"""The regularize grid (resumable, results.json schema, report) and the CLI's bad-input handling."""

import json

import pytest

from selfmodels import cli
from selfmodels.selfmodeling import runs as runs_module
from selfmodels.selfmodeling.grid import GridConfig, expand, run_and_report, run_grid

SMALL = dict(task="mnist", hidden=[5], strengths=[1.0, 0.0], seeds=[0, 1], epochs=2, batch_size=32)


def test_expand_makes_one_baseline_per_seed_and_every_method_at_every_positive_strength():
    configs = expand(GridConfig(**SMALL))
    names = [c.name for c in configs]
    assert len(names) == len(set(names)) == 2 * (1 + 3)
    assert sum(c.method == "baseline" for c in configs) == 2
    assert {c.strength for c in configs if c.method != "baseline"} == {1.0}
    assert configs[0].optim.lr == 0.005 and configs[0].optim.nesterov  # the paper's MNIST optimiser


def test_weight_decay_can_have_its_own_strengths_and_both_reproductions_give_it_them():
    from selfmodels.selfmodeling.commands import quick_grid

    configs = expand(GridConfig(**SMALL, weight_decay_strengths=[1e-3, 1e-2]))
    by_method = {m: sorted({c.strength for c in configs if c.method == m}) for m in ("self-model", "activation-l2", "weight-decay")}
    assert by_method == {"self-model": [1.0], "activation-l2": [1.0], "weight-decay": [1e-3, 1e-2]}
    quick = expand(quick_grid())
    assert len(quick) == 60
    assert sorted({c.strength for c in quick if c.method == "weight-decay"}) == [1e-4, 1e-3, 1e-2]
    assert sorted({c.strength for c in quick if c.method == "self-model"}) == [1.0, 10.0, 50.0]
    with pytest.raises(Exception, match="finite and non-negative"):
        GridConfig(**SMALL, weight_decay_strengths=[-1.0]).validate()


def test_grid_writes_results_report_and_plots_and_skips_finished_runs(tiny_data, tmp_path, file_states):
    results = run_and_report(GridConfig(**SMALL), tmp_path, progress=False, data=tiny_data)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["runs"] == results["runs"] and len(on_disk["runs"]) == 8
    for run in on_disk["runs"]:
        assert {"task", "hidden", "method", "strength", "seed", "test_accuracy", "weight_sd"} <= set(run)
        assert run["method"] in ("baseline", "self-model", "activation-l2", "weight-decay")
    assert len(on_disk["summary"]) == 4
    for row in on_disk["summary"]:
        assert {"n", "accuracy_mean", "accuracy_ci95", "weight_sd_mean", "weight_sd_ci95"} <= set(row)
        assert row["n"] == 2
    assert {t["measure"] for t in on_disk["trends"]} == {"weight_sd", "test_accuracy"}
    report = (tmp_path / "report.md").read_text()
    assert "LLC not computed" in report and "weight SD" in report and "paper" in report
    for png in ("weight_sd_vs_strength.png", "accuracy_vs_strength.png", "training_curves_h5.png", "identity_distance.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"

    # A second call trains nothing (writes no file of any run) and gives the same results.
    before = file_states(tmp_path / "runs")
    assert run_grid(GridConfig(**SMALL), tmp_path, progress=False, data=tiny_data) == results["runs"]
    assert file_states(tmp_path / "runs") == before


def test_an_interrupted_grid_resumes_where_it_stopped(tiny_data, tmp_path):
    config = expand(GridConfig(**SMALL))[1]
    runs_module.run_one(config, tiny_data, tmp_path / "runs" / config.name, progress=False, stop_after=1)
    resumed = run_grid(GridConfig(**SMALL), tmp_path, progress=False, data=tiny_data)
    fresh = run_grid(GridConfig(**SMALL), tmp_path / "fresh", progress=False, data=tiny_data)
    assert resumed == fresh


def _main(argv, capsys):
    try:
        status = cli.main(argv)
    except SystemExit as exc:  # argparse rejects bad choices itself, also with status 2
        status = exc.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "chess"], "unknown task 'chess'"),
        (["--strengths", "-1"], "non-negative"),
        (["--methods", "magic"], "invalid choice"),
        (["--targets", "nope"], "unknown target module.*hidden_act"),
        (["--epochs", "0"], "at least 1"),
    ],
)
def test_bad_input_exits_2_with_one_message(tmp_path, capsys, extra, message):
    # Through the real command: the data is the offline MNIST subset (conftest sets HF_HUB_OFFLINE=1).
    argv = ["regularize", "--out", str(tmp_path), "--quiet", "--hidden", "4", "--seeds", "0", "--epochs", "1", *extra]
    status, err = _main(argv, capsys)
    assert status == 2
    assert "Traceback" not in err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "results.json").exists()


def test_cli_refuses_a_corrupt_checkpoint_and_keeps_it(tmp_path, capsys):
    config = expand(GridConfig(task="mnist", hidden=[4], seeds=[0], methods=["baseline"], epochs=2))[0]
    run_dir = tmp_path / "runs" / config.name
    # The data the command will load too: the offline MNIST subset (conftest sets HF_HUB_OFFLINE=1).
    runs_module.run_one(config, runs_module.load_data(config.data), run_dir, progress=False, stop_after=1)
    (run_dir / "checkpoint.safetensors").write_bytes(b"garbage")
    argv = ["regularize", "--out", str(tmp_path), "--quiet", "--hidden", "4", "--seeds", "0", "--methods", "baseline", "--epochs", "2"]
    status, err = _main(argv, capsys)
    assert status == 2 and "corrupt" in err and "Traceback" not in err
    assert (run_dir / "checkpoint.safetensors").read_bytes() == b"garbage"


def test_cifar_offline_is_a_clear_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["regularize", "--out", str(tmp_path), "--quiet", "--task", "cifar10", "--source", "offline", "--seeds", "0", "--epochs", "1"]
    status, err = _main(argv, capsys)
    assert status == 2 and "cifar10 needs internet" in err


def test_llc_is_estimated_per_run_summarised_and_can_be_added_to_a_finished_grid(tiny_data, tmp_path, file_states):
    small = dict(SMALL, methods=["baseline", "self-model"], strengths=[1.0])
    results = run_and_report(GridConfig(**small), tmp_path, progress=False, data=tiny_data)
    assert "llc_mean" not in results["runs"][0]
    # Ask for the LLC afterwards (the paper's SGLD settings, fewer chains and draws): no run is trained
    # again, only the LLC is estimated and each run's result.json rewritten.
    before = file_states(tmp_path / "runs", skip=("result.json",))
    with_llc = GridConfig(**dict(small, llc="paper", llc_chains=2, llc_draws=20))
    results = run_and_report(with_llc, tmp_path, progress=False, data=tiny_data)
    assert file_states(tmp_path / "runs", skip=("result.json",)) == before
    for run in results["runs"]:
        assert {"llc_mean", "llc_std", "llc_flags", "llc_loss_at_wstar"} <= set(run)
        assert run["llc_loss_at_wstar"] > 0 and isinstance(run["llc_flags"], list)
    for row in results["summary"]:
        assert {"llc_mean", "llc_ci95", "llc_n", "llc_flags"} <= set(row)
    report = (tmp_path / "report.md").read_text()
    assert "LLC not computed" not in report and "LLC flags" in report and (tmp_path / "llc_vs_strength.png").exists()


def test_parallel_workers_give_the_same_runs_as_one_process(tiny_data, tmp_path):
    small = dict(SMALL, methods=["baseline", "self-model"], seeds=[0], epochs=1)
    serial = run_grid(GridConfig(**small), tmp_path / "serial", progress=False, data=tiny_data)
    parallel = run_grid(GridConfig(**small, workers=2), tmp_path / "parallel", progress=False, data=tiny_data)
    assert parallel == serial
