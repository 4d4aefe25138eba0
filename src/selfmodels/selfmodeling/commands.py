"""Subcommands of the self-modeling area.

- ``selfmodels regularize --out DIR [grid flags]``: a resumable grid (task x hidden x method x strength
  x seed) with results.json, report.md and plots; ``OUT/config.json`` holds its resolved settings.
- ``selfmodels reproduce self-modeling [--preset quick] --out DIR``: the paper's MNIST experiment; ``quick``
  is a CPU-sized version: the paper's regime (batch, epochs, steps) on offline Fashion-MNIST when it is on
  this machine, else the MNIST 5k subset (not the paper's regime), plus a regime arm of MNIST 5k at the
  paper's step count (see ``presets.PAPER_REGIME``, ``MNIST_5K_REGIME``, ``MNIST_5K_PAPER_STEPS``), and the
  paper's IMDB setup on the offline Rotten Tomatoes snippets (``presets.SENTIMENT_REGIME``).

Both run under ``torchrun`` too (the runs are split across the processes; see :mod:`~selfmodels.selfmodeling.grid`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from selfmodels.curves import check_sinks
from selfmodels.errors import UserError
from selfmodels.options import Command, Presets, runner
from selfmodels.selfmodeling import presets
from selfmodels.selfmodeling.config import LLC_CHOICES, GridConfig


REGIME_CHOICES = ("auto", "paper", "mnist-5k")
ARM_DIR = "mnist-5k-paper-steps"  # inside --out: the regime arm's own runs, results.json and report.md
SENTIMENT_DIR = "sentiment"  # inside --out: the sentiment grid's own runs, results.json and report.md


def quick_grid(regime: presets.QuickRegime = presets.MNIST_5K_REGIME, workers: int = 1, llc: str = "paper",
               source: str = "offline") -> GridConfig:
    """The grid of one quick regime (see :mod:`~selfmodels.selfmodeling.presets`)."""
    return GridConfig(
        task=regime.task, source=source, hidden=list(regime.hidden), methods=list(regime.methods),
        strengths=list(regime.strengths), activation_l2_strengths=list(regime.activation_l2_strengths),
        weight_decay_strengths=list(regime.weight_decay_strengths), seeds=list(regime.seeds), epochs=regime.epochs,
        val_is_test=regime.val_is_test, workers=workers, llc=llc,
    )


def select_regime(requested: str, fashion_dir: Path | None) -> tuple[presets.QuickRegime, str, str]:
    """The quick reproduction's regime, its data source and the reason, from ``--regime`` and where the
    Fashion-MNIST IDX files were found (None: nowhere).

    ``auto`` runs the paper's regime on Fashion-MNIST when its files are on this machine, else falls back
    to the MNIST 5k subset (never the network: the demo runs offline). ``paper`` insists: without the
    files it tries the hub (``--source auto``), and fails with the fetch instructions when offline.
    """
    if requested not in REGIME_CHOICES:
        raise UserError(f"unknown regime {requested!r}: choose one of {', '.join(REGIME_CHOICES)}")
    if requested == "mnist-5k":
        return presets.MNIST_5K_REGIME, "offline", "asked for with --regime mnist-5k"
    if fashion_dir is not None:
        return presets.PAPER_REGIME, "offline", f"Fashion-MNIST's 60,000 training images were found in {fashion_dir}"
    if requested == "paper":
        return presets.PAPER_REGIME, "auto", "asked for with --regime paper; no offline Fashion-MNIST, so from the hub"
    return presets.MNIST_5K_REGIME, "offline", (
        "Fashion-MNIST is not on this machine (fetch it with `make setup`, or "
        "`python -m selfmodels.data.fetch fashion-mnist`), so the offline MNIST 5k subset was used instead")


def regime_note(regime: presets.QuickRegime, reason: str) -> str:
    """The report's opening paragraph: which dataset and regime, and why."""
    if regime.paper_regime:
        return (
            "Quick CPU reproduction **in the paper's optimisation regime**: batch 512, 50 epochs of 118 steps "
            f"(5,900 SGD steps) on a 60,000-image training set. The dataset is **Fashion-MNIST**, not MNIST: it is "
            f"the full-size 28x28 10-class set available offline ({reason}). The paper published no Fashion-MNIST "
            "numbers, so its MNIST values are compared by direction and relative change, not by size. As in the "
            "paper, the whole training set is trained on and validation is the test set. LLCs use the paper's SGLD "
            "settings (4 chains x 1,000 draws)."
        )
    return (
        "Quick CPU reproduction, **NOT the paper's regime**: the offline 5,000-image MNIST subset (3,600 train / "
        f"400 validation / 1,000 test) instead of the full 60,000 / 10,000, and {regime.epochs} epochs of 8 steps "
        f"({regime.epochs * 8:,} SGD steps) instead of the paper's 50 epochs of 118 steps (5,900); {reason}. "
        "Expect lower accuracy and larger weight SDs than the paper's; compare the direction of the effects, not "
        "their size. LLCs (when computed) use the paper's SGLD settings (4 chains x 1,000 draws)."
    )


