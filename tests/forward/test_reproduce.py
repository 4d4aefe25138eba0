"""The reproduction end to end at toy size: results.json has the issue's keys, report.md is written."""

import dataclasses
import json

from selfmodels.forward import experiment
from selfmodels.forward.lm import LMTrainConfig
from selfmodels.forward.pipeline import DataConfig
from selfmodels.forward.train import ForwardTrainConfig
from selfmodels.nets.gpt import GPTConfig

TEXT = " ".join(f"The {w} sat on the mat (number {i}); the {w} was glad, and it said: 'again!'" for i in range(200) for w in ("cat", "dog"))


def test_reproduction_writes_every_result_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    cfg = dataclasses.replace(
        experiment.quick(),
        data=DataConfig(corpus=str(corpus), vocab_size=300),
        gpt=GPTConfig(vocab_size=300, block_size=16, n_layer=4, n_head=2, d_model=16),
        lm=LMTrainConfig(steps=12, batch_size=4, eval_every=6, eval_batches=1),
        forward=ForwardTrainConfig(steps=3, batch_size=2),
        cache_sequences=6, eval_sequences=4, eval_batch=2, cache_dtype="float32", analysis_sequences=3,
    )
    out = tmp_path / "out"
    first = experiment.run(cfg, out, "cpu", progress=False)
    r = json.loads((out / "results.json").read_text())
    for key in ("cosine", "mse", "identity_cosine", "delta_cosine", "delta_r2"):
        assert isinstance(r[key], float)
    assert r["main_model"]["params"] > 0 and r["forward_model"]["params"] > 0 and r["main_model"]["val_loss"] > 0
    assert {"accuracy_normal", "accuracy_substituted", "accuracy_skipped", "kl_substituted", "kl_skipped", "recovery"} <= set(r["substitution"])
    assert isinstance(r["baseline_mlp"]["cosine"], float)
    assert [c["name"] for c in r["capacity_sweep"]] == ["1%", "3%", "10%", "22%"]
    assert [g["gap"] for g in r["layer_gap_sweep"]] == [1, 2, 3]
    for row in r["capacity_sweep"] + r["layer_gap_sweep"]:
        assert {"params", "cosine", "recovery"} <= set(row)
    a = r["analysis"]
    n_head = cfg.gpt.n_head
    for key in ("attention_cosine_per_example", "attention_cosine_batch_averaged"):
        assert len(a[key]) == n_head and all(-1 <= x <= 1 + 1e-6 for x in a[key])
    assert {"prediction_vs_target", "post_attention", "source_vs_target", "source_vs_prediction"} == set(a["cka"])
    for key in ("effective_rank_entropy_s2", "effective_rank_entropy_s", "residual_spectrum", "residual_categories", "entropy_correlation"):
        assert key in a
    assert len(a["gauge"]["per_layer_head"]) == n_head and "mean_qk_circuit_cosine" in a["gauge"]
    assert a["tokens"] == cfg.analysis_sequences * cfg.gpt.block_size and a["compared_block"] == "block0"
    assert all((out / path).is_file() for path in r["analysis_plots"].values())
    report = (out / "report.md").read_text()
    assert "Analyses of the headline pair" in report and "not like for like" in report and "0.916" in report
    assert "paper" in report and "capacity_sweep.png" in report and (out / "layer_gap_sweep.png").is_file()
    # A second run reuses the cached main model (and its co-trained forward model) bit for bit.
    import torch

    gpt, fwd, *_, lm_result = experiment._main_model(cfg, torch.device("cpu"), progress=False)
    assert lm_result["reused_from_cache"] and lm_result["val_loss"] == first["main_model"]["val_loss"]
    from selfmodels.artifacts import load_tensors

    saved = load_tensors(out / "main.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in gpt.state_dict().items())

    # A finished run from before the analyses existed: re-running only adds them, training nothing.
    from selfmodels.artifacts import read_json, write_json

    old = {k: v for k, v in r.items() if k not in ("analysis", "analysis_plots")}
    write_json(out / "results.json", old)
    config = read_json(out / "config.json")
    config["config"].pop("analysis_sequences")
    write_json(out / "config.json", config)

    def no_training(*args, **kwargs):
        raise AssertionError("re-running a finished reproduction must not train")

    monkeypatch.setattr(experiment, "train_lm", no_training)
    monkeypatch.setattr(experiment, "fit_forward", no_training)
    again = experiment.run(cfg, out, "cpu", progress=False)
    assert json.loads((out / "results.json").read_text())["analysis"] == r["analysis"]  # same models, same tokens
    assert again["capacity_sweep"] == r["capacity_sweep"] and "Analyses of the headline pair" in (out / "report.md").read_text()


def test_full_preset_has_the_papers_sizes():
    cfg = experiment.full()
    cfg.validate()
    assert (cfg.gpt.n_layer, cfg.gpt.n_head, cfg.gpt.d_model, cfg.gpt.block_size) == (4, 4, 256, 128)
    assert (cfg.lm.steps, cfg.lm.batch_size, cfg.lm.lr, cfg.forward.steps, cfg.forward.lr) == (10_000, 64, 3e-4, 10_000, 1e-3)
    assert (cfg.source, cfg.target, cfg.sweep_source, cfg.capacity_target) == (0, 1, 0, 3)
