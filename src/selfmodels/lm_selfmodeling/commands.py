"""Subcommands: ``selfmodels selfmodel-lm`` (one condition) and ``selfmodels reproduce self-modeling-transformers``.

``selfmodel-lm`` exposes every field of :class:`~selfmodels.lm_selfmodeling.run.LMRunConfig` as a flag (nested groups
as ``--objective.*``, ``--lm.*``, ``--gpt.*``, ``--observer.*``, ``--llc.*``, ``--corpus.*``), with the shorthands
``--method --strength --site --loss --flow --pair I J`` for the objective.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from selfmodels.configs import add_arguments, from_args
from selfmodels.curves import add_log_option, check_sinks
from selfmodels.lm_selfmodeling import presets
from selfmodels.lm_selfmodeling.grid import run_grid, write_outputs
from selfmodels.lm_selfmodeling.objective import FLOWS, LOSSES, METHODS
from selfmodels.lm_selfmodeling.run import LMRunConfig, run_one
from selfmodels.runtime import resolve_device, set_threads


def _objective_from_shorthands(cfg: LMRunConfig, args: argparse.Namespace) -> LMRunConfig:
    o = cfg.objective
    changes = {k: getattr(args, k) for k in ("method", "strength", "site", "loss", "flow") if getattr(args, k) is not None}
    if args.pair is not None:
        changes["source"], changes["target"] = args.pair
    return dataclasses.replace(cfg, objective=dataclasses.replace(o, **changes))


def _selfmodel_lm(args: argparse.Namespace) -> int:
    log = check_sinks(args.log)  # a missing extra stops here, before any work starts
    cfg = from_args(LMRunConfig, args, base=presets.quick_run())
    cfg = dataclasses.replace(cfg, main=args.main)
    cfg = _objective_from_shorthands(cfg, args)
    if args.corpus is not None:
        cfg = dataclasses.replace(cfg, corpus=dataclasses.replace(cfg.corpus, corpus=args.corpus))
    set_threads(args.threads)
    record = run_one(cfg, args.out, device=resolve_device(args.device), progress=not args.quiet, log=log)
    print(f"wrote {Path(args.out) / 'result.json'}: val loss {record['val_loss']:.4f} nats/token, "
          f"unembedding SD {record['unembedding_sd']:.4f}, observer recovery (near) {record['observer_near_recovery']:.3f}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    log = check_sinks(args.log)
    workers = args.workers if args.workers is not None else min(2, os.cpu_count() or 1)
    device = str(resolve_device(args.device))
    grids = presets.quick_grids(workers, device, args.llc) if args.quick else presets.full_grids(workers, device, args.llc)
    for name, grid in grids.items():
        out = Path(args.out) if len(grids) == 1 else Path(args.out) / name
        results = run_grid(dataclasses.replace(grid, log=log), out, progress=not args.quiet)
        write_outputs(results, out)
        print(f"wrote {out / 'results.json'} and {out / 'report.md'} ({len(results['runs'])} runs)")
    return 0


def register(commands: argparse._SubParsersAction, reproduce: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "selfmodel-lm", help="train one language model with a self-modeling objective or a control; measure it",
        description="Train one condition (our GPT from scratch, or fine-tune a pretrained subject) and measure "
        "validation loss, weight spread, residual norms, the self-model's fit, a fresh observer's predictability and "
        "the LLC. Resumable; writes result.json to --out.")
    parser.add_argument("--out", required=True, help="run directory (a finished run is read back)")
    parser.add_argument("--main", default="gpt", help="gpt (ours, from scratch) or a Hugging Face model to fine-tune")
    parser.add_argument("--corpus", default=None, help="offline (default), kjv, wikipedia, fineweb-edu or a .txt path")
    parser.add_argument("--method", default=None, help=f"one of {', '.join(METHODS)}")
    parser.add_argument("--strength", type=float, default=None, help="w in CE + w * A (weight decay: its coefficient)")
    parser.add_argument("--site", default=None, help="head-input, resid:K or mlp:K")
    parser.add_argument("--loss", default=None, help=f"one of {', '.join(LOSSES)}")
    parser.add_argument("--flow", default=None, help=f"forward form's gradient flow: one of {', '.join(FLOWS)}")
    parser.add_argument("--pair", type=int, nargs=2, default=None, metavar=("I", "J"), help="forward form's layer pair")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_log_option(parser)
    add_arguments(parser, LMRunConfig)
    parser.set_defaults(func=_selfmodel_lm)

    rep = reproduce.add_parser(
        "self-modeling-transformers", help="self-modeling language models: simpler, or easier to predict? (--quick: CPU)",
        description="The grid of docs/self-modeling-transformers.md: baseline, self-model at two strengths, the forward "
        "form, activation-l2 and random-target at the higher strength, weight decay at its own, 3 seeds; report.md with "
        "CIs. --quick: a 4 x 4 x 64 GPT on the offline corpus (CPU). Without: the forward paper's 4 x 4 x 256 toy GPT and a "
        "fine-tune of SmolLM2 (sized for one GPU).")
    rep.add_argument("--out", required=True, help="output directory (finished runs are kept)")
    rep.add_argument("--quick", action="store_true", help="CPU-sized version on the offline corpus")
    rep.add_argument("--workers", type=int, default=None, help="runs in parallel (default: 2, 1 on a 1-core machine)")
    rep.add_argument("--llc", choices=("yes", "no"), default="yes", help="estimate each run's LLC (default yes)")
    rep.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_log_option(rep)
    rep.add_argument("--quiet", action="store_true", help="no progress bars")
    rep.set_defaults(func=_reproduce)
