"""Subcommand ``selfmodels closed-loop``: train one condition of the closed loop and measure it.

Every field of :class:`~selfmodels.closed_loop.config.ClosedLoopConfig` is a flag (``--loop.*``, ``--forward.*``,
``--gpt.*``, ``--lm.*``, ``--corpus.*``); the main ones are ``--condition``, ``--pair I J`` (F's source and target),
``--inject M`` and ``--shift K``. Presets are data (``preset_files/*.json``): ``full`` (the default: the
author's setting, sized for one GPU) and ``quick`` (CPU); ``--measure`` also runs the measurement battery
(``battery.json``).

``selfmodels reproduce closed-loop --preset quick --out DIR``: the grid of :mod:`selfmodels.closed_loop.grid` (every
condition x seeds 0, 1, 2 on the preset's settings, the equal-FLOPs open loop, the batteries), then ``results.json``,
``report.md`` and the plots.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from selfmodels.options import GPT, Command, Presets, check_seq_len, check_subject, pair_into, runner, subject_shape

LOOP_FLAGS = ("condition", "source", "target", "inject", "shift")


def check_shape(cfg) -> None:
    """A pretrained subject's indices against the blocks and ``--seq-len`` against the positions its config states,
    before any weights or text are read (our GPT's settings were checked with the rest)."""
    if cfg.main == GPT:
        return
    check_subject(cfg.main)
    shape = subject_shape(cfg.main)
    cfg.validate(shape and shape["blocks"])
    check_seq_len(cfg.seq_len, cfg.main, shape)


def _closed_loop(r, args: argparse.Namespace) -> int:
    from selfmodels.closed_loop.run import run_condition
    from selfmodels.curves import check_sinks
    from selfmodels.data.corpora import check_corpus
    from selfmodels.runtime import resolve_device, set_threads

    log = check_sinks(r.log)  # a missing extra stops here, before any work starts
    check_corpus(r.config.corpus.corpus)
    check_shape(r.config)
    set_threads(r.threads)
    device = resolve_device(r.device)
    record = run_condition(r.config, r.out, device=device, progress=not r.quiet, log=log)
    print(f"wrote {Path(r.out) / 'result.json'}: {record['condition']}: val loss {record['val_loss']:.4f} nats/token "
          f"({record['val_loss_without_injection']:.4f} without the injection), F's cosine {record['forward_cosine']:.3f} "
          f"(skip {record['skip_cosine']:.3f}), gate norm {record['gate_norm']:.3f}")
    if r.measure:
        from selfmodels.closed_loop.grid import measure_run, run_data

        battery = measure_run(r.config, r.out, "final", run_data(r.config), device, progress=not r.quiet)
        print(f"wrote {Path(r.out) / 'battery.json'}: fresh observer's update R² {battery['observer']['on']['update_r2']:.3f} "
              f"(cosine {battery['observer']['on']['cosine']:.3f}), skip KL {battery['skip_kl']:.3f} nats")
    return 0


def _reproduce(r, args: argparse.Namespace) -> int:
    from selfmodels import distributed
    from selfmodels.artifacts import write_config
    from selfmodels.closed_loop.grid import preset_grid, run_grid, write_outputs
    from selfmodels.data.corpora import check_corpus
    from selfmodels.runtime import resolve_device

    # Under torchrun the ranks share the runs out; on one machine, worker processes do (1 thread each).
    workers = r.workers if r.workers is not None else 1 if distributed.world()[1] > 1 else min(2, os.cpu_count() or 1)
    grid = preset_grid(r.preset, workers=workers, device=str(resolve_device(r.device)))
    grid.validate()
    check_corpus(grid.base.corpus.corpus)
    check_shape(grid.base)
    if distributed.is_main():
        Path(r.out).mkdir(parents=True, exist_ok=True)
        write_config(r.out, r.record())  # a valid --config file that reruns this reproduction
    results = run_grid(grid, r.out, progress=not r.quiet)
    write_outputs(results, r.out)
    if distributed.is_main():
        checks = "pass" if results["checks"]["passes"] else "FAIL (see report.md)"
        print(f"wrote {Path(r.out) / 'results.json'} and {Path(r.out) / 'report.md'} ({len(results['runs'])} runs; "
              f"pre-grid checks: {checks})")
    return 0


def register(commands: argparse._SubParsersAction, reproduce: argparse._SubParsersAction) -> None:
    from selfmodels.closed_loop.config import PRESETS, ClosedLoopConfig  # torch-free
    from selfmodels.closed_loop.conditions import CONDITIONS

    command = Command("closed-loop", ClosedLoopConfig, PRESETS,
                      options={"out": None, "device": "auto", "threads": None, "quiet": False, "log": [], "measure": False},
                      finish=pair_into("loop"),
                      derived={"gpt.vocab_size": "the tokenizer's: set --corpus.vocab-size",
                               "gpt.block_size": "our GPT's context is --seq-len",
                               "forward.d_model": "the GPT's width",
                               "corpus.bos": "our GPT's BPE has no BOS token"})

    def main_flags(group) -> None:
        command.flag(group, "--subject", "main", "gpt (ours, from scratch) or a Hugging Face model to fine-tune", metavar="NAME")
        command.flag(group, "--corpus", "corpus.corpus", "offline, kjv, wikipedia, fineweb-edu or a .txt path")
        command.flag(group, "--condition", "loop.condition", f"what is injected: one of {', '.join(CONDITIONS)}",
                     choices=CONDITIONS)
        group.add_argument("--pair", type=int, nargs=2, default=None, metavar=("I", "J"),
                           help="F's residual indices: it reads h_I and predicts h_J (-1 = embeddings, k = after block k)")
        command.flag(group, "--inject", "loop.inject", "M: G's output is added to h_M (before block M+1); I <= M < J",
                     type=int)
        command.flag(group, "--shift", "loop.shift", "K: the shifted condition gives position t the prediction for t-K",
                     type=int)
        command._opt(group, "--measure", "measure", action="store_true",
                     help="also measure the trained loop with the battery (--battery.*): battery.json beside result.json")

    parser = command.parser(
        commands, "closed-loop", help="train a network with its forward model's prediction fed back (one condition); measure it",
        description="Train one condition of the closed loop h_m <- h_m + G(sg(F(h_i))) (or a control) on our GPT from "
        "scratch or, with --subject, as a fine-tune of a pretrained model, F co-trained on the on-policy h_j, and "
        "measure validation loss with and without the injection, F's cosine beside the skip's, the gate and injection "
        "norms (--measure: also the battery). Resumable; writes config.json, model.safetensors and result.json to "
        "--out. The default preset, full, is the author's setting (4 x 4 x 256, 10,000 steps), sized for a GPU; "
        "--preset quick is CPU-sized; --preset smollm2 fine-tunes SmolLM2-135M (one GPU).",
        main_flags=main_flags, exclude=tuple(f"loop.{name}" for name in LOOP_FLAGS))
    parser.set_defaults(func=runner(command, _closed_loop))

    command = Command("reproduce closed-loop", presets=Presets(None, (), names_=PRESETS.names()),
                      options={"out": None, "workers": None, "device": "auto", "quiet": False})
    rep = command.parser(
        reproduce, "closed-loop",
        help="closed-loop self-models: does a network gain from reading its own forward model? (--preset quick: CPU)",
        description="The grid of docs/closed-loop.md: the six conditions (open-loop, forward, shifted, random-projection, "
        "autoencoder, forward-frozen) x seeds 0, 1, 2 on the closed-loop command's preset, an open-loop run per seed "
        "trained for the closed loop's training FLOPs (its snapshots give the comparison at matched validation loss), "
        "every run measured by the battery (fresh observer, probes, robustness, LLC); results.json, report.md with 95% "
        "CIs beside the author's two runs, and the plots. Resumable: finished runs and measurements are read back. "
        "Preset quick: the 4 x 4 x 64 GPT on the offline corpus, 4,000 steps, F 0 -> 3 injected after block 0 (CPU); "
        "full (the default): the author's 4 x 4 x 256 setting (one GPU); smollm2: SmolLM2-135M fine-tuned, F 4 -> 7 "
        "injected after block 5 (one GPU).",
        extra=lambda p: command._opt(p.add_argument_group("reproduction options"), "--workers", "workers", type=int,
                                     metavar="N", help="runs in parallel processes of 1 thread each (none: 2, 1 on a "
                                     "1-core machine)"))
    rep.set_defaults(func=runner(command, _reproduce))
