"""Subcommands of the ``forward`` area: ``forward train / eval / sweep`` and ``reproduce forward-self-models``.

All of them run the one pipeline (:mod:`selfmodels.forward.pipeline`) with the same options for every
subject: a preset (``--quick`` or full, chosen by the kind of subject) with the command-line flags laid over it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from selfmodels.configs import add_arguments, from_args, from_dict
from selfmodels.curves import add_log_option, check_sinks

LAYER_HELP = "(-1 or embed = the embeddings, k = the residual after block k)"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_options(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """The options every pipeline command shares: the run config's fields, --main, --quick and the layer pair."""
    from selfmodels.forward.config import RunConfig

    add_arguments(parser, RunConfig)  # every setting, as --field or --group.field; the shorthands below replace two
    parser.add_argument("--out", type=Path, required=True, help="run directory (reused and resumed if it exists)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--main", default="gpt", help="subject: gpt (ours, trained here; default), smollm2 (offline "
                                                      "SmolLM2-135M) or a Hugging Face model id / local directory")
    parser.add_argument("--source", dest="source_index", default=None, help=f"source layer index {LAYER_HELP} (default: the preset's)")
    parser.add_argument("--target", dest="target_index", default=None, help=f"target layer index {LAYER_HELP} (default: the preset's)")
    parser.add_argument("--corpus", dest="corpus_name", default=None,
                        help="corpus: offline, kjv, wikipedia, fineweb-edu or a .txt path (default: the preset's)")
    add_log_option(parser)
    _common(parser)


