"""``--log tensorboard`` / ``--log wandb``: the values the mirrors write are the values in metrics.jsonl (read back
with TensorBoard's own event reader and from W&B's offline run file), the sink is no input to a result, and a
missing extra is one message naming the pip command, exit 2, before any work."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selfmodels.artifacts import read_json, read_jsonl
from selfmodels.cli import main
from selfmodels.curves import Mirror, append_curve, check_sinks, scalars
from selfmodels.errors import UserError



def _helpers(relative: str, name: str):
    """A helper module of another test folder, loaded by path (each folder's conftest is named ``conftest``)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_tiny_data = _helpers("selfmodeling/conftest.py", "selfmodeling_fixtures").make_tiny_data  # a synthetic MNIST-shaped set
GPT_FLAGS, write_corpus = (lambda m: (m.GPT_FLAGS, m.write_corpus))(_helpers("forward/tiny_runs.py", "forward_tiny_runs"))


# --- reading the sinks back ---------------------------------------------------------------------------

def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar under ``logdir`` as tag -> [(step, value)], read by TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of the one offline W&B run under ``run_dir/wandb``, decoded from its ``.wandb`` file: a
    LevelDB-style log (a 7-byte ``:W&B`` header, 32 KiB blocks of records with a 7-byte header: CRC, length, type
    FULL/FIRST/MIDDLE/LAST) of protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data, block, pos, parts, rows = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def expected(records: list[dict], step: str = "step", curve: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """What a mirror should hold for ``records``: tag -> [(step, value)] with each metric of metrics.jsonl."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        prefix = (curve or record.get("model", "train")).replace(" ", "_")
        for key, value in scalars(record, step).items():
            out.setdefault(f"{prefix}/{key}", []).append((int(record[step]), value))
    return out


def assert_tensorboard_holds(logdir: Path, want: dict[str, list[tuple[int, float]]]) -> None:
    got = tensorboard_scalars(logdir)
    assert set(got) == set(want)
    for tag, points in want.items():
        # TensorBoard keeps a scalar as float32: the value written is the JSON value rounded to float32, exactly.
        assert sorted(got[tag]) == sorted((s, float(np.float32(v))) for s, v in points), tag


def assert_wandb_holds(run_dir: Path, want: dict[str, list[tuple[int, float]]], step: str = "step") -> None:
    got: dict[str, list[tuple[int, float]]] = {}
    for row in wandb_history(run_dir):
        for key, value in row.items():
            curve, _, metric = key.partition("/")
            if metric and metric != step and not key.startswith("_"):
                got.setdefault(key, []).append((row[f"{curve}/{step}"], value))
    assert got == want  # W&B keeps the double exactly


# --- the mirror itself ---------------------------------------------------------------------------------

def test_scalars_leave_out_the_step_labels_and_non_numbers():
    record = {"model": "m", "source": 0, "target": 2, "step": 5, "loss": 1.5, "val": None, "bad": float("nan"),
              "flag": True, "name": "x", "count": 3}
    assert scalars(record) == {"loss": 1.5, "count": 3.0}


def test_no_sinks_writes_only_metrics_jsonl(tmp_path):
    with Mirror(tmp_path) as mirror:
        append_curve(tmp_path / "metrics.jsonl", {"step": 1, "loss": 2.0}, mirror)
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 2.0}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_curves_of_several_models_each_keep_their_own_steps(tmp_path):
    """Two curves with interleaved, non-monotonic steps (as the pipeline replays them): each lands under its tag."""
    records = [{"model": "subject", "step": s, "loss": 1.0 / s} for s in (10, 20, 30)] + \
              [{"model": "capacity 1%", "source": 0, "target": 1, "step": s, "forward_mse": 0.1 * s} for s in (5, 10)]
    with Mirror(tmp_path, ["tensorboard", "wandb"]) as mirror:
        for record in records:
            append_curve(tmp_path / "metrics.jsonl", record, mirror)
    assert read_jsonl(tmp_path / "metrics.jsonl") == records
    want = expected(records)
    assert set(want) == {"subject/loss", "capacity_1%/forward_mse"}
    assert_tensorboard_holds(tmp_path / "tensorboard", want)
    assert_wandb_holds(tmp_path, want)


# --- the training loops, end to end ----------------------------------------------------------------------

@pytest.mark.slow
def test_classifier_run_mirrors_its_epochs_and_the_result_does_not_depend_on_it(tmp_path):
    from selfmodels.selfmodeling.runs import resolve_run, run_one

    torch.set_num_threads(1)
    data = make_tiny_data()
    config = resolve_run("mnist", hidden=6, method="self-model", strength=1.0, seed=0, epochs=3, batch_size=32)
    logged = run_one(config, data, tmp_path / "logged", progress=False, log=("tensorboard", "wandb"))
    plain = run_one(config, data, tmp_path / "plain", progress=False)
    records = read_jsonl(tmp_path / "logged" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    want = expected(records, step="epoch", curve="classifier")
    assert "classifier/val_accuracy" in want and "classifier/train_loss" in want
    assert_tensorboard_holds(tmp_path / "logged" / "tensorboard", want)
    assert_wandb_holds(tmp_path / "logged", want, step="epoch")
    # logging is not an input: the same weights and record (but for the directory's name)
    assert {k: v for k, v in logged.items() if k != "run_dir"} == {k: v for k, v in plain.items() if k != "run_dir"}
    assert not (tmp_path / "plain" / "tensorboard").exists() and not (tmp_path / "plain" / "wandb").exists()


@pytest.mark.slow
def test_a_grid_mirrors_every_run_and_its_llc_into_its_own_directory(tmp_path):
    from selfmodels.selfmodeling.grid import GridConfig, run_grid

    torch.set_num_threads(1)
    data = make_tiny_data()
    grid = GridConfig(task="mnist", hidden=[5], strengths=[1.0], seeds=[0], epochs=2, batch_size=32, llc="paper",
                      llc_draws=6, llc_chains=2)
    logged = run_grid(grid, tmp_path / "logged", progress=False, data=data, log=("tensorboard",))
    assert len(logged) >= 2
    for record in logged:
        run_dir = tmp_path / "logged" / "runs" / record["run_dir"]
        want = expected(read_jsonl(run_dir / "metrics.jsonl"), "epoch", "classifier")
        got = tensorboard_scalars(run_dir / "tensorboard")
        assert {tag: got[tag] for tag in want} == {tag: [(s, float(np.float32(v))) for s, v in points] for tag, points in want.items()}
        # the LLC's traces: 6 draws per chain; each chain's estimate is the mean of its kept (second-half) draws
        assert set(got) - set(want) == {"llc/loss_chain0", "llc/loss_chain1", "llc/lambda_chain0", "llc/lambda_chain1", "llc/lambda_mean"}
        for chain in range(2):
            lam = got[f"llc/lambda_chain{chain}"]
            assert [s for s, _ in lam] == list(range(6))
            assert np.mean([v for _, v in lam[3:]]) == pytest.approx(record["llc_per_chain"][chain], rel=1e-4, abs=1e-3)
    plain = run_grid(grid, tmp_path / "plain", progress=False, data=data)

    def untimed(records):
        return [{k: v for k, v in r.items() if k != "llc_seconds"} for r in records]
    assert untimed(plain) == untimed(logged)  # the same runs, the same numbers (but for the time taken)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "selfmodels-cache"))


@pytest.mark.slow
def test_forward_train_mirrors_the_subject_and_every_forward_model_and_keys_nothing_on_it(tmp_path, private_cache):
    """First run: our GPT with its co-trained forward model (the quick preset) and the MLP baseline, mirrored to
    TensorBoard as they train. The same command again with another sink reuses every stage (the sink is in no
    stage's key) and replays the reused curves to it. Each mirror holds exactly the combined metrics.jsonl."""
    corpus = write_corpus(tmp_path)
    command = ["forward", "train", "--corpus", str(corpus), "--out", str(tmp_path / "run"), *GPT_FLAGS]
    assert main([*command, "--log", "tensorboard"]) == 0
    first = read_json(tmp_path / "run" / "results.json")
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    want = expected(records)
    assert {"subject/loss", "subject/val_loss", "subject/forward_mse", "baseline_mlp/forward_mse"} <= set(want)
    assert_tensorboard_holds(tmp_path / "run" / "tensorboard", want)

    assert main([*command, "--log", "wandb"]) == 0
    again = read_json(tmp_path / "run" / "results.json")
    assert not any(stage["computed"] for stage in again["stages"].values())  # everything reused
    assert again["subject"]["training"]["reused_from_cache"]
    assert (again["cosine"], again["substitution"]) == (first["cosine"], first["substitution"])
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl") == records
    assert_wandb_holds(tmp_path / "run", want)
    assert "log" not in read_json(tmp_path / "run" / "config.json")["config"]


@pytest.mark.slow
def test_forward_profile_mirrors_every_pair_live_and_replays_a_reused_training(tmp_path):
    """The profile's K forward models train together (train_many): one curve per pair, ``<s>-><t>/forward_mse``."""
    model_dir = _helpers("forward/tiny_runs.py", "forward_tiny_runs").save_tiny_hf(tmp_path / "tiny-llama", "llama")
    flags = ["--quick", "--corpus.max-chars", "20000", "--model.d-head", "16", "--train.steps", "6", "--train.batch-size", "4",
             "--train.log-every", "2", "--seq-len", "16", "--buffer-sequences", "8", "--pass-sequences", "4",
             "--ridge-sequences", "8", "--eval-sequences", "4", "--eval-batch", "2", "--decomposition-sequences", "2",
             "--device", "cpu", "--threads", "1", "--no-progress"]
    out = tmp_path / "profile"
    command = ["forward", "profile", "--main", str(model_dir), "--corpus", str(write_corpus(tmp_path)), "--out", str(out), *flags]
    assert main([*command, "--log", "tensorboard"]) == 0
    (curve,) = (out / "stages").glob("train-*/metrics.jsonl")
    want = expected(read_jsonl(curve))
    assert set(want) == {"-1->0/forward_mse", "0->1/forward_mse", "1->2/forward_mse", "2->3/forward_mse"}
    assert [s for s, _ in want["0->1/forward_mse"]] == [2, 4, 6]
    assert_tensorboard_holds(out / "tensorboard", want)
    assert main([*command, "--log", "wandb"]) == 0  # the training stage is reused: its curves are replayed
    assert not read_json(out / "results.json")["stages"]["train"]["computed"]
    assert_wandb_holds(out, want)


@pytest.mark.slow
def test_llc_command_mirrors_the_traces_of_llc_json(tmp_path):
    from selfmodels.selfmodeling.runs import load_data, resolve_run, run_one

    torch.set_num_threads(1)
    config = resolve_run("mnist", hidden=6, epochs=1, source="offline")
    run_dir = tmp_path / "run"
    run_one(config, load_data(config.data), run_dir, progress=False)
    assert main(["llc", str(run_dir), "--draws", "8", "--chains", "2", "--quiet", "--log", "tensorboard"]) == 0
    record = read_json(run_dir / "llc.json")
    traces = record["llc_loss_traces"]  # (chains, draws)
    got = tensorboard_scalars(run_dir / "tensorboard")
    assert set(got) == {"llc/loss_chain0", "llc/loss_chain1", "llc/lambda_chain0", "llc/lambda_chain1", "llc/lambda_mean"}
    nbeta, wstar = record["llc_nbeta"], record["llc_loss_at_wstar"]
    for chain in range(2):
        assert got[f"llc/loss_chain{chain}"] == [(t, float(np.float32(v))) for t, v in enumerate(traces[chain])]
        assert [s for s, _ in got[f"llc/lambda_chain{chain}"]] == list(range(8))
        assert [v for _, v in got[f"llc/lambda_chain{chain}"]] == pytest.approx(
            [nbeta * (v - wstar) for v in traces[chain]], rel=1e-5, abs=1e-4)


@pytest.mark.slow
def test_selfmodel_lm_mirrors_its_training_curve_and_llc_traces(tmp_path, private_cache):
    import random

    rng = random.Random(0)
    words = "the cat sat on a mat and the dog ran to the park while birds sang".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(700)))
    flags = ["--corpus", str(corpus), "--corpus.vocab-size", "300", "--seq-len", "16", "--gpt.n-layer", "3",
             "--gpt.n-head", "2", "--gpt.d-model", "32", "--lm.steps", "20", "--lm.batch-size", "4", "--lm.eval-every", "10",
             "--observer.near", "0", "1", "--observer.steps", "3", "--observer.batch-size", "4", "--observer.train-windows", "8",
             "--observer.eval-windows", "4", "--eval-windows", "4", "--llc.chains", "1", "--llc.draws", "4",
             "--llc.batch-size", "4", "--llc-windows", "8", "--method", "self-model", "--strength", "1", "--quiet"]
    assert main(["selfmodel-lm", "--out", str(tmp_path / "logged"), *flags, "--log", "tensorboard"]) == 0
    records = read_jsonl(tmp_path / "logged" / "metrics.jsonl")
    assert [r["step"] for r in records] == [10, 20]
    want = expected(records, curve="lm")
    assert {"lm/loss", "lm/ce", "lm/aux", "lm/val_loss"} <= set(want)
    got = tensorboard_scalars(tmp_path / "logged" / "tensorboard")
    for tag, points in want.items():
        assert sorted(got[tag]) == sorted((st, float(np.float32(v))) for st, v in points), tag
    assert {"llc/loss_chain0", "llc/lambda_chain0", "llc/lambda_mean"} <= set(got)  # the LLC's draws, per draw
    assert [st for st, _ in got["llc/loss_chain0"]] == list(range(4))
    assert main(["selfmodel-lm", "--out", str(tmp_path / "plain"), *flags]) == 0
    logged, plain = (read_json(tmp_path / name / "result.json") for name in ("logged", "plain"))
    assert logged["key"] == plain["key"] and logged["val_loss"] == plain["val_loss"]  # no input to the result
    assert not (tmp_path / "plain" / "tensorboard").exists()


# --- a missing extra ---------------------------------------------------------------------------------

COMMANDS = {
    "forward train": lambda out: ["forward", "train", "--out", str(out), "--quick"],
    "reproduce forward-self-models": lambda out: ["reproduce", "forward-self-models", "--out", str(out), "--quick"],
    "forward profile": lambda out: ["forward", "profile", "--out", str(out), "--quick"],
    "regularize": lambda out: ["regularize", "--out", str(out)],
    "reproduce self-modeling": lambda out: ["reproduce", "self-modeling", "--out", str(out), "--quick"],
    "forward sweep": lambda out: ["forward", "sweep", str(out), "--kind", "gap"],
    "llc": lambda out: ["llc", str(out)],
    "selfmodel-lm": lambda out: ["selfmodel-lm", "--out", str(out)],
    "reproduce self-modeling-transformers": lambda out: ["reproduce", "self-modeling-transformers", "--out", str(out), "--quick"],
}


@pytest.mark.parametrize("sink", ["tensorboard", "wandb"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_missing_extra_exits_2_naming_the_pip_command_before_any_work(command, sink, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, sink, None)  # `import tensorboard` / `import wandb` now fails as if not installed
    out = tmp_path / "out"
    assert main([*COMMANDS[command](out), "--log", sink]) == 2
    err = capsys.readouterr().err
    assert f"pip install 'selfmodels[{sink}]'" in err and err.count("\n") == 1
    assert not out.exists()  # nothing started


def test_bad_input_with_log_leaves_no_event_file_or_wandb_run(tmp_path, private_cache):
    """The sinks open at the first record: a run refused before training writes nothing at all."""
    out = tmp_path / "out"
    argv = ["forward", "train", "--out", str(out), "--corpus", str(write_corpus(tmp_path)), *GPT_FLAGS,
            "--source", "1", "--target", "7", "--log", "tensorboard", "wandb"]
    assert main(argv) == 2
    assert not out.exists()
    with Mirror(tmp_path / "quiet", ["tensorboard", "wandb"]):
        pass
    assert not (tmp_path / "quiet").exists()


def test_check_sinks_refuses_an_unknown_sink():
    with pytest.raises(UserError, match="unknown --log"):
        check_sinks(["mlflow"])
    assert check_sinks(["tensorboard", "tensorboard"]) == ("tensorboard",)
