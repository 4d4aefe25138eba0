"""Subcommands of the self-modeling area.

- ``selfmodels regularize --out DIR [grid flags]``: a resumable grid (task x hidden x method x strength
  x seed) with results.json, report.md and plots.
- ``selfmodels reproduce self-modeling [--quick] --out DIR``: the paper's MNIST experiment; ``--quick``
  is a CPU-sized version on the offline MNIST subset (see ``presets.QUICK_*``).

Both run under ``torchrun`` too (the runs are split across the processes; see :mod:`~selfmodels.selfmodeling.grid`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from selfmodels import distributed
from selfmodels.configs import add_arguments, from_args
from selfmodels.curves import add_log_option, check_sinks
from selfmodels.selfmodeling import presets
from selfmodels.selfmodeling.grid import LLC_CHOICES, GridConfig, run_and_report


def quick_grid(workers: int = 1, llc: str = "paper") -> GridConfig:
    """The quick reproduction's grid: MNIST offline, H 64 and 128, self-model and activation-l2 at w 1, 10,
    50, weight decay at 1e-4, 1e-3, 1e-2, 3 seeds."""
    return GridConfig(
        task=presets.QUICK_TASK, source="offline", hidden=list(presets.QUICK_HIDDEN), strengths=list(presets.QUICK_STRENGTHS),
        weight_decay_strengths=list(presets.WEIGHT_DECAY_STRENGTHS), seeds=list(presets.QUICK_SEEDS),
        epochs=presets.QUICK_EPOCHS, workers=workers, llc=llc,
    )


QUICK_NOTE = (
    "Quick CPU reproduction: the offline 5,000-image MNIST subset (3,600 train / 400 validation / 1,000 test) "
    "instead of the full 60,000/10,000, and {epochs} epochs (8 steps each) instead of the paper's 50 epochs of "
    "118 steps. Expect lower accuracy and larger weight SDs than the paper's; compare the direction of the "
    "effects, not their size. LLCs (when computed) use the paper's SGLD settings (4 chains x 1,000 draws)."
)


def _regularize(args: argparse.Namespace) -> int:
    log = check_sinks(args.log)  # a missing extra stops here, before any run starts
    grid = from_args(GridConfig, args, base=GridConfig())
    results = run_and_report(grid, args.out, progress=not args.quiet, log=log)
    if distributed.is_main():
        print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.md'} ({len(results['runs'])} runs)")
    return 0


def _default_workers() -> int:
    """2 runs in parallel on a machine with 2 cores or more; 1 under torchrun (a process per rank already)."""
    return 1 if distributed.world()[1] > 1 else min(2, os.cpu_count() or 1)


def _reproduce(args: argparse.Namespace) -> int:
    log = check_sinks(args.log)  # a missing extra stops here, before any run starts
    workers = args.workers if args.workers is not None else _default_workers()
    if args.quick:
        grid = quick_grid(workers, args.llc)
        extra = {"note": QUICK_NOTE.format(epochs=presets.QUICK_EPOCHS), "mode": "quick"}
    else:
        grid = GridConfig(task="mnist", workers=workers, llc=args.llc,
                          weight_decay_strengths=list(presets.WEIGHT_DECAY_STRENGTHS))
        extra = {"mode": "full (the paper's MNIST grid)"}
    if args.device:
        grid = dataclasses.replace(grid, device=args.device)
    results = run_and_report(grid, args.out, progress=not args.quiet, extra=extra, log=log)
    if distributed.is_main():
        print(f"wrote {Path(args.out) / 'report.md'} ({len(results['runs'])} runs)")
    return 0


def register(commands: argparse._SubParsersAction, reproduce: argparse._SubParsersAction) -> None:
    """Add ``regularize`` to ``selfmodels`` and ``self-modeling`` to ``selfmodels reproduce``."""
    parser = commands.add_parser(
        "regularize", help="train classifiers with self-modeling and its controls over a grid; report",
        description="Train a grid (task x hidden x method x strength x seed), resumable; write results.json, "
        "report.md and plots to --out. Unset options take the paper's settings for the task.",
    )
    parser.add_argument("--out", required=True, help="output directory (runs are resumed / skipped if present)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_arguments(parser, GridConfig)
    add_log_option(parser)
    parser.set_defaults(func=_regularize)

    rep = reproduce.add_parser(
        "self-modeling", help="the self-modeling paper's MNIST experiment (--quick: CPU-sized, offline)",
        description="Without --quick: the paper's full MNIST grid (H 64-512, AW 1-50, both controls, 10 seeds, "
        "50 epochs; hub data when reachable). With --quick: offline MNIST subset, H 64 and 128, w 1, 10, 50, 3 seeds. "
        "Weight decay runs at its own strengths, 1e-4, 1e-3, 1e-2, in both.",
    )
    rep.add_argument("--out", required=True, help="output directory")
    rep.add_argument("--quick", action="store_true", help="CPU-sized version on the offline MNIST subset")
    rep.add_argument("--workers", type=int, default=None,
                     help="runs trained in parallel, one thread each (default: 2, or 1 on a 1-core machine or "
                          "under torchrun)")
    rep.add_argument("--llc", choices=LLC_CHOICES, default="paper",
                     help="estimate each run's LLC with the paper's SGLD settings, or none (default: paper)")
    rep.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto)")
    rep.add_argument("--quiet", action="store_true", help="no progress bars")
    add_log_option(rep)
    rep.set_defaults(func=_reproduce)
