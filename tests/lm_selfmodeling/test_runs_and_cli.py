"""One run end to end on a tiny corpus (resumable, keyed), the matched-loss snapshots, the CLI's bad input."""

from __future__ import annotations

import dataclasses

import pytest

from selfmodels.cli import main
from selfmodels.complexity.llc import LLCConfig
from selfmodels.errors import UserError
from selfmodels.lm_selfmodeling.observer import ObserverConfig, check_disjoint
from selfmodels.lm_selfmodeling.run import LMRunConfig, ObjectiveConfig, load_data, measure_snapshot, nearest_snapshot, run_one
from selfmodels.nets.gpt import GPTConfig
from selfmodels.subjects.lm_training import LMTrainConfig
from selfmodels.subjects.registry import CorpusConfig

WORDS = "the cat sat on a mat and the dog ran to the park while birds sang in old green trees near water".split()


@pytest.fixture
def tiny_cfg(tmp_path, monkeypatch) -> LMRunConfig:
    import random

    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(700)))
    return LMRunConfig(
        seq_len=16, gpt=GPTConfig(n_layer=3, n_head=2, d_model=32), corpus=CorpusConfig(corpus=str(corpus), vocab_size=300),
        lm=LMTrainConfig(steps=4, batch_size=4, lr=3e-3, eval_every=2),
        objective=ObjectiveConfig(method="self-model", strength=1.0),
        observer=ObserverConfig(near=[0, 1], far=[-1, 0], steps=3, batch_size=4, d_head=8, train_windows=8, eval_windows=4),
        eval_windows=4, llc=LLCConfig(chains=1, draws=4, batch_size=4), llc_windows=8, estimate_llc=True)


def test_one_run_end_to_end_and_resumed(tiny_cfg, tmp_path):
    record = run_one(tiny_cfg, tmp_path / "run", progress=False)
    for key in ("val_loss", "bits_per_byte", "accuracy", "unembedding_sd", "block_weight_sd", "resid_norm", "update_norm",
                "fit_mse", "fit_cosine", "observer_near_delta_r2", "observer_near_recovery", "observer_near_kl_skipped",
                "observer_near_counts", "observer_far_cosine", "observer_far_skip_cosine"):
        assert key in record, key
    assert len(record["resid_norm"]) == 4 and len(record["block_weight_sd"]) == 3
    assert record["observer_near_counts"] == (record["observer_near_kl_skipped"] >= 0.3)
    assert "llc_mean" in record or "llc_unavailable" in record
    stamp = (tmp_path / "run" / "result.json").stat().st_mtime_ns
    assert run_one(tiny_cfg, tmp_path / "run", progress=False) == record  # read back, not recomputed
    assert (tmp_path / "run" / "result.json").stat().st_mtime_ns == stamp
    other = dataclasses.replace(tiny_cfg, seed=1)
    with pytest.raises(UserError, match="other settings"):
        run_one(other, tmp_path / "run", progress=False)


def test_a_changed_measurement_setting_measures_again_without_training_and_a_changed_training_setting_is_refused(
        tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, estimate_llc=False)
    first = run_one(cfg, tmp_path / "run", progress=False)
    weights = tmp_path / "run" / "main.safetensors"
    trained = (weights.stat().st_mtime_ns, (tmp_path / "run" / "metrics.jsonl").read_text())

    longer_observer = dataclasses.replace(cfg, observer=dataclasses.replace(cfg.observer, steps=5))
    second = run_one(longer_observer, tmp_path / "run", progress=False)
    assert (weights.stat().st_mtime_ns, (tmp_path / "run" / "metrics.jsonl").read_text()) == trained  # not retrained
    assert second["key"] != first["key"] and second["training"] == first["training"]
    assert second["val_loss"] == first["val_loss"]  # the same weights, measured again
    assert second["observer_near_cosine"] != first["observer_near_cosine"]  # what depends on the change did change

    # Back to the first settings: measured again on the same weights, the same numbers as the first time.
    assert {k: v for k, v in run_one(cfg, tmp_path / "run", progress=False).items() if k != "seconds"} == \
        {k: v for k, v in first.items() if k != "seconds"}
    with pytest.raises(UserError, match="trained with other settings"):
        run_one(dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, steps=6)), tmp_path / "run", progress=False)
    assert weights.stat().st_mtime_ns == trained[0]  # nothing overwritten


