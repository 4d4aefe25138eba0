"""Activation collection for SmolLM2-135M layers 7 -> 8: early exit against the common way.

The common way runs the whole model with ``output_hidden_states=True`` (all 30 layers and the 49k-vocab
LM head) and picks two hidden states; ``subject.residuals`` stops after block 8 and never computes the
head. Same tokens (real offline text), fp32 on CPU, one warm-up and one timed run of each; prints one
JSON line with both times and their ratio.

    HF_HUB_OFFLINE=1 python benchmarks/hf_collection.py [--batch 8] [--seq-len 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from selfmodels.data.bpe import encode_corpus
from selfmodels.data.corpora import load_corpus
from selfmodels.data.windows import consecutive_windows
from selfmodels.runtime import set_threads
from selfmodels.subjects.hf_loading import load_causal_lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    subject = load_causal_lm("smollm2")
    stream = encode_corpus(subject.tokenizer, load_corpus("offline", max_chars=200_000), progress=False)
    ids, _ = consecutive_windows(stream, args.seq_len, args.batch)  # (B, T)
    source, target = 7, 8

    def early_exit():
        with torch.no_grad():
            acts = subject.residuals(ids, [source, target])
        return acts[source], acts[target]

    @torch.no_grad()
    def full_pass():
        hidden = subject.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        return hidden[source + 1], hidden[target + 1]

    # Warm-up on a small slice (first-call allocations), then one timed run of each.
    with torch.no_grad():
        subject.residuals(ids[:1, :16], [source, target])
        subject.model(input_ids=ids[:1, :16], use_cache=False)
    times = {}
    for name, fn in (("early_exit", early_exit), ("full_output_hidden_states", full_pass)):
        began = time.perf_counter()
        a, b = fn()
        times[name] = time.perf_counter() - began
        times[name + "_result"] = (a, b)
    same = all(torch.equal(x, y.float()) for x, y in zip(times.pop("early_exit_result"), times.pop("full_output_hidden_states_result")))
    print(json.dumps({
        "benchmark": "hf_collection", "model": "SmolLM2-135M", "layers": [source, target], "tokens": int(ids.numel()),
        "threads": args.threads, "early_exit_s": round(times["early_exit"], 3),
        "full_output_hidden_states_s": round(times["full_output_hidden_states"], 3),
        "speedup": round(times["full_output_hidden_states"] / times["early_exit"], 2),
        "tokens_per_s_early_exit": round(ids.numel() / times["early_exit"], 1), "identical_activations": same,
    }))


if __name__ == "__main__":
    main()
