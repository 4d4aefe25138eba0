"""Hyperparameter calibration: estimate the LLC over a grid of ε x γ (x nβ) and show every trace
(classifiers and any loss: :func:`calibrate`; causal LMs on token windows: :func:`calibrate_lm`).

Following the devinterp guidance, a good setting has traces that rise and flatten within the burn-in,
no flags, and an estimate that changes little between neighbouring settings. Each finished cell is
appended to ``calibration.jsonl`` so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from selfmodels.artifacts import append_jsonl, read_jsonl, save_tensors, load_tensors, write_json, write_text
from selfmodels.complexity.llc import LLCConfig, LLCResult, estimate_llc
from selfmodels.complexity.lm_llc import LogitsFn, lm_llc
from selfmodels.complexity.llc_plots import plot_calibration
from selfmodels.configs import to_dict
from selfmodels.errors import UserError, require
from selfmodels.report.markdown import table

CELLS = "calibration.jsonl"


def _key(eps: float, gamma: float, nbeta: float | None) -> str:
    return f"eps{eps:g}_gamma{gamma:g}_nbeta{'default' if nbeta is None else f'{nbeta:g}'}"


def calibrate(model: nn.Module, data: Any, loss_fn: Callable[..., torch.Tensor], base: LLCConfig,
              epsilons: Sequence[float], gammas: Sequence[float], nbetas: Sequence[float | None],
              out_dir: str | Path, device: str | torch.device = "cpu", progress: bool = True) -> list[dict]:
    """Run :func:`estimate_llc` for every (ε, γ, nβ) and write, under ``out_dir``:
    ``calibration.jsonl`` (one record per cell), ``calibration.json`` (all cells), ``calibration.md``
    (table of estimates and flags), ``calibration.png`` (grid of traces) and ``traces.safetensors``.
    ``None`` in ``nbetas`` means the config's default (b / ln b)."""
    return _calibrate_grid(lambda config: estimate_llc(model, data, loss_fn, config, device=device, progress=progress),
                           base, epsilons, gammas, nbetas, out_dir, progress)


def calibrate_lm(model: nn.Module, windows: torch.Tensor, base: LLCConfig, epsilons: Sequence[float],
                 gammas: Sequence[float], nbetas: Sequence[float | None], out_dir: str | Path,
                 device: str | torch.device = "cpu", progress: bool = True, logits_fn: LogitsFn | None = None) -> list[dict]:
    """:func:`calibrate` for a causal LM: every cell is :func:`~selfmodels.complexity.lm_llc.lm_llc` on
    token ``windows`` (N, T+1) (mean next-token cross-entropy); ``None`` in ``nbetas`` means n / ln n
    with n the predicted tokens per batch. ``base.sampler`` (e.g. ``rmsprop_sgld``) applies to every cell."""
    return _calibrate_grid(lambda config: lm_llc(model, windows, config, device=device, progress=progress,
                                                 logits_fn=logits_fn),
                           base, epsilons, gammas, nbetas, out_dir, progress)


def _calibrate_grid(estimate: Callable[[LLCConfig], LLCResult], base: LLCConfig, epsilons: Sequence[float],
                    gammas: Sequence[float], nbetas: Sequence[float | None], out_dir: str | Path,
                    progress: bool) -> list[dict]:
    """``estimate(config)`` for every (ε, γ, nβ) cell, resumable; writes the files :func:`calibrate` lists."""
    require(len(epsilons) > 0 and len(gammas) > 0 and len(nbetas) > 0,
            "calibrate needs at least one value each for --epsilons, --gammas (and --nbetas if given)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = {r["key"]: r for r in read_jsonl(out_dir / CELLS)}
    trace_file = out_dir / "traces.safetensors"
    traces = load_tensors(trace_file) if trace_file.exists() and done else {}
    cells = []
    grid = list(itertools.product(epsilons, gammas, nbetas))
    for n, (eps, gamma, nbeta) in enumerate(grid):
        config = dataclasses.replace(base, epsilon=float(eps), gamma=float(gamma),
                                     nbeta=None if nbeta is None else float(nbeta))
        key = _key(eps, gamma, nbeta)
        record = done.get(key)
        if record is not None and record["config"] == to_dict(config) and key in traces:
            cells.append(record)  # finished in an earlier, interrupted sweep with the same settings
            continue
        if progress:
            print(f"calibration cell {n + 1}/{len(grid)}: epsilon={eps:g} gamma={gamma:g} nbeta={nbeta or 'default'}",
                  flush=True)
        result = estimate(config)
        record = {"key": key, "epsilon": float(eps), "gamma": float(gamma), "nbeta_requested": nbeta,
                  "nbeta": result.nbeta, "burn_in": config.kept_from(), "config": to_dict(config),
                  **{k: v for k, v in result.summary().items() if k != "llc_config"}}
        traces[key] = result.lambda_traces().float()
        save_tensors(trace_file, traces)
        append_jsonl(out_dir / CELLS, record)
        cells.append(record)

    write_json(out_dir / "calibration.json", cells)
    write_text(out_dir / "calibration.md", calibration_table(cells))
    nbeta_values = sorted({c["nbeta"] for c in cells})
    plot_calibration(
        [{**c, "epsilon": c["epsilon"], "gamma": c["gamma"]} for c in cells],
        {(c["epsilon"], c["gamma"], c["nbeta"]): traces[c["key"]] for c in cells},
        [float(e) for e in epsilons], [float(g) for g in gammas], nbeta_values, out_dir / "calibration.png",
    )
    return cells


def calibration_table(cells: Sequence[dict]) -> str:
    """Markdown: one row per (ε, γ, nβ) with the estimate, its chain std, L(w*), the kept trace's half
    means, the fraction of kept draws below L(w*) and the flags."""
    rows = []
    for c in cells:
        rows.append([f"{c['epsilon']:g}", f"{c['gamma']:g}", c["llc_nbeta"], c["llc_mean"], c["llc_std"],
                     c["llc_raw_mean"], c["llc_loss_at_wstar"], c["llc_trace_first_half_mean"],
                     c["llc_trace_second_half_mean"], c["llc_fraction_below_init_loss"],
                     ", ".join(c["llc_flags"]) or "-"])
    head = ("# LLC calibration\n\n`llc` is null when flagged not_at_minimum or no_valid_chains; `raw` is the "
            "unflagged value. `1st/2nd half` are the mean λ̂ over the two halves of the kept draws; "
            "`below` is the fraction of kept draws with loss below L(w*). Pick a setting whose traces "
            "flatten within the burn-in, with no flags, where the estimate is stable across neighbours.\n\n")
    return head + table(["ε", "γ", "nβ", "llc", "std", "raw", "L(w*)", "1st half", "2nd half", "below", "flags"], rows)


def parse_values(text: Sequence[str] | None, name: str) -> list[float]:
    """Floats from the command line; each must be finite and positive (γ may be 0)."""
    values = []
    for item in text or []:
        for part in str(item).split(","):
            if not part.strip():
                continue
            try:
                value = float(part)
            except ValueError:
                raise UserError(f"--{name}: {part!r} is not a number") from None
            require(math.isfinite(value) and (value > 0 or (name == "gammas" and value == 0)),
                    f"--{name} values must be finite and {'>= 0' if name == 'gammas' else '> 0'}, got {part}")
            values.append(value)
    return values
