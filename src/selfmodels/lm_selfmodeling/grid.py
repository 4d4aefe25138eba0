"""``selfmodels reproduce self-modeling-transformers``: the grid of conditions x seeds, matched-loss comparisons,
summaries and the drift flag.

Runs live in ``OUT/runs/<condition>-seed<S>/`` (resumable: a finished run is read back). The baseline saves its
weights along training; every other run is also compared with the baseline snapshot of the same seed whose
validation loss is nearest its own (measured once, kept in the baseline's ``matched/``).

Statistics (95% CIs over seeds): ``summary`` has per condition the mean and Student-t half-width of every measure;
``differences`` has per condition and measure ``mean(condition) - mean(baseline)`` with Welch's CI, against the
final baseline and against the matched-loss baseline snapshots, each beside the validation-loss difference of the
same comparison with its own Welch CI (equal loss, or no claim).

``drift`` (per run; see docs/self-modeling-transformers.md): true when any residual norm exceeds
``DRIFT_NORM_RATIO`` times the baseline's mean at that index, or any block's update norm falls under
``DRIFT_UPDATE_RATIO`` times the baseline's: a model that moved its computation around, not a simpler one.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfmodels import distributed
from selfmodels.configs import to_dict
from selfmodels.errors import UserError, require
from selfmodels.lm_selfmodeling.config import METHODS, check_objective
from selfmodels.lm_selfmodeling.run import LMRunConfig, ObjectiveConfig, load_data, measure_snapshot, nearest_snapshot, run_one
from selfmodels.stats import mean_ci95, welch_difference
from selfmodels.workers import check_workers, run_units

DRIFT_NORM_RATIO = 2.0
DRIFT_UPDATE_RATIO = 0.2
MEASURES = (
    "val_loss", "bits_per_byte", "accuracy", "unembedding_sd", "block_weight_sd_mean", "final_resid_norm",
    "observer_near_delta_r2", "observer_near_recovery", "observer_near_cosine", "observer_near_skip_cosine",
    "observer_near_kl_skipped", "observer_far_delta_r2", "observer_far_recovery", "observer_far_cosine",
    "observer_far_skip_cosine", "observer_far_kl_skipped", "llc_mean", "fit_mse", "fit_scaled_mse", "fit_cosine",
)
COMPARED = ("unembedding_sd", "block_weight_sd_mean", "llc_mean", "observer_near_delta_r2", "observer_near_recovery",
            "observer_far_delta_r2", "observer_far_recovery", "final_resid_norm", "accuracy")


@dataclass
class LMGrid:
    """The runs of a grid: one base config, the conditions (objectives) and the seeds."""

    base: LMRunConfig
    conditions: list[ObjectiveConfig]
    seeds: list[int]
    workers: int = 1
    threads: int = 1
    device: str = "cpu"
    note: str = ""
    log: tuple[str, ...] = ()  # --log sinks of every run's curves (selfmodels.curves); never an input to a result

    def runs(self) -> list[tuple[str, LMRunConfig]]:
        """(name, config) of every run, seed by seed; the baseline saves snapshots."""
        require(any(c.method == "baseline" for c in self.conditions), "the grid needs a baseline condition")
        out = []
        for seed in self.seeds:
            for objective in self.conditions:
                cfg = dataclasses.replace(self.base, objective=objective, seed=seed,
                                          snapshots=objective.method == "baseline")
                out.append((f"{objective.label}-seed{seed}", cfg))
        return out


def quick_conditions(strengths=(1.0, 10.0), forward_strength: float = 1.0, weight_decay: float = 1.0) -> list[ObjectiveConfig]:
    """Baseline; self-model (paper form, head-input, MSE, detached) at two strengths; the forward form 2 -> 3 (scaled
    MSE, gradient into both) at one; activation-l2 and random-target at the higher strength; weight decay at its own."""
    low, high = strengths
    return [
        ObjectiveConfig(method="baseline"),
        ObjectiveConfig(method="self-model", strength=low),
        ObjectiveConfig(method="self-model", strength=high),
        ObjectiveConfig(method="forward", strength=forward_strength, loss="scaled-mse", source=2, target=3, flow="both"),
        ObjectiveConfig(method="activation-l2", strength=high),
        ObjectiveConfig(method="random-target", strength=high),
        ObjectiveConfig(method="weight-decay", strength=weight_decay),
    ]


# ---- running ------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}  # this process's data, loaded once per distinct data settings


def _data(cfg: LMRunConfig):
    key = (cfg.main, repr(to_dict(cfg.corpus)), cfg.seq_len, cfg.eval_windows, cfg.llc_windows,
           cfg.observer.train_windows, cfg.observer.eval_windows)
    if key not in _WORKER:
        _WORKER.clear()
        _WORKER[key] = load_data(cfg, None) if cfg.main == "gpt" else None
    return _WORKER[key]


def _run(cfg: dict, run_dir: str, device: str, log: tuple[str, ...] = ()) -> dict:
    from selfmodels.configs import from_dict

    config = from_dict(LMRunConfig, cfg)
    return run_one(config, run_dir, _data(config), device=device, progress=False, log=log)


def _snapshot(cfg: dict, run_dir: str, step: int, device: str) -> dict:
    from selfmodels.configs import from_dict
    import torch

    config = from_dict(LMRunConfig, cfg)
    return measure_snapshot(config, Path(run_dir), step, _data(config), torch.device(device))


def run_grid(grid: LMGrid, out: str | Path, progress: bool = True) -> dict:
    """Train and measure every run, then the matched baseline snapshots; returns results.json's content."""
    out = Path(out)
    runs = grid.runs()
    check_grid(grid)
    check_workers(grid.workers)  # before any data is loaded
    for _, cfg in runs[: len(grid.conditions)]:  # bad settings fail before any run starts
        if cfg.main == "gpt":
            cfg.validate(cfg.gpt.n_layer)
        else:  # a pretrained subject's depth is known once it is loaded (run_one checks the rest then)
            o = cfg.objective
            check_objective(o.method, o.strength, o.loss, o.flow)
    if grid.base.main == "gpt":  # fit the BPE and cut the token stream once, before the workers read the cache
        with distributed.main_first():
            _data(grid.base)
    device = str(distributed.local_device(torch.device(grid.device)))
    units = dict(workers=grid.workers, threads=grid.threads, progress=progress)  # runs and snapshots alike
    records = run_units([(_run, to_dict(cfg), str(out / "runs" / name), device, tuple(grid.log)) for name, cfg in runs],
                        desc="runs", **units)
    for record, (name, _) in zip(records, runs):
        record["run"] = name
    # Matched-loss baseline snapshots: one per (seed, step), measured once.
    base_dirs = {cfg.seed: (out / "runs" / name, cfg) for name, cfg in runs if cfg.objective.method == "baseline"}
    wanted: dict[tuple[int, int], float] = {}
    for record in records:
        if record["method"] == "baseline":
            continue
        run_dir, cfg = base_dirs[record["seed"]]
        nearest = nearest_snapshot(run_dir, record["val_loss"])
        record["matched_step"], record["matched_snapshot_val_loss"] = nearest if nearest else (None, None)
        if nearest:
            wanted[(record["seed"], nearest[0])] = nearest[1]
    # The last snapshot is the final baseline itself: its run record already holds its measurements.
    finals = {(r["seed"], base_dirs[r["seed"]][1].lm.steps): r for r in records if r["method"] == "baseline"}
    keys = sorted(k for k in wanted if k not in finals)
    snaps = run_units([(_snapshot, to_dict(base_dirs[s][1]), str(base_dirs[s][0]), step, device) for s, step in keys],
                      desc="matched baseline snapshots", **units)
    matched = {**{k: finals[k] for k in wanted if k in finals}, **dict(zip(keys, snaps))}
    for record in records:
        if record.get("matched_step") is not None:
            snap = _scalars(matched[(record["seed"], record["matched_step"])])  # derived measures included
            record["matched"] = {m: snap.get(m) for m in MEASURES}
    return summarize_results(grid, records)


