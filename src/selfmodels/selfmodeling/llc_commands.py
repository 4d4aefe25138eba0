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

from selfmodels.configs import add_arguments, from_args, from_dict
from selfmodels.errors import UserError, require
from selfmodels.options import Command, CommandParser, check_run_dir, runner

CALIBRATE = "calibrate"
OPTIONS = {"device": "auto", "threads": None, "quiet": False}


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


def check_llc_run_dir(run_dir: str | Path) -> None:
    """RUN_DIR is one finished run: not a file, not missing, not a grid's output directory (OUT/runs/<name>/)."""
    what = "of one finished run (of `regularize` or `reproduce self-modeling`: OUT/runs/<name>/)"
    check_run_dir(Path(run_dir), "RUN_DIR", what)
    runs = Path(run_dir) / "runs"
    if runs.is_dir() and not (Path(run_dir) / "result.json").is_file():
        names = sorted(p.name for p in runs.iterdir() if p.is_dir())
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        raise UserError(f"RUN_DIR {run_dir} is a grid's output directory: llc wants one run, {runs}/<name>/"
                        + (f"; runs here: {shown}" if names else "; it holds no runs yet"))


def _load(run_dir: str, args: argparse.Namespace, r):
    from selfmodels import distributed
    from selfmodels.complexity.llc import LLCConfig
    from selfmodels.runtime import resolve_device, set_threads
    from selfmodels.selfmodeling.runs import load_trained_classifier

    check_llc_run_dir(run_dir)
    set_threads(r.threads)
    with distributed.main_first():  # a download or conversion of the run's data happens once
        model, data, run = load_trained_classifier(run_dir)
    config = from_args(LLCConfig, args, base=_base_config(run))
    config.validate()
    return model, data, run, config, resolve_device(r.device)


def _estimate(r, args: argparse.Namespace) -> int:
    from selfmodels import distributed
    from selfmodels.artifacts import write_json
    from selfmodels.complexity.llc import cross_entropy, estimate_llc
    from selfmodels.complexity.llc_plots import plot_trace
    from selfmodels.curves import Mirror, check_sinks

    for name in ("epsilons", "gammas", "nbetas", "out"):
        require(getattr(args, name, None) is None, f"--{name} belongs to `selfmodels llc calibrate RUN_DIR`; "
                f"for one estimate use --epsilon/--gamma/--nbeta")
    run_dir = Path(args.run_dir)
    log = check_sinks(r.log)  # a missing extra stops here, before any work starts
    model, data, run, config, device = _load(args.run_dir, args, r)
    result = estimate_llc(model, data.train, cross_entropy, config, device=device, progress=not r.quiet)
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


def _calibrate(r, args: argparse.Namespace) -> int:
    from selfmodels import distributed
    from selfmodels.complexity.calibrate import calibrate, parse_values
    from selfmodels.complexity.llc import cross_entropy

    epsilons, gammas = parse_values(args.epsilons, "epsilons"), parse_values(args.gammas, "gammas")
    require(epsilons and gammas, "llc calibrate needs --epsilons and --gammas (e.g. --epsilons 1e-5 1e-4 --gammas 10 100)")
    nbetas = parse_values(args.nbetas, "nbetas") if args.nbetas else [None]
    model, data, run, config, device = _load(args.run_dir, args, r)
    out = Path(r.out) if r.out else Path(args.run_dir) / "llc_calibration"
    with _written_by_main(out) as where:
        cells = calibrate(model, data.train, cross_entropy, config, epsilons, gammas, nbetas, where, device=device,
                          progress=not r.quiet and distributed.is_main())
    if distributed.is_main():
        print(f"{len(cells)} settings; wrote {out / 'calibration.md'} and {out / 'calibration.png'}")
    return 0


