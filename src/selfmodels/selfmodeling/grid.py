"""``selfmodels regularize``: a grid of runs (task x hidden x method x strength x seed) and its summary.

The grid is resumable: each run lives in ``OUT/runs/<name>/``; a finished run (``result.json``
present) is read back instead of trained again, an interrupted one resumes from its checkpoint.
After the runs, ``OUT/results.json`` gets ``runs`` (one record per run), ``summary`` (one record per
condition: mean and 95% CI over seeds), ``trends`` (see :mod:`~selfmodels.selfmodeling.statistics`)
and ``grid`` (the resolved settings); ``OUT/report.md`` and the PNG plots are written from it.

Across processes (``torchrun``, see :mod:`selfmodels.distributed`): rank r trains runs r, r + world, ...
(each in its own directory, alone: an LLC's chains stay on the rank that owns the run); the records are
gathered, and rank 0 alone writes what the runs share (results.json, report.md, plots).
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from selfmodels import distributed
from selfmodels.artifacts import write_json
from selfmodels.configs import to_dict
from selfmodels.errors import UserError
from selfmodels.runtime import resolve_device
from selfmodels.selfmodeling import reference
from selfmodels.selfmodeling.config import METHODS, GridConfig  # GridConfig: defined there, torch-free
from selfmodels.selfmodeling.presets import preset
from selfmodels.selfmodeling.runs import RunConfig, load_data, resolve_run, run_config_from_dict, run_config_to_dict, run_one
from selfmodels.stats import mean_ci95
from selfmodels.workers import check_workers, run_units


def llc_config(grid: GridConfig, batch_size: int):
    """The LLC settings of a grid (None for ``--llc none``)."""
    if grid.llc == "none":
        return None
    from selfmodels.complexity.llc import paper_llc_config

    config = paper_llc_config(grid.task if grid.task != "fashion-mnist" else "mnist", batch_size)
    overrides = {"draws": grid.llc_draws, "chains": grid.llc_chains}
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def expand(grid: GridConfig) -> list[RunConfig]:
    """Every run of the grid, seed by seed (so an interrupted grid has whole seeds done first).

    Each hidden size gets one baseline per seed; every other method runs at every strength > 0 (a
    strength of 0 is the baseline itself), activation-l2 and weight-decay at their own strengths when given.
    """
    grid.validate()
    p = preset(grid.task)
    hiddens = grid.hidden or list(p.hidden)
    strengths = sorted({float(s) for s in (grid.strengths or p.strengths) if s > 0})
    own = {"baseline": [0.0]}
    for method, given in (("activation-l2", grid.activation_l2_strengths), ("weight-decay", grid.weight_decay_strengths)):
        if given:
            own[method] = sorted({float(s) for s in given if s > 0})
    seeds = grid.seeds or list(range(p.seeds))
    common = dict(
        epochs=grid.epochs, lr=grid.lr, batch_size=grid.batch_size, targets=grid.targets or None,
        detach=grid.detach, source=grid.source, val_is_test=grid.val_is_test,
    )
    runs = []
    for seed in seeds:
        for hidden in hiddens:
            for method in grid.methods:
                for strength in own.get(method, strengths):
                    runs.append(resolve_run(grid.task, hidden=hidden, method=method, strength=strength, seed=seed, **common))
    if not runs:
        raise UserError("the grid is empty: give at least one method, and a strength > 0 for methods other than baseline")
    batch = runs[0].optim.batch_size
    for run in runs:
        run.llc = llc_config(grid, batch)
    return runs


# ---- running ------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _keep_data(data) -> None:
    """Each process running runs receives the data once (into a worker: through shared memory)."""
    _WORKER["data"] = data


def _run_unit(config: dict, run_dir: str, device: str, progress: bool, log: tuple[str, ...] = ()) -> dict:
    return run_one(run_config_from_dict(config), _WORKER["data"], run_dir, device=device, progress=progress, log=log)


def run_grid(grid: GridConfig, out: str | Path, *, progress: bool = True, data=None, log: tuple[str, ...] = ()) -> list[dict]:
    """Train every run of the grid that is not finished yet; returns all run records (on every rank).

    ``data`` (a ClassificationData) skips loading, e.g. in tests with a synthetic dataset. The runs go through
    :func:`selfmodels.workers.run_units`: ``grid.workers`` processes, or under torchrun run i on rank i % world.
    ``log``: the sinks each run's training curve is mirrored to (:mod:`selfmodels.curves`), in its run directory.
    """
    runs = expand(grid)
    check_workers(grid.workers)  # before any data is loaded
    out = Path(out)
    device = distributed.local_device(resolve_device(grid.device))
    if data is None:
        with distributed.main_first():  # a download or conversion happens once
            data = load_data(runs[0].data)
    # Fail fast on a bad target name, before any run starts (the message lists the module names).
    from selfmodels.selfmodeling.runs import build_model
    from selfmodels.selfmodeling.targets import resolve_modules

    for config in {c.model.hidden: c for c in runs}.values():
        resolve_modules(build_model(config, data), config.targets)
    workers = grid.workers if device.type == "cpu" else 1  # one accelerator: its runs one after the other
    inner = progress and workers == 1 and distributed.is_main()  # a run's own bar, when runs are not interleaved
    calls = [(_run_unit, run_config_to_dict(c), str(out / "runs" / c.name), str(device), inner, log) for c in runs]
    return run_units(calls, workers=workers, threads=grid.threads, initializer=_keep_data, initargs=(data,),
                     progress=progress, desc="runs")


# ---- summarising --------------------------------------------------------------------------------

CONDITION = ("task", "hidden", "method", "strength")
MEASURES = ("test_accuracy", "val_accuracy", "weight_sd", "identity_distance", "train_ce", "llc_mean")
SHORT = {"test_accuracy": "accuracy", "llc_mean": "llc"}


def summarize(records: list[dict]) -> list[dict]:
    """One record per condition: ``n`` and, per measure, ``<name>_mean`` and ``<name>_ci95``.

    ``accuracy_*`` is the test accuracy at the last epoch; ``llc_*`` appear when LLCs were computed
    (a flagged LLC is null and left out of the mean, ``llc_n`` counts the ones kept). ``paper_*`` give
    the paper's value for the condition where one was published.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        groups[tuple(record[k] for k in CONDITION)].append(record)
    method_order = {m: i for i, m in enumerate(METHODS.names())}
    summary = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], method_order[k[2]], k[3])):
        rows = groups[key]
        entry: dict[str, Any] = dict(zip(CONDITION, key))
        entry["n"] = len(rows)
        for measure in MEASURES:
            if measure == "llc_mean" and not any("llc_mean" in r for r in rows):
                continue
            values = [r.get(measure) for r in rows if r.get(measure) is not None]
            mean, half = mean_ci95(values)
            name = SHORT.get(measure, measure)
            entry[f"{name}_mean"], entry[f"{name}_ci95"] = mean, half
            if measure == "llc_mean":
                entry["llc_n"] = len(values)
                flags = sorted({f for r in rows for f in (r.get("llc_flags") or [])})
                entry["llc_flags"] = flags
                entry["llc_loss_at_wstar_mean"] = mean_ci95([r.get("llc_loss_at_wstar") for r in rows if r.get("llc_loss_at_wstar") is not None])[0]
        task, hidden, method, strength = key
        for measure in ("weight_sd", "accuracy", "rlct"):
            entry[f"paper_{measure}"] = reference.paper_value(measure, task, hidden, method, strength)
        summary.append(entry)
    return summary


