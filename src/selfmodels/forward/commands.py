"""Subcommands of the ``forward`` area: ``forward train / eval / sweep / profile / explore`` and
``reproduce forward-self-models``.

The pipeline commands run the one pipeline (:mod:`selfmodels.forward.pipeline`) with the same settings for
every subject: a preset (``full`` by default, the papers' sizes; ``quick`` for 2 CPU cores; the file is chosen
by the kind of subject, ``presets/gpt-*.json`` or ``presets/pretrained-*.json``), a ``--config`` file, then the
flags (:mod:`selfmodels.options`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from selfmodels.configs import from_dict
from selfmodels.options import Command, Presets, check_run_dir, check_seq_len, check_subject, runner, subject_shape

LAYER_HELP = "(-1 or embed = the embeddings, k = the residual after block k)"
RUN_DIR_WHAT = "written by `forward train` or `reproduce forward-self-models`"
SHARED = {"out": None, "device": "auto", "threads": None, "quiet": False, "log": []}
DERIVED = {"subject.gpt.vocab_size": "our GPT's vocabulary is the tokenizer's: set --corpus.vocab-size"}


def _one_pair(data: dict) -> dict:
    """`forward train`: one pair, no sweeps or analyses unless asked."""
    data["sweeps"] = {**data["sweeps"], "capacity": [], "gaps": []}
    return {**data, "analysis_sequences": 0}


def _pipeline_command(name: str, one_pair: bool) -> Command:
    from selfmodels.forward.config import RunConfig

    return Command(name, RunConfig, Presets("selfmodels.forward", (("gpt-", "gpt"), ("pretrained-", "pretrained"))),
                   options=dict(SHARED), subject="subject.main", experiment="forward-self-models",
                   adjust=_one_pair if one_pair else None, derived=DERIVED, record_keys=("subject",), finish=_indices)


def _indices(cfg, args):
    """--source / --target as typed (an integer or embed) become layer indices; a bad one is one message."""
    from selfmodels.subjects.base import parse_index

    return dataclasses.replace(cfg, source=parse_index(cfg.source), target=parse_index(cfg.target))


def _subject_flags(command: Command, subject_help: str, layers: bool = True):
    def add(group) -> None:
        command.flag(group, "--subject", "subject.main", subject_help, metavar="NAME")
        if layers:
            command.flag(group, "--source", "source", f"source layer index {LAYER_HELP}", metavar="INDEX")
            command.flag(group, "--target", "target", f"target layer index {LAYER_HELP}", metavar="INDEX")
        command.flag(group, "--corpus", "corpus.corpus", "corpus: offline, kjv, wikipedia, fineweb-edu or a .txt path")
    return add


def _pipeline_parser(command: Command, sub, name: str, help: str, description: str):
    parser = command.parser(sub, name, help=help, description=description, exclude=("source", "target"),
                            main_flags=_subject_flags(command, "subject: gpt (ours, trained here), smollm2 (offline "
                                                      "SmolLM2-135M) or a Hugging Face model id / local directory"))
    command.rename(parser, "--main", "--subject", "subject__main")
    return parser


def register(commands: argparse._SubParsersAction, reproduce: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``selfmodels`` and its experiment to ``selfmodels reproduce``."""
    area = commands.add_parser("forward", help="forward self-models: predict later-layer activations from earlier ones")
    sub = area.add_subparsers(dest="forward_command", metavar="COMMAND", parser_class=type(area))
    sub.required = True
    for add in (_register_train, _register_eval, _register_sweep, _register_profile, _register_explore):
        add(sub)
    _register_reproduce(reproduce)


def _register_train(sub: argparse._SubParsersAction) -> None:
    """``forward train``: one forward model on one layer pair."""
    command = _pipeline_command("forward train", one_pair=True)
    train = _pipeline_parser(command, sub, "train", "train and evaluate a forward model on one layer pair of any subject "
                             "(no sweeps, no analyses unless asked)",
                             "Train a forward model on one layer pair of a subject and evaluate it (regression metrics, "
                             "causal substitution, the baselines). The default preset, full, is the papers' setting "
                             "(sized for a GPU); --preset quick is CPU-sized.")
    train.set_defaults(func=runner(command, _train))


def _register_eval(sub: argparse._SubParsersAction) -> None:
    """``forward eval RUN_DIR``: evaluate a run again."""
    command = Command("forward eval", options={"device": "auto", "threads": None, "quiet": False}, usage="RUN_DIR ")
    evaluate = command.parser(sub, "eval", help="evaluate a run directory again (e.g. on more held-out sequences)",
                              description="Evaluate a forward run directory again with its own settings.",
                              positionals=lambda p: p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                                                                   help=f"a directory {RUN_DIR_WHAT}"),
                              main_flags=lambda g: g.add_argument("--eval-sequences", type=int, default=None,
                                                                  help="held-out sequences (default: the run's setting)"))
    evaluate.set_defaults(func=runner(command, _eval))


