"""Subcommands of the ``forward`` area: ``forward train / eval / sweep`` and ``reproduce forward-self-models``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from selfmodels.configs import add_arguments, from_args


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def register(commands: argparse._SubParsersAction, reproduce: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``selfmodels`` and its experiments to ``selfmodels reproduce``."""
    from selfmodels.forward.runs import TrainRunConfig
    from selfmodels.forward.train import ForwardTrainConfig

    area = commands.add_parser("forward", help="forward self-models: predict later-layer activations from earlier ones")
    sub = area.add_subparsers(dest="forward_command", metavar="COMMAND", parser_class=type(area))
    sub.required = True

    train = sub.add_parser("train", help="train a GPT and a forward model on one layer pair, then evaluate")
    train.add_argument("--out", type=Path, required=True, help="run directory (resumed if it exists)")
    add_arguments(train, TrainRunConfig)
    _common(train)
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("eval", help="evaluate a trained run directory on its held-out tokens")
    evaluate.add_argument("run_dir", type=Path, help="a directory written by `selfmodels forward train`")
    evaluate.add_argument("--eval-sequences", type=int, default=None, help="held-out sequences (default: the run's setting)")
    _common(evaluate)
    evaluate.set_defaults(func=_eval)

    sweep = sub.add_parser("sweep", help="capacity or layer-gap sweep of forward models on a trained run's frozen GPT")
    sweep.add_argument("run_dir", type=Path, help="a directory written by `selfmodels forward train`")
    sweep.add_argument("--kind", choices=("capacity", "gap"), required=True, help="capacity: the 1/3/10/22%% configs; gap: gaps 1..3")
    sweep.add_argument("--out", type=Path, required=True, help="sweep output directory")
    sweep.add_argument("--source", type=int, default=0, help="source block index (default: 0)")
    sweep.add_argument("--target", type=int, default=3, help="target block index for the capacity sweep (default: 3)")
    sweep.add_argument("--gaps", type=int, nargs="+", default=[1, 2, 3], help="gaps for the gap sweep (default: 1 2 3)")
    sweep.add_argument("--cache-sequences", type=int, default=2048, help="training sequences in the activation cache")
    add_arguments(sweep, ForwardTrainConfig, prefix="fwd_train.")
    _common(sweep)
    sweep.set_defaults(func=_sweep)

    rep = reproduce.add_parser("forward-self-models", help="forward self-models paper: GPT, forward model, substitution, sweeps, report")
    rep.add_argument("--out", type=Path, required=True, help="output directory (results.json, report.md, plots)")
    rep.add_argument("--quick", action="store_true", help="CPU-sized run on offline data (<= 15 min on 2 cores)")
    rep.add_argument("--main", default="gpt", help="main model: gpt (ours, default), or a Hugging Face causal LM name / smollm2")
    rep.add_argument("--corpus", default=None, help="corpus for our GPT (default: offline)")
    rep.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    _common(rep)
    rep.set_defaults(func=_reproduce)


def _setup(args) -> bool:
    from selfmodels.runtime import set_threads

    set_threads(args.threads)
    return not args.no_progress


def _train(args) -> int:
    from selfmodels.forward.runs import TrainRunConfig, train_run

    progress = _setup(args)
    cfg = from_args(TrainRunConfig, args, base=TrainRunConfig())
    # The forward model's width follows the GPT unless given explicitly (then it must match).
    if "fwd__d_model" not in vars(args):
        cfg = dataclasses.replace(cfg, fwd=dataclasses.replace(cfg.fwd, d_model=cfg.gpt.d_model))
    results = train_run(cfg, args.out, args.device, progress)
    _summary(results, args.out)
    return 0


def _eval(args) -> int:
    from selfmodels.forward.runs import eval_run

    progress = _setup(args)
    results = eval_run(args.run_dir, args.device, args.eval_sequences, progress)
    _summary(results, args.run_dir)
    return 0


def _sweep(args) -> int:
    from selfmodels.forward.runs import sweep_run
    from selfmodels.forward.train import ForwardTrainConfig

    progress = _setup(args)
    fwd_train = from_args(ForwardTrainConfig, args, prefix="fwd_train.", base=ForwardTrainConfig())
    rows = sweep_run(args.run_dir, args.kind, args.out, fwd_train, args.source, args.target, tuple(args.gaps), args.cache_sequences, args.device, progress)
    for r in rows:
        print(f"{r['name']:>8}  params {r['params']:>10,}  cosine {r['cosine']:.4f}  recovery {r['recovery']:.3f}")
    print(f"results: {args.out / 'results.json'}")
    return 0


def _reproduce(args) -> int:
    from selfmodels.errors import require

    progress = _setup(args)
    if args.main != "gpt":
        from selfmodels.forward import hf_reproduce  # the pretrained-model engineer's module

        return hf_reproduce.run(main=args.main, out=args.out, quick=args.quick, device=args.device, threads=args.threads)
    from selfmodels.forward import experiment

    cfg = experiment.quick() if args.quick else experiment.full()
    cfg = dataclasses.replace(cfg, seed=args.seed)
    if args.corpus is not None:
        require(args.corpus.strip() != "", "--corpus is empty: give offline, kjv, wikipedia, fineweb-edu or a .txt path")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, corpus=args.corpus))
    results = experiment.run(cfg, args.out, args.device, progress)
    _summary(results, args.out)
    return 0


def _summary(r: dict, out: Path) -> None:
    s = r["substitution"]
    print(f"main model: {r['main_model']['params']:,} params, validation loss {r['main_model']['val_loss']:.3f} nats")
    print(f"forward model {r['pair']['source']} -> {r['pair']['target']}: {r['forward_model']['params']:,} params")
    print(f"cosine {r['cosine']:.4f} (skip baseline {r['identity_cosine']:.4f}), delta cosine {r['delta_cosine']:.4f}, delta R2 {r['delta_r2']:.4f}")
    print(f"KL sub {s['kl_substituted']:.4f}  KL skip {s['kl_skipped']:.4f}  recovery {s['recovery']:.3f}")
    print(f"results: {Path(out) / 'results.json'}")
