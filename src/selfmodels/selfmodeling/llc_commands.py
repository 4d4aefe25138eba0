"""The ``llc`` subcommand: the complexity area's estimator applied to a self-modeling run.

It lives here, not in :mod:`selfmodels.complexity`, because it loads a trained self-modeling run
(``selfmodeling.runs``) and the paper's values (``selfmodeling.reference``); the complexity package sits
below the self-modeling area and imports nothing from it.

- ``selfmodels llc RUN_DIR [LLC flags]``: the LLC of a trained run's classifier (classifier only, mean
  cross-entropy on its training set); writes ``RUN_DIR/llc.json`` and ``RUN_DIR/llc_trace.png``; with
  ``--log tensorboard`` / ``wandb`` the traces also go there, draw by draw (:mod:`selfmodels.curves`).
- ``selfmodels llc calibrate RUN_DIR --epsilons ... --gammas ... [--nbetas ...]``: the same estimate
  over a grid of SGLD settings; writes ``RUN_DIR/llc_calibration/`` (table, grid plot, records).

Unless given on the command line, the SGLD settings are the ones stored with the run, else the
paper's for the run's task (with the run's batch size).

Under ``torchrun`` the chains are split across the processes (see :mod:`~selfmodels.complexity.llc`)
and rank 0 alone writes the files.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from selfmodels import distributed
from selfmodels.configs import add_arguments, from_args, from_dict
from selfmodels.errors import UserError, require

CALIBRATE = "calibrate"


def _base_config(run: dict):
    """The LLC settings a run was meant to use: its own, else the paper's for its task."""
    from selfmodels.complexity.llc import LLCConfig, paper_llc_config

    if run.get("llc"):
        return from_dict(LLCConfig, run["llc"])
    task = run.get("data", {}).get("task", "mnist")
    task = "mnist" if task == "fashion-mnist" else task
    batch = int(run.get("optim", {}).get("batch_size", 512))
    try:
        return paper_llc_config(task, batch)
    except UserError:
        return LLCConfig(batch_size=batch)


def _paper_reference(run: dict) -> dict:
    """The paper's RLCT for this run's condition, where it published one."""
    from selfmodels.selfmodeling.reference import PAPER, paper_value

    value = paper_value("rlct", run.get("data", {}).get("task", ""), run.get("model", {}).get("hidden", -1),
                        run.get("method", ""), run.get("strength", 0.0))
    return {"paper_llc": value, "paper_source": PAPER} if value is not None else {}


def _load(run_dir: str, args: argparse.Namespace):
    from selfmodels.complexity.llc import LLCConfig
    from selfmodels.runtime import resolve_device, set_threads
    from selfmodels.selfmodeling.runs import load_trained_classifier

    require(Path(run_dir).is_dir(), f"run directory {run_dir} does not exist: give a finished run's directory")
    set_threads(args.threads)
    with distributed.main_first():  # a download or conversion of the run's data happens once
        model, data, run = load_trained_classifier(run_dir)
    config = from_args(LLCConfig, args, base=_base_config(run))
    config.validate()
    return model, data, run, config, resolve_device(args.device)