# ---- summarising --------------------------------------------------------------------------------
def _scalars(record: dict) -> dict:
    """The derived scalar measures of a run record (or a matched snapshot's measurements)."""
    out = dict(record)
    if record.get("block_weight_sd"):
        out["block_weight_sd_mean"] = float(np.mean(record["block_weight_sd"]))
    if record.get("resid_norm"):
        out["final_resid_norm"] = record["resid_norm"][-1]
    return out


def add_drift(records: list[dict]) -> dict:
    """Set each record's ``drift`` and its ratios against the mean baseline; returns the baseline's mean norms."""
    base = [r for r in records if r["method"] == "baseline"]
    if not base:
        return {}
    resid = np.mean([r["resid_norm"] for r in base], axis=0)
    update = np.mean([r["update_norm"] for r in base], axis=0)
    for r in records:
        r["drift_resid_ratio_max"] = float(np.max(np.asarray(r["resid_norm"]) / resid))
        r["drift_update_ratio_min"] = float(np.min(np.asarray(r["update_norm"]) / update))
        r["drift"] = bool(r["drift_resid_ratio_max"] > DRIFT_NORM_RATIO or r["drift_update_ratio_min"] < DRIFT_UPDATE_RATIO)
    return {"resid_norm": resid.tolist(), "update_norm": update.tolist()}


