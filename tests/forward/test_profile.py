"""The whole-model profile: every pair of a tiny subject from one stream, beside the skip and ridge baselines."""

import json

import pytest
from tiny_runs import save_tiny_hf, write_corpus

from selfmodels.cli import main

FLAGS = ["--quick", "--corpus.max-chars", "20000", "--model.d-head", "16", "--train.steps", "6", "--train.batch-size", "4",
         "--seq-len", "16", "--buffer-sequences", "8", "--pass-sequences", "4", "--ridge-sequences", "8",
         "--eval-sequences", "4", "--eval-batch", "2", "--decomposition-sequences", "2",
         "--device", "cpu", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    return save_tiny_hf(root / "tiny-llama", "llama"), write_corpus(root)


def test_every_pair_in_one_run_with_its_baselines(setup, tmp_path, capsys):
    model_dir, corpus = setup
    out = tmp_path / "profile"
    argv = ["forward", "profile", "--main", str(model_dir), "--corpus", str(corpus), "--out", str(out), *FLAGS]
    assert main(argv) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["kind"] == "profile" and r["gap"] == 1
    assert [(row["source"], row["target"]) for row in r["rows"]] == [(-1, 0), (0, 1), (1, 2), (2, 3)]
    for row in r["rows"]:
        for key in ("cosine", "skip_cosine", "ridge_cosine", "delta_r2", "ridge_delta_r2", "kl_substituted", "kl_skipped",
                    "recovery", "ridge_recovery", "mlp_cos_residual", "heads_cos_residual_mean"):
            assert isinstance(row[key], float), key
        assert row["recovery"] == pytest.approx(1 - row["kl_substituted"] / row["kl_skipped"])
    assert r["stream"]["passes"] >= 2 and r["data"]["eval_tokens"] == 4 * 16
    report = (out / "report.md").read_text()
    for name in ("cosine", "delta_r2", "kl", "recovery", "alignment"):
        assert (out / "plots" / f"profile_{name}.png").read_bytes()[:4] == b"\x89PNG" and f"profile_{name}.png" in report
    assert "-1 -> 0" in capsys.readouterr().out
    assert main(argv) == 0  # a rerun reuses every stage
    again = json.loads((out / "results.json").read_text())
    assert not [name for name, s in again["stages"].items() if s["computed"]]
    assert again["rows"] == r["rows"]


def test_chosen_layers_and_a_wider_gap(setup, tmp_path):
    model_dir, corpus = setup
    out = tmp_path / "gap2"
    assert main(["forward", "profile", "--main", str(model_dir), "--corpus", str(corpus), "--out", str(out), "--gap", "2",
                 "--layers", "-1", "1", *FLAGS]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(row["source"], row["target"]) for row in rows] == [(-1, 1), (1, 3)]
    assert "mlp_cos_residual" not in rows[0]  # two blocks: no one-block decomposition


@pytest.mark.parametrize("extra, message", [
    (["--layers", "3"], "out of range"),
    (["--gap", "0"], "at least 1"),
    (["--buffer-sequences", "2"], "smaller than a batch"),
])
def test_bad_input_exits_2(setup, tmp_path, capsys, extra, message):
    model_dir, corpus = setup
    out = tmp_path / "bad"
    assert main(["forward", "profile", "--main", str(model_dir), "--corpus", str(corpus), "--out", str(out), *FLAGS, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
