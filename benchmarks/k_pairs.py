"""K layer pairs from one pass of the subject against K passes, at SmolLM2 scale, as JSON lines.

The subject is a randomly initialised model built from SmolLM2-135M's config (Llama, d=576, 30 blocks, GQA 9/3;
no download), fp32 on the CPU; forward models are the paper's 1% model (1 layer, 1 head of 64, MLP 2x). For each
K in ``--k`` the pairs are K adjacent pairs (t - 1, t) ending at depth ``min(K, 29)``: K = 8 is 0 -> 1 ... 7 -> 8,
K = 30 is every pair of the model, -1 (embeddings) -> 0 ... 28 -> 29. Per K, two lines:

- ``k_pairs_subject``: subject compute only, on the same windows: ``single_pass`` (one pass to the depth,
  collecting one index), ``one_pass`` (one pass collecting every index the K pairs need), ``k_passes_equal_depth``
  (K passes each to that same depth: what running a full forward per pair costs) and ``k_passes_own_depth`` (K
  passes, each stopping at its own pair's target). The goal: ``one_pass / single_pass`` at most 1.5.
- ``k_pairs_end_to_end``: K forward models trained together from one activation stream (one subject pass per
  ``pass_sequences`` sequences feeds all K) against K separate streaming runs of the same steps;
  ``model_tokens_per_s`` counts every model's tokens (K x tokens per run), subject passes and training included.

    python benchmarks/k_pairs.py [--k 8 30] [--sequences 8] [--seq-len 128] [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from stream_vs_cache import cpu_model, smollm2_config_subject  # benchmarks/ (this script's folder is on sys.path)

from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.forward.train import train_many
from selfmodels.forward.stream import ActivationStream
from selfmodels.forward.train import ForwardTrainConfig
from selfmodels.runtime import set_threads


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, nargs="+", default=[8, 30], help="numbers of pairs sharing one pass")
    p.add_argument("--sequences", type=int, default=8, help="windows the subject-compute comparison runs on")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--pass-sequences", type=int, default=8, help="sequences per subject pass")
    p.add_argument("--batch-size", type=int, default=8, help="forward-model batch, sequences")
    p.add_argument("--steps", type=int, default=4, help="forward-model steps of the end-to-end comparison")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    set_threads(args.threads)
    began = time.perf_counter()
    subject = smollm2_config_subject(0)
    print(json.dumps({"bench": "machine", "cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
                      "subject": subject.name, "params": subject.n_params, "n_layers": subject.n_layers}), flush=True)
    windows = max(args.sequences, args.steps * args.batch_size + args.pass_sequences)
    tokens = torch.randint(0, subject.vocab_size, (windows * args.seq_len + 1,), generator=torch.Generator().manual_seed(1))
    ids = tokens[: args.sequences * args.seq_len].view(args.sequences, args.seq_len)
    chunks = list(ids.split(args.pass_sequences))
    fcfg = ForwardModelConfig(d_model=subject.d_model)
    tcfg = ForwardTrainConfig(steps=args.steps, batch_size=args.batch_size, log_every=10**9, checkpoint_every=10**9)

    def passes(index_lists):
        with torch.no_grad():
            for indices in index_lists:
                for chunk in chunks:
                    subject.residuals(chunk, indices)

    passes([[subject.n_layers - 1]])  # warm-up: first calls allocate and pick kernels
    for k in args.k:
        depth = min(k, subject.n_layers - 1)
        pairs = [(t - 1, t) for t in range(depth - k + 1, depth + 1)]
        if pairs[0][0] < -1:
            raise SystemExit(f"--k {k}: a {subject.n_layers}-block subject has only {subject.n_layers} adjacent pairs")
        every = sorted({i for pair in pairs for i in pair})
        single = timed(lambda: passes([[depth]]))
        one = timed(lambda: passes([every]))
        equal = timed(lambda: passes([[a, b, depth] for a, b in pairs]))
        own = timed(lambda: passes([[a, b] for a, b in pairs]))
        print(json.dumps({
            "bench": "k_pairs_subject", "k": k, "depth": depth, "pairs": [pairs[0], pairs[-1]], "tokens": int(ids.numel()),
            "single_pass_seconds": single, "one_pass_seconds": one, "k_passes_equal_depth_seconds": equal,
            "k_passes_own_depth_seconds": own, "one_pass_over_single_pass": one / single,
            "speedup_vs_k_passes_equal_depth": equal / one, "speedup_vs_k_passes_own_depth": own / one,
        }), flush=True)

        def stream(indices):
            return ActivationStream(subject, tokens, indices, args.seq_len, args.batch_size, 2 * args.batch_size,
                                    args.pass_sequences, seed=0)

        together = timed(lambda: train_many({f"{a}->{b}": (ForwardModel(fcfg), a, b) for a, b in pairs}, stream(every), tcfg,
                                            torch.device("cpu"), None, progress=False))
        separate = timed(lambda: [train_many({f"{a}->{b}": (ForwardModel(fcfg), a, b)}, stream([a, b]), tcfg, torch.device("cpu"),
                                             None, progress=False) for a, b in pairs])
        per_model = args.steps * args.batch_size * args.seq_len
        print(json.dumps({
            "bench": "k_pairs_end_to_end", "k": k, "steps": args.steps, "tokens_per_model": per_model,
            "one_stream_seconds": together, "k_streams_seconds": separate,
            "one_stream_model_tokens_per_s": k * per_model / together, "k_streams_model_tokens_per_s": k * per_model / separate,
            "speedup": separate / together, "benchmark_seconds": time.perf_counter() - began,
        }), flush=True)


if __name__ == "__main__":
    main()
