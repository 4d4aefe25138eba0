"""The quick reproduction's regimes: which one runs (paper regime on Fashion-MNIST, or the MNIST 5k
fallback), their grids, the sentiment grid (the paper's IMDB setup), and the whole quick reproduction end to end
on tiny data (arm + sentiment + main grid + the report's comparisons with the paper)."""

import dataclasses
import json

import pytest

from selfmodels.errors import UserError
from selfmodels.selfmodeling import comparison, presets
from selfmodels.selfmodeling.commands import ARM_DIR, SENTIMENT_DIR, quick_grid, regime_note, reproduce_quick, select_regime
from selfmodels.selfmodeling.grid import expand


def test_auto_picks_the_paper_regime_when_fashion_mnist_is_here_and_falls_back_to_mnist_5k_otherwise(tmp_path):
    regime, source, reason = select_regime("auto", tmp_path)
    assert regime is presets.PAPER_REGIME and source == "offline" and str(tmp_path) in reason
    regime, source, reason = select_regime("auto", None)
    assert regime is presets.MNIST_5K_REGIME and source == "offline" and "make setup" in reason
    assert "NOT the paper's regime" in regime_note(regime, reason)
    assert "in the paper's optimisation regime" in regime_note(presets.PAPER_REGIME, "found")
    # Asked for by name: the fallback even when Fashion-MNIST is here; the paper regime from the hub when not.
    assert select_regime("mnist-5k", tmp_path)[0] is presets.MNIST_5K_REGIME
    assert select_regime("paper", None)[:2] == (presets.PAPER_REGIME, "auto")
    with pytest.raises(UserError, match="unknown regime"):
        select_regime("fast", None)


