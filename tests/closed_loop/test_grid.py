"""The closed-loop grid end to end on a tiny corpus (2 conditions x 2 seeds, tiny GPT and battery): every unit run,
read back, resumed, a battery setting re-measuring without retraining, other training settings refused; and the
``reproduce closed-loop`` command's bad input."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from selfmodels.cli import main
from selfmodels.closed_loop.battery_config import BatteryConfig, ObserverSettings, ProbeSettings, RobustnessSettings
from selfmodels.closed_loop.config import ClosedLoopConfig, LoopConfig
from selfmodels.closed_loop.grid import ClosedLoopGrid, battery_key, preset_grid, run_grid, training_flops, write_outputs
from selfmodels.complexity.config import LLCConfig
from selfmodels.errors import UserError
from selfmodels.forward.config import ForwardModelConfig
from selfmodels.nets.config import GPTConfig
from selfmodels.subjects.config import CorpusConfig, LMTrainConfig

WORDS = "the a light dark water stone river field went came saw gave king land and of to in".split()


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(1500)))
    return str(path)


def tiny_battery(**changes) -> BatteryConfig:
    battery = BatteryConfig(
        observer=ObserverSettings(model=ForwardModelConfig(n_layer=1, n_head=1, d_head=8), steps=3, batch_size=4,
                                  train_windows=8),
        probes=ProbeSettings(windows=4, lambdas=[1e-3, 1.0], folds=2),
        robustness=RobustnessSettings(directions=2, radii=[0.3, 1.0], windows=2),
        llc=LLCConfig(chains=1, draws=4, batch_size=4, epsilon=1e-4, gamma=100.0), llc_windows=8, norm_windows=4,
        batch_size=4)
    return dataclasses.replace(battery, **changes)


def tiny_grid(corpus: str, **changes) -> ClosedLoopGrid:
    base = ClosedLoopConfig(
        seq_len=16, gpt=GPTConfig(n_layer=3, n_head=2, d_model=32),
        lm=LMTrainConfig(steps=4, batch_size=4, lr=1e-3, eval_every=2), corpus=CorpusConfig(corpus=corpus, vocab_size=300),
        loop=LoopConfig(source=0, inject=1, target=2, shift=2), forward=ForwardModelConfig(n_layer=1, n_head=1, d_head=8),
        eval_windows=4, battery=tiny_battery())
    return dataclasses.replace(ClosedLoopGrid(base, conditions=["open-loop", "forward"], seeds=[0, 1]), **changes)


def test_the_grid_runs_every_unit_reads_them_back_and_re_measures_only_the_battery(corpus, tmp_path):
    grid, out = tiny_grid(corpus), tmp_path / "grid"
    results = run_grid(grid, out, progress=False)
    flops = results["settings"]["flops"]
    assert flops["equal_flops_steps"] == round(4 * (1 + flops["share"])) > 4
    names = [r["run"] for r in results["runs"]]
    assert names == ["open-loop-seed0", "forward-seed0", "open-loop-equal-flops-seed0",
                     "open-loop-seed1", "forward-seed1", "open-loop-equal-flops-seed1"]
    equal = out / "runs" / "open-loop-equal-flops-seed0"
    steps = sorted(int(p.stem.split("_")[1]) for p in (equal / "snapshots").glob("step_*.safetensors"))
    assert steps == [2, 4, flops["equal_flops_steps"]] or steps == [2, 4, 6]
    for name in names:
        battery = json.loads((out / "runs" / name / "battery.json").read_text())
        record = json.loads((out / "runs" / name / "result.json").read_text())
        assert battery["training_key"] == record["key"] and battery["of"] == "final"
        assert battery["skip_kl"] >= 0 and "observer" in battery and "probes" in battery
    # The open loop's first 4 steps are the equal-FLOPs run's (constant lr, same seed and data order).
    open0 = json.loads((out / "runs" / "open-loop-seed0" / "result.json").read_text())
    snap = json.loads((equal / "snapshots" / "step_4.json").read_text())
    assert snap["val_loss"] == pytest.approx(open0["val_loss"], abs=1e-6)
    forward = [r for r in results["runs"] if r["condition"] == "forward"]
    assert all(r["matched"]["step"] in steps for r in forward)
    measured = {(r["seed"], r["matched"]["step"]) for r in forward if r["matched"]["step"] != 4}
    assert len(list(out.glob("runs/*/snapshots/*.battery.json"))) == len(measured)  # one per seed and step
    if any(r["matched"]["step"] == 4 for r in forward):  # the open loop's final model: its battery serves
        r = next(r for r in forward if r["matched"]["step"] == 4)
        base = next(b for b in results["runs"] if b["run"] == f"open-loop-seed{r['seed']}")
        assert r["matched"]["llc_mean"] == base["scalars"]["llc_mean"]
        assert r["matched"]["probe_gain_after"] == base["scalars"]["probe_gain_after"]
    measures = {c["measure"] for c in results["comparisons"] if c["condition"] == "forward"}
    assert {"val_loss", "dependency", "probe_gain_after", "robust_loss_increase", "llc_mean"} <= measures
    assert len(results["checks"]["per_seed"]) == 2
    write_outputs(results, out)
    report = (out / "report.md").read_text()
    assert report.index("Pre-grid checks") < report.index("Answers to the author's claims")
    for png in ("loss_curves.png", "probe_gain_by_depth.png", "robustness.png"):
        assert (out / png).stat().st_size > 0

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*.json")}
    again = run_grid(grid, out, progress=False)  # read back: nothing recomputed
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*.json")} == stamps
    assert again["comparisons"] == results["comparisons"]

    (out / "runs" / "forward-seed1" / "result.json").unlink()  # an interrupted unit: resumed from its checkpoint
    resumed = run_grid(grid, out, progress=False)
    assert [r["scalars"]["val_loss"] for r in resumed["runs"]] == [r["scalars"]["val_loss"] for r in results["runs"]]

    other = dataclasses.replace(grid, base=dataclasses.replace(grid.base, battery=tiny_battery(norm_windows=3)))
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    remeasured = run_grid(other, out, progress=False)  # a battery setting: measured again, never retrained
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")} == before
    battery = json.loads((out / "runs" / "forward-seed0" / "battery.json").read_text())
    assert battery["key"] == battery_key(other.config("forward", 0), "final") != battery_key(grid.config("forward", 0), "final")
    assert remeasured["runs"][0]["scalars"]["val_loss"] == results["runs"][0]["scalars"]["val_loss"]

    changed = dataclasses.replace(grid, base=dataclasses.replace(grid.base, lm=dataclasses.replace(grid.base.lm, lr=2e-3)))
    with pytest.raises(UserError, match="other settings"):
        run_grid(changed, out, progress=False)


def test_equal_flops_count_the_forward_model_and_the_gate_at_the_quick_size():
    cfg = preset_grid("quick").base
    flops = training_flops(cfg, 512)
    d, T = 64, 64
    gpt = 3 * (4 * (2 * 12 * d * d + 4 * (T // 2) * d) + 2 * d * 512)
    forward = 3 * 2 * (2 * (d * 3 * 16 + 16 * d + 2 * d * 2 * d) + 4 * (T // 2) * 16)  # 2 blocks, 1 head of 16, MLP 2x
    assert flops["per_token"] == {"gpt": gpt, "forward": forward, "gate": 3 * 2 * d * d}
    assert flops["share"] == pytest.approx((forward + 3 * 2 * d * d) / gpt)
    assert flops["equal_flops_steps"] == round(cfg.lm.steps * (1 + flops["share"]))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_pretrained_subjects_flops_count_every_weight_but_the_embedding_lookup(family):
    from closed_loop_hf import tiny_model
    from selfmodels.closed_loop.grid import subject_flops_per_token

    model = tiny_model(family)
    c = model.config
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    weights = total if family == "gpt2" else total - embedding  # GPT-2's tied head: its one matrix is the head's
    attention = c.num_hidden_layers * 4 * (16 // 2) * c.hidden_size
    assert subject_flops_per_token(model, c.num_hidden_layers, c.hidden_size, 16) == 2 * weights + attention


def test_the_grid_fine_tunes_a_pretrained_subject_in_its_own_tokens(tmp_path, monkeypatch):
    from closed_loop_hf import save_tiny, word_corpus

    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))
    corpus, subject = word_corpus(tmp_path), str(save_tiny(tmp_path / "llama", "llama"))
    grid = tiny_grid(corpus, seeds=[0])
    grid = dataclasses.replace(grid, base=dataclasses.replace(grid.base, main=subject))
    results = run_grid(grid, tmp_path / "grid", progress=False)
    assert [r["run"] for r in results["runs"]] == ["open-loop-seed0", "forward-seed0", "open-loop-equal-flops-seed0"]
    for name in ("open-loop-seed0", "forward-seed0"):
        record = json.loads((tmp_path / "grid" / "runs" / name / "result.json").read_text())
        battery = json.loads((tmp_path / "grid" / "runs" / name / "battery.json").read_text())
        assert record["main"] == subject and record["subject"]["family"] == "llama"
        assert battery["training_key"] == record["key"] and battery["skip_kl"] >= 0
    flops = results["settings"]["flops"]
    assert flops["equal_flops_steps"] > grid.base.lm.steps and flops["per_token"]["gpt"] > 0


def test_a_grid_without_open_loop_or_with_an_unknown_condition_is_refused(corpus):
    with pytest.raises(UserError, match="needs the open-loop condition"):
        tiny_grid(corpus, conditions=["forward"]).validate()
    with pytest.raises(UserError, match="unknown closed-loop condition 'feedback'; registered: open-loop"):
        tiny_grid(corpus, conditions=["open-loop", "feedback"]).validate()
    with pytest.raises(UserError, match="unknown preset 'nope': known presets: full, quick, smollm2"):
        preset_grid("nope")


def test_reproduce_closed_loop_bad_input_is_one_message_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as flag:
        main(["reproduce", "closed-loop", "--preset", "nope", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert flag.value.code == 2 and "invalid choice: 'nope'" in err and "'full', 'quick', 'smollm2'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    config = tmp_path / "config.json"  # in a config file: the presets' own message
    config.write_text(json.dumps({"preset": "nope", "out": str(tmp_path / "out")}))
    assert main(["reproduce", "closed-loop", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'nope': known presets: full, quick, smollm2" in err and len(err.strip().splitlines()) == 1
    assert main(["reproduce", "closed-loop", "--quick", "--workers", "0", "--out", str(tmp_path / "out")]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_closed_loop_measure_writes_the_battery_beside_the_result(corpus, tmp_path, capsys):
    out, config = tmp_path / "run", tmp_path / "battery.json"
    config.write_text(json.dumps({"config": {"battery": dataclasses.asdict(tiny_battery())}}))
    argv = ["closed-loop", "--out", str(out), "--corpus", corpus, "--config", str(config), "--condition", "forward",
            "--measure", "--quick", "--corpus.vocab-size", "300", "--gpt.n-layer", "3", "--gpt.n-head", "2",
            "--gpt.d-model", "32", "--seq-len", "16", "--lm.steps", "2", "--lm.batch-size", "4", "--lm.eval-every", "2",
            "--eval-windows", "4", "--forward.d-head", "8", "--pair", "0", "2", "--inject", "1", "--quiet"]
    assert main(argv) == 0
    record, battery = (json.loads((out / name).read_text()) for name in ("result.json", "battery.json"))
    assert battery["training_key"] == record["key"] and battery["of"] == "final" and battery["skip_kl"] >= 0
    assert "fresh observer's update R²" in capsys.readouterr().out
