"""Training a condition on the one loop: with G held at zero it trains exactly as open loop; it resumes bit for bit;
the loop's NaN guard stops it."""

from __future__ import annotations

import json

import pytest
import torch

from closed_loop_tiny import INJECTING, SEQ, ids, loop_config, tiny_loop, token_stream
from selfmodels.closed_loop.task import ClosedLoopTask
from selfmodels.errors import UserError
from selfmodels.subjects.config import LMTrainConfig
from selfmodels.subjects.lm_training import WindowDraws
from selfmodels.training import Diverged, Schedule, train

LM = LMTrainConfig(steps=6, batch_size=4, lr=3e-3, eval_every=3)


def task_for(condition: str, seed: int = 0) -> ClosedLoopTask:
    closed = tiny_loop(condition, seed=seed)
    draws = WindowDraws(token_stream(), SEQ, LM.batch_size, [torch.Generator().manual_seed(seed)])
    x = ids(4, seed=5)
    return ClosedLoopTask(closed, LM, loop_config(condition), draws, (x, torch.roll(x, -1, 1)))


def states(task: ClosedLoopTask) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v.clone() for part in ("gpt", "forward_model")
            for k, v in getattr(task.closed, part).state_dict().items()}


@pytest.mark.parametrize("condition", INJECTING)
def test_with_the_gate_held_at_zero_the_network_and_f_train_exactly_as_open_loop(condition):
    reference = task_for("open-loop")
    train(reference, Schedule(5), progress=False)
    held = task_for(condition)
    del held.optimizers["gate"]  # G is never stepped: it stays exactly zero
    train(held, Schedule(5), progress=False)
    assert not held.closed.gate.weight.any()
    expected, got = states(reference), states(held)
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    free = task_for(condition)  # the converse: a gate that learns moves the network away from open loop
    train(free, Schedule(5), progress=False)
    assert free.closed.gate.weight.any()
    assert not all(torch.equal(states(free)[k], v) for k, v in expected.items())


def test_f_is_co_trained_in_every_condition_open_loop_included():
    task = task_for("open-loop")
    before = states(task)
    out = train(task, Schedule(3), progress=False)
    assert any(not torch.equal(v, before[k]) for k, v in states(task).items() if k.startswith("forward_model"))
    assert out.metrics["forward_mse"] > 0 and out.metrics["injection_norm"] == 0.0


@pytest.mark.parametrize("condition", ["forward", "autoencoder"])
def test_an_interrupted_run_resumes_bit_for_bit(condition, tmp_path):
    whole = task_for(condition)
    train(whole, Schedule(6, log_every=1, eval_every=3, checkpoint_every=3), tmp_path / "whole", progress=False)
    first = task_for(condition)
    train(first, Schedule(6, log_every=1, eval_every=3, checkpoint_every=3, until=3), tmp_path / "parts", progress=False)
    second = task_for(condition)
    out = train(second, Schedule(6, log_every=1, eval_every=3, checkpoint_every=3), tmp_path / "parts", progress=False)
    assert out.start == 3
    for part in ("gpt", "forward_model", "gate", "signal"):
        a, b = getattr(whole.closed, part).state_dict(), getattr(second.closed, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    lines = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("whole", "parts")]
    assert lines[0] == lines[1] and len(lines[0]) == 6
    evaluated = json.loads(lines[0][2])  # step 3: the step's numbers and the held-out ones, named apart
    assert {"val_loss", "val_loss_without_injection", "dependency", "val_forward_cosine", "val_skip_cosine",
            "val_injection_norm", "forward_mse", "gate_norm", "injection_norm"} <= set(evaluated)
    assert evaluated["val_forward_mse"] != evaluated["forward_mse"]


def test_a_checkpoint_of_another_condition_is_refused(tmp_path):
    train(task_for("forward"), Schedule(2), tmp_path, progress=False)
    with pytest.raises(UserError, match="written by another run"):
        train(task_for("shifted"), Schedule(4), tmp_path, progress=False)


def test_a_loss_that_becomes_nan_stops_the_run_before_its_update(tmp_path):
    task = task_for("forward")
    with torch.no_grad():
        task.closed.gate.weight.fill_(float("nan"))
    before = states(task)
    with pytest.raises(Diverged, match="at step 1"):
        train(task, Schedule(3), tmp_path, progress=False)
    assert all(torch.equal(v, before[k]) or torch.isnan(v).all() for k, v in states(task).items())
    assert not (tmp_path / "checkpoint.safetensors").exists()