def test_the_paper_regime_has_the_papers_batch_epochs_and_steps():
    runs = expand(quick_grid(presets.PAPER_REGIME))
    first = runs[0]
    assert first.data.task == "fashion-mnist" and first.data.val_is_test  # all 60,000 images trained on
    assert (first.optim.batch_size, first.optim.epochs) == (512, 50)
    assert -(-60_000 // first.optim.batch_size) * first.optim.epochs == presets.PAPER_STEPS == 5_900
    by_method = {m: sorted({c.strength for c in runs if c.method == m}) for m in ("self-model", "activation-l2", "weight-decay")}
    assert by_method == {"self-model": [1.0, 10.0, 50.0], "activation-l2": [1.0, 10.0], "weight-decay": [1e-3, 1e-2]}
    assert len(runs) == 2 * 3 * 8  # H x seeds x (baseline + 3 + 2 + 2)
    # The fallback is the earlier 800-step grid, unchanged (so its finished runs are read back).
    fallback = expand(quick_grid(presets.MNIST_5K_REGIME))
    assert len(fallback) == 60 and fallback[0].optim.epochs == 100 and not fallback[0].data.val_is_test
    # The arm: MNIST 5k (3,600 training images, 8 steps an epoch) at the paper's step count.
    arm = expand(quick_grid(presets.MNIST_5K_PAPER_STEPS))
    assert {(c.model.hidden, c.method, c.strength) for c in arm} == {(64, "baseline", 0.0), (64, "self-model", 10.0)}
    assert len(arm) == 6 and arm[0].data.task == "mnist"
    assert abs(8 * arm[0].optim.epochs - presets.PAPER_STEPS) < 8


def test_the_sentiment_grid_has_the_papers_imdb_setup():
    runs = expand(quick_grid(presets.SENTIMENT_REGIME))
    first = runs[0]
    assert first.data.task == "imdb" and first.data.val_is_test and first.data.source == "offline"
    assert (first.model.arch, first.model.embed_dim, first.model.hidden) == ("bag", 64, 128)
    assert (first.optim.optimizer, first.optim.lr, first.optim.momentum, first.optim.batch_size, first.optim.epochs) == \
        ("sgd", 0.1, 0.0, 64, 500)
    llc = first.llc
    assert (llc.epsilon, llc.gamma, llc.chains, llc.draws, llc.batch_size) == (1e-3, 10.0, 4, 1000, 64)
    assert {(c.method, c.strength) for c in runs} == {("baseline", 0.0), ("self-model", 100.0), ("self-model", 500.0)}
    assert {c.seed for c in runs} == {0, 1, 2} and len(runs) == 3 * 3
    # The controls, out of the demo for its time, are the same grid with one strength each of their own.
    controls = expand(quick_grid(presets.SENTIMENT_CONTROLS))
    assert {(c.method, c.strength) for c in controls} - {(c.method, c.strength) for c in runs} == \
        {("activation-l2", 10.0), ("weight-decay", 1e-3)}
    assert [c for c in controls if c.method in ("baseline", "self-model")] == runs  # the demo's runs are read back


def test_paper_changes_and_verdicts():
    change = comparison.paper_change("weight_sd", 64, 10.0)
    assert change["direction"] == "falls" and change["relative"] == pytest.approx((0.230 - 0.262) / 0.262)
    assert comparison.paper_change("weight_sd", 64, 50.0)["collapsed"]  # accuracy 0.11 in the paper
    assert comparison.paper_change("llc_mean", 512, 1.0)["direction"] == "about equal"  # 58 -> 58
    assert comparison._verdict("falls", change, False) == "agrees"
    assert comparison._verdict("rises", change, False) == "differs"
    assert comparison._verdict("no clear change", change, False) == "unclear"
    assert comparison._verdict("falls", change, True) == "collapsed (ours)"
    # The paper's IMDB figures: weight SD 2.05 -> 0.75 and RLCT 13.6 -> 5.2 fall, accuracy 0.819 -> 0.836 rises.
    assert comparison.paper_change("weight_sd", 128, 500.0, "imdb")["relative"] == pytest.approx((0.75 - 2.05) / 2.05)
    assert comparison.paper_change("llc_mean", 128, 100.0, "imdb")["direction"] == "falls"
    assert comparison.paper_change("test_accuracy", 128, 100.0, "imdb")["direction"] == "about equal"  # +0.2%
    assert comparison.paper_change("test_accuracy", 128, 500.0, "imdb")["direction"] == "rises"
    assert comparison.paper_task("imdb") == "imdb" and comparison.paper_task("fashion-mnist") == "mnist"
    # A direction other than the paper's is stated as a finding, with its CI.
    rises = {"measure": "weight_sd", "hidden": 128, "strength": 500.0, "verdict": "differs", "direction": "rises",
             "relative": 0.1, "relative_low": 0.05, "relative_high": 0.15, "paper": comparison.paper_change("weight_sd", 128, 500.0, "imdb")}
    text = comparison.paper_sentences([rises])[0]
    assert "**Differs from the paper (a finding)**: H 128, AW 500: ours rises (+10.0% [+5.0%, +15.0%]), paper falls (-63.4%)" in text


def test_quick_reproduction_end_to_end_on_tiny_data(tiny_data, tiny_text, tmp_path):
    tiny = dict(hidden=(5,), seeds=(0, 1), epochs=2, strengths=(1.0,))
    regime = dataclasses.replace(presets.PAPER_REGIME, activation_l2_strengths=(1.0,), weight_decay_strengths=(1e-3,), **tiny)
    arm = dataclasses.replace(presets.MNIST_5K_PAPER_STEPS, **dict(tiny, epochs=3))
    # The sentiment grid as the demo runs it (H 128, baseline and AW 100 and 500), 2 epochs on tiny text.
    sentiment = dataclasses.replace(presets.SENTIMENT_REGIME, seeds=(0, 1), epochs=2)
    both = dict(arm=arm, llc="none", progress=False, data=tiny_data, arm_data=tiny_data, sentiment=sentiment,
                sentiment_data=tiny_text)
    results, arm_results = reproduce_quick(tmp_path, regime, "offline", "tiny test data", **both)
    assert len(arm_results["runs"]) == 4 and len(results["runs"]) == 2 * 4
    assert (tmp_path / ARM_DIR / "report.md").exists() and (tmp_path / ARM_DIR / "results.json").exists()
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["regime"] == {"name": "paper", "paper_regime": True, "reason": "tiny test data"}
    assert stored["settings"]["steps"] == 2 and stored["settings"]["train_size"] == 96  # 96 images, batch 512
    assert stored["arm"]["settings"]["steps"] == 3
    report = (tmp_path / "report.md").read_text()
    assert "in the paper's optimisation regime" in report and "## Compared with the paper" in report
    assert "## Dataset or regime?" in report and "paper (MNIST 60k, 5,900 steps)" in report
    # The comparison holds the paper's MNIST change at H 5? None was published: no paper column value.
    assert all(row["paper"] is None for row in comparison.compare_with_paper(stored["summary"], stored["trends"]))
    # The sentiment grid: its own directory and report, and its rows beside the paper's IMDB figures in the main report.
    part = stored["sentiment"]
    assert (tmp_path / SENTIMENT_DIR / "report.md").exists() and part["dir"] == SENTIMENT_DIR
    assert len(json.loads((tmp_path / SENTIMENT_DIR / "results.json").read_text())["runs"]) == 2 * 3
    assert part["text"]["vocab_size"] == 30 and part["text"]["words"]["train"]["max"] <= 9
    rows = comparison.compare_with_paper(part["summary"], part["trends"])
    assert {(r["strength"], r["measure"]) for r in rows} == {(w, m) for w in (100.0, 500.0) for m in ("weight_sd", "llc_mean", "test_accuracy")} - \
        {(w, "llc_mean") for w in (100.0, 500.0)}  # no LLC in this test (llc none)
    assert all(r["paper"] is not None for r in rows)
    assert "## The paper's IMDB setup, on Rotten Tomatoes snippets" in report and "paper (IMDB): baseline -> AW" in report
    assert "2.05 -> 0.75" in report and "0.819 -> 0.836" in report  # the paper's IMDB figures beside ours
    assert "Vocabulary: 30 ids" in report and "none was cut" in report and "Seeds 0, 1" in report
    assert "No controls in this grid" in report
    assert "**CIFAR-10**" in report and "--task cifar10 --data hub" in report
    own = (tmp_path / SENTIMENT_DIR / "report.md").read_text()
    assert "## Compared with the paper" in own and "Rotten Tomatoes" in own and "training texts" in own
    # Run again: the finished runs are read back, nothing is trained (same records).
    again, _ = reproduce_quick(tmp_path, regime, "offline", "tiny test data", **both)
    assert again["runs"] == results["runs"]
    assert [r["weight_sd_mean"] for r in again["sentiment"]["summary"]] == [r["weight_sd_mean"] for r in part["summary"]]
    # A changed regime is not read back: the run directories refuse settings other than their own.
    longer = dataclasses.replace(regime, epochs=3)
    with pytest.raises(UserError, match="already holds a different run"):
        reproduce_quick(tmp_path, longer, "offline", "tiny", **both)


def _weight_sd_row(grid: str, direction: str) -> dict:
    return {"grid": grid, "measure": "weight_sd", "direction": direction, "hidden": 64, "strength": 10.0, "label": grid,
            "relative": -0.1, "relative_low": -0.2, "relative_high": 0.0, "paper": comparison.paper_change("weight_sd", 64, 10.0)}


@pytest.mark.parametrize("arm, main, paper_regime, says", [
    ("rises", "falls", True, "the step count alone does not explain it; the data"),
    ("falls", "falls", True, "the 800-step run was too short"),
    ("no clear change", "rises", True, "a difference from the paper (a finding)"),
    ("falls", "rises", False, "the short run explains the difference"),
    ("rises", "rises", False, "the short run alone does not explain the difference"),
    ("falls", "not estimable", True, "no conclusion is drawn"),
])
def test_the_regime_sentence_tells_dataset_from_regime(arm, main, paper_regime, says):
    rows = [_weight_sd_row("arm", arm), _weight_sd_row("main", main)]
    assert says in comparison.regime_sentence(rows, paper_regime)
