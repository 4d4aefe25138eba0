"""Subcommands: ``selfmodels selfmodel-lm`` (one condition) and ``selfmodels reproduce self-modeling-transformers``.

``selfmodel-lm`` exposes every field of :class:`~selfmodels.lm_selfmodeling.run.LMRunConfig` as a flag (nested groups
as ``--lm.*``, ``--gpt.*``, ``--observer.*``, ``--llc.*``, ``--corpus.*``, ``--objective.*``); the objective's main
fields are the flags ``--method --strength --site --loss --flow --pair I J``. Its presets are data
(``preset_files/*.json``): ``full`` (the default: the forward paper's toy GPT, or a fine-tune of a pretrained
subject; sized for a GPU) and ``quick`` (CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from selfmodels.options import Command, Presets, check_seq_len, check_subject, pair_into, runner, subject_shape

SHARED = {"out": None, "device": "auto", "threads": None, "quiet": False, "log": []}
OBJECTIVE_FLAGS = ("method", "strength", "site", "loss", "flow", "source", "target")


def _selfmodel_lm(r, args: argparse.Namespace) -> int:
    from selfmodels import distributed
    from selfmodels.curves import check_sinks
    from selfmodels.lm_selfmodeling.run import run_one
    from selfmodels.runtime import resolve_device, set_threads

    log = check_sinks(r.log)  # a missing extra stops here, before any work starts
    _check_before_loading(r.config)
    set_threads(r.threads)
    record = run_one(r.config, r.out, device=resolve_device(r.device), progress=not r.quiet, log=log)
    if distributed.is_main():  # under torchrun every rank holds the record; one line says so
        print(f"wrote {Path(r.out) / 'result.json'}: val loss {record['val_loss']:.4f} nats/token, "
              f"unembedding SD {record['unembedding_sd']:.4f}, observer recovery (near) {record['observer_near_recovery']:.3f}")
    return 0


def _check_before_loading(cfg) -> None:
    """Every setting that can be checked before a model is loaded or a corpus tokenized: the corpus; the objective,
    its site and pairs and the observer's against the blocks our GPT will have, or (a Hugging Face subject) those
    its config states, with the sequence length against its positions; else the names alone (the rest after loading)."""
    from selfmodels.data.corpora import check_corpus
    from selfmodels.lm_selfmodeling.config import check_objective

    check_corpus(cfg.corpus.corpus)
    if cfg.main == "gpt":
        cfg.validate(cfg.gpt.n_layer)
        return
    check_subject(cfg.main)
    shape = subject_shape(cfg.main)
    if shape is None:
        objective = cfg.objective
        check_objective(objective.method, objective.strength, objective.loss, objective.flow)
        return
    cfg.validate(shape["blocks"])
    check_seq_len(cfg.seq_len, cfg.main, shape)


def _reproduce(r, args: argparse.Namespace) -> int:
    from selfmodels import distributed
    from selfmodels.artifacts import write_config
    from selfmodels.curves import check_sinks
    from selfmodels.lm_selfmodeling import presets
    from selfmodels.lm_selfmodeling.grid import run_grid, write_outputs
    from selfmodels.runtime import resolve_device

    log = check_sinks(r.log)
    # Under torchrun the ranks share the runs out; on one machine, worker processes do.
    workers = r.workers if r.workers is not None else 1 if distributed.world()[1] > 1 else min(2, os.cpu_count() or 1)
    device = str(resolve_device(r.device))
    llc = "yes" if r.llc == "paper" else "no"
    if distributed.is_main():
        Path(r.out).mkdir(parents=True, exist_ok=True)
        write_config(r.out, r.record())  # a valid --config file that reruns this reproduction
    grids = presets.quick_grids(workers, device, llc) if r.preset == "quick" else presets.full_grids(workers, device, llc)
    for name, grid in grids.items():
        out = Path(r.out) if len(grids) == 1 else Path(r.out) / name
        results = run_grid(dataclasses.replace(grid, log=log), out, progress=not r.quiet)
        write_outputs(results, out)
        if distributed.is_main():
            print(f"wrote {out / 'results.json'} and {out / 'report.md'} ({len(results['runs'])} runs)")
    return 0


def _llc_choice(text: str) -> str:
    """``--llc``: paper or none (the old yes / no still work, with a notice)."""
    old = {"yes": "paper", "no": "none"}
    if text in old:
        print(f"selfmodels: --llc {text} is now --llc {old[text]}", file=sys.stderr)
        return old[text]
    if text not in ("paper", "none"):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from paper, none)")
    return text


def register(commands: argparse._SubParsersAction, reproduce: argparse._SubParsersAction) -> None:
    from selfmodels.lm_selfmodeling.config import FLOWS, LOSSES, METHODS, PRESETS, LMRunConfig  # torch-free

    command = Command("selfmodel-lm", LMRunConfig, PRESETS, options=dict(SHARED), subject="main", finish=pair_into("objective"),
                      derived={"gpt.vocab_size": "the tokenizer's: set --corpus.vocab-size",
                               "gpt.block_size": "our GPT's context is --seq-len"})

    def main_flags(group) -> None:
        command.flag(group, "--subject", "main", "gpt (ours, from scratch) or a Hugging Face model to fine-tune",
                     metavar="NAME")
        command.flag(group, "--corpus", "corpus.corpus", "offline, kjv, wikipedia, fineweb-edu or a .txt path")
        command.flag(group, "--method", "objective.method", f"the objective: one of {', '.join(METHODS)}")
        command.flag(group, "--strength", "objective.strength", "w in CE + w * A (weight decay: its coefficient)", type=float)
        command.flag(group, "--site", "objective.site", "the site the self-model predicts: head-input, resid:K or mlp:K")
        command.flag(group, "--loss", "objective.loss", f"the discrepancy: one of {', '.join(LOSSES)}")
        command.flag(group, "--flow", "objective.flow", f"forward form: where its loss sends gradient: one of {', '.join(FLOWS)}")
        group.add_argument("--pair", type=int, nargs=2, default=None, metavar=("I", "J"),
                           help="forward form: its layer pair (objective.source, objective.target)")

    parser = command.parser(
        commands, "selfmodel-lm", help="train one language model with a self-modeling objective or a control; measure it",
        description="Train one condition (our GPT from scratch, or fine-tune a pretrained subject) and measure "
        "validation loss, weight spread, residual norms, the self-model's fit, a fresh observer's predictability and "
        "the LLC. Resumable; writes config.json and result.json to --out. The default preset, full, is the forward "
        "paper's toy GPT (or a fine-tune of a pretrained subject), sized for a GPU; --preset quick is CPU-sized.",
        main_flags=main_flags, exclude=tuple(f"objective.{name}" for name in OBJECTIVE_FLAGS))
    command.rename(parser, "--main", "--subject", "main")
    parser.set_defaults(func=runner(command, _selfmodel_lm))

    command = Command("reproduce self-modeling-transformers", presets=Presets(None, (), names_=("full", "quick")),
                      options={"out": None, "workers": None, "llc": "paper", "device": "auto", "quiet": False, "log": []})

    def reproduce_flags(group) -> None:
        command._opt(group, "--workers", "workers", type=int, metavar="N",
                     help="runs in parallel (none: 2, 1 on a 1-core machine)")
        command._opt(group, "--llc", "llc", type=_llc_choice, metavar="{paper,none}",
                     help="paper: estimate each run's LLC with the preset's SGLD settings; none: no LLC")

    rep = command.parser(
        reproduce, "self-modeling-transformers",
        help="self-modeling language models: simpler, or easier to predict? (--preset quick: CPU)",
        description="The grid of docs/self-modeling-transformers.md: baseline, self-model at two strengths, the forward "
        "form, activation-l2 and random-target at the higher strength, weight decay at its own, 3 seeds; report.md with "
        "CIs. Preset full (the default): the forward paper's 4 x 4 x 256 toy GPT and a fine-tune of SmolLM2 (sized for "
        "one GPU). Preset quick: a 4 x 4 x 64 GPT on the offline corpus (CPU). The presets are the grids of "
        "lm_selfmodeling/presets.py over the runs of selfmodel-lm's presets.",
        extra=lambda p: reproduce_flags(p.add_argument_group("reproduction options")))
    rep.set_defaults(func=runner(command, _reproduce))