def register(commands: argparse._SubParsersAction, reproduce: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``selfmodels`` and its experiment to ``selfmodels reproduce``."""
    area = commands.add_parser("forward", help="forward self-models: predict later-layer activations from earlier ones")
    sub = area.add_subparsers(dest="forward_command", metavar="COMMAND", parser_class=type(area))
    sub.required = True

    train = sub.add_parser("train", help="train and evaluate a forward model on one layer pair of any subject (no sweeps, "
                                         "no analyses unless asked)", conflict_handler="resolve")
    _run_options(train, "the CPU-sized preset (otherwise the papers' full sizes, for a GPU)")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("eval", help="evaluate a run directory again (e.g. on more held-out sequences)")
    evaluate.add_argument("run_dir", type=Path, help="a directory written by `forward train` or `reproduce forward-self-models`")
    evaluate.add_argument("--eval-sequences", type=int, default=None, help="held-out sequences (default: the run's setting)")
    _common(evaluate)
    evaluate.set_defaults(func=_eval)

    sweep = sub.add_parser("sweep", help="add a capacity or layer-gap sweep to a run directory (its subject and cache are reused)")
    sweep.add_argument("run_dir", type=Path, help="a directory written by `forward train` or `reproduce forward-self-models`")
    sweep.add_argument("--kind", choices=("capacity", "gap"), required=True, help="capacity: the paper's 1/3/10/22%% configs; gap: layer gaps")
    sweep.add_argument("--source", default=None, help=f"source index of the sweep {LAYER_HELP} (default: the run's source)")
    sweep.add_argument("--target", default=None, help="target index of the capacity sweep (default: source + 3, at most the last block)")
    sweep.add_argument("--gaps", type=int, nargs="+", default=[1, 2, 3], help="gaps of the layer-gap sweep (default: 1 2 3)")
    add_log_option(sweep)
    _common(sweep)
    sweep.set_defaults(func=_sweep)

    profile = sub.add_parser("profile", help="a forward model for every layer pair (k, k + gap) of a subject in one streaming "
                                             "run, each beside the skip and ridge baselines, on the same held-out tokens",
                             conflict_handler="resolve")
    _profile_options(profile)
    profile.set_defaults(func=_profile)

    explore = sub.add_parser("explore", help="one self-contained HTML page of a run: held-out tokens shaded by the forward "
                                             "model's error, top-5 next tokens, KLs, categories, attention (docs/explorer.md)")
    explore.add_argument("run_dir", type=Path, help="a directory of `forward train`, `reproduce forward-self-models` or `forward profile`")
    explore.add_argument("--out", type=Path, default=None, help="the page (default: RUN_DIR/explorer.html; the arrays go beside it as .npz)")
    explore.add_argument("--sequences", type=int, default=None, help="held-out windows shown in full per pair (default: 4; 1 for a profile)")
    explore.add_argument("--worst", type=int, default=None, help="worst positions of the whole held-out set embedded per pair "
                                                                 "(default: 100; 25 for a profile)")
    _common(explore)
    explore.set_defaults(func=_explore)

    rep = reproduce.add_parser("forward-self-models", help="the forward-self-models paper on our GPT (sweeps) or a pretrained "
                                                          "LM (decomposition): forward model, baseline, substitution, analyses, report",
                               conflict_handler="resolve")
    _run_options(rep, "CPU-sized run on offline data (our GPT ~7 min, SmolLM2 ~4 min on 2 cores)")
    rep.set_defaults(func=_reproduce)


def _profile_options(parser: argparse.ArgumentParser) -> None:
    from selfmodels.forward.profile import ProfileConfig

    add_arguments(parser, ProfileConfig)
    parser.add_argument("--out", type=Path, required=True, help="output directory (reused and resumed if it exists)")
    parser.add_argument("--quick", action="store_true", help="2 CPU cores: every pair of SmolLM2 in about 25 minutes "
                                                             "(otherwise sized for one GPU)")
    parser.add_argument("--main", default="smollm2", help="subject: smollm2 (default, offline), gpt (ours, trained here) "
                                                          "or a Hugging Face model id / local directory")
    parser.add_argument("--corpus", dest="corpus_name", default=None, help="corpus (default: the preset's)")
    add_log_option(parser)
    _common(parser)


def _profile(args) -> int:
    from selfmodels.forward.profile import ProfileConfig, preset, run

    log = check_sinks(args.log)  # a missing extra stops here, before any work starts
    progress = _setup(args)
    cfg = from_args(ProfileConfig, args, base=preset(args.main, args.quick))
    if args.corpus_name is not None:
        cfg = dataclasses.replace(cfg, corpus=dataclasses.replace(cfg.corpus, corpus=args.corpus_name))
    r = run(dataclasses.replace(cfg, subject=dataclasses.replace(cfg.subject, main=args.main)), args.out, args.device, progress,
            log=log)
    for row in r["rows"]:
        print(f"{row['source']:>3} -> {row['target']:<3} cosine {row['cosine']:.4f} (skip {row['skip_cosine']:.4f}, ridge "
              f"{row['ridge_cosine']:.4f})  update R2 {row['delta_r2']:.3f}  recovery {row['recovery']:.3f} "
              f"(KL skip {row['kl_skipped']:.3f})")
    print(f"results: {Path(args.out) / 'results.json'}, report: {Path(args.out) / 'report.md'}")
    return 0


def _setup(args) -> bool:
    from selfmodels.runtime import set_threads

    set_threads(args.threads)
    return not args.no_progress


def _config(args, paper: bool):
    """The preset for ``--main`` / ``--quick``, the shorthand flags, then every other flag given."""
    from selfmodels.forward.config import RunConfig, preset
    from selfmodels.subjects.base import parse_index

    base = preset(args.main, args.quick)
    if not paper:  # `forward train`: one pair, no sweeps or analyses unless asked
        base = dataclasses.replace(base, sweeps=dataclasses.replace(base.sweeps, capacity=[], gaps=[]), analysis_sequences=0)
    cfg = from_args(RunConfig, args, base=base)
    if args.source_index is not None:
        cfg = dataclasses.replace(cfg, source=parse_index(args.source_index))
    if args.target_index is not None:
        cfg = dataclasses.replace(cfg, target=parse_index(args.target_index))
    if args.corpus_name is not None:
        cfg = dataclasses.replace(cfg, corpus=dataclasses.replace(cfg.corpus, corpus=args.corpus_name))
    return dataclasses.replace(cfg, subject=dataclasses.replace(cfg.subject, main=args.main))


def _train(args) -> int:
    from selfmodels.forward.pipeline import run

    log = check_sinks(args.log)  # a missing extra stops here, before any work starts
    progress = _setup(args)
    _summary(run(_config(args, paper=False), args.out, args.device, progress, log=log), args.out)
    return 0


def _reproduce(args) -> int:
    from selfmodels.forward.explorer import write_explorer
    from selfmodels.forward.pipeline import run

    log = check_sinks(args.log)  # a missing extra stops here, before any work starts
    progress = _setup(args)
    explore = lambda out, device: write_explorer(out, device=device)  # noqa: E731 - the page beside report.md, linked from it
    _summary(run(_config(args, paper=True), args.out, args.device, progress, before_report=explore, log=log), args.out)
    return 0


def _load_run(run_dir: Path):
    from selfmodels.artifacts import read_json
    from selfmodels.errors import require
    from selfmodels.forward.config import RunConfig

    require(Path(run_dir).is_dir(), f"run directory {run_dir} does not exist")
    require((Path(run_dir) / "config.json").is_file(), f"{run_dir} has no config.json: it is not a forward-self-model run directory")
    record = read_json(Path(run_dir) / "config.json")
    require(record.get("experiment") == "forward-self-models", f"{run_dir} is not a forward-self-model run directory")
    return from_dict(RunConfig, record["config"])


def _eval(args) -> int:
    from selfmodels.forward.pipeline import run

    progress = _setup(args)
    cfg = _load_run(args.run_dir)
    if args.eval_sequences is not None:
        cfg = dataclasses.replace(cfg, eval_sequences=args.eval_sequences)
    _summary(run(cfg, args.run_dir, args.device, progress), args.run_dir)
    return 0


def _explore(args) -> int:
    from selfmodels.forward.explorer import write_explorer
    from selfmodels.runtime import resolve_device

    progress = _setup(args)
    page, arrays = write_explorer(args.run_dir, args.out, resolve_device(args.device), args.sequences, args.worst, progress)
    print(f"explorer: {page} ({page.stat().st_size / 1e6:.2f} MB; open it in any browser), arrays: {arrays}")
    return 0


def _sweep(args) -> int:
    from selfmodels.forward.config import CAPACITY
    from selfmodels.forward.pipeline import run
    from selfmodels.subjects.base import parse_index

    log = check_sinks(args.log)  # a missing extra stops here, before any work starts
    progress = _setup(args)
    cfg = _load_run(args.run_dir)
    source = cfg.source if args.source is None else parse_index(args.source)
    sweeps = cfg.sweeps
    if args.kind == "capacity":
        target = source + 3 if args.target is None else parse_index(args.target)
        sweeps = dataclasses.replace(sweeps, capacity=list(CAPACITY), capacity_source=source, capacity_target=target)
    else:
        sweeps = dataclasses.replace(sweeps, gaps=list(args.gaps), gap_source=source)
    results = run(dataclasses.replace(cfg, sweeps=sweeps), args.run_dir, args.device, progress, log=log)
    for r in results["capacity_sweep" if args.kind == "capacity" else "layer_gap_sweep"]:
        print(f"{r['name']:>8}  {r['source']} -> {r['target']}  params {r['params']:>10,}  cosine {r['cosine']:.4f} "
              f"(skip {r['skip_cosine']:.4f})  recovery {r['recovery']:.3f}")
    print(f"results: {Path(args.run_dir) / 'results.json'}")
    return 0


def _summary(r: dict, out: Path) -> None:
    s, m = r["substitution"], r["subject"]
    print(f"subject: {m['name']} ({m['family']}, {m['params']:,} params), held-out loss {m['val_loss']:.3f} nats")
    print(f"forward model {r['pair']['source']} -> {r['pair']['target']}: {r['forward_model']['params']:,} params ({r['pair']['training']})")
    print(f"cosine {r['cosine']:.4f} (skip baseline {r['skip_cosine']:.4f}), update cosine {r['delta_cosine']:.4f}, update R2 {r['delta_r2']:.4f}")
    print(f"KL sub {s['kl_substituted']:.4f}  KL skip {s['kl_skipped']:.4f}  recovery {s['recovery']:.3f}"
          + (f"  (per-position MLP {r['baseline_mlp']['recovery']:.3f})" if r.get("baseline_mlp") else ""))
    print(f"results: {Path(out) / 'results.json'}, report: {Path(out) / 'report.md'}"
          + (f", explorer: {Path(out) / 'explorer.html'}" if (Path(out) / "explorer.html").is_file() else ""))
