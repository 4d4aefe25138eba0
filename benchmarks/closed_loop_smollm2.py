"""The closed loop on SmolLM2-135M (the packaged offline subject): greedy decoding with and without the KV cache, and
the fine-tune's step, on this machine.

The loop is the ``forward`` condition, F 4 -> 8 (2 blocks of 1 head of 64, MLP 2x) injected after block 5 of SmolLM2's
30, its gate G and F given small random weights (``--gate-scale``; at init G is zero and F the identity, and the
injection would add nothing to time or check). Printed as JSON lines:

1. ``generate``: ``--new-tokens`` greedy tokens after a ``--prompt-tokens`` prompt from the offline corpus (batch 1),
   seconds with the KV cache (F rerun over the whole prefix each step, as the splice does), without it (the whole
   sequence each step), and of SmolLM2's own cached greedy decoding with the loop open; whether the two closed-loop
   decodings chose the same tokens and the largest difference of their logits.
2. ``step``: seconds per fine-tune step (:class:`~selfmodels.closed_loop.task.ClosedLoopTask`: the closed-loop pass,
   CE + F's MSE, AdamW on SmolLM2, G and F) on ``--batch`` windows of ``--seq-len`` tokens, as the training loop times them
   (``seconds_per_step``) over ``--steps`` steps, and the same for the open-loop condition.

A shared machine changes every figure: the load averages before and after are printed with them.

    python benchmarks/closed_loop_smollm2.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from _machine import cpu_name  # benchmarks/_machine.py (this script's folder is on sys.path)


def _loop(subject, condition: str, scale: float):
    from selfmodels.closed_loop.build import build_closed_loop
    from selfmodels.closed_loop.config import LoopConfig
    from selfmodels.forward.config import ForwardModelConfig

    torch.manual_seed(0)
    loop = LoopConfig(condition=condition, source=4, inject=5, target=8)
    closed = build_closed_loop(subject, loop, ForwardModelConfig(n_layer=2, n_head=1, d_head=64), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        closed.gate.weight.copy_(torch.randn(closed.gate.weight.shape, generator=g) * scale)
        for p in closed.forward_model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return closed


def _timed(fn):
    began = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--gate-scale", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from selfmodels.closed_loop.data import load_subject_data
    from selfmodels.closed_loop.generate import generate
    from selfmodels.closed_loop.config import LoopConfig
    from selfmodels.closed_loop.task import ClosedLoopTask
    from selfmodels.subjects.config import CorpusConfig, LMTrainConfig
    from selfmodels.subjects.lm_training import WindowDraws
    from selfmodels.training import Schedule, train

    machine = {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__, "load_before": os.getloadavg()}
    subject, data = load_subject_data("smollm2", CorpusConfig(max_chars=400_000), args.seq_len, 8, torch.device("cpu"))
    closed = _loop(subject, "forward", args.gate_scale)
    prompt = data.eval_x[:1, : args.prompt_tokens]
    generate(closed, prompt[:, :4], 2)  # warm-up
    cached, t_cached = _timed(lambda: generate(closed, prompt, args.new_tokens, use_cache=True))
    uncached, t_uncached = _timed(lambda: generate(closed, prompt, args.new_tokens, use_cache=False))
    plain, t_plain = _timed(lambda: generate(closed, prompt, args.new_tokens, inject=False))
    print(json.dumps({"generate": {
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "seconds_cached": t_cached,
        "seconds_uncached": t_uncached, "seconds_loop_open_cached": t_plain,
        "same_tokens": bool(torch.equal(cached.sequences, uncached.sequences)),
        "max_logit_difference": float((cached.logits - uncached.logits).abs().max()),
        "tokens_differ_from_loop_open": int((cached.sequences != plain.sequences).sum()),
        "text": subject.tokenizer.decode(cached.sequences[0, args.prompt_tokens:].tolist())}, **machine}))
    steps, pretrained = {}, {k: v.clone() for k, v in subject.model.state_dict().items()}
    for condition in ("forward", "open-loop"):
        subject.model.load_state_dict(pretrained)  # every condition fine-tunes the same weights
        closed = _loop(subject, condition, args.gate_scale)
        draws = WindowDraws(data.train, args.seq_len, args.batch, [torch.Generator().manual_seed(0)])
        lm = LMTrainConfig(steps=args.steps, batch_size=args.batch, lr=1e-5, eval_every=10**6)
        loop = LoopConfig(condition=condition, source=4, inject=5, target=8)
        task = ClosedLoopTask(closed, lm, loop, draws, (data.eval_x, data.eval_y))
        steps[condition] = train(task, Schedule(args.steps, log_every=1), progress=False).seconds_per_step()
    print(json.dumps({"step": {"batch": args.batch, "seq_len": args.seq_len, "seconds_per_step": steps},
                      **machine, "load_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