def _write_config(r) -> None:
    """``OUT/config.json``: the resolved settings of the command (a valid ``--config`` file that reruns it)."""
    from selfmodels import distributed
    from selfmodels.artifacts import write_config

    if distributed.is_main():
        Path(r.out).mkdir(parents=True, exist_ok=True)
        write_config(r.out, r.record())


def _regularize(r, args: argparse.Namespace) -> int:
    from selfmodels import distributed
    from selfmodels.selfmodeling.grid import run_and_report

    log = check_sinks(r.log)  # a missing extra stops here, before any run starts
    _write_config(r)
    results = run_and_report(r.config, r.out, progress=not r.quiet, log=log)
    if distributed.is_main():
        print(f"wrote {Path(r.out) / 'results.json'} and {Path(r.out) / 'report.md'} ({len(results['runs'])} runs)")
    return 0


def _default_workers() -> int:
    """2 runs in parallel on a machine with 2 cores or more; 1 under torchrun (a process per rank already)."""
    from selfmodels import distributed

    return 1 if distributed.world()[1] > 1 else min(2, os.cpu_count() or 1)


def _reproduce(r, args: argparse.Namespace) -> int:
    from selfmodels import distributed
    from selfmodels.selfmodeling.grid import run_and_report

    log = check_sinks(r.log)  # a missing extra stops here, before any run starts
    workers = r.workers if r.workers is not None else _default_workers()
    if r.preset != "quick" and r.regime != "auto":
        raise UserError("--regime chooses among the quick reproduction's regimes: use it with --preset quick")
    _write_config(r)
    if r.preset == "quick":
        return _reproduce_quick(r, workers, log)
    grid = GridConfig(task="mnist", workers=workers, llc=r.llc, weight_decay_strengths=list(presets.WEIGHT_DECAY_STRENGTHS),
                      device=r.device)
    extra = {"mode": "full (the paper's MNIST grid)"}
    results = run_and_report(grid, r.out, progress=not r.quiet, extra=extra, log=log)
    if distributed.is_main():
        print(f"wrote {Path(r.out) / 'report.md'} ({len(results['runs'])} runs)")
    return 0


