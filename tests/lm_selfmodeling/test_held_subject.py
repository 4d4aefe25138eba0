"""An LM self-modeling run on a model object the caller holds: fine-tuned as a copy (the caller's model is unchanged),
read back when finished, and a different model under the same name is another run (its weights are in the keys)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from selfmodels.errors import UserError

TINY = dict(seq_len=16, eval_windows=4, estimate_llc=False, llc_windows=8,
            corpus={"max_chars": 20000}, lm={"steps": 4, "batch_size": 4, "eval_every": 2, "eval_batches": 1},
            observer={"near": [0, 1], "far": [-1, 0], "steps": 3, "batch_size": 4, "d_head": 8, "train_windows": 8,
                      "eval_windows": 4})


@pytest.fixture
def tiny_llama(tmp_path):
    spec = importlib.util.spec_from_file_location("tiny_runs_for_held", Path(__file__).resolve().parents[1] / "forward" / "tiny_runs.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = tiny.save_tiny_hf(tmp_path / "tiny-llama", "llama")
    corpus = tiny.write_corpus(tmp_path)
    return AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory), str(corpus)


def test_a_held_model_is_fine_tuned_as_a_copy_and_its_weights_key_the_run(tiny_llama, tmp_path, monkeypatch):
    import selfmodels

    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))
    model, tokenizer, corpus = tiny_llama
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = {**TINY, "corpus": {**TINY["corpus"], "corpus": corpus}}
    run = selfmodels.selfmodel_lm("self-model", 1.0, subject=model, tokenizer=tokenizer, preset="quick",
                                  out=tmp_path / "run", **settings)
    record = run.record
    assert record["training"]["steps"] == 4 and record["val_loss"] > 0 and record["site"] == "head-input"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is untouched
    again = selfmodels.selfmodel_lm("self-model", 1.0, subject=model, tokenizer=tokenizer, preset="quick",
                                    out=tmp_path / "run", **settings)
    assert again.record == record  # read back, not trained again

    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.5)  # another network under the same name
    with pytest.raises(UserError, match="trained with other settings"):
        selfmodels.selfmodel_lm("self-model", 1.0, subject=model, tokenizer=tokenizer, preset="quick",
                                out=tmp_path / "run", **settings)
