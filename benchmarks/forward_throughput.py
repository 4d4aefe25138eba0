"""Forward-model training throughput, from the activation cache and on the fly, as JSON lines.

Each line: tokens/s, the FLOPs of one step from the architecture (training = 3 x the forward FLOPs:
forward, plus backward at twice the forward), the achieved FLOP/s and its share of this machine's
measured fp32 matmul peak (timed here, same thread count). On the fly, the main model's forward pass
up to the target layer is counted too (``main_flops_per_step``) and reported separately.

    python benchmarks/forward_throughput.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from _matmul import matmul_flops  # benchmarks/_matmul.py (this script's folder is on sys.path)

from selfmodels.forward.cache import CacheSpec, write_cache
from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.forward.stream import ActivationStream
from selfmodels.forward.train import ForwardTrainConfig, train_forward
from selfmodels.nets.gpt import GPT, GPTConfig
from selfmodels.subjects.gpt import GPTSubject


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--sequences", type=int, default=128, help="sequences in the benchmark cache")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_flops(summary=min)  # best case: the peak this machine can reach
    print(json.dumps({"bench": "matmul_peak_fp32", "threads": args.threads, "gflops": peak / 1e9}), flush=True)
    gpt = GPT(GPTConfig(vocab_size=4096, block_size=args.seq_len, n_layer=4, n_head=4, d_model=args.d_model)).eval().requires_grad_(False)
    subject = GPTSubject(gpt)

    def pairs_of(stream):
        """(source, target) batches from the activation stream (subject computed on the fly, shuffle buffer)."""
        for acts in stream:
            yield acts[0], acts[1]

    tokens = torch.randint(0, 4096, (args.sequences * args.seq_len * 2,))
    fcfg = ForwardModelConfig(d_model=args.d_model)
    tcfg = ForwardTrainConfig(steps=args.steps, batch_size=args.batch_size, log_every=10**9, checkpoint_every=10**9)
    step_tokens = args.batch_size * args.seq_len
    fwd_flops_step = 3 * ForwardModel(fcfg).flops_per_token(args.seq_len) * step_tokens
    with tempfile.TemporaryDirectory() as tmp:
        seqs = tokens[: args.sequences * args.seq_len].view(args.sequences, args.seq_len)
        spec = CacheSpec("bench", "bench", "random tokens", ["0", "1"], args.seq_len, args.d_model, "float16")
        cache = write_cache(Path(tmp) / "c", spec, seqs, lambda ids: {str(k): v for k, v in subject.residuals(ids, [0, 1]).items()}, progress=False)
        cache.verify()
        sources = {
            "cache": (cache.batches("0", "1", args.batch_size, torch.Generator().manual_seed(0)), 0),
            "on_the_fly": (pairs_of(ActivationStream(subject, tokens, [0, 1], args.seq_len, args.batch_size, 4 * args.batch_size,
                                                     args.batch_size, 0)),
                           gpt.flops_per_token(blocks=2, head=False) * step_tokens),
        }
        for name, (batches, main_flops) in sources.items():
            model = ForwardModel(fcfg)
            train_forward(model, batches, ForwardTrainConfig(steps=3, batch_size=args.batch_size), torch.device("cpu"), progress=False)  # warm-up
            model = ForwardModel(fcfg)
            r = train_forward(model, batches, tcfg, torch.device("cpu"), progress=False)
            per_s = r["tokens"] / r["seconds"]
            achieved = (fwd_flops_step + main_flops) * args.steps / r["seconds"]
            print(json.dumps({
                "bench": f"forward_train_{name}", "threads": args.threads, "d_model": args.d_model, "forward_params": model.num_params(),
                "tokens_per_s": per_s, "forward_flops_per_step": fwd_flops_step, "main_flops_per_step": main_flops,
                "achieved_gflops": achieved / 1e9, "share_of_matmul_peak": achieved / peak,
            }), flush=True)


if __name__ == "__main__":
    main()