def reproduce_quick(out: str | Path, regime: presets.QuickRegime, source: str, reason: str, *,
                    arm: presets.QuickRegime = presets.MNIST_5K_PAPER_STEPS, workers: int = 1, llc: str = "paper",
                    sentiment: presets.QuickRegime | None = presets.SENTIMENT_REGIME,
                    device: str | None = None, progress: bool = True, log: tuple[str, ...] = (),
                    data=None, arm_data=None, sentiment_data=None) -> tuple[dict, dict]:
    """The quick reproduction: the regime arm into ``out/ARM_DIR``, the sentiment grid (``sentiment``, the
    paper's IMDB setup; None: left out) into ``out/SENTIMENT_DIR``, then the main grid (``regime``) into ``out``,
    whose report sets all of them beside the paper's effects. Returns (main results, arm results); the
    sentiment grid's results are in the main results' ``sentiment``.

    ``data`` / ``arm_data`` / ``sentiment_data`` (ClassificationData) skip loading, e.g. tiny data in tests."""
    from selfmodels.selfmodeling.grid import run_and_report

    device_field = {"device": device} if device else {}
    arm_grid = dataclasses.replace(quick_grid(arm, workers, llc), **device_field)
    arm_note = (f"Regime arm: the offline MNIST 5k subset trained for the paper's step count (batch 512, {arm.epochs} "
                f"epochs), H {', '.join(map(str, arm.hidden))}, baseline and self-model at AW "
                f"{', '.join(f'{w:g}' for w in arm.strengths)}, so that a change of dataset can be told apart from a change "
                "of regime. Its runs are in this directory; the main report sets it beside the main grid.")
    arm_results = run_and_report(arm_grid, Path(out) / ARM_DIR, progress=progress, log=log, data=arm_data,
                                 extra={"note": arm_note, "mode": "quick (regime arm)"})
    sentiment_part = None if sentiment is None else _sentiment_part(
        out, sentiment, workers, llc, device_field, progress, log, sentiment_data)
    grid = dataclasses.replace(quick_grid(regime, workers, llc, source), **device_field)
    extra = {
        "note": regime_note(regime, reason), "mode": "quick",
        "regime": {"name": regime.name, "paper_regime": regime.paper_regime, "reason": reason},
        "arm": {"dir": ARM_DIR, "settings": arm_results["settings"], "summary": arm_results["summary"],
                "trends": arm_results["trends"]},
        **({"sentiment": sentiment_part} if sentiment_part else {}),
    }
    return run_and_report(grid, out, progress=progress, extra=extra, log=log, data=data), arm_results


def sentiment_note(regime: presets.QuickRegime, text: dict, steps: int, llc: str = "paper") -> str:
    """The sentiment report's opening paragraph: the paper's IMDB setup, on which data, for how many steps."""
    from selfmodels.data.sentiment import text_sentence

    sgld = ("LLC with the paper's IMDB SGLD settings: epsilon 1e-3, gamma 10, 4 chains x 1,000 draws" if llc == "paper"
            else "no LLC")
    return (
        f"The paper's IMDB setup (bag of embeddings 64, hidden {', '.join(map(str, regime.hidden))}, SGD lr 0.1, batch 64, "
        f"{regime.epochs} epochs = {steps:,} SGD steps, AW {', '.join(f'{w:g}' for w in regime.strengths)}; {sgld}) "
        f"on the **offline Rotten Tomatoes review snippets** "
        f"standing in for IMDB's reviews (short snippets, not 230-word reviews: compare directions and relative changes "
        f"with the paper's IMDB figures, not values). {text_sentence(text)} {_controls(regime)} "
        f"Seeds {', '.join(map(str, regime.seeds))}."
    )


def _controls(regime: presets.QuickRegime) -> str:
    own = {"activation-l2": regime.activation_l2_strengths, "weight-decay": regime.weight_decay_strengths}
    ran = [f"{m} at w {', '.join(f'{w:g}' for w in own[m])}" for m in own if m in regime.methods and own[m]]
    if ran:
        return f"Controls at strengths of their own: {'; '.join(ran)}."
    return ("No controls in this grid: they do not fit the demo's time; their results, and the command that adds them "
            "(`presets.SENTIMENT_CONTROLS`), are in docs/self-modeling.md.")