def _register_sweep(sub: argparse._SubParsersAction) -> None:
    """``forward sweep RUN_DIR``: add a capacity or layer-gap sweep."""
    command = Command("forward sweep", options={"device": "auto", "threads": None, "quiet": False, "log": []},
                      usage="RUN_DIR --kind {capacity,gap} ")

    def sweep_flags(g) -> None:
        g.add_argument("--kind", choices=("capacity", "gap"), required=True,
                       help="capacity: the paper's 1/3/10/22%% configs; gap: layer gaps")
        g.add_argument("--source", default=None,
                       help=f"source layer index of the sweep {LAYER_HELP} (default: the run's source)")
        g.add_argument("--target", default=None,
                       help="target layer index of the capacity sweep (default: source + 3, at most the last block)")
        g.add_argument("--gaps", type=int, nargs="+", default=[1, 2, 3], help="gaps of the layer-gap sweep (default: 1 2 3)")

    sweep = command.parser(sub, "sweep", help="add a capacity or layer-gap sweep to a run directory (its subject and cache "
                           "are reused)", description="Add a capacity or layer-gap sweep to a forward run directory.",
                           positionals=lambda p: p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                                                                help=f"a directory {RUN_DIR_WHAT}"),
                           main_flags=sweep_flags)
    sweep.set_defaults(func=runner(command, _sweep))


def _register_profile(sub: argparse._SubParsersAction) -> None:
    """``forward profile``: every layer pair of a subject in one streaming run."""
    from selfmodels.forward.config import ProfileConfig

    command = Command("forward profile", ProfileConfig, Presets("selfmodels.forward", (("profile-", None),)),
                      options=dict(SHARED), subject="subject.main", experiment="forward-profile", derived=DERIVED,
                      record_keys=("subject",))
    profile = command.parser(sub, "profile", help="a forward model for every layer pair (k, k + gap) of a subject in one "
                             "streaming run, each beside the skip and ridge baselines, on the same held-out tokens",
                             description="Profile every layer pair (k, k + gap) of a subject. The default preset, full, "
                             "is sized for one GPU (1B scale); --preset quick profiles SmolLM2 on 2 CPU cores.",
                             main_flags=_subject_flags(command, "subject: smollm2 (offline), gpt (ours, trained here) or "
                                                       "a Hugging Face model id / local directory", layers=False))
    command.rename(profile, "--main", "--subject", "subject__main")
    profile.set_defaults(func=runner(command, _profile))


def _register_explore(sub: argparse._SubParsersAction) -> None:
    """``forward explore RUN_DIR``: the explorer page."""
    command = Command("forward explore", options={"out": None, "device": "auto", "threads": None, "quiet": False},
                      out_is_dir=False, out_required=False, usage="RUN_DIR ")

    def explore_flags(g) -> None:
        g.add_argument("--sequences", type=int, default=None, help="held-out windows shown in full per pair (default: 4; "
                                                                   "1 for a profile)")
        g.add_argument("--worst", type=int, default=None, help="worst positions of the whole held-out set embedded per "
                                                               "pair (default: 100; 25 for a profile)")

    command._out_help = "the page (default: RUN_DIR/explorer.html; the arrays go beside it as .npz)"
    explore = command.parser(sub, "explore", help="one self-contained HTML page of a run: held-out tokens shaded by the "
                             "forward model's error, top-5 next tokens, KLs, categories, attention (docs/explorer.md)",
                             description="Write one self-contained HTML page of a forward run (docs/explorer.md).",
                             positionals=lambda p: p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a "
                                                                  "directory of `forward train`, `reproduce "
                                                                  "forward-self-models` or `forward profile`"),
                             main_flags=explore_flags)
    explore.set_defaults(func=runner(command, _explore))


def _register_reproduce(reproduce: argparse._SubParsersAction) -> None:
    """``reproduce forward-self-models``: the paper end to end."""
    command = _pipeline_command("reproduce forward-self-models", one_pair=False)
    rep = _pipeline_parser(command, reproduce, "forward-self-models",
                           "the forward-self-models paper on our GPT (sweeps) or a pretrained LM (decomposition): "
                           "forward model, baseline, substitution, analyses, report",
                           "The forward-self-models paper end to end. The default preset, full, is the paper's setting "
                           "(sized for a GPU); --preset quick is a CPU-sized run on offline data (our GPT ~7 min, "
                           "SmolLM2 ~4 min on 2 cores).")
    rep.set_defaults(func=runner(command, _reproduce))


def _check_subject(cfg, pairs) -> None:
    """Before a model is loaded or a corpus tokenized: the subject's name, the corpus, and for a Hugging Face subject
    (from its config alone) ``pairs(blocks, name)`` (the layer indices) and the sequence length."""
    from selfmodels.data.corpora import check_corpus

    check_subject(cfg.subject.main)
    check_corpus(cfg.corpus.corpus)
    shape = subject_shape(cfg.subject.main)
    if shape is not None:
        pairs(shape["blocks"], cfg.subject.main)
        check_seq_len(cfg.seq_len, cfg.subject.main, shape)


