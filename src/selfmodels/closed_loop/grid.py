"""``selfmodels reproduce closed-loop``: the conditions x seeds of the closed loop, each run measured by the battery,
with the open-loop runs the comparisons need.

Units (every one through :func:`selfmodels.workers.run_units`, keyed by its inputs, resumable, a finished one read
back), under ``OUT/runs/``:

1. **Training**, ``<condition>-seed<S>/`` (:func:`~selfmodels.closed_loop.run.run_condition`; ``result.json``
   keyed by :meth:`ClosedLoopConfig.key`, every setting but the battery's), for every condition and seed, plus per
   seed ``open-loop-equal-flops-seed<S>/``: the open-loop condition trained for ``equal_flops_steps`` steps, so that
   its GPT's training FLOPs equal the closed loop's (the GPT's, F's and G's; :func:`training_flops`). It keeps its
   weights at every evaluation (``snapshots/step_N.*``): the open-loop snapshots for the comparison at matched
   validation loss. The learning rate is constant, so its first ``steps`` steps are the open-loop run's.
2. **Measurement**, ``battery.json`` beside ``result.json`` (and ``snapshots/step_N.battery.json`` for a matched
   snapshot): :func:`~selfmodels.closed_loop.battery.measure_battery` plus the pre-grid checks' skip KL
   (:func:`~selfmodels.closed_loop.checks.skip_kl`), keyed by :func:`battery_key` (the training's key, the weights
   measured and the battery's settings), so a changed battery setting re-measures without retraining. The
   battery's seed is the run's (every condition of a seed gets the same observer initialisation and directions).

Matched validation loss: each condition's run is compared with the snapshot of the same seed's equal-FLOPs open-loop
run whose validation loss (on the same evaluation windows) is nearest its own; the snapshot is measured once per
(seed, step). The comparisons themselves are :mod:`selfmodels.closed_loop.comparisons`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfmodels import distributed
from selfmodels.artifacts import read_json, read_jsonl, write_json
from selfmodels.closed_loop.conditions import CONDITIONS
from selfmodels.closed_loop.config import PRESETS, ClosedLoopConfig
from selfmodels.configs import from_dict, to_dict
from selfmodels.errors import UserError, require
from selfmodels.stages import content_key
from selfmodels.subjects.config import GPT_NAME
from selfmodels.workers import check_workers, run_units

OPEN = "open-loop"
EQUAL_FLOPS = "open-loop-equal-flops"
MEASURE_VERSION = 1  # of what the measurement unit adds to the battery (skip_kl)
FLOPS_RULE = ("training FLOPs per token = 3 x forward FLOPs (the backward pass ~ 2 x the forward) of each part: our GPT "
              "(2 per weight of every block matmul and the LM head, attention products at the average causal length "
              "T/2: GPT.flops_per_token), F (ForwardModel.flops_per_token(T), same rule), G (2 d^2, one d x d matmul); "
              "embedding lookups, norms and the loss are not counted. The closed loop spends GPT + F + G per token; the "
              "equal-FLOPs open loop trains its GPT round(steps x (GPT + F + G) / GPT) steps (its own co-trained F is a "
              "measurement, not counted)")


@dataclass
class GridRun:
    """One training unit: its directory name, its settings, its role and whether it keeps snapshots."""

    name: str
    cfg: ClosedLoopConfig
    role: str  # "condition" or "equal-flops"
    snapshots: bool = False


@dataclass
class ClosedLoopGrid:
    """The grid: one base config, the conditions (registry names, open loop among them) and the seeds."""

    base: ClosedLoopConfig
    conditions: list[str] = field(default_factory=lambda: CONDITIONS.names())
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    workers: int = 1
    threads: int = 1
    device: str = "cpu"
    equal_flops: bool = True
    note: str = ""

    def validate(self) -> None:
        require(self.workers >= 1, f"--workers must be at least 1, got {self.workers}")
        require(OPEN in self.conditions, f"the closed-loop grid needs the {OPEN} condition (its baseline)")
        for name in self.conditions:
            CONDITIONS.get(name)  # unknown -> one message listing the registered ones
        require(len(set(self.seeds)) == len(self.seeds) and self.seeds, f"the grid's seeds must be distinct, got {self.seeds}")
        self.base.validate()

    def runs(self, equal_flops_steps: int | None) -> list[GridRun]:
        """Every training unit, seed by seed: the conditions in order, then the equal-FLOPs open loop."""
        out = []
        for seed in self.seeds:
            for name in self.conditions:
                out.append(GridRun(f"{name}-seed{seed}", self.config(name, seed), "condition"))
            if self.equal_flops and equal_flops_steps is not None:
                cfg = self.config(OPEN, seed)
                cfg = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, steps=equal_flops_steps))
                out.append(GridRun(f"{EQUAL_FLOPS}-seed{seed}", cfg, "equal-flops", snapshots=True))
        return out

    def config(self, condition: str, seed: int) -> ClosedLoopConfig:
        b = self.base
        return dataclasses.replace(b, seed=seed, loop=dataclasses.replace(b.loop, condition=condition),
                                   battery=dataclasses.replace(b.battery, seed=seed))


def preset_grid(name: str, workers: int = 1, device: str = "cpu", threads: int = 1) -> ClosedLoopGrid:
    """The grid of preset ``name`` (``quick`` or ``full``: the closed-loop command's preset of that name, every
    condition, seeds 0, 1, 2); an unknown name is one message listing the known ones."""
    return ClosedLoopGrid(PRESETS.config(ClosedLoopConfig, name), workers=workers, threads=threads, device=device,
                          note=f"preset {name}")


# ---- FLOPs ----------------------------------------------------------------------------------------
def subject_flops_per_token(model: torch.nn.Module, n_layers: int, d_model: int, seq_len: int) -> int:
    """Forward FLOPs per token of a pretrained causal LM by :data:`FLOPS_RULE`'s rule: 2 per weight of everything but
    the input embedding (a lookup; a tied head's weight is counted once, as the head's), plus the attention products
    at the average causal length, ``n_layers x 2 x 2 x (T / 2) x d``."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embedding.data_ptr()
    weights = sum(p.numel() for p in model.parameters()) - (0 if tied else embedding.numel())
    return 2 * weights + n_layers * 2 * 2 * (seq_len // 2) * d_model


def training_flops(cfg: ClosedLoopConfig, vocab_size: int | None, subject=None) -> dict:
    """Training FLOPs per token of the network (our GPT, or the pretrained ``subject``), F and G
    (:data:`FLOPS_RULE`), their share and the equal-FLOPs steps."""
    from selfmodels.forward.architectures import build_forward_model
    from selfmodels.nets.gpt import GPT

    if subject is None:
        gpt_cfg = dataclasses.replace(cfg.gpt, vocab_size=vocab_size, block_size=cfg.seq_len)
        with torch.device("meta"):  # shapes only: nothing is allocated
            network = GPT(gpt_cfg).flops_per_token()
        d = gpt_cfg.d_model
    else:
        d = subject.d_model
        network = subject_flops_per_token(subject.model, subject.n_layers, d, cfg.seq_len)
    with torch.device("meta"):
        forward = build_forward_model(cfg.forward, d)
    per_forward = getattr(forward, "flops_per_token", None)
    forward_flops = per_forward(cfg.seq_len) if per_forward else 2 * sum(p.numel() for p in forward.parameters())
    parts = {"gpt": 3 * network, "forward": 3 * forward_flops, "gate": 3 * 2 * d * d}
    share = (parts["forward"] + parts["gate"]) / parts["gpt"]
    return {"per_token": parts, "share": share, "steps": cfg.lm.steps,
            "equal_flops_steps": int(round(cfg.lm.steps * (1 + share))), "rule": FLOPS_RULE}


# ---- units ----------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}  # this process's text, loaded once per distinct data settings


def run_data(cfg: ClosedLoopConfig):
    """The runs' text (our BPE's tokens, or a pretrained subject's own tokenizer's), loaded once per process."""
    return _subject_and_data(cfg)[1]


def _subject_and_data(cfg: ClosedLoopConfig):
    """``(subject, data)``: the pretrained subject as loaded (None for our GPT) and its text, kept per process."""
    from selfmodels.closed_loop.data import load_data, load_subject_data

    key = repr((cfg.main, to_dict(cfg.corpus), cfg.seq_len, cfg.eval_windows))
    if key not in _WORKER:
        _WORKER.clear()
        _WORKER[key] = (None, load_data(cfg.corpus, cfg.seq_len, cfg.eval_windows)) if cfg.main == GPT_NAME else \
            load_subject_data(cfg.main, cfg.corpus, cfg.seq_len, cfg.eval_windows, torch.device("cpu"))
    return _WORKER[key]


def _train(cfg: dict, run_dir: str, device: str, snapshots: bool) -> dict:
    from selfmodels.closed_loop.run import run_condition

    config = from_dict(ClosedLoopConfig, cfg)
    return run_condition(config, run_dir, device=device, progress=False, data=run_data(config), snapshots=snapshots)


def _measure(cfg: dict, run_dir: str, weights: str, device: str) -> dict:
    config = from_dict(ClosedLoopConfig, cfg)
    return measure_run(config, run_dir, weights, run_data(config), device)


def battery_key(cfg: ClosedLoopConfig, weights: str) -> str:
    """The measurement's key: the training's key, which weights (``final`` or ``step_N``) and the battery's settings."""
    from selfmodels.closed_loop.battery import BATTERY_VERSION

    return content_key({"training": cfg.key(), "weights": weights, "battery": to_dict(cfg.battery),
                        "version": [BATTERY_VERSION, MEASURE_VERSION]})


def battery_path(run_dir: str | Path, weights: str) -> Path:
    run_dir = Path(run_dir)
    return run_dir / "battery.json" if weights == "final" else run_dir / "snapshots" / f"{weights}.battery.json"


def weights_path(run_dir: str | Path, weights: str) -> Path:
    run_dir = Path(run_dir)
    return run_dir / "model.safetensors" if weights == "final" else run_dir / "snapshots" / f"{weights}.safetensors"


def load_trained(cfg: ClosedLoopConfig, run_dir: str | Path, weights: str, tokenizer, device: torch.device | str = "cpu"):
    """The closed loop of the run in ``run_dir`` with its ``weights`` (``final``: the run's model, through
    :func:`~selfmodels.closed_loop.load.load_closed_loop` and its checks; ``step_N``: a snapshot, built as the run
    was, :func:`~selfmodels.closed_loop.build.build_run`), frozen, in eval mode."""
    from selfmodels.closed_loop.build import build_run
    from selfmodels.closed_loop.load import load_closed_loop, read_state

    if weights == "final":
        return load_closed_loop(run_dir, device)
    closed = build_run(cfg, device, tokenizer)
    closed.load_state_dict(read_state(weights_path(run_dir, weights), device))
    return closed.eval().requires_grad_(False)


def measure_run(cfg: ClosedLoopConfig, run_dir: str | Path, weights: str, data, device: torch.device | str = "cpu",
                progress: bool = False) -> dict:
    """The battery and the skip KL of a trained run's ``weights`` (``final`` or ``step_N``), kept in
    :func:`battery_path`; read back when its key (:func:`battery_key`) matches, measured again when it does not."""
    from selfmodels.closed_loop.battery import measure_battery
    from selfmodels.closed_loop.checks import skip_kl

    path, key = battery_path(run_dir, weights), battery_key(cfg, weights)
    if path.is_file() and read_json(path).get("key") == key:
        return read_json(path)
    source = weights_path(run_dir, weights)
    if not source.is_file():
        raise UserError(f"{source} is missing: train the run first (the same command trains it)")
    closed = load_trained(cfg, run_dir, weights, data.tokenizer, device)
    if cfg.loop.condition == OPEN and cfg.battery.estimate_llc:
        # Open loop never uses G, so the battery's LLC (the GPT's and G's weights) cannot differentiate through it;
        # the loop's logits are the GPT's own, so its LLC is the GPT's alone, on the battery's windows.
        measured = measure_battery(closed, data, dataclasses.replace(cfg.battery, estimate_llc=False), device, progress)
        measured["llc"] = _open_loop_llc(closed, data, cfg, device)
    else:
        measured = measure_battery(closed, data, cfg.battery, device, progress)
    record = {"key": key, "training_key": cfg.key(), "of": weights, **measured,
              "skip_kl": skip_kl(closed, data.eval_x, cfg.battery.batch_size)}
    write_json(path, record)
    return read_json(path)


def _open_loop_llc(closed, data, cfg: ClosedLoopConfig, device) -> dict:
    """The LLC of an open loop's GPT (G unused, F frozen) on the battery's LLC windows (``llc_windows`` spread over
    the training stream, T + 1 tokens each), as the battery's ``llc`` entry."""
    from selfmodels.complexity.lm_llc import lm_llc
    from selfmodels.data.windows import spread_windows

    x, y = spread_windows(data.train, int(data.eval_x.shape[1]), cfg.battery.llc_windows, what="LLC (training)")
    gpt = closed.gpt
    flags = [p.requires_grad for p in gpt.parameters()]
    try:
        gpt.requires_grad_(True)
        result = lm_llc(gpt, torch.cat([x, y[:, -1:]], dim=1), cfg.battery.llc, device=device, progress=False)
    finally:
        for p, flag in zip(gpt.parameters(), flags):
            p.requires_grad_(flag)
    return {**result.summary(), "llc_sampled_params": int(result.diagnostics["num_params"]),
            "llc_note": "open loop: G is never used, so the LLC is the GPT's alone"}


# ---- the grid -------------------------------------------------------------------------------------
def _snapshots(run_dir: Path) -> list[dict]:
    """The snapshots an equal-FLOPs run kept: ``[{"step", "val_loss"}]`` by step."""
    rows = [read_json(p) for p in (run_dir / "snapshots").glob("step_*.json") if re.fullmatch(r"step_\d+\.json", p.name)]
    return sorted(rows, key=lambda r: r["step"])


def nearest(snapshots: list[dict], val_loss: float) -> dict | None:
    """The snapshot whose validation loss is nearest ``val_loss`` (ties: the earlier step)."""
    return min(snapshots, key=lambda r: (abs(r["val_loss"] - val_loss), r["step"])) if snapshots else None


CURVE_KEYS = ("step", "val_loss", "val_loss_without_injection", "dependency", "val_accuracy", "val_forward_cosine",
              "val_skip_cosine", "val_injection_norm", "gate_norm", "ce")


def _is_open_loop_final(snapshot: dict, open_record: dict, steps: int) -> bool:
    """Whether an equal-FLOPs snapshot is the open-loop run's final model: the same step and the same validation
    loss to the bit (the learning rate is constant and seed, data order and initial weights are shared, so the
    equal-FLOPs run's first ``steps`` steps are the open-loop run's; the loss equality checks it)."""
    return snapshot["step"] == steps and snapshot["val_loss"] == open_record["val_loss"]


def curve(run_dir: Path) -> list[dict]:
    """The evaluation lines of a run's ``metrics.jsonl`` (the keys of :data:`CURVE_KEYS`)."""
    path = run_dir / "metrics.jsonl"
    rows = read_jsonl(path) if path.is_file() else []
    return [{k: r.get(k) for k in CURVE_KEYS} for r in rows if r.get("val_loss") is not None]


def run_grid(grid: ClosedLoopGrid, out: str | Path, progress: bool = True) -> dict:
    """Train every run, measure it and the matched open-loop snapshots; returns results.json's content."""
    from selfmodels.closed_loop.comparisons import summarize

    from selfmodels.subjects.lm_training import machine

    out, began, load_before = Path(out), time.perf_counter(), tuple(round(x, 2) for x in os.getloadavg())
    grid.validate()
    check_workers(grid.workers)  # before any data is loaded
    with distributed.main_first():  # fit the BPE and cut the streams once, before the workers read the cache
        subject, data = _subject_and_data(grid.base)
    vocab_size = None if subject is not None else data.tokenizer.get_vocab_size()  # our GPT's head is our BPE's
    flops = training_flops(grid.base, vocab_size, subject)
    runs = grid.runs(flops["equal_flops_steps"])
    device = str(distributed.local_device(torch.device(grid.device)))
    units = dict(workers=grid.workers, threads=grid.threads, progress=progress)
    dirs = {r.name: out / "runs" / r.name for r in runs}
    records = run_units([(_train, to_dict(r.cfg), str(dirs[r.name]), device, r.snapshots) for r in runs],
                        desc="closed-loop runs", **units)
    # What to measure: every run's final weights, and the matched snapshots (one per seed and step).
    matched: dict[str, dict] = {}
    wanted: dict[tuple[int, int], dict] = {}
    by_name = dict(zip([r.name for r in runs], records))
    for r, record in zip(runs, records):
        if r.role != "condition" or r.cfg.loop.condition == OPEN or not grid.equal_flops:
            continue
        snap = nearest(_snapshots(dirs[f"{EQUAL_FLOPS}-seed{r.cfg.seed}"]), record["val_loss"])
        if snap is None:
            continue
        matched[r.name] = snap
        if _is_open_loop_final(snap, by_name[f"{OPEN}-seed{r.cfg.seed}"], r.cfg.lm.steps):
            snap["same_as"] = f"{OPEN}-seed{r.cfg.seed}"  # its final battery serves: the same weights
        else:
            wanted[(r.cfg.seed, snap["step"])] = snap
    calls = [(_measure, to_dict(r.cfg), str(dirs[r.name]), "final", device) for r in runs]
    snap_keys = sorted(wanted)
    equal = {r.cfg.seed: r for r in runs if r.role == "equal-flops"}
    calls += [(_measure, to_dict(equal[s].cfg), str(dirs[equal[s].name]), f"step_{step}", device) for s, step in snap_keys]
    measured = run_units(calls, desc="closed-loop batteries", **units)
    batteries = dict(zip([r.name for r in runs], measured[: len(runs)]))
    snapshot_batteries = dict(zip(snap_keys, measured[len(runs):]))
    curves = {r.name: curve(dirs[r.name]) for r in runs}
    rows = []
    for r, record in zip(runs, records):
        row = {"run": r.name, "role": r.role, "record": record, "battery": batteries[r.name], "curve": curves[r.name]}
        if r.name in matched:
            snap = matched[r.name]
            lines = [line for line in curves[f"{EQUAL_FLOPS}-seed{r.cfg.seed}"] if line["step"] == snap["step"]]
            battery = batteries[snap["same_as"]] if "same_as" in snap else snapshot_batteries[(r.cfg.seed, snap["step"])]
            row["matched"] = {"step": snap["step"], "val_loss": snap["val_loss"], "line": lines[0] if lines else None,
                              "battery": battery, "same_as": snap.get("same_as")}
        rows.append(row)
    settings = {"base": to_dict(grid.base), "conditions": list(grid.conditions), "seeds": list(grid.seeds),
                "workers": grid.workers, "threads": grid.threads, "device": grid.device, "cpu_count": os.cpu_count(),
                "processes": distributed.world()[1], "flops": flops, "data": records[0].get("data"),
                "machine": machine(torch.device(device), load_before),
                "wall_seconds": time.perf_counter() - began}  # this call's: a read-back grid takes seconds
    return summarize(rows, settings, note=grid.note)


def write_outputs(results: dict, out: str | Path) -> None:
    """results.json, report.md and the plots (under torchrun rank 0 writes them; every rank returns once they are)."""
    from selfmodels.closed_loop.report import write_report

    if distributed.is_main():
        write_json(Path(out) / "results.json", results)
        write_report(results, out)
    distributed.barrier()

