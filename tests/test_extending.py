"""docs/extending.md, tried: a toy entry of every extension point, registered through the public API, runs and shows up
in results.json and report.md (forward-model architecture, baseline and metric in one forward run; a self-modeling
method in a classifier grid and in an LM grid; a closed-loop condition in its command's result.json). Each toy is
taken out of its registry afterwards."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from selfmodels.artifacts import load_tensors, save_tensors
from selfmodels.cli import main

TESTS = Path(__file__).resolve().parent


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the toys ---------------------------------------------------------------------------------------------------

class LinearMap(nn.Module):
    """h -> h + h W, W zero at init (the identity map)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_model))

    def forward(self, x):
        return x + x @ self.weight


class AddVector(nn.Module):
    def __init__(self, vector: torch.Tensor):
        super().__init__()
        self.register_buffer("vector", vector)

    def forward(self, x):
        return x + self.vector


def mean_update_baseline():
    from selfmodels.forward.baselines import Baseline, Fitted

    class MeanUpdate(Baseline):
        """h + the mean update (target - source) over the training windows."""

        name, column = "mean_update", "ours: mean update"

        def fit(self, run, source, target, headline):
            def compute(directory: Path) -> dict:
                acts = run.subject.residuals(run.train_windows().to(run.subject.device), [source, target])
                update = (acts[target].float() - acts[source].float()).reshape(-1, run.d_model)
                save_tensors(directory / "mean.safetensors", {"mean": update.mean(0).cpu()})
                return {"tokens": int(update.shape[0])}

            inputs = {**run.subject_key, **run.data_key, "source": source, "target": target}
            info, directory, key = run.store.run("mean_update", inputs, compute)
            model = AddVector(load_tensors(directory / "mean.safetensors")["mean"]).to(run.device)
            return Fitted(model, key, {"fitted_on_tokens": info["tokens"]})

        def note(self, entry):
            return f"The mean update was taken over {entry['fitted_on_tokens']:,} training tokens.\n"

    return MeanUpdate()


def mean_abs_error():
    from selfmodels.forward.metrics import RegressionMetric

    return RegressionMetric("mean_abs_error", "mean over all elements of |prediction - target|", "mean |error|",
                            lambda p, s, t: {"abs": (t - p).abs().sum().item()}, lambda n: n["abs"] / max(n["elements"], 1))


@pytest.fixture
def forward_toys():
    from selfmodels.forward.architectures import ARCHITECTURES, register_architecture
    from selfmodels.forward.baselines import BASELINES, register_baseline
    from selfmodels.forward.metrics import METRICS, register_metric

    register_architecture("linear", LinearMap, "h + h W, W zero at init")
    register_baseline(mean_update_baseline())
    register_metric(mean_abs_error())
    yield
    ARCHITECTURES.remove("linear")
    BASELINES.remove("mean_update")
    METRICS.remove("mean_abs_error")


