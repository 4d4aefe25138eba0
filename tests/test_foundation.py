"""The shared foundation: atomic artifacts, configs <-> CLI, statistics, exit codes."""

import argparse
import dataclasses
import json
import math

import pytest
import torch

from selfmodels import artifacts, configs, stats
from selfmodels.cli import main
from selfmodels.errors import UserError


def test_saved_tensors_that_share_a_storage_are_stored_once_and_read_back_under_every_name(tmp_path):
    from safetensors import safe_open

    embedding = torch.nn.Embedding(7, 3)
    head = torch.nn.Linear(3, 7, bias=False)
    head.weight = embedding.weight  # a tied LM head, as GPT-2's and SmolLM2's state dicts hold it
    state = {"embed.weight": embedding.weight, "head.weight": head.weight, "other": torch.ones(2)}
    artifacts.save_tensors(tmp_path / "w.safetensors", state, metadata={"mine": "kept"})
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as handle:
        assert sorted(handle.keys()) == ["embed.weight", "other"] and handle.metadata()["mine"] == "kept"
    loaded = artifacts.load_tensors(tmp_path / "w.safetensors")
    assert sorted(loaded) == ["embed.weight", "head.weight", "other"]
    assert loaded["head.weight"] is loaded["embed.weight"] and torch.equal(loaded["embed.weight"], embedding.weight)


def test_write_json_is_atomic_and_nan_becomes_null(tmp_path):
    path = tmp_path / "r.json"
    artifacts.write_json(path, {"a": float("nan"), "b": torch.tensor([1.0, 2.0]), "c": 3})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, 2.0], "c": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        artifacts.write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    artifacts.write_json(path, {"old": 1})
    with pytest.raises(TypeError):
        artifacts.write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"old": 1}
    assert len(list(tmp_path.iterdir())) == 1


def test_corrupt_safetensors_is_a_user_error(tmp_path):
    path = tmp_path / "w.safetensors"
    artifacts.save_tensors(path, {"w": torch.ones(3)})
    assert torch.equal(artifacts.load_tensors(path)["w"], torch.ones(3))
    path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        artifacts.load_tensors(path)


def test_jsonl_ignores_truncated_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    artifacts.append_jsonl(path, {"epoch": 1})
    with open(path, "a") as handle:
        handle.write('{"epoch": 2')
    assert artifacts.read_jsonl(path) == [{"epoch": 1}]


def test_mean_ci95_matches_t_interval():
    mean, half = stats.mean_ci95([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))  # t_{0.975,2} * s / sqrt(n)
    assert math.isnan(stats.mean_ci95([5.0])[1])


@dataclasses.dataclass
class _Inner:
    lr: float = configs.option(0.1, "learning rate")


@dataclasses.dataclass
class _Outer:
    name: str = configs.option("mnist", "task", choices=["mnist", "imdb"])
    sizes: list[int] = configs.option([64, 128], "hidden sizes")
    flag: bool = configs.option(False, "a switch")
    optim: _Inner = dataclasses.field(default_factory=_Inner)


def test_config_cli_round_trip():
    parser = argparse.ArgumentParser()
    configs.add_arguments(parser, _Outer)
    cfg = configs.from_args(_Outer, parser.parse_args(["--sizes", "1", "2", "--optim.lr", "0.5", "--flag"]), base=_Outer())
    assert cfg == _Outer(name="mnist", sizes=[1, 2], flag=True, optim=_Inner(lr=0.5))
    assert configs.from_dict(_Outer, configs.to_dict(cfg)) == cfg
    with pytest.raises(UserError, match="unknown"):
        configs.from_dict(_Outer, {"nope": 1})


def test_cli_bad_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