def _sentiment_part(out, regime: presets.QuickRegime, workers: int, llc: str, device_field: dict, progress: bool,
                    log: tuple[str, ...], data) -> dict:
    """Run the sentiment grid into ``out/SENTIMENT_DIR``; what the main report shows of it."""
    from selfmodels import distributed
    from selfmodels.data.sentiment import describe_text
    from selfmodels.selfmodeling.grid import expand, run_and_report
    from selfmodels.selfmodeling.runs import load_data

    grid = dataclasses.replace(quick_grid(regime, workers, llc), **device_field)
    if data is None:
        with distributed.main_first():
            data = load_data(expand(grid)[0].data)
    text = describe_text(data)
    steps = -(-len(data.train) // expand(grid)[0].optim.batch_size) * regime.epochs
    results = run_and_report(grid, Path(out) / SENTIMENT_DIR, progress=progress, log=log, data=data,
                             extra={"note": sentiment_note(regime, text, steps, llc), "mode": "quick (sentiment)", "text": text})
    return {"dir": SENTIMENT_DIR, "note": results["note"], "text": text, "settings": results["settings"],
            "summary": results["summary"], "trends": results["trends"]}


def _reproduce_quick(r, workers: int, log: tuple[str, ...]) -> int:
    from selfmodels import distributed
    from selfmodels.data.images import find_fashion_mnist

    regime, source, reason = select_regime(r.regime, find_fashion_mnist())
    results, arm_results = reproduce_quick(r.out, regime, source, reason, workers=workers, llc=r.llc,
                                           device=r.device, progress=not r.quiet, log=log)
    if distributed.is_main():
        print(f"wrote {Path(r.out) / 'report.md'} ({len(results['runs'])} runs; regime {regime.name}: {reason}), "
              f"{Path(r.out) / ARM_DIR / 'report.md'} ({len(arm_results['runs'])} runs) and "
              f"{Path(r.out) / SENTIMENT_DIR / 'report.md'} (the IMDB setup on Rotten Tomatoes)")
    return 0


def register(commands: argparse._SubParsersAction, reproduce: argparse._SubParsersAction) -> None:
    """Add ``regularize`` to ``selfmodels`` and ``self-modeling`` to ``selfmodels reproduce``."""
    command = Command("regularize", GridConfig, options={"out": None, "quiet": False, "log": []})

    def data_flag(group) -> None:
        command.flag(group, "--data", "source", "where the task's data comes from: auto (hub when reachable, else "
                     "offline), hub or offline", choices=("auto", "hub", "offline"), metavar="{auto,hub,offline}")

    parser = command.parser(
        commands, "regularize", help="train classifiers with self-modeling and its controls over a grid; report",
        description="Train a grid (task x hidden x method x strength x seed), resumable; write results.json, "
        "report.md, plots and config.json to --out. Unset options take the paper's settings for the task.",
        main_flags=data_flag, exclude=("source",))
    command.rename(parser, "--source", "--data", "source", choices=("auto", "hub", "offline"))
    parser.set_defaults(func=runner(command, _regularize))

    command = Command("reproduce self-modeling", presets=Presets(None, (), names_=("full", "quick")),
                      options={"out": None, "regime": "auto", "workers": None, "llc": "paper", "device": "auto",
                               "quiet": False, "log": []})

    def reproduce_flags(group) -> None:
        command._opt(group, "--regime", "regime", choices=REGIME_CHOICES,
                     help="with --preset quick: paper (Fashion-MNIST 60k, 5,900 steps), mnist-5k (the 800-step fallback) "
                          "or auto (paper when Fashion-MNIST is on this machine)")
        command._opt(group, "--workers", "workers", type=int, metavar="N",
                     help="runs trained in parallel, one thread each (none: 2, or 1 on a 1-core machine or under torchrun)")
        command._opt(group, "--llc", "llc", choices=LLC_CHOICES,
                     help="paper: estimate each run's LLC with the paper's SGLD settings; none: no LLC")

    rep = command.parser(
        reproduce, "self-modeling", help="the self-modeling paper's MNIST experiment (--preset quick: CPU-sized, offline, "
        "with its IMDB setup on Rotten Tomatoes snippets)",
        description="Preset full (the default): the paper's full MNIST grid (H 64-512, AW 1-50, both controls, 10 seeds, "
        "50 epochs; hub data when reachable). Preset quick: H 64 and 128, self-model at w 1, 10, 50, 3 seeds, in the "
        "paper's regime (batch 512, 5,900 steps) on offline Fashion-MNIST when present, else on the offline MNIST "
        "subset for 800 steps; plus MNIST 5k at 5,900 steps (H 64, baseline and w 10); plus the paper's IMDB setup "
        "(bag of embeddings, 500 epochs, AW 100 and 500, 3 seeds) on the offline Rotten Tomatoes snippets. The controls "
        "run at their own strengths (see docs/self-modeling.md). The presets are the grids of selfmodeling/presets.py.",
        extra=lambda p: reproduce_flags(p.add_argument_group("reproduction options")))
    rep.set_defaults(func=runner(command, _reproduce))