def _estimate(args: argparse.Namespace) -> int:
    from selfmodels.artifacts import write_json
    from selfmodels.complexity.llc import cross_entropy, estimate_llc
    from selfmodels.complexity.llc_plots import plot_trace
    from selfmodels.curves import Mirror, check_sinks

    require(args.second is None, f"unexpected argument {args.second!r}: use `selfmodels llc RUN_DIR` or "
            f"`selfmodels llc calibrate RUN_DIR`")
    for name in ("epsilons", "gammas", "nbetas", "out"):
        require(getattr(args, name) is None, f"--{name} belongs to `selfmodels llc calibrate RUN_DIR`; "
                f"for one estimate use --epsilon/--gamma/--nbeta")
    run_dir = Path(args.target)
    log = check_sinks(args.log)  # a missing extra stops here, before any work starts
    model, data, run, config, device = _load(args.target, args)
    result = estimate_llc(model, data.train, cross_entropy, config, device=device, progress=not args.quiet)
    record = {
        **result.summary(),
        "llc_lambda_regular_d_over_2": result.diagnostics["lambda_d_over_2"],
        "llc_diagnostics": result.diagnostics,
        "llc_loss_traces": result.loss_traces.tolist(),
        "loss": "mean cross-entropy of the classifier-only model on its training set",
        "run": {k: run.get(k) for k in ("method", "strength", "seed")} | {"task": data.task},
        **_paper_reference(run),
    }
    if not distributed.is_main():  # every rank has the same result; rank 0 writes it
        return 0
    write_json(run_dir / "llc.json", record)
    plot_trace(result, run_dir / "llc_trace.png", title=f"LLC of {run_dir.name}")
    with Mirror(run_dir, log, name=f"{run_dir.name} llc", config={"llc": dict(result.config)}) as mirror:
        mirror.log_all(result.trace_records(), curve="llc", step="draw")  # the traces of llc.json, draw by draw
    shown = "null (flagged)" if record["llc_mean"] is None or record["llc_mean"] != record["llc_mean"] else \
        f"{result.mean:.3f} ± {result.std:.3f} (chain std)"
    print(f"LLC {shown}; L(w*) = {result.init_loss:.4g}; flags: {', '.join(result.flags) or 'none'}; "
          f"wrote {run_dir / 'llc.json'} and {run_dir / 'llc_trace.png'}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from selfmodels.complexity.calibrate import calibrate, parse_values
    from selfmodels.complexity.llc import cross_entropy

    require(args.second is not None, "usage: selfmodels llc calibrate RUN_DIR --epsilons ... --gammas ...")
    require(not args.log, "--log belongs to `selfmodels llc RUN_DIR` (one estimate's traces), not to llc calibrate")
    epsilons, gammas = parse_values(args.epsilons, "epsilons"), parse_values(args.gammas, "gammas")
    require(epsilons and gammas, "llc calibrate needs --epsilons and --gammas (e.g. --epsilons 1e-5 1e-4 --gammas 10 100)")
    nbetas = parse_values(args.nbetas, "nbetas") if args.nbetas else [None]
    model, data, run, config, device = _load(args.second, args)
    out = Path(args.out) if args.out else Path(args.second) / "llc_calibration"
    with _written_by_main(out) as where:
        cells = calibrate(model, data.train, cross_entropy, config, epsilons, gammas, nbetas, where, device=device,
                          progress=not args.quiet and distributed.is_main())
    if distributed.is_main():
        print(f"{len(cells)} settings; wrote {out / 'calibration.md'} and {out / 'calibration.png'}")
    return 0


@contextmanager
def _written_by_main(out: Path):
    """``out`` on rank 0; on other ranks a scratch copy of it, deleted afterwards. A calibration writes its
    files as it goes and resumes from them: every rank resumes from the same cells (the same estimates,
    whose chains are split across the ranks), and only rank 0's files are kept."""
    main = distributed.is_main()
    with tempfile.TemporaryDirectory(prefix="selfmodels-calibration-") as scratch:
        where = out if main else Path(scratch) / "out"
        if not main and out.is_dir():
            shutil.copytree(out, where)
        distributed.barrier()  # copied before rank 0 writes anything
        yield where


def _llc(args: argparse.Namespace) -> int:
    return _calibrate(args) if args.target == CALIBRATE else _estimate(args)


def register(commands: argparse._SubParsersAction, reproduce: argparse._SubParsersAction) -> None:
    """Add ``llc`` (and its ``calibrate`` form) to ``selfmodels``."""
    from selfmodels.complexity.llc import LLCConfig
    from selfmodels.curves import add_log_option

    parser = commands.add_parser(
        "llc", help="estimate a trained run's local learning coefficient (or: llc calibrate RUN_DIR)",
        description="selfmodels llc RUN_DIR: LLC of the run's classifier (CE on its training data), written to "
                    "RUN_DIR/llc.json and RUN_DIR/llc_trace.png. selfmodels llc calibrate RUN_DIR --epsilons ... "
                    "--gammas ... [--nbetas ...]: sweep SGLD settings, written to RUN_DIR/llc_calibration/. "
                    "Flags not given default to the run's stored LLC settings, else the paper's for its task.",
    )
    parser.add_argument("target", metavar="RUN_DIR|calibrate", help="a finished run directory, or the word calibrate")
    parser.add_argument("second", metavar="RUN_DIR", nargs="?", default=None, help="(calibrate) the run directory")
    add_arguments(parser, LLCConfig)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_log_option(parser)
    group = parser.add_argument_group("calibrate")
    group.add_argument("--epsilons", nargs="+", help="(calibrate) step sizes to try")
    group.add_argument("--gammas", nargs="+", help="(calibrate) localization strengths to try")
    group.add_argument("--nbetas", nargs="+", help="(calibrate) inverse temperatures to try (default: the config's)")
    group.add_argument("--out", default=None, help="(calibrate) output directory (default: RUN_DIR/llc_calibration)")
    parser.set_defaults(func=_llc)