def test_a_toy_architecture_baseline_and_metric_run_through_the_forward_pipeline(forward_toys, tmp_path, monkeypatch):
    from selfmodels.forward.pretrained import load_forward_model

    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))
    tiny = _load(TESTS / "forward" / "tiny_runs.py", "tiny_runs_for_extending")
    out = tmp_path / "run"
    argv = ["forward", "train", "--out", str(out), "--corpus", str(tiny.write_corpus(tmp_path)), *tiny.GPT_FLAGS,
            "--model.architecture", "linear"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()

    assert results["forward_model"]["config"]["architecture"] == "linear"
    assert results["forward_model"]["params"] == 16 * 16  # the toy's one matrix at d = 16
    assert "architecture linear" in report
    assert "no attention for the analyses to read" in results["analysis_skipped"] and "not run" in report
    reloaded = load_forward_model(out / "forward_model")  # built by the registry from the saved config
    assert isinstance(reloaded, LinearMap) and not torch.equal(reloaded.weight, torch.zeros(16, 16))

    toy = results["mean_update"]
    assert toy["fitted_on_tokens"] > 0 and 0 <= toy["substitution"]["kl_substituted"]
    assert results["baselines"]["mean_update"]["column"] == "ours: mean update"
    assert "ours: mean update" in report and "The mean update was taken over" in report

    for entry in (results, results["baseline_mlp"], results["ridge_map"], toy):
        assert entry["mean_abs_error"] > 0
    assert results["definitions"]["mean_abs_error"] == "mean over all elements of |prediction - target|"
    assert "| mean |error| |" in report or "mean |error|" in report.split("## Prediction")[1].split("##")[0]


class ActivationL1:
    """A classifier control: CE + w mean|a| on the target modules."""

    @staticmethod
    def objective_class():
        import torch.nn.functional as F

        from selfmodels.selfmodeling.objectives import LossTerms, Objective
        from selfmodels.selfmodeling.targets import capture_outputs, flatten_targets

        class ActivationL1Objective(Objective):
            method = "activation-l1"

            def __init__(self, model, strength, *, targets, head="head"):
                super().__init__(model, strength, head)
                self.targets = tuple(targets)

            @classmethod
            def build(cls, model, strength, *, targets, example_input, head="head", detach=True, seed=0):
                return cls(model, strength, targets=targets, head=head)

            def loss(self, x, y):
                with capture_outputs(self.model, self.targets, detach=False) as outputs:
                    logits = self.model(x)
                aux = flatten_targets(outputs, self.targets).abs().mean()
                ce = F.cross_entropy(logits, y)
                return LossTerms(ce + self.strength * aux, ce, aux)

        return ActivationL1Objective


def test_a_toy_classifier_control_runs_in_the_grid_and_its_report(tmp_path):
    from selfmodels.selfmodeling.config import METHODS, register_method
    from selfmodels.selfmodeling.grid import GridConfig, run_and_report

    register_method("activation-l1", ActivationL1.objective_class(), "CE + w mean|a| on the target modules")
    try:
        data = _load(TESTS / "selfmodeling" / "conftest.py", "selfmodeling_fixtures_for_extending").make_tiny_data()
        grid = GridConfig(task="mnist", hidden=[5], methods=["baseline", "activation-l1"], strengths=[1.0], seeds=[0, 1],
                          epochs=1, batch_size=32)
        results = run_and_report(grid, tmp_path / "grid", progress=False, data=data)
    finally:
        METHODS.remove("activation-l1")
    toy = [r for r in results["runs"] if r["method"] == "activation-l1"]
    assert len(toy) == 2 and all(r["test_accuracy"] is not None for r in toy)
    on_disk = json.loads((tmp_path / "grid" / "results.json").read_text())
    assert {"activation-l1"} <= {s["method"] for s in on_disk["summary"]}
    assert any(t["method"] == "activation-l1" for t in on_disk["trends"])
    assert "activation-l1" in (tmp_path / "grid" / "report.md").read_text()


def test_a_toy_lm_control_runs_in_the_lm_grid_and_its_report(tmp_path, monkeypatch):
    import dataclasses

    from selfmodels.lm_selfmodeling.config import METHODS, Method, register_method
    from selfmodels.lm_selfmodeling.grid import LMGrid, run_grid, write_outputs
    from selfmodels.lm_selfmodeling.objective import Term
    from selfmodels.lm_selfmodeling.run import ObjectiveConfig

    class ActivationL1Term(Term):
        def sites(self, o):
            return [o.site]

        def term(self, o, acts):
            return acts[o.site].float().abs().mean()

    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))
    harness = _load(TESTS / "distributed" / "dist_harness.py", "dist_harness_for_extending")
    register_method(Method("activation-l1", ActivationL1Term, "A = mean|a| over the site", reads_site=True))
    try:
        base = harness.lm_grid(tmp_path / "corpus.txt")
        grid = LMGrid(base.base, [ObjectiveConfig(), ObjectiveConfig(method="activation-l1", strength=1.0)], [0, 1])
        results = run_grid(dataclasses.replace(grid, workers=1), tmp_path / "lm", progress=False)
        write_outputs(results, tmp_path / "lm")
    finally:
        METHODS.remove("activation-l1")
    toy = [r for r in results["runs"] if r["method"] == "activation-l1"]
    assert len(toy) == 2 and all(r["site"] == "head-input" and r["training"]["train_aux"] > 0 for r in toy)
    on_disk = json.loads((tmp_path / "lm" / "results.json").read_text())
    assert any(d["method"] == "activation-l1" for d in on_disk["differences"])
    assert "activation-l1-1" in (tmp_path / "lm" / "report.md").read_text()


def test_a_toy_closed_loop_condition_runs_in_the_closed_loop_command(tmp_path, monkeypatch):
    import random

    from selfmodels.closed_loop.conditions import CONDITIONS, Condition, register_condition
    from selfmodels.closed_loop.signals import Signal

    class Negated(Signal):
        """u = -sg(F(h_i)): the forward condition's prediction, negated."""

        def forward(self, source, prediction):
            return -prediction.detach(), None

    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    words = "the a light dark water stone river field went came saw gave king land and of to in".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(700)))
    register_condition(Condition("negated", Negated, "h_m <- h_m + G(-sg(F(h_i)))", "the forward condition's map, negated"))
    try:
        out = tmp_path / "negated"
        assert main(["closed-loop", "--out", str(out), "--corpus", str(corpus), "--condition", "negated", "--quick",
                     "--corpus.vocab-size", "300", "--gpt.n-layer", "3", "--gpt.n-head", "2", "--gpt.d-model", "32",
                     "--seq-len", "16", "--lm.steps", "4", "--lm.batch-size", "4", "--lm.eval-every", "2",
                     "--eval-windows", "4", "--forward.d-head", "8", "--pair", "0", "2", "--inject", "1", "--quiet"]) == 0
    finally:
        CONDITIONS.remove("negated")
    record = json.loads((out / "result.json").read_text())
    assert record["condition"] == "negated" and record["function_class"] == "the forward condition's map, negated"
    assert record["gate_norm"] > 0 and record["dependency"] == pytest.approx(record["val_loss_without_injection"] - record["val_loss"])
