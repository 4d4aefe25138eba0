"""Causal-substitution evaluation: shared prefix (computed once) against naive full passes per mode.

Both variants compute the same four runs (normal, substituted, skipped, zero-ablated) and give
identical numbers; the naive one recomputes the prefix (embedding and blocks up to the source) for
every mode. Prints one JSON line with both times and their ratio.

    python benchmarks/forward_substitution.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.forward.substitution import substitution_eval
from selfmodels.nets.gpt import GPT, GPTConfig
from selfmodels.subjects.gpt import GPTSubject


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--source", type=int, default=1, help="source layer index (-1 = embeddings, k = after block k)")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=args.vocab, block_size=128, n_layer=args.n_layer, n_head=4, d_model=args.d_model)).eval()
    fwd = ForwardModel(ForwardModelConfig(d_model=args.d_model)).eval()
    split = GPTSubject(gpt).split(args.source, args.source + 1)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, args.vocab, (args.batch_size, 128), generator=g),) * 2 for _ in range(args.batches)]
    substitution_eval(split, fwd, batches[:1])  # warm-up
    times = {}
    for shared in (True, False):
        t = time.perf_counter()
        r = substitution_eval(split, fwd, batches, shared_prefix=shared)
        times[shared] = time.perf_counter() - t
    print(json.dumps({
        "bench": "substitution_shared_prefix", "threads": args.threads, "n_layer": args.n_layer, "source": args.source,
        "tokens": r["tokens"], "shared_prefix_s": times[True], "naive_passes_s": times[False], "naive_over_shared": times[False] / times[True],
    }), flush=True)


if __name__ == "__main__":
    main()
