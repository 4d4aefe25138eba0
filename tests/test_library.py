"""The library in a line or two: ``selfmodels.open_subject`` on names and objects, ``selfmodels.forward.fit`` and
``fit_profile`` on a model object the caller holds (the same pipeline the commands run), and the bad input an object
can bring (not a causal LM, a tokenizer larger than the embedding, weights no device_map serves): one message each."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "subjects"))
from tiny_subjects import hf_config  # noqa: E402

import selfmodels  # noqa: E402
from selfmodels.errors import UserError  # noqa: E402

VOCAB = 300  # our BPE needs at least 256 byte ids plus its specials
TINY = {"seq_len": 16, "train_sequences": 12, "eval_sequences": 4, "eval_batch": 4,
        "model": {"d_head": 16, "swiglu_hidden": 32}, "baseline": {"steps": "same"},
        "train": {"steps": 4, "batch_size": 4, "log_every": 2, "checkpoint_every": 4}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    from selfmodels.data.corpora import load_corpus

    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(load_corpus("offline", max_chars=12_000).text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def held(text):
    """A tiny random Llama and a byte-level BPE tokenizer, as a user holds them."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from selfmodels.data.bpe import train_bpe

    config = hf_config("llama")
    config.vocab_size = VOCAB
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=train_bpe(text.read_text(encoding="utf-8"), VOCAB))
    return model, tokenizer


def test_open_subject_takes_an_object_and_keeps_its_dtype_and_device(held):
    model, tokenizer = held
    subject = selfmodels.open_subject(model, tokenizer)
    assert subject.tokenizer is tokenizer and subject.device == torch.device("cpu") and subject.dtype == torch.float32
    assert selfmodels.open_subject(subject) is subject  # a subject is returned as it is
    with pytest.raises(UserError, match="observed where it is and in its dtype"):
        selfmodels.open_subject(model, tokenizer, dtype="bfloat16")


def test_open_subject_refuses_what_it_cannot_observe(held):
    model, tokenizer = held
    with pytest.raises(UserError, match="not Linear"):
        selfmodels.open_subject(torch.nn.Linear(2, 2))
    small = type(model)(hf_config("llama"))  # 97 embedding rows, the tokenizer emits 300 ids
    with pytest.raises(UserError, match=r"has \d+ tokens but model .* embeds only 97"):
        selfmodels.open_subject(small, tokenizer)
    with torch.device("meta"):  # weights never loaded: no device_map layout serves them
        empty = type(model)(hf_config("llama"))
    with pytest.raises(UserError, match="meta device with no offload hook"):
        selfmodels.open_subject(empty)
    with pytest.raises(UserError, match="'gpt' is our GPT trained on a corpus"):
        selfmodels.open_subject("gpt")


def test_forward_fit_on_a_model_object_trains_evaluates_and_resumes(held, text, tmp_path):
    from selfmodels.forward.model import ForwardModel

    subject = selfmodels.open_subject(*held)
    fit = selfmodels.forward.fit(subject, source=0, target=1, corpus=str(text), out=tmp_path / "run", **TINY)
    assert isinstance(fit.model, ForwardModel) and fit.model.pair == (0, 1) and not fit.model.training
    e = fit.evaluation
    assert 0 < e["params"] and -1 <= e["cosine"] <= 1 and e["kl_skipped"] > 0 and e["tokens"] == 4 * 16
    assert fit.results["subject"]["weights_sha256"] == subject.describe()["weights_sha256"]
    assert repr(fit).startswith(f"ForwardFit({subject.name} 0 -> 1: {e['params']:,} params, cosine ")
    again = selfmodels.forward.fit(subject, source=0, target=1, corpus=str(text), out=tmp_path / "run", **TINY)
    assert again.evaluation == e and all(not stage["computed"] for stage in again.results["stages"].values())


def test_forward_fit_validates_its_settings_before_any_work(held, text, tmp_path):
    with pytest.raises(UserError, match="unknown key 'trian'"):
        selfmodels.forward.fit(selfmodels.open_subject(*held), 0, 1, corpus=str(text), out=tmp_path, trian={"steps": 1})
    with pytest.raises(UserError, match="--target 1 must come after --source 1|target 1 must come after source 1"):
        selfmodels.forward.fit(selfmodels.open_subject(*held), 1, 1, corpus=str(text), out=tmp_path, **TINY)


def test_fit_profile_on_a_model_object(held, text, tmp_path):
    subject = selfmodels.open_subject(*held)
    tiny = {"seq_len": 16, "eval_sequences": 2, "eval_batch": 2, "ridge_sequences": 4, "decomposition_sequences": 0,
            "buffer_sequences": 4, "pass_sequences": 2, "train": {"steps": 2, "batch_size": 2, "log_every": 1,
                                                                  "checkpoint_every": 2}}
    profile = selfmodels.forward.fit_profile(subject, layers=[-1, 1], corpus=str(text), out=tmp_path / "p", **tiny)
    assert [(row["source"], row["target"]) for row in profile.rows] == [(-1, 0), (1, 2)]
    assert repr(profile).splitlines()[1].strip().startswith("-1 -> 0   cosine")


def test_selfmodel_lm_in_a_line_runs_the_command_s_run_and_reads_it_back(text, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))
    tiny = {"seq_len": 16, "gpt": {"n_layer": 3, "n_head": 2, "d_model": 32}, "corpus": {"corpus": str(text), "vocab_size": 300},
            "lm": {"steps": 4, "batch_size": 4, "eval_every": 2}, "eval_windows": 4, "estimate_llc": False,
            "observer": {"near": [0, 1], "far": [-1, 0], "steps": 3, "batch_size": 4, "d_head": 8, "train_windows": 8,
                         "eval_windows": 4}}
    run = selfmodels.selfmodel_lm("self-model", strength=1.0, out=tmp_path / "lm", device="cpu", **tiny)
    assert run.record["condition"] == "self-model-1" and run.record["training"]["steps"] == 4
    assert repr(run).startswith("LMRun(self-model-1, seed 0, gpt: val loss ")
    assert selfmodels.selfmodel_lm("self-model", strength=1.0, out=tmp_path / "lm", device="cpu", **tiny).record == run.record
    with pytest.raises(UserError, match="unknown key 'objective.strenght'"):
        selfmodels.selfmodel_lm(out=tmp_path / "bad", objective={"strenght": 1.0})


def test_regularize_in_a_line_runs_the_command_s_grid(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("selfmodeling_fixtures", Path(__file__).parent / "selfmodeling" / "conftest.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)  # its make_tiny_data: the self-modeling tests' synthetic MNIST-shaped data
    make_tiny_data = fixtures.make_tiny_data

    grid = selfmodels.regularize("mnist", hidden=[8], methods=["baseline", "self-model"], strengths=[1.0], seeds=[0],
                                 epochs=1, batch_size=32, out=tmp_path / "grid", data=make_tiny_data(), device="cpu")
    assert [(row["method"], row["strength"]) for row in grid.summary] == [("baseline", 0.0), ("self-model", 1.0)]
    assert (tmp_path / "grid" / "report.md").is_file()
    assert repr(grid).splitlines()[0] == f"GridRun(2 runs, 2 conditions; out={tmp_path / 'grid'})"
