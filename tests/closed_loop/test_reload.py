"""A trained closed loop reloads from its run directory (``load_closed_loop``): rebuilt from config.json, its
model.safetensors loaded and checked against the run's key; the reloaded loop computes the saved loop's logits bit for
bit (our GPT, a tiny Llama, and a tiny GPT-2 whose tied LM head is stored once); a wrong or missing file is one
UserError. The runs are ``selfmodels closed-loop`` end to end (``--subject DIR`` for the Llama); the GPT-2's run
directory is written as a run writes it, without training: the training loop's checkpoint cannot store a tied LM head
yet (``selfmodels.checkpoint`` passes shared tensors to safetensors, which refuses them)."""

from __future__ import annotations

import json

import dataclasses

import pytest
import torch

from closed_loop_hf import TINY_FLAGS, save_tiny, word_corpus
from closed_loop_tiny import wake
from selfmodels.artifacts import write_config
from selfmodels.cli import main
from selfmodels.closed_loop.config import PRESETS, ClosedLoopConfig
from selfmodels.closed_loop.build import build_run
from selfmodels.closed_loop.data import load_data, load_subject_data
from selfmodels.closed_loop.generate import generate
from selfmodels.closed_loop.load import _config, load_closed_loop, save_model
from selfmodels.closed_loop.measure import evaluate
from selfmodels.configs import to_dict
from selfmodels.errors import UserError

@pytest.fixture
def corpus(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))
    return word_corpus(tmp_path)


def _run(tmp_path, corpus: str, subject: str | None, condition: str = "shifted") -> tuple:
    out = tmp_path / f"run-{condition}-{'gpt' if subject is None else 'pretrained'}"
    argv = ["closed-loop", "--out", str(out), "--corpus", corpus, "--condition", condition, "--shift", "2", *TINY_FLAGS]
    assert main([*argv, *(["--subject", subject] if subject else [])]) == 0
    return out, json.loads((out / "result.json").read_text())


def _untrained_run(tmp_path, family: str):
    """A run directory of a pretrained subject as ``run_condition`` writes it (config.json, model.safetensors), of
    the loop as built (no training)."""
    cfg = PRESETS.config(ClosedLoopConfig, "quick")
    cfg = dataclasses.replace(cfg, main=str(save_tiny(tmp_path / family, family)), seq_len=16,
                              loop=dataclasses.replace(cfg.loop, source=0, inject=1, target=2, shift=2),
                              forward=dataclasses.replace(cfg.forward, d_head=8))
    out = tmp_path / f"run-{family}"
    closed = build_run(cfg, "cpu")
    write_config(out, {**to_dict(cfg), "key": cfg.key()})
    save_model(closed, out / "model.safetensors", cfg.key())
    return out


def _eval_windows(closed, out):
    cfg, _ = _config(out)
    if cfg.main == "gpt":
        data = load_data(cfg.corpus, cfg.seq_len, cfg.eval_windows)
    else:
        _, data = load_subject_data(cfg.main, cfg.corpus, cfg.seq_len, cfg.eval_windows, torch.device("cpu"))
    return cfg, data


MEASURES = ("val_loss", "val_loss_without_injection", "forward_cosine", "forward_mse", "injection_norm", "gate_norm")


@pytest.mark.parametrize("family", [None, "llama", "gpt2"])  # GPT-2's tied head goes through every checkpoint
def test_a_finished_run_reloads_to_the_trained_loop(family, corpus, tmp_path):
    subject = None if family is None else str(save_tiny(tmp_path / family, family))
    out, record = _run(tmp_path, corpus, subject)
    closed = load_closed_loop(out)
    assert not closed.training and not any(p.requires_grad for p in closed.parameters())
    cfg, data = _eval_windows(closed, out)
    measured = evaluate(closed, data.eval_x, data.eval_y, cfg.lm.batch_size, data.eval_bytes)
    for name in MEASURES:  # the trained loop measured these in memory; the reloaded one gives the same floats
        assert measured[name] == record[name], name
    assert record["main"] == (subject or "gpt") and closed.tokenizer is not None
    if family is None:
        assert record["subject"] is None and (out / "tokenizer.json").is_file()
        return
    assert record["subject"]["family"] == family and record["subject"]["n_layers"] == 3
    pretrained = build_run(cfg, "cpu", None)  # the subject as it was before its fine-tune
    tuned = dict(closed.network.named_parameters())
    assert any(not torch.equal(p, tuned[k]) for k, p in pretrained.network.named_parameters())
    prompt = data.eval_x[:1, :4]
    assert generate(closed, prompt, 3).sequences.shape == (1, 7)


@pytest.mark.parametrize("family", [None, "gpt2"])
def test_reloaded_logits_equal_the_saved_loops_bit_for_bit(family, corpus, tmp_path):
    out = _run(tmp_path, corpus, None, condition="forward")[0] if family is None else _untrained_run(tmp_path, family)
    cfg, key = _config(out)
    saved = wake(load_closed_loop(out), seed=3)  # other weights than the run's: the file written below is what counts
    with torch.no_grad():
        next(saved.network.parameters()).add_(0.01)  # the network too, not only F and G
    save_model(saved, out / "model.safetensors", key)
    reloaded = load_closed_loop(out)
    x = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(x), saved(x)) and torch.equal(reloaded(x, inject=False), saved(x, inject=False))
    if family == "gpt2":  # the tied LM head was stored once and is tied again
        model = reloaded.network
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_a_wrong_or_missing_file_is_one_user_error(corpus, tmp_path):
    out, _ = _run(tmp_path, corpus, None, condition="forward")
    other, _ = _run(tmp_path, corpus, None, condition="shifted")
    with pytest.raises(UserError, match="no config.json"):
        load_closed_loop(tmp_path)
    with pytest.raises(UserError, match="is not a directory"):
        load_closed_loop(tmp_path / "corpus.txt")
    (other / "model.safetensors").replace(out / "model.safetensors")  # another run's weights
    with pytest.raises(UserError, match="belongs to another run"):
        load_closed_loop(out)
    with pytest.raises(UserError, match="does not exist: the run has not finished training"):
        load_closed_loop(other)
    (other / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="corrupt or not a safetensors file"):
        load_closed_loop(other)
    config = json.loads((out / "config.json").read_text())
    config["loop"]["shift"] = 7  # an edited config: its key no longer says what built the weights
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="is not its settings' key"):
        load_closed_loop(out)
    config["loop"]["no_such_field"] = 1
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="not a closed-loop run's config"):
        load_closed_loop(out)