def summarize_results(grid: LMGrid, records: list[dict]) -> dict:
    """results.json: settings, runs, per-condition summaries, differences from the baseline."""
    for r in records:
        r.update({k: v for k, v in _scalars(r).items() if k not in r})
        if r.get("matched"):
            r["matched"] = {**r["matched"], **{k: v for k, v in _scalars(r["matched"]).items() if k in MEASURES}}
    baseline_norms = add_drift(records)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["method"], r["strength"])].append(r)
    order = {m: i for i, m in enumerate(METHODS.names())}
    summary, differences = [], []
    base = groups.get(("baseline", 0.0), [])
    for (method, strength) in sorted(groups, key=lambda k: (order[k[0]], k[1])):
        rows = groups[(method, strength)]
        entry = {"condition": rows[0]["condition"], "method": method, "strength": strength, "n": len(rows),
                 "drift_runs": sum(bool(r.get("drift")) for r in rows),
                 "observer_near_counts": all(r.get("observer_near_counts") for r in rows),
                 "observer_far_counts": all(r.get("observer_far_counts") for r in rows)}
        for m in MEASURES + ("drift_resid_ratio_max", "drift_update_ratio_min"):
            values = [r.get(m) for r in rows if r.get(m) is not None]
            if values:
                entry[f"{m}_mean"], entry[f"{m}_ci95"] = mean_ci95(values)
        entry["resid_norm_mean"] = np.mean([r["resid_norm"] for r in rows], axis=0).tolist()
        entry["update_norm_mean"] = np.mean([r["update_norm"] for r in rows], axis=0).tolist()
        summary.append(entry)
        if method == "baseline":
            continue
        val = [r["val_loss"] for r in rows]
        vs_final = welch_difference(val, [r["val_loss"] for r in base])
        matched_rows = [r for r in rows if r.get("matched")]
        vs_matched = welch_difference([r["val_loss"] for r in matched_rows], [r["matched"]["val_loss"] for r in matched_rows])
        for m in COMPARED:
            a = [r.get(m) for r in rows]
            if not any(v is not None for v in a):
                continue
            differences.append({
                "condition": rows[0]["condition"], "method": method, "strength": strength, "measure": m,
                "vs_final_baseline": welch_difference(a, [r.get(m) for r in base]),
                "val_loss_difference_vs_final": vs_final,
                "vs_matched_baseline": welch_difference([r.get(m) for r in matched_rows],
                                                        [r["matched"].get(m) for r in matched_rows]),
                "val_loss_difference_vs_matched": vs_matched,
                "matched_steps": [r.get("matched_step") for r in rows],
            })
    first = records[0]
    return {
        "experiment": "self-modeling-transformers", "note": grid.note,
        "settings": {"base": to_dict(grid.base), "conditions": [to_dict(c) for c in grid.conditions], "seeds": grid.seeds,
                     "workers": grid.workers, "threads": grid.threads, "device": grid.device, "processes": distributed.world()[1],
                     "cpu_count": os.cpu_count(),
                     "params": first.get("params"), "data": first.get("data"),
                     "drift_rule": {"resid_norm_ratio_above": DRIFT_NORM_RATIO, "update_norm_ratio_below": DRIFT_UPDATE_RATIO}},
        "definitions": DEFINITIONS,
        "baseline_norms": baseline_norms,
        "runs": records, "summary": summary, "differences": differences,
    }


DEFINITIONS = {
    "val_loss": "mean next-token cross-entropy on the held-out evaluation windows, nats/token",
    "bits_per_byte": "val_loss * tokens / (ln 2 * UTF-8 bytes of the predicted text)",
    "accuracy": "share of held-out positions whose argmax is the next token",
    "unembedding_sd": "SD (Bessel) of every entry of the LM head's weight (V, d); self-model outputs are a separate head",
    "block_weight_sd": "per block, SD of every entry of its matrices; block_weight_sd_mean is their mean",
    "resid_norm": "mean over held-out tokens of ||h_i||_2, i = -1 (embeddings) .. n-1; final_resid_norm is the last",
    "update_norm": "mean over held-out tokens of ||h_k - h_{k-1}||_2, block k's write",
    "drift": f"any resid_norm > {DRIFT_NORM_RATIO} x the baseline's mean, or any update_norm < {DRIFT_UPDATE_RATIO} x the baseline's mean",
    "observer_*": "a fresh forward model (never the co-trained one) trained on the frozen LM's held-out residuals: "
                  "delta_r2 = 1 - sum||t - p||^2 / sum||t - s||^2; recovery = 1 - mean KL_sub / mean KL_skip; "
                  "counts = kl_skipped >= 0.3 nats",
    "llc_mean": "LLC of the LM under per-token cross-entropy (SGLD; nbeta = n / ln n, n = predicted tokens per minibatch)",
    "fit_*": "the self-model's own held-out fit: mse, mse / mean target^2, mean cosine of its prediction and target",
    "vs_matched_baseline": "difference from the baseline snapshot (same seed) whose validation loss is nearest the run's",
    "differences": "mean(condition) - mean(baseline) with Welch's 95% CI over seeds",
}


def write_outputs(results: dict, out: str | Path) -> None:
    """results.json, report.md and the plots (under torchrun rank 0 writes them; every rank returns once they are)."""
    from selfmodels.artifacts import write_json
    from selfmodels.lm_selfmodeling.report import write_report

    if distributed.is_main():
        write_json(Path(out) / "results.json", results)
        write_report(results, out)
    distributed.barrier()


def check_grid(grid: LMGrid) -> None:
    if grid.workers < 1:
        raise UserError(f"--workers must be at least 1, got {grid.workers}")
