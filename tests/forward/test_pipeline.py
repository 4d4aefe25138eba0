"""The one pipeline end to end, on our GPT and on tiny Hugging Face subjects: results schema, stages keyed by
their inputs, forward models reloaded in a fresh process, and bad input (one message, exit status 2)."""

import json
import subprocess
import sys

import pytest
from tiny_runs import GPT_FLAGS, GPT_SWEEPS, HF_FLAGS, save_tiny_hf, write_corpus

from selfmodels.cli import main

REGRESSION = ("cosine", "skip_cosine", "mse", "delta_cosine", "delta_r2")


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path_factory.getbasetemp() / "selfmodels-cache"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_hf(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("runs") / "gpt"
    mp = pytest.MonkeyPatch()
    mp.setenv("SELFMODELS_CACHE", str(tmp_path_factory.getbasetemp() / "selfmodels-cache"))
    try:
        assert main(["reproduce", "forward-self-models", "--out", str(out), "--corpus", str(corpus), "--seed", "3", *GPT_FLAGS, *GPT_SWEEPS]) == 0
    finally:
        mp.undo()
    return out


def _results(run):
    return json.loads((run / "results.json").read_text())


def test_gpt_reproduction_writes_the_one_schema(gpt_run, corpus):
    r = _results(gpt_run)
    assert r["schema_version"] == 1
    for key in REGRESSION:
        assert isinstance(r[key], float)
    assert r["pair"] == {"source": -1, "target": 0, "blocks_predicted": 1, "training": "co-trained"}
    assert r["subject"]["family"] == "gpt" and r["subject"]["source_hook"] == "blocks.0.hook_resid_pre"
    sub = r["substitution"]
    assert sub["recovery"] == pytest.approx(1 - sub["kl_substituted"] / sub["kl_skipped"])
    assert set(r["categories"]) >= {"punctuation", "induction", "function_words"}
    assert r["baseline_mlp"]["params"] > 0 and -1 <= r["baseline_mlp"]["cosine"] <= 1
    assert [c["name"] for c in r["capacity_sweep"]] == ["1%", "3%", "10%", "22%"]
    assert [g["gap"] for g in r["layer_gap_sweep"]] == [1, 2] and [g["target"] for g in r["layer_gap_sweep"]] == [0, 1]
    assert r["decomposition"]["reconstruction_error"] < 1e-5 and r["analysis"]["compared_block"] == 0
    assert r["seed"] == 3 and r["data"]["corpus"] == str(corpus)
    report = (gpt_run / "report.md").read_text()
    assert f"corpus `{corpus}`" in report and "**Seed** 3" in report and "embed (-1) -> 0" in report
    for name in (*r["plots"].values(), "training.png", "capacity_sweep.png", "layer_gap_sweep.png"):
        assert (gpt_run / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    curves = [json.loads(line) for line in (gpt_run / "metrics.jsonl").read_text().splitlines()]
    assert {c["model"] for c in curves} >= {"subject", "baseline_mlp", "capacity 1%", "gap 1"}


def test_a_rerun_reuses_every_stage_and_a_changed_setting_recomputes_only_what_it_affects(gpt_run, corpus):
    before = _results(gpt_run)
    base = ["reproduce", "forward-self-models", "--out", str(gpt_run), "--corpus", str(corpus), "--seed", "3", *GPT_FLAGS, *GPT_SWEEPS]
    assert main(base) == 0
    again = _results(gpt_run)
    assert not [name for name, s in again["stages"].items() if s["computed"]]
    assert {k: again[k] for k in REGRESSION} == {k: before[k] for k in REGRESSION}
    assert main([*base, "--baseline.hidden-mult", "3"]) == 0
    changed = _results(gpt_run)
    assert sorted(name for name, s in changed["stages"].items() if s["computed"]) == ["baseline_mlp", "evaluate baseline_mlp"]
    assert changed["baseline_mlp"]["hidden_mult"] == 3 and changed["cosine"] == before["cosine"]
    assert main([*base, "--eval-sequences", "4"]) == 0
    fewer = _results(gpt_run)
    assert sorted(name for name, s in fewer["stages"].items() if s["computed"]) == sorted(
        name for name in fewer["stages"] if name.startswith("evaluate "))
    assert fewer["data"]["eval_tokens"] == 4 * 16
    assert main(base) == 0  # back to the first settings: everything found again
    assert _results(gpt_run)["cosine"] == before["cosine"]


def test_saved_forward_model_loads_in_a_fresh_process_and_gives_the_same_metrics(gpt_run):
    r = _results(gpt_run)
    script = f"""
import json, torch
from selfmodels.artifacts import read_json
from selfmodels.forward.model import ForwardModel
from selfmodels.forward.evaluate import batches_of, evaluate
from selfmodels.data.bpe import load_tokenizer
from selfmodels.data.windows import consecutive_windows
from selfmodels.nets.gpt import GPT, GPTConfig
from selfmodels.artifacts import load_tensors
from selfmodels.subjects.gpt import GPTSubject
from selfmodels.subjects.config import CorpusConfig
from selfmodels.subjects.text import prepare_text
run = {str(gpt_run)!r}
cfg = read_json(run + "/config.json")["config"]
gpt_cfg = dict(cfg["subject"]["gpt"]); gpt_cfg["vocab_size"] = load_tokenizer(run + "/subject/tokenizer.json").get_vocab_size()
gpt = GPT(GPTConfig(**gpt_cfg)); gpt.load_state_dict(load_tensors(run + "/subject/main.safetensors")); gpt.eval()
subject = GPTSubject(gpt, weights=run + "/subject/main.safetensors")
model = ForwardModel.from_pretrained(run + "/forward_model", subject=subject)
_, _, val, _ = prepare_text(CorpusConfig(**cfg["corpus"]), __import__("pathlib").Path({str(gpt_run)!r}) / "text")
x, y = consecutive_windows(val, cfg["seq_len"], cfg["eval_sequences"])
ev = evaluate(subject, model, batches_of(x, y, cfg["eval_batch"]), *model.pair)
print(json.dumps({{"cosine": ev["cosine"], "recovery": ev["substitution"]["recovery"], "pair": model.pair}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["pair"] == [-1, 0]
    assert got["cosine"] == pytest.approx(r["cosine"], abs=1e-6)
    assert got["recovery"] == pytest.approx(r["substitution"]["recovery"], abs=1e-6)


def test_a_forward_model_from_another_subject_is_refused(gpt_run, llama_dir, tmp_path):
    from selfmodels.errors import UserError
    from selfmodels.forward.model import ForwardModel
    from selfmodels.subjects.hf_loading import load_causal_lm

    other = load_causal_lm(str(llama_dir))
    with pytest.raises(UserError, match="trained on .* not on"):
        ForwardModel.from_pretrained(gpt_run / "forward_model", subject=other)


def test_eval_and_sweep_reuse_the_run(gpt_run, capsys):
    assert main(["forward", "eval", str(gpt_run), "--eval-sequences", "5", "--device", "cpu", "--no-progress"]) == 0
    assert _results(gpt_run)["data"]["eval_sequences"] == 5
    assert main(["forward", "sweep", str(gpt_run), "--kind", "gap", "--gaps", "1", "--device", "cpu", "--no-progress"]) == 0
    r = _results(gpt_run)
    assert [g["gap"] for g in r["layer_gap_sweep"]] == [1]
    assert "recovery" in capsys.readouterr().out


def test_pretrained_subject_with_every_option_from_the_command_line(llama_dir, corpus, tmp_path):
    out = tmp_path / "llama"
    argv = ["reproduce", "forward-self-models", "--main", str(llama_dir), "--out", str(out), "--source", "embed",
            "--target", "1", "--corpus", str(corpus), "--seed", "1", "--analysis-sequences", "4", *HF_FLAGS]
    assert main(argv) == 0
    r = _results(out)
    assert r["pair"]["source"] == -1 and r["pair"]["target"] == 1 and r["pair"]["blocks_predicted"] == 2
    assert r["subject"]["family"] == "llama" and r["seed"] == 1 and r["data"]["corpus"] == str(corpus)
    assert r["forward_model"]["config"]["mlp"] == "swiglu" and r["forward_model"]["config"]["swiglu_hidden"] == 32
    assert r["decomposition"] is None and r["analysis"]["compared_block"] == 0  # two blocks: no one-block decomposition
    assert r["capacity_sweep"] == [] and r["baseline_mlp"]["train"]["steps"] == 6
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["seed"] == 1 and config["corpus"]["corpus"] == str(corpus) and config["source"] == -1
    report = (out / "report.md").read_text()
    assert "embed (-1) -> 1" in report and "**Seed** 1" in report and str(corpus) in report
    # Another seed into the same directory recomputes everything that depends on it.
    assert main([*argv[:-len(HF_FLAGS)], *HF_FLAGS, "--seed", "2"]) == 0
    assert _results(out)["stages"]["forward_model"]["computed"]


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_other_families_run_the_same_pipeline(family, corpus, tmp_path):
    model_dir = save_tiny_hf(tmp_path / family, family)
    out = tmp_path / "run"
    assert main(["forward", "train", "--main", str(model_dir), "--out", str(out), "--source", "1", "--target", "2",
                 "--corpus", str(corpus), *HF_FLAGS]) == 0
    r = _results(out)
    assert r["subject"]["family"] == family and -1 <= r["cosine"] <= 1
    assert r["analysis"] is None and r["capacity_sweep"] == []  # forward train: one pair, no analyses unless asked


@pytest.mark.parametrize("extra, message", [
    (["--source", "1", "--target", "1"], "must come after"),
    (["--source", "0", "--target", "3"], "out of range"),
    (["--source", "-2"], "out of range"),
    (["--source", "one"], "not an integer"),
])
def test_bad_layer_pairs_exit_2_before_anything_is_written(tmp_path, corpus, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(["forward", "train", "--out", str(out), "--corpus", str(corpus), *GPT_FLAGS, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_pretrained_layer_out_of_range_exits_2(tmp_path, llama_dir, corpus, capsys):
    out = tmp_path / "bad"
    assert main(["forward", "train", "--main", str(llama_dir), "--out", str(out), "--source", "2", "--target", "9",
                 "--corpus", str(corpus), *HF_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "out of range" in err or "at most 3" in err
    assert not out.exists()


def test_unsupported_family_exits_2(tmp_path, corpus, capsys):
    model_dir = save_tiny_hf(tmp_path / "bart", "bart")  # an encoder-decoder model: not decoder-only
    out = tmp_path / "out"
    assert main(["reproduce", "forward-self-models", "--main", str(model_dir), "--out", str(out), "--corpus", str(corpus), *HF_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "encoder-decoder" in err and "decoder-only" in err and "gpt_neox" in err and "Traceback" not in err
    assert not out.exists()


def test_out_that_is_a_file_exits_2(tmp_path, corpus, capsys):
    out = tmp_path / "taken.txt"
    out.write_text("keep me")
    assert main(["forward", "train", "--out", str(out), "--corpus", str(corpus), *GPT_FLAGS]) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert out.read_text() == "keep me"


def test_empty_corpus_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["forward", "train", "--out", str(out), "--corpus", str(empty), *GPT_FLAGS]) == 2
    assert "empty" in capsys.readouterr().err
    assert not out.exists()


def test_eval_of_a_missing_run_exits_2(tmp_path, capsys):
    assert main(["forward", "eval", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_streamed_training_writes_no_activation_cache(tmp_path, corpus):
    out = tmp_path / "stream"
    assert main(["forward", "train", "--out", str(out), "--corpus", str(corpus), "--training", "stream",
                 "--buffer-sequences", "8", "--pass-sequences", "4", "--no-baseline.enabled", *GPT_FLAGS]) == 0
    r = _results(out)
    assert r["pair"]["training"] == "frozen subject, activations streamed through a shuffle buffer"
    assert r["baseline_mlp"] is None and r["data"]["cache"] is None  # nothing trained from a cache: none written
    assert not list((out / "stages").glob("cache-*"))
    assert r["forward_model"]["train"]["steps"] == 6
