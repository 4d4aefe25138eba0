"""``selfmodels closed-loop``: a tiny run end to end (read back when finished, another setting refused), and bad
input as one message with exit status 2."""

from __future__ import annotations

import json
import random

import pytest

from selfmodels.cli import main

WORDS = "the a light dark water stone river field went came saw gave king land and of to in".split()
TINY = ["--quick", "--corpus.vocab-size", "300", "--gpt.n-layer", "3", "--gpt.n-head", "2", "--gpt.d-model", "32",
        "--seq-len", "16", "--lm.steps", "4", "--lm.batch-size", "4", "--lm.eval-every", "2", "--eval-windows", "4",
        "--forward.d-head", "8", "--pair", "0", "2", "--inject", "1", "--quiet"]


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(700)))
    return str(path)


def test_one_condition_end_to_end_read_back_and_other_settings_refused(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["closed-loop", "--out", str(out), "--corpus", corpus, "--condition", "shifted", "--shift", "2", *TINY]
    assert main(argv) == 0
    record = json.loads((out / "result.json").read_text())
    assert record["condition"] == "shifted" and record["shift"] == 2 and record["function_class"]
    assert record["indices"] == {"source": 0, "inject": 1, "target": 2}
    for key in ("val_loss", "val_loss_without_injection", "dependency", "bits_per_byte", "forward_cosine", "skip_cosine",
                "forward_cosine_without_injection", "gate_norm", "injection_norm"):
        assert isinstance(record[key], float), key
    assert record["dependency"] == pytest.approx(record["val_loss_without_injection"] - record["val_loss"])
    assert record["gate_norm"] > 0 and record["params"]["gate"] == 32 * 32 + 32
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # steps 2 and 4 (log every 10, evals every 2)
    assert (out / "model.safetensors").is_file() and "wrote" in capsys.readouterr().out
    assert main(argv) == 0 and json.loads((out / "result.json").read_text()) == record  # read back, not recomputed
    assert main([*argv, "--seed", "1"]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize("flags, words", [
    (["--pair", "2", "1"], "do not satisfy i <= m < j"),
    (["--inject", "2"], "do not satisfy i <= m < j"),  # m = j
    (["--pair", "1", "2", "--inject", "0"], "do not satisfy i <= m < j"),  # m < i
    (["--pair", "0", "3"], "index j (target) = 3 is out of range for a network with 3 blocks"),
    (["--pair", "-2", "2"], "index i (source) = -2 is out of range"),
    (["--shift", "0"], "--shift must be at least 1"),
])
def test_bad_input_is_one_message_and_exit_2(flags, words, corpus, tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["closed-loop", "--out", str(out), "--corpus", corpus, *TINY, *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_unknown_condition_lists_the_registered_ones(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as flag:  # on the command line: argparse's choices
        main(["closed-loop", "--out", str(tmp_path / "bad"), *TINY, "--condition", "feedback"])
    err = capsys.readouterr().err
    assert flag.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "'feedback'" in err and "open-loop" in err and "forward-frozen" in err
    config = tmp_path / "config.json"  # in a config file: the registry's message
    config.write_text(json.dumps({"loop": {"condition": "feedback"}}))
    assert main(["closed-loop", "--out", str(tmp_path / "bad"), "--config", str(config), *TINY]) == 2
    err = capsys.readouterr().err
    assert "unknown closed-loop condition 'feedback'; registered: open-loop, forward, shifted" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
