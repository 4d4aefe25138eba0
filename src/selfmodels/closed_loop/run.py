"""One condition end to end (``selfmodels closed-loop``): train our GPT from scratch (or fine-tune a pretrained
subject, ``--subject NAME``) with the loop closed, then measure it; everything in one run directory.

Written there: ``config.json`` (the settings and their key), ``metrics.jsonl`` and ``checkpoint.safetensors`` (the
loop's; an interrupted run resumes from it), for our GPT ``tokenizer.json`` (its BPE), ``model.safetensors`` (the
whole closed loop's state: ``network.*``, ``forward_model.*``, ``signal.*``, ``gate.*``, with the run's key in its
metadata; :func:`selfmodels.closed_loop.load.load_closed_loop` reads it back) and, last, ``result.json``. A finished
run with the same key is read back, never recomputed; a directory holding a run of other settings is refused.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from selfmodels.artifacts import read_json, write_config, write_json
from selfmodels.closed_loop.build import build_run
from selfmodels.closed_loop.conditions import CONDITIONS
from selfmodels.closed_loop.config import ClosedLoopConfig, default_bottleneck
from selfmodels.closed_loop.data import LoopData, load_data, load_subject_data
from selfmodels.closed_loop.load import save_model
from selfmodels.closed_loop.measure import DEFINITIONS, evaluate
from selfmodels.closed_loop.task import ClosedLoopTask
from selfmodels.configs import to_dict
from selfmodels.curves import Mirror
from selfmodels.data.bpe import save_tokenizer
from selfmodels.errors import UserError, require
from selfmodels.subjects.config import GPT_NAME
from selfmodels.subjects.lm_training import WindowDraws
from selfmodels.training import train


def _refuse_other_settings(out: Path, key: str) -> dict | None:
    """The finished record when ``out`` holds this run; None when it holds nothing or this run unfinished."""
    for name in ("result.json", "config.json"):
        path = out / name
        if path.is_file():
            found = read_json(path).get("key")
            if found != key:
                raise UserError(f"{out} holds a closed-loop run with other settings (key {found} != {key}): use "
                                "another --out or delete it")
    done = out / "result.json"
    return read_json(done) if done.is_file() else None


def _pretrained(subject) -> dict:
    """What the pretrained subject was before its fine-tune: name, family, shape, source and weight digest."""
    info = subject.describe()
    return {k: info.get(k) for k in ("name", "family", "n_layers", "d_model", "params", "id", "revision", "weights_sha256",
                                     "weights_hash")}


def _parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def run_condition(cfg: ClosedLoopConfig, out: str | Path, device: torch.device | str = "cpu", progress: bool = True,
                  log: tuple[str, ...] = (), data: LoopData | None = None, snapshots: bool = False) -> dict:
    """Train and measure ``cfg.loop.condition`` in ``out``; returns the run's record (``result.json``).
    ``log``: sinks the training curve is mirrored to (:mod:`selfmodels.curves`); ``data``: the text, when the
    caller has it loaded (a grid's runs share it); ``snapshots``: keep the weights at every evaluation in
    ``out/snapshots`` (:class:`ClosedLoopTask`; the grid's open-loop comparisons at matched validation loss)."""
    cfg.validate()
    out, device, key = Path(out), torch.device(device), cfg.key()
    record = _refuse_other_settings(out, key)
    if record is not None:
        return record
    began = time.perf_counter()
    subject = None
    if data is None and cfg.main != GPT_NAME:  # a pretrained subject reads the corpus with its own tokenizer
        subject, data = load_subject_data(cfg.main, cfg.corpus, cfg.seq_len, cfg.eval_windows, device, progress)
    data = data or load_data(cfg.corpus, cfg.seq_len, cfg.eval_windows, progress)
    closed = build_run(cfg, device, data.tokenizer, subject)
    context = closed.trunk.context
    require(context is None or cfg.seq_len <= context,
            f"--seq-len {cfg.seq_len} is longer than the {context} positions of {cfg.main}: use --seq-len {context} at most")
    pretrained = None if cfg.main == GPT_NAME else _pretrained(closed.subject)  # before its fine-tune
    write_config(out, {**to_dict(cfg), "key": key})
    if cfg.main == GPT_NAME:
        save_tokenizer(data.tokenizer, out / "tokenizer.json")
    draws = WindowDraws.for_rank(data.train, cfg.seq_len, cfg.lm.batch_size, cfg.seed)
    val = (data.eval_x, data.eval_y)
    task = ClosedLoopTask(closed, cfg.lm, cfg.loop, draws, val, identity={"key": key},
                          snapshots=out / "snapshots" if snapshots else None)
    condition = CONDITIONS.get(cfg.loop.condition)
    with Mirror(out, log, name=f"{condition.name}-seed{cfg.seed}", config=to_dict(cfg)) as mirror:
        outcome = train(task, cfg.lm.schedule(), out, progress=progress, mirror=mirror)
    closed.eval().requires_grad_(False)
    save_model(closed, out / "model.safetensors", key)
    last = outcome.metrics
    loop = cfg.loop
    record = {
        "key": key, "condition": condition.name, "description": condition.description,
        "function_class": condition.function_class, "seed": cfg.seed,
        "indices": {"source": loop.source, "inject": loop.inject, "target": loop.target},
        "shift": loop.shift if condition.name == "shifted" else None,
        "bottleneck": (loop.bottleneck or default_bottleneck(closed.trunk.d_model)) if condition.name == "autoencoder" else None,
        "lm_into_forward": loop.lm_into_forward, "main": cfg.main, "subject": pretrained,
        "params": {"main": _parameters(closed.network), "forward": _parameters(closed.forward_model), "gate": _parameters(closed.gate),
                   "signal_trainable": _parameters(closed.signal, trainable_only=True)},
        "training": {"steps": cfg.lm.steps, "train_loss": last.get("loss"), "train_ce": last.get("ce"),
                     "train_forward_mse": last.get("forward_mse"), "seconds_per_step": outcome.seconds_per_step()},
        "data": data.info,
        **evaluate(closed, data.eval_x, data.eval_y, cfg.lm.batch_size, data.eval_bytes),
        "definitions": DEFINITIONS,
        "seconds": time.perf_counter() - began,
    }
    write_json(out / "result.json", record)
    return read_json(out / "result.json")  # the JSON form (NaN as null), as a finished run reads back
