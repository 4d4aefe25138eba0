"""Subcommand ``selfmodels closed-loop``: train one condition of the closed loop and measure it.

Every field of :class:`~selfmodels.closed_loop.config.ClosedLoopConfig` is a flag (``--loop.*``, ``--forward.*``,
``--gpt.*``, ``--lm.*``, ``--corpus.*``); the main ones are ``--condition``, ``--pair I J`` (F's source and target),
``--inject M`` and ``--shift K``. Presets are data (``preset_files/*.json``): ``full`` (the default: the
author's setting, sized for one GPU) and ``quick`` (CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from selfmodels.options import Command, runner

LOOP_FLAGS = ("condition", "source", "target", "inject", "shift")


def _pair(cfg, args: argparse.Namespace):
    """``--pair I J``: F's source and target (loop.source, loop.target)."""
    if getattr(args, "pair", None) is None:
        return cfg
    source, target = args.pair
    return dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, source=source, target=target))


def _closed_loop(r, args: argparse.Namespace) -> int:
    from selfmodels.closed_loop.run import run_condition
    from selfmodels.curves import check_sinks
    from selfmodels.data.corpora import check_corpus
    from selfmodels.runtime import resolve_device, set_threads

    log = check_sinks(r.log)  # a missing extra stops here, before any work starts
    check_corpus(r.config.corpus.corpus)
    set_threads(r.threads)
    record = run_condition(r.config, r.out, device=resolve_device(r.device), progress=not r.quiet, log=log)
    print(f"wrote {Path(r.out) / 'result.json'}: {record['condition']}: val loss {record['val_loss']:.4f} nats/token "
          f"({record['val_loss_without_injection']:.4f} without the injection), F's cosine {record['forward_cosine']:.3f} "
          f"(skip {record['skip_cosine']:.3f}), gate norm {record['gate_norm']:.3f}")
    return 0


def register(commands: argparse._SubParsersAction, reproduce: argparse._SubParsersAction) -> None:
    from selfmodels.closed_loop.config import PRESETS, ClosedLoopConfig  # torch-free
    from selfmodels.closed_loop.conditions import CONDITIONS

    command = Command("closed-loop", ClosedLoopConfig, PRESETS,
                      options={"out": None, "device": "auto", "threads": None, "quiet": False, "log": []}, finish=_pair,
                      derived={"gpt.vocab_size": "the tokenizer's: set --corpus.vocab-size",
                               "gpt.block_size": "our GPT's context is --seq-len",
                               "forward.d_model": "the GPT's width",
                               "corpus.bos": "our GPT's BPE has no BOS token"})

    def main_flags(group) -> None:
        command.flag(group, "--corpus", "corpus.corpus", "offline, kjv, wikipedia, fineweb-edu or a .txt path")
        command.flag(group, "--condition", "loop.condition", f"what is injected: one of {', '.join(CONDITIONS)}",
                     choices=CONDITIONS)
        group.add_argument("--pair", type=int, nargs=2, default=None, metavar=("I", "J"),
                           help="F's residual indices: it reads h_I and predicts h_J (-1 = embeddings, k = after block k)")
        command.flag(group, "--inject", "loop.inject", "M: G's output is added to h_M (before block M+1); I <= M < J",
                     type=int)
        command.flag(group, "--shift", "loop.shift", "K: the shifted condition gives position t the prediction for t-K",
                     type=int)

    parser = command.parser(
        commands, "closed-loop", help="train our GPT with its forward model's prediction fed back (one condition); measure it",
        description="Train one condition of the closed loop h_m <- h_m + G(sg(F(h_i))) (or a control) on our GPT from "
        "scratch, F co-trained on the on-policy h_j, and measure validation loss with and without the injection, F's "
        "cosine beside the skip's, the gate and injection norms. Resumable; writes config.json and result.json to "
        "--out. The default preset, full, is the author's setting (4 x 4 x 256, 10,000 steps), sized for a GPU; "
        "--preset quick is CPU-sized.",
        main_flags=main_flags, exclude=tuple(f"loop.{name}" for name in LOOP_FLAGS))
    parser.set_defaults(func=runner(command, _closed_loop))