def _pipeline_pairs(cfg):
    from selfmodels.forward.pipeline import check_pairs

    return lambda blocks, name: check_pairs(cfg, blocks, name)


def _profile(r, args) -> int:
    from selfmodels.curves import check_sinks
    from selfmodels.forward.profile import run

    from selfmodels.forward.profile import pairs_of

    log = check_sinks(r.log)  # a missing extra stops here, before any work starts
    _check_subject(r.config, lambda blocks, name: pairs_of(r.config, blocks))
    progress = _setup(r)
    result = run(r.config, r.out, r.device, progress, log=log)
    for row in result["rows"]:
        print(f"{row['source']:>3} -> {row['target']:<3} cosine {row['cosine']:.4f} (skip {row['skip_cosine']:.4f}, ridge "
              f"{row['ridge_cosine']:.4f})  update R2 {row['delta_r2']:.3f}  recovery {row['recovery']:.3f} "
              f"(KL skip {row['kl_skipped']:.3f})")
    print(f"results: {Path(r.out) / 'results.json'}, report: {Path(r.out) / 'report.md'}")
    return 0


def _setup(r) -> bool:
    from selfmodels.runtime import set_threads

    set_threads(r.threads)
    return not r.quiet


def _train(r, args) -> int:
    from selfmodels.curves import check_sinks
    from selfmodels.forward.pipeline import run

    log = check_sinks(r.log)  # a missing extra stops here, before any work starts
    _check_subject(r.config, _pipeline_pairs(r.config))
    progress = _setup(r)
    _summary(run(r.config, r.out, r.device, progress, log=log), r.out)
    return 0


def _reproduce(r, args) -> int:
    from selfmodels.curves import check_sinks
    from selfmodels.forward.explorer import write_explorer
    from selfmodels.forward.pipeline import run

    log = check_sinks(r.log)  # a missing extra stops here, before any work starts
    _check_subject(r.config, _pipeline_pairs(r.config))
    progress = _setup(r)
    explore = lambda out, device: write_explorer(out, device=device)  # noqa: E731 - the page beside report.md, linked from it
    _summary(run(r.config, r.out, r.device, progress, before_report=explore, log=log), r.out)
    return 0


def _load_run(run_dir: Path):
    from selfmodels.artifacts import read_json
    from selfmodels.errors import require
    from selfmodels.forward.config import RunConfig

    check_run_dir(run_dir, "RUN_DIR", RUN_DIR_WHAT)
    require((Path(run_dir) / "config.json").is_file(), f"{run_dir} has no config.json: it is not a forward-self-model run directory")
    record = read_json(Path(run_dir) / "config.json")
    require(record.get("experiment") == "forward-self-models", f"{run_dir} is not a forward-self-model run directory")
    return from_dict(RunConfig, record["config"])


def _eval(r, args) -> int:
    from selfmodels.forward.pipeline import run

    cfg = _load_run(args.run_dir)
    progress = _setup(r)
    if args.eval_sequences is not None:
        cfg = dataclasses.replace(cfg, eval_sequences=args.eval_sequences)
    _summary(run(cfg, args.run_dir, r.device, progress), args.run_dir)
    return 0


def _explore(r, args) -> int:
    from selfmodels.forward.explorer import write_explorer
    from selfmodels.runtime import resolve_device

    if Path(args.run_dir).is_file():
        check_run_dir(args.run_dir, "RUN_DIR", "of a forward run")
    progress = _setup(r)
    page, arrays = write_explorer(args.run_dir, r.out, resolve_device(r.device), args.sequences, args.worst, progress)
    print(f"explorer: {page} ({page.stat().st_size / 1e6:.2f} MB; open it in any browser), arrays: {arrays}")
    return 0


def _sweep(r, args) -> int:
    from selfmodels.curves import check_sinks
    from selfmodels.forward.config import CAPACITY
    from selfmodels.forward.pipeline import run

    log = check_sinks(r.log)  # a missing extra stops here, before any work starts
    cfg = _load_run(args.run_dir)
    progress = _setup(r)
    from selfmodels.subjects.base import parse_index

    source = cfg.source if args.source is None else parse_index(args.source)
    sweeps = cfg.sweeps
    if args.kind == "capacity":
        target = source + 3 if args.target is None else parse_index(args.target)
        sweeps = dataclasses.replace(sweeps, capacity=list(CAPACITY), capacity_source=source, capacity_target=target)
    else:
        sweeps = dataclasses.replace(sweeps, gaps=list(args.gaps), gap_source=source)
    results = run(dataclasses.replace(cfg, sweeps=sweeps), args.run_dir, r.device, progress, log=log)
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
