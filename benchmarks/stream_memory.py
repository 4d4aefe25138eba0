"""Peak memory of streaming forward-model training at two token budgets 10x apart, as JSON lines.

Each budget runs in a fresh Python process (so neither inherits the other's peak): a randomly initialised
GPT subject (or ``--subject smollm2``, the packaged offline SmolLM2), a token stream of ``--tokens`` random ids
(int32, the budget: one epoch over it), an :class:`~selfmodels.forward.stream.ActivationStream` and one forward
model trained by :func:`~selfmodels.forward.train.train_many` for one epoch. The child reads
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end and prints one line; the parent prints both lines and
a summary with their ratio. The claim: peak RSS is flat (ratio within 1.1) because the activations held are
bounded by the shuffle buffer, not by the budget; the token ids themselves (4 bytes a token here, reported as
``token_bytes``) are the only thing that grows, and ``cache_bytes_equivalent`` is what an fp16 on-disk cache of
the same activations would take.

    python benchmarks/stream_memory.py [--tokens 20000] [--threads 2] [--subject smollm2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.forward.train import train_many
from selfmodels.forward.stream import ActivationStream
from selfmodels.forward.train import ForwardTrainConfig
from selfmodels.runtime import set_threads


def _subject(args):
    if args.subject:
        from selfmodels.subjects.hf_loading import load_causal_lm
        return load_causal_lm(args.subject)
    from selfmodels.nets.gpt import GPT, GPTConfig
    from selfmodels.subjects.gpt import GPTSubject
    gpt = GPT(GPTConfig(vocab_size=args.vocab, block_size=args.seq_len, n_layer=args.layers, n_head=4, d_model=args.d_model))
    return GPTSubject(gpt.eval().requires_grad_(False))


def child(args) -> None:
    set_threads(args.threads)
    torch.manual_seed(0)
    subject = _subject(args)
    source, target = 0, 1
    tokens = torch.randint(0, subject.vocab_size, (args.tokens + 1,), dtype=torch.int32)
    stream = ActivationStream(subject, tokens, [source, target], args.seq_len, args.batch_size, args.buffer,
                              args.pass_sequences, seed=0)
    steps = max(1, stream.windows_per_epoch // args.batch_size)  # one epoch: the budget, each token once
    cfg = ForwardTrainConfig(steps=steps, batch_size=args.batch_size, log_every=10**9, checkpoint_every=10**9)
    model = ForwardModel(ForwardModelConfig(d_model=subject.d_model))
    began = time.perf_counter()
    result = train_many({"pair": (model, source, target)}, stream, cfg, torch.device("cpu"), None, progress=False)["pair"]
    seconds = time.perf_counter() - began
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    seq_bytes = 2 * args.seq_len * subject.d_model * 4
    print(json.dumps({
        "bench": "stream_memory_run", "subject": subject.name, "d_model": subject.d_model, "tokens_budget": args.tokens,
        "tokens_trained": result["tokens"], "steps": steps, "subject_passes": stream.passes, "seconds": seconds,
        "peak_rss_mib": peak_kib / 1024, "token_bytes": tokens.numel() * tokens.element_size(),
        "buffer_bytes_bound": (args.buffer + args.pass_sequences - 1) * seq_bytes,
        "cache_bytes_equivalent": stream.windows_per_epoch * seq_bytes // 2,
    }), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=20_000, help="the small budget; the large one is 10x")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--subject", default=None, help="a real subject (e.g. smollm2) instead of the random GPT")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--buffer", type=int, default=128, help="shuffle buffer, sequences")
    p.add_argument("--pass-sequences", type=int, default=32)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    runs = []
    for budget in (args.tokens, 10 * args.tokens):
        argv = [f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items()
                if name not in ("tokens", "child", "subject") and value is not None]
        if args.subject:
            argv.append(f"--subject={args.subject}")
        done = subprocess.run([sys.executable, __file__, "--child", "--tokens", str(budget), *argv],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"the child run at {budget} tokens failed:\n{done.stderr}")
        line = done.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        runs.append(json.loads(line))
    small, large = runs
    print(json.dumps({
        "bench": "stream_memory", "tokens_small": small["tokens_budget"], "tokens_large": large["tokens_budget"],
        "peak_rss_mib_small": small["peak_rss_mib"], "peak_rss_mib_large": large["peak_rss_mib"],
        "rss_ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
        "flat_within_10pct": large["peak_rss_mib"] / small["peak_rss_mib"] <= 1.10,
        "token_bytes_growth_mib": (large["token_bytes"] - small["token_bytes"]) / 2**20,
        "cache_bytes_equivalent_large_mib": large["cache_bytes_equivalent"] / 2**20,
    }), flush=True)


if __name__ == "__main__":
    main()
