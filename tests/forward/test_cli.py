"""End to end on a tiny text file, and bad input: exit status 2, one message, nothing half-written."""

import json

import pytest

from selfmodels.cli import main

TEXT = " ".join(
    f"In the beginning ({i}) the quick brown fox jumped over the lazy dog, and the dog slept. "
    f"Then the fox said: 'the dog is lazy' [{i % 7}]." for i in range(300)
)

TINY = [
    "--data.vocab-size", "300", "--gpt.block-size", "16", "--gpt.n-layer", "3", "--gpt.n-head", "2", "--gpt.d-model", "16",
    "--main.steps", "20", "--main.batch-size", "4", "--main.eval-every", "10", "--main.eval-batches", "1",
    "--fwd.d-head", "8", "--fwd-train.steps", "10", "--fwd-train.batch-size", "4",
    "--eval-sequences", "6", "--eval-batch", "3", "--cache-sequences", "12", "--cache-dtype", "float32",
    "--device", "cpu", "--threads", "1", "--no-progress",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("runs") / "cache"
    assert main(["forward", "train", "--out", str(out), "--data.corpus", corpus, "--mode", "cache", *TINY]) == 0
    return out


def test_train_from_cache_eval_and_sweep(cached_run, tmp_path, capsys):
    results = json.loads((cached_run / "results.json").read_text())
    for key in ("cosine", "mse", "identity_cosine", "delta_cosine", "delta_r2"):
        assert isinstance(results[key], float)
    assert set(results["substitution"]) >= {"accuracy_normal", "accuracy_substituted", "accuracy_skipped", "kl_substituted", "kl_skipped", "recovery"}
    assert results["pair"] == {"source": "post_block0", "target": "post_block1", "training": "cache"}
    assert (cached_run / "cache" / "meta.json").is_file() and "baseline_mlp" in results
    assert main(["forward", "eval", str(cached_run), "--device", "cpu", "--no-progress"]) == 0
    again = json.loads((cached_run / "results.json").read_text())
    assert again["cosine"] == pytest.approx(results["cosine"], abs=1e-6)
    out = tmp_path / "gap"
    assert main(["forward", "sweep", str(cached_run), "--kind", "gap", "--gaps", "1", "2", "--out", str(out), "--fwd-train.steps", "3",
                 "--fwd-train.batch-size", "2", "--cache-sequences", "8", "--device", "cpu", "--no-progress"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["target"] for r in rows] == ["post_block1", "post_block2"]
    assert "recovery" in capsys.readouterr().out


def test_frozen_on_the_fly(tmp_path, corpus):
    out = tmp_path / "frozen"
    assert main(["forward", "train", "--out", str(out), "--data.corpus", corpus, "--mode", "frozen", "--no-baseline", *TINY]) == 0
    assert json.loads((out / "results.json").read_text())["pair"]["training"] == "frozen"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--source", "1", "--target", "1"], "must come after"),
        (["--source", "0", "--target", "3"], "out of range"),
        (["--source", "-2"], "out of range"),
        (["--fwd.d-model", "32"], "does not match"),
    ],
)
def test_bad_layer_pairs_and_widths_exit_2(tmp_path, corpus, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(["forward", "train", "--out", str(out), "--data.corpus", corpus, *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # validated before anything is written


def test_empty_corpus_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["forward", "train", "--out", str(out), "--data.corpus", str(empty), *TINY]) == 2
    assert "empty" in capsys.readouterr().err
    assert not (out / "main.safetensors").exists() and not list(out.rglob("*.tmp"))


def test_cache_from_another_model_is_refused(cached_run, tmp_path, capsys):
    meta_path = cached_run / "cache" / "meta.json"
    meta = json.loads(meta_path.read_text())
    from selfmodels.errors import UserError
    from selfmodels.forward.cache import ActivationCache

    with pytest.raises(UserError, match="collect a new cache"):
        ActivationCache(cached_run / "cache", expect={"model": "gpt:" + "0" * 64, "tokenizer": meta["tokenizer"]})


def test_eval_of_a_missing_run_exits_2(tmp_path, capsys):
    assert main(["forward", "eval", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_forward_weights_of_another_width_are_refused(cached_run, tmp_path, capsys):
    import shutil

    from selfmodels.artifacts import save_tensors
    from selfmodels.forward.model import ForwardModel, ForwardModelConfig

    run = tmp_path / "copy"
    shutil.copytree(cached_run, run, ignore=shutil.ignore_patterns("cache"))
    save_tensors(run / "forward.safetensors", ForwardModel(ForwardModelConfig(d_model=8, d_head=8)).state_dict())
    assert main(["forward", "eval", str(run), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "forward.safetensors does not fit" in err and "Traceback" not in err
