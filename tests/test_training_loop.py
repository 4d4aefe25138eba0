"""The one training loop: every trainer interrupted by SIGINT (at a checkpoint, and between two) and run again ends
bit for bit where an uninterrupted run ends; the divergence guard stops a run whose loss becomes NaN or infinite
before updating on it, leaving its last checkpoint intact."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from selfmodels.artifacts import read_jsonl
from selfmodels.training import CHECKPOINT, METRICS, Diverged, Optimized, Schedule, Step, Task, train

HERE = Path(__file__).resolve().parent


def sigint_after(n: int):
    """An ``after_step`` hook that sends this process SIGINT once step ``n`` is done (Python raises
    KeyboardInterrupt there, as it does when a user presses Ctrl-C)."""
    def hook(step: int) -> None:
        if step == n:
            signal.raise_signal(signal.SIGINT)
    return hook


def _tiny_gpt_subject(seed: int = 0, frozen: bool = False):
    from selfmodels.nets.gpt import GPT, GPTConfig
    from selfmodels.subjects.gpt import GPTSubject

    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, d_model=16))
    if frozen:
        gpt.eval().requires_grad_(False)
    return GPTSubject(gpt)


def _tokens(n: int = 600) -> torch.Tensor:
    return torch.randint(0, 40, (n,), generator=torch.Generator().manual_seed(1))


# ---- the five trainers, each as: run(directory, after_step) -> (every weight, the metrics lines) -------------
# Each builds its models afresh from fixed seeds, so two calls start from the same state.

def _forward_model():
    from selfmodels.forward.model import ForwardModel, ForwardModelConfig

    torch.manual_seed(7)
    model = ForwardModel(ForwardModelConfig(d_model=16, n_head=2, d_head=8))
    with torch.no_grad():  # off the exact identity, so that every weight has a gradient from the first step
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape))
    return model


def run_forward_streamed(directory, after_step):
    from selfmodels.forward.stream import ActivationStream
    from selfmodels.forward.train import ForwardTrainConfig, train_many

    subject = _tiny_gpt_subject(frozen=True)
    stream = ActivationStream(subject, _tokens(), [-1, 0, 1], 8, 2, buffer_sequences=6, pass_sequences=2, seed=3)
    models = {"a": (_forward_model(), -1, 0), "b": (_forward_model(), 0, 1)}
    cfg = ForwardTrainConfig(steps=9, batch_size=2, log_every=1, checkpoint_every=3)
    train_many(models, stream, cfg, torch.device("cpu"), directory, progress=False, after_step=after_step)
    return {f"{n}.{k}": v for n, (m, _, _) in models.items() for k, v in m.state_dict().items()}


def run_forward_pairs(directory, after_step):
    from selfmodels.forward.train import ForwardTrainConfig, train_forward

    generator = torch.Generator().manual_seed(4)

    def pairs():
        while True:
            x = torch.randn(3, 5, 16, generator=generator)
            yield x, torch.tanh(x.roll(1, dims=1))

    model = _forward_model()
    cfg = ForwardTrainConfig(steps=9, batch_size=3, log_every=2, checkpoint_every=3)
    train_forward(model, pairs(), cfg, torch.device("cpu"), directory, generator=generator, progress=False,
                  after_step=after_step)
    return model.state_dict()


def run_gpt_cotrained(directory, after_step):
    from selfmodels.subjects.lm_training import CoTrain, LMTrainConfig, train_lm

    gpt = _tiny_gpt_subject().model
    cotrain = CoTrain(_forward_model(), 0, 1)
    tokens = _tokens()
    cfg = LMTrainConfig(steps=9, batch_size=3, eval_every=3, eval_batches=1)
    train_lm(gpt, tokens[:500], tokens[500:], cfg, directory, torch.device("cpu"), seed=2, cotrain=cotrain,
             progress=False, after_step=after_step)
    return {**{f"gpt.{k}": v for k, v in gpt.state_dict().items()}, **{f"fwd.{k}": v for k, v in cotrain.state_dict().items()}}


def run_lm_self_modeling(directory, after_step):
    from selfmodels.lm_selfmodeling.objective import AuxiliaryObjective
    from selfmodels.subjects.lm_training import LMTrainConfig, train_language_model

    subject = _tiny_gpt_subject()
    objective = AuxiliaryObjective("self-model", "resid:0", d_model=16, site_width=16)
    tokens = _tokens()
    val = (tokens[500:532].view(4, 8), tokens[501:533].view(4, 8))
    cfg = LMTrainConfig(steps=9, batch_size=3, eval_every=3)
    train_language_model(subject, objective, 1.0, cfg, tokens[:500], val, 8, directory, seed=2, snapshots=True,
                         progress=False, after_step=after_step)
    return {**{f"main.{k}": v for k, v in subject.model.state_dict().items()},
            **{f"aux.{k}": v for k, v in objective.state_dict().items()}}


def run_classifier(directory, after_step):
    from selfmodels.selfmodeling.objectives import build_objective
    from selfmodels.selfmodeling.train import OptimConfig, train_objective
    from selfmodels.nets.classifiers import MLPClassifier

    spec = importlib.util.spec_from_file_location("selfmodeling_fixtures", HERE / "selfmodeling" / "conftest.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    data = fixtures.make_tiny_data()
    torch.manual_seed(3)
    model = MLPClassifier(16, 8, 3)
    objective = build_objective("self-model", model, 1.0, targets=["hidden_act"], example_input=data.train.tensors[0][:2])
    config = OptimConfig(optimizer="sgd", lr=0.05, batch_size=32, epochs=3, augment=False)  # 3 steps an epoch
    train_objective(objective, data.train, data.val, data.test, config, directory, seed=1, progress=False,
                    after_step=after_step)
    return objective.module.state_dict()


TRAINERS = {"forward-streamed": run_forward_streamed, "forward-pairs": run_forward_pairs,
            "gpt-cotrained": run_gpt_cotrained, "lm-self-modeling": run_lm_self_modeling, "classifier": run_classifier}
TIMED = ("seconds",)  # wall-clock fields: the only ones a rerun may change


def _lines(directory: Path) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in TIMED} for line in read_jsonl(directory / METRICS)]


@pytest.mark.parametrize("where", ["at a checkpoint", "between checkpoints"])
@pytest.mark.parametrize("name", list(TRAINERS))
def test_interrupted_by_sigint_and_rerun_ends_bit_identical(name, where, tmp_path):
    run = TRAINERS[name]
    straight = run(tmp_path / "straight", None)
    stop = 3 if where == "at a checkpoint" else 5  # checkpoints every 3 steps (the classifier: every epoch of 3)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", sigint_after(stop))
    assert (tmp_path / "cut" / CHECKPOINT).is_file()
    resumed = run(tmp_path / "cut", None)
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), f"{name} interrupted {where}: {key} differs"
    assert _lines(tmp_path / "cut") == _lines(tmp_path / "straight")  # every line once, with the same numbers
    if name == "lm-self-modeling":
        assert read_jsonl(tmp_path / "cut" / "snapshots.jsonl") == read_jsonl(tmp_path / "straight" / "snapshots.jsonl")


# ---- the divergence guard ---------------------------------------------------------------------------------

class Regression(Task):
    """Least squares on fixed data, whose target becomes NaN (or inf) from step ``bad_from`` on."""

    name = "toy regression"

    def __init__(self, bad_from: int | None = None, bad=math.nan):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.modules = {"model": self.model}
        self.optimizers = {"model": Optimized(torch.optim.SGD(self.model.parameters(), lr=0.1), list(self.model.parameters()), 1.0)}
        self.x = torch.randn(16, 4)
        self.y = self.x.sum(dim=1, keepdim=True)
        self.bad_from, self.bad = bad_from, bad

    def step(self, step: int) -> Step:
        y = self.y if self.bad_from is None or step < self.bad_from else torch.full_like(self.y, self.bad)
        loss = torch.nn.functional.mse_loss(self.model(self.x), y)
        return Step(loss, {"loss": loss.item()})


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_loss_that_becomes_nan_or_infinite_stops_the_run_with_the_step_and_last_finite_loss(bad, tmp_path):
    schedule = Schedule(10, log_every=1, checkpoint_every=4)
    task = Regression(bad_from=6, bad=bad)  # step index 6 is the 7th step
    written = {}

    def note_checkpoint(step: int) -> None:
        if step == 4:
            written["digest"] = _digest(tmp_path / CHECKPOINT)

    with pytest.raises(Diverged) as caught:
        train(task, schedule, tmp_path, progress=False, after_step=note_checkpoint)
    message = str(caught.value)
    last_good = read_jsonl(tmp_path / METRICS)[-1]
    assert "at step 7" in message and f"{last_good['loss']} at step 6" in message
    assert ("nan" if math.isnan(bad) else "inf") in message
    assert [line["step"] for line in read_jsonl(tmp_path / METRICS)] == [1, 2, 3, 4, 5, 6]  # nothing of step 7
    weights = {k: v.clone() for k, v in task.model.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in weights.values())  # no update on the bad loss
    # The checkpoint is the one of step 4, intact: a fresh task resumes from it and trains on, like a run never stopped.
    assert _digest(tmp_path / CHECKPOINT) == written["digest"]
    healthy = Regression()
    train(healthy, schedule, tmp_path, progress=False)
    straight = Regression()
    train(straight, schedule, tmp_path / "straight", progress=False)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(healthy.model.state_dict()[key], value)


def test_the_guard_names_the_run_and_is_a_user_error(tmp_path):
    from selfmodels.errors import UserError

    with pytest.raises(UserError, match="toy regression: the loss became nan at step 1 .last finite loss None at step 0"):
        train(Regression(bad_from=0), Schedule(3), None, progress=False)


def test_a_checkpoint_of_another_task_is_refused(tmp_path):
    from selfmodels.errors import UserError

    train(Regression(), Schedule(2), tmp_path, progress=False)

    class Other(Regression):
        pass

    with pytest.raises(UserError, match="written by another run"):
        train(Other(), Schedule(4), tmp_path, progress=False)


def test_until_stops_early_and_a_second_call_finishes_like_one(tmp_path):
    first = Regression()
    out = train(first, Schedule(8, log_every=2, checkpoint_every=2, until=4), tmp_path, progress=False)
    assert (out.start, out.step) == (0, 4)
    out = train(Regression(), Schedule(8, log_every=2, checkpoint_every=2), tmp_path, progress=False)
    assert (out.start, out.step) == (4, 8) and len(out.step_seconds) == 4
    straight = Regression()
    train(straight, Schedule(8, log_every=2, checkpoint_every=2), tmp_path / "straight", progress=False)
    assert [line["loss"] for line in read_jsonl(tmp_path / METRICS)] == [line["loss"] for line in read_jsonl(tmp_path / "straight" / METRICS)]


class _TiedLM(nn.Module):
    """An embedding and an LM head over one weight (GPT-2's and SmolLM2's tie)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.head = nn.Linear(4, 11, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_a_checkpoint_stores_a_tied_weight_once_and_restores_the_tie(tmp_path):
    from safetensors import safe_open

    from selfmodels.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = _TiedLM()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(torch.arange(6)), torch.arange(6).flip(0)).backward()
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", 1, {"model": model}, {"opt": opt}, {})
    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as handle:
        names = [k for k in handle.keys() if k.startswith("model.")]
    assert names == ["model.embed.weight"]  # once: safetensors refuses two names over one storage

    torch.manual_seed(1)
    again = _TiedLM()
    again_opt = torch.optim.AdamW(again.parameters(), lr=0.1)
    assert load_checkpoint(tmp_path / "c.safetensors", {"model": again}, {"opt": again_opt}, {})[0] == 1
    assert again.head.weight is again.embed.weight  # still one parameter
    torch.testing.assert_close(again.embed.weight, model.embed.weight, rtol=0, atol=0)
    for a, b in zip(again_opt.state_dict()["state"].values(), opt.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))