@contextmanager
def _written_by_main(out: Path):
    """``out`` on rank 0; on other ranks a scratch copy of it, deleted afterwards. A calibration writes its
    files as it goes and resumes from them: every rank resumes from the same cells (the same estimates,
    whose chains are split across the ranks), and only rank 0's files are kept."""
    from selfmodels import distributed

    main = distributed.is_main()
    with tempfile.TemporaryDirectory(prefix="selfmodels-calibration-") as scratch:
        where = out if main else Path(scratch) / "out"
        if not main and out.is_dir():
            shutil.copytree(out, where)
        distributed.barrier()  # copied before rank 0 writes anything
        yield where


def _llc_settings(parser: argparse.ArgumentParser) -> None:
    """The estimator's settings as flags; its seed is the command's --seed, among the common options."""
    from selfmodels.complexity.config import LLCConfig

    common = next(g for g in parser._action_groups if g.title == "common options")
    default = LLCConfig().seed
    common.add_argument("--seed", dest="seed", type=int, default=argparse.SUPPRESS, metavar="N",
                        help=f"random seed: the SGLD data order; chain c's noise uses seed + c (default: {default})")
    add_arguments(parser, LLCConfig, exclude={"seed"}, groups=True)


def _run_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path,
                        help="one finished run's directory (OUT/runs/<name>/ of `regularize` or `reproduce self-modeling`)")


def register(commands: argparse._SubParsersAction, reproduce: argparse._SubParsersAction) -> None:
    """Add ``llc`` and its subcommand ``llc calibrate`` to ``selfmodels``."""
    settings = ("SGLD settings not given default to the run's stored LLC settings, else the paper's for its task "
                "(the defaults shown are the estimator's own).")
    command = Command("llc", options={**OPTIONS, "log": []}, usage="RUN_DIR ")

    def hidden_calibrate_flags(parser) -> None:  # given to one estimate, they are refused with a pointer
        for name in ("--epsilons", "--gammas", "--nbetas", "--out"):
            parser.add_argument(name, nargs="+" if name != "--out" else None, default=None, help=argparse.SUPPRESS)
        _llc_settings(parser)

    parser = command.parser(
        commands, "llc", help="estimate a trained run's local learning coefficient (subcommand: llc calibrate RUN_DIR)",
        description="selfmodels llc RUN_DIR: the LLC of the run's classifier (CE on its training data), written to "
                    "RUN_DIR/llc.json and RUN_DIR/llc_trace.png. Subcommand: selfmodels llc calibrate RUN_DIR --epsilons "
                    "... --gammas ... [--nbetas ...]: the estimate over a grid of SGLD settings, written to "
                    "RUN_DIR/llc_calibration/ (see selfmodels llc calibrate --help). " + settings,
        positionals=_run_dir, extra=hidden_calibrate_flags)
    parser.set_defaults(func=runner(command, _estimate))

    holder = CommandParser(prog=parser.prog, add_help=False)
    children = holder.add_subparsers(parser_class=CommandParser)
    command = Command("llc calibrate", options={**OPTIONS, "out": None}, usage="RUN_DIR --epsilons ... --gammas ... ",
                      out_required=False)
    command._out_help = "output directory (default: RUN_DIR/llc_calibration)"

    def grid_flags(group) -> None:
        group.add_argument("--epsilons", nargs="+", help="step sizes to try")
        group.add_argument("--gammas", nargs="+", help="localization strengths to try")
        group.add_argument("--nbetas", nargs="+", help="inverse temperatures to try (default: the config's)")

    calibrate = command.parser(
        children, CALIBRATE, help="the LLC over a grid of SGLD settings",
        description="selfmodels llc calibrate RUN_DIR: the same estimate as `selfmodels llc RUN_DIR` over a grid of SGLD "
                    "settings (every epsilon x gamma x nbeta); writes a table, a grid plot and the records to "
                    "RUN_DIR/llc_calibration/ (or --out) and resumes from them. " + settings,
        positionals=_run_dir, main_flags=grid_flags, extra=_llc_settings)
    calibrate.set_defaults(func=runner(command, _calibrate))
    parser.children = {CALIBRATE: calibrate}