def collect_results(grid: GridConfig, records: list[dict], *, extra: dict | None = None) -> dict:
    """The content of ``OUT/results.json``: runs, summary, trends, grid settings."""
    from selfmodels.selfmodeling.statistics import trends

    return {
        "grid": to_dict(grid),
        "paper": reference.PAPER,
        **(extra or {}),
        "runs": records,
        "summary": summarize(records),
        "trends": trends(records),
    }


def write_results(out: str | Path, grid: GridConfig, records: list[dict], *, extra: dict | None = None) -> dict:
    """Write ``OUT/results.json`` (runs, summary, trends, grid settings) and return it."""
    results = collect_results(grid, records, extra=extra)
    write_json(Path(out) / "results.json", results)
    return results


def run_and_report(grid: GridConfig, out: str | Path, *, progress: bool = True, extra: dict | None = None, data=None,
                   log: tuple[str, ...] = ()) -> dict:
    """Run the grid, then write results.json, report.md and the plots. Returns the results (on every rank;
    under torchrun rank 0 writes the files, and every rank returns once they are written)."""
    from selfmodels.selfmodeling.report import write_report

    first = expand(grid)[0]
    if data is None:
        with distributed.main_first():  # a download or conversion happens once
            data = load_data(first.data)
    records = run_grid(grid, out, progress=progress, data=data, log=log)
    train_size = len(data.train)
    steps_per_epoch = -(-train_size // first.optim.batch_size)  # the last, smaller batch counts as a step
    settings = {
        "epochs": first.optim.epochs, "optimizer": to_dict(first.optim), "targets": first.targets,
        "train_size": train_size, "steps_per_epoch": steps_per_epoch, "steps": steps_per_epoch * first.optim.epochs,
        "val_is_test": first.data.val_is_test,
        "detach": first.detach, "data_source": records[0].get("data_source"), "threads": grid.threads,
        "workers": grid.workers, "processes": distributed.world()[1], "cpu_count": os.cpu_count(),
        "llc_config": None if first.llc is None else to_dict(first.llc),
    }
    results = collect_results(grid, records, extra={"settings": settings, **(extra or {})})
    if distributed.is_main():  # every run is on disk: the records were gathered from every rank
        write_json(Path(out) / "results.json", results)
        write_report(results, out)
    distributed.barrier()
    return results