def test_baseline_snapshots_and_matched_measurement(tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, objective=ObjectiveConfig(), snapshots=True, estimate_llc=False)
    run_one(cfg, tmp_path / "base", progress=False)
    assert (tmp_path / "base" / "snapshots" / "step_2.safetensors").is_file()
    step, loss = nearest_snapshot(tmp_path / "base", 1e9)  # the highest loss: the earliest snapshot
    assert step == 2
    data = load_data(cfg, None)
    snap = measure_snapshot(cfg, tmp_path / "base", step, data, "cpu")
    assert snap["val_loss"] == pytest.approx(loss, rel=1e-6)  # the same held-out windows as during training
    assert measure_snapshot(cfg, tmp_path / "base", step, data, "cpu") == snap  # kept, not measured again


def test_observer_pair_must_avoid_the_trained_indices():
    with pytest.raises(UserError, match="shares indices \\[1\\]"):
        check_disjoint((0, 1), {1, 2}, "near")
    check_disjoint((-1, 0), {1, 2}, "far")
    cfg = LMRunConfig(objective=ObjectiveConfig(method="forward", strength=1.0, source=0, target=2),
                      observer=ObserverConfig(near=[-1, 0], far=[-1, 0]))
    with pytest.raises(UserError, match="shares indices \\[0\\]"):
        cfg.validate(4)


@pytest.mark.parametrize("flags, words", [
    (["--site", "attn:1"], "valid sites: head-input"),
    (["--method", "forward", "--strength", "1", "--pair", "2", "7"], "forward-form pair 2 -> 7 is out of range"),
    (["--method", "self-model", "--strength", "-1"], "non-negative"),
    (["--method", "forward", "--strength", "1", "--flow", "sideways"], "gradient flow 'sideways' is not one of"),
])
def test_bad_input_is_one_message_and_exit_2(flags, words, tmp_path, capsys, monkeypatch, tiny_cfg):
    # the corpus of tiny_cfg (a few KB) keeps the data step fast; nothing is trained before the check fails
    argv = ["selfmodel-lm", "--out", str(tmp_path / "bad"), "--corpus", tiny_cfg.corpus.corpus, "--corpus.vocab-size", "300",
            "--quiet", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad" / "result.json").exists()


def test_a_tiny_grid_end_to_end(tiny_cfg, tmp_path):
    from selfmodels.lm_selfmodeling.grid import LMGrid, run_grid, write_outputs

    base = dataclasses.replace(tiny_cfg, estimate_llc=False)
    grid = LMGrid(base, [ObjectiveConfig(), ObjectiveConfig(method="activation-l2", strength=1.0)], [0, 1])
    results = run_grid(grid, tmp_path / "grid", progress=False)
    write_outputs(results, tmp_path / "grid")
    assert len(results["runs"]) == 4 and {r["condition"] for r in results["summary"]} == {"baseline", "activation-l2-1"}
    l2 = [r for r in results["runs"] if r["method"] == "activation-l2"]
    assert all(r["matched_step"] in (2, 4) and r["matched"]["val_loss"] is not None for r in l2)
    assert all(r["matched"]["block_weight_sd_mean"] is not None for r in l2)  # derived measures of the snapshot too
    d = next(x for x in results["differences"] if x["measure"] == "unembedding_sd")
    assert d["vs_matched_baseline"]["difference"] is not None and d["val_loss_difference_vs_matched"]["difference"] is not None
    assert all("drift" in r for r in results["runs"])
    assert (tmp_path / "grid" / "report.md").is_file() and (tmp_path / "grid" / "results.json").is_file()
