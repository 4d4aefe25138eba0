"""The program the tests in this folder start under torchrun (two processes, gloo on CPU):

    python -m torch.distributed.run --nproc_per_node 2 ... dist_harness.py SCENARIO OUT [ARGS...]

Each scenario runs through :func:`selfmodels.distributed.run_main` with the CLI's error handling (a
UserError becomes one ``selfmodels: error: ...`` line and exit status 2), as ``selfmodels`` under
torchrun does. Every rank leaves in OUT:

- ``outcome.rank{r}.json``: its exit status and error message (None when it succeeded);
- ``writes.rank{r}.json``: every file under ``OUT/work`` it opened for writing, renamed into place or
  removed while the scenario ran, seen by an audit hook (it observes; nothing is patched);
- what the scenario returned (``result.rank{r}.pt``).

Test-only knobs, read here and nowhere in the library: ``HARNESS_FAIL_RANK`` (the rank that fails, in the
``fail-*`` scenarios) and ``HARNESS_RECORD_ONLY=1`` (every rank exits 0 after recording its outcome, so that
torchrun does not end the other ranks before they have recorded theirs).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from selfmodels import distributed
from selfmodels.errors import UserError

HERE = Path(__file__).resolve().parent

# ---- what the scenarios train (shared with the tests, which build the one-process references) ---------

FORWARD_STEPS, FORWARD_BATCH = 24, 4  # per rank; the reference takes both ranks' batches at once (8)


def forward_model():
    from selfmodels.forward.model import ForwardModel, ForwardModelConfig

    torch.manual_seed(0)
    return ForwardModel(ForwardModelConfig(d_model=8, n_head=2, d_head=4))


def forward_config(steps: int = FORWARD_STEPS, batch_size: int = FORWARD_BATCH):
    from selfmodels.forward.train import ForwardTrainConfig

    return ForwardTrainConfig(steps=steps, batch_size=batch_size, lr=3e-3, log_every=5, checkpoint_every=5)


def forward_generator(rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(100 + rank)


def forward_batches(generator: torch.Generator, fail_at: int | None = None):
    """Endless (source, target) pairs of shape (FORWARD_BATCH, 3, 8), drawn from ``generator``."""
    step = 0
    while True:
        if step == fail_at:
            raise RuntimeError("injected failure")
        x = torch.randn(FORWARD_BATCH, 3, 8, generator=generator)
        yield x, torch.tanh(x.roll(1, dims=-1)) + 0.1 * torch.randn(x.shape, generator=generator)
        step += 1


STREAM_T, STREAM_BATCH, STREAM_STEPS = 8, 2, 20  # per rank; the reference takes both ranks' batches at once (4)


def stream_subject():
    """A tiny GPT subject (3 blocks, d = 16) and 24 windows of tokens for it."""
    from selfmodels.nets.gpt import GPT, GPTConfig
    from selfmodels.subjects.gpt import GPTSubject

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=50, block_size=STREAM_T, n_layer=3, n_head=2, d_model=16)).eval().requires_grad_(False)
    tokens = torch.randint(0, 50, (24 * STREAM_T + 1,), generator=torch.Generator().manual_seed(1))
    return GPTSubject(gpt), tokens


def stream_of(subject, tokens, shard, batch_size: int = STREAM_BATCH):
    """The shuffle-buffered activation stream both the scenario and its reference draw from."""
    from selfmodels.forward.stream import ActivationStream

    return ActivationStream(subject, tokens, [-1, 0, 2], STREAM_T, batch_size, buffer_sequences=6, pass_sequences=2,
                            seed=3, shard=shard)


def stream_models():
    """Two forward models on two pairs, trained together from one stream."""
    from selfmodels.forward.model import ForwardModel, ForwardModelConfig

    torch.manual_seed(0)
    return {"a": (ForwardModel(ForwardModelConfig(d_model=16, n_head=2, d_head=8)), -1, 0),
            "b": (ForwardModel(ForwardModelConfig(d_model=16, n_head=2, d_head=8)), 0, 2)}


LM_STEPS, LM_BATCH, LM_SEED = 12, 2, 5  # per rank; the reference draws both ranks' windows each step


def lm_problem():
    """A tiny GPT subject with a self-modeling objective (extra head outputs predicting block 0's residual), its
    token stream, held-out windows and training settings."""
    from selfmodels.lm_selfmodeling.objective import AuxiliaryObjective
    from selfmodels.nets.gpt import GPT, GPTConfig
    from selfmodels.subjects.gpt import GPTSubject
    from selfmodels.subjects.lm_training import LMTrainConfig

    torch.manual_seed(0)
    subject = GPTSubject(GPT(GPTConfig(vocab_size=40, block_size=STREAM_T, n_layer=2, n_head=2, d_model=16)))
    objective = AuxiliaryObjective("self-model", "resid:0", d_model=16, site_width=16)
    tokens = torch.randint(0, 40, (400,), generator=torch.Generator().manual_seed(2))
    val = (tokens[:4 * STREAM_T].view(4, STREAM_T), tokens[1:4 * STREAM_T + 1].view(4, STREAM_T))
    cfg = LMTrainConfig(steps=LM_STEPS, batch_size=LM_BATCH, lr=3e-3, eval_every=4, eval_batches=1)
    return subject, objective, tokens, val, cfg


def lm_generator(rank: int) -> torch.Generator:
    from selfmodels.training.rng import derived_seed

    return torch.Generator().manual_seed(derived_seed("lm", LM_SEED, rank, 2))


LM_GRID_WORDS = "the cat sat on a mat and the dog ran to the park while birds sang in old green trees near water".split()


def lm_grid(corpus: Path):
    """A tiny self-modeling-LM grid (baseline and activation-l2, 2 seeds: 4 runs, then matched snapshots) on a
    corpus file written at ``corpus`` when missing. Both the scenario and its one-process reference build it."""
    import random

    from selfmodels.lm_selfmodeling.grid import LMGrid
    from selfmodels.lm_selfmodeling.observer import ObserverConfig
    from selfmodels.lm_selfmodeling.run import LMRunConfig, ObjectiveConfig
    from selfmodels.nets.gpt import GPTConfig
    from selfmodels.subjects.lm_training import LMTrainConfig
    from selfmodels.subjects.registry import CorpusConfig

    if not corpus.is_file():
        rng = random.Random(0)
        corpus.write_text("\n".join(" ".join(rng.choice(LM_GRID_WORDS) for _ in range(12)) + "." for _ in range(700)))
    base = LMRunConfig(
        seq_len=16, gpt=GPTConfig(n_layer=3, n_head=2, d_model=32), corpus=CorpusConfig(corpus=str(corpus), vocab_size=300),
        lm=LMTrainConfig(steps=4, batch_size=4, lr=3e-3, eval_every=2),
        observer=ObserverConfig(near=[0, 1], far=[-1, 0], steps=3, batch_size=4, d_head=8, train_windows=8, eval_windows=4),
        eval_windows=4, estimate_llc=False)
    return LMGrid(base, [ObjectiveConfig(), ObjectiveConfig(method="activation-l2", strength=1.0)], [0, 1])


def llc_problem():
    """A small trained MLP in float64, its data and LLC settings (3 chains: 2 on rank 0, 1 on rank 1)."""
    from selfmodels.complexity.llc import LLCConfig, cross_entropy

    torch.manual_seed(0)
    x = torch.randn(96, 6, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 2)).double()
    for _ in range(100):
        loss = cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p -= 0.5 * g
    return model, TensorDataset(x, y), LLCConfig(epsilon=1e-3, gamma=100.0, chains=3, draws=30, batch_size=32, seed=7)


def llc_summary(result) -> dict:
    return {"traces": result.loss_traces, "mean": result.mean, "std": result.std, "per_chain": result.per_chain,
            "flags": result.flags, "init_loss": result.init_loss}


def tiny_data():
    """tests/selfmodeling's synthetic dataset (its conftest's make_tiny_data)."""
    spec = importlib.util.spec_from_file_location("selfmodeling_fixtures", HERE.parent / "selfmodeling" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_data()


def grid_config():
    from selfmodels.selfmodeling.grid import GridConfig

    # 4 runs (2 per rank), each with an LLC of its own (2 chains, 10 draws: the rank's alone).
    return GridConfig(task="mnist", hidden=[5], methods=["baseline", "self-model"], strengths=[1.0], seeds=[0, 1],
                      epochs=1, batch_size=32, llc="paper", llc_chains=2, llc_draws=10)


# ---- the scenarios -------------------------------------------------------------------------------------

def _forward(work: Path, rank: int, fail_at: int | None = None, **_):
    from selfmodels.forward.train import train_forward

    fm = work / "fm"
    # Half the steps, then the rest from the checkpoint (every rank's data generator comes back).
    generator = forward_generator(rank)
    first = train_forward(forward_model(), forward_batches(generator, fail_at), forward_config(steps=FORWARD_STEPS // 2),
                          torch.device("cpu"), fm, generator=generator, progress=False)
    generator = torch.Generator().manual_seed(12345)  # replaced by the checkpoint's state for this rank
    model = forward_model()
    info = train_forward(model, forward_batches(generator), forward_config(), torch.device("cpu"), fm,
                         generator=generator, progress=False)
    return {"state": model.state_dict(), "info": info, "first": first}


def _stream(work: Path, rank: int, **_):
    from selfmodels.forward.train import train_many

    subject, tokens = stream_subject()
    many = work / "many"
    # Half the steps, then the rest from the checkpoint (every rank's stream state comes back).
    first = train_many(stream_models(), stream_of(subject, tokens, distributed.world()),
                       forward_config(steps=STREAM_STEPS // 2, batch_size=STREAM_BATCH), torch.device("cpu"), many, progress=False)
    models = stream_models()
    info = train_many(models, stream_of(subject, tokens, distributed.world()),
                      forward_config(steps=STREAM_STEPS, batch_size=STREAM_BATCH), torch.device("cpu"), many, progress=False)
    return {"states": {name: m.state_dict() for name, (m, _, _) in models.items()}, "info": info, "first": first}


def _lm(work: Path, rank: int, **_):
    import dataclasses

    from selfmodels.subjects.lm_training import train_language_model

    # Half the steps, then the rest from the checkpoint (every rank's window generator comes back).
    subject, objective, tokens, val, cfg = lm_problem()
    first = train_language_model(subject, objective, 1.0, dataclasses.replace(cfg, steps=LM_STEPS // 2), tokens, val,
                                 STREAM_T, work / "lm", LM_SEED, progress=False)
    subject, objective, tokens, val, cfg = lm_problem()
    info = train_language_model(subject, objective, 1.0, cfg, tokens, val, STREAM_T, work / "lm", LM_SEED, progress=False)
    return {"main": subject.model.state_dict(), "aux": objective.state_dict(), "info": info, "first": first}


def _llc(work: Path, rank: int, fail: bool = False, **_):
    from selfmodels.complexity.llc import cross_entropy, estimate_llc

    model, data, config = llc_problem()
    if fail:
        raise UserError("injected failure")
    return llc_summary(estimate_llc(model, data, cross_entropy, config, progress=False))


def _grid(work: Path, rank: int, **_):
    from selfmodels.selfmodeling.grid import run_and_report

    return run_and_report(grid_config(), work / "grid", progress=False, data=tiny_data())


def _lm_grid(work: Path, rank: int, argv=(), **_):
    from selfmodels.lm_selfmodeling.grid import run_grid, write_outputs

    results = run_grid(lm_grid(Path(argv[0])), work / "lm-grid", progress=False)
    write_outputs(results, work / "lm-grid")
    return results


def _stuck(work: Path, rank: int, **_):
    if rank == 1:
        time.sleep(120)  # never reaches the first collective; rank 0 waits in DDP's set-up
    return _forward(work, rank)


def _cli(work: Path, rank: int, argv=(), **_):
    """``selfmodels`` commands (their argument lists separated by ``::``), one after the other."""
    from selfmodels.cli import build_parser

    commands: list[list[str]] = [[]]
    for arg in argv:
        commands.append([]) if arg == "::" else commands[-1].append(arg)
    for command in commands:
        args = build_parser().parse_args(command)
        assert args.func(args) == 0
    return 0


SCENARIOS = {"forward": _forward, "stream": _stream, "lm": _lm, "llc": _llc, "grid": _grid, "lm-grid": _lm_grid, "stuck": _stuck, "cli": _cli,
             "fail-llc": lambda work, rank, fail_rank, **kw: _llc(work, rank, fail=rank == fail_rank),
             "fail-forward": lambda work, rank, fail_rank, **kw: _forward(work, rank, fail_at=5 if rank == fail_rank else None)}


# ---- recording -----------------------------------------------------------------------------------------

class WriteLog:
    """Paths under ``root`` that this process opens for writing, renames into place or removes, while on."""

    def __init__(self, root: Path):
        self.root, self.on, self.events = str(root.resolve()), False, []
        sys.addaudithook(self)

    def __call__(self, event: str, args: tuple) -> None:
        if not self.on:
            return
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else \
                bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
        elif event in ("os.rename", "os.remove"):
            path, writing = args[1] if event == "os.rename" else args[0], True
        else:
            return
        if writing and isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(self.root + os.sep):
                self.events.append((event, os.path.relpath(path, self.root)))


def main(scenario: str, out: str, *argv: str) -> int:
    rank = int(os.environ["RANK"])
    out = Path(out)
    work = out / "work"
    log = WriteLog(work)
    fail_rank = int(os.environ.get("HARNESS_FAIL_RANK", "-1"))
    began, status, message, result = time.perf_counter(), 0, None, None

    def scenario_fn():
        log.on = True
        try:
            return SCENARIOS[scenario](work, distributed.world()[0], fail_rank=fail_rank, argv=argv)
        finally:
            log.on = False

    try:  # as selfmodels.cli.main does, around distributed.run_main(args.func, args)
        result = distributed.run_main(scenario_fn)
    except UserError as exc:
        print(f"selfmodels: error: {exc}", file=sys.stderr, flush=True)
        status, message = 2, str(exc)
    except Exception as exc:  # a bug: its traceback, as Python prints it
        import traceback

        traceback.print_exc()
        status, message = 1, f"{type(exc).__name__}: {exc}"
    (out / f"outcome.rank{rank}.json").write_text(json.dumps(
        {"status": status, "message": message, "seconds": time.perf_counter() - began}))
    (out / f"writes.rank{rank}.json").write_text(json.dumps(log.events))
    if result is not None and status == 0:
        torch.save(result, out / f"result.rank{rank}.pt")
    return 0 if os.environ.get("HARNESS_RECORD_ONLY") == "1" else status


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
