"""Substitution on SmolLM2-135M 7 -> 8: normal, spliced and skipped logits on the same windows, shared prefix vs three
naive full passes, beside the FLOP bound of sharing the prefix.

- ``shared``: ``subject.split(7, 8)``: the prefix (embeddings, blocks 0..7) once, then the normal suffix (block 8 on,
  the head), the suffix after the forward model, and the suffix after the skipped block;
- ``naive``: three full passes of the model: plain, inside ``subject.splice(forward_model, 7, 8)``, inside
  ``subject.skip(7, 8)``.

Both give the same logits (checked: the largest absolute difference is printed). The bound is the ratio of the two
variants' matmul FLOPs at 2 FLOPs per parameter per token (attention scores left out; at T = 128 they are small):
naive ``3 (30 b + h)`` against shared ``8 b + (22 b + h) + (21 b + f + h) + (21 b + h)`` for a block of b parameters,
the LM head's h and the forward model's f. Prints one JSON line with the times, the measured ratio, the bound, the CPU
and the load average (on a shared machine the ratio is what to read).

    HF_HUB_OFFLINE=1 python benchmarks/substitution_smollm2.py [--batch 4] [--seq-len 128] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from selfmodels.data.bpe import encode_corpus
from selfmodels.data.corpora import load_corpus
from selfmodels.data.windows import consecutive_windows
from selfmodels.forward.evaluate import as_predictor
from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.runtime import set_threads
from selfmodels.subjects.hf_loading import load_causal_lm

SOURCE, TARGET = 7, 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    subject = load_causal_lm("smollm2")
    model = subject.model
    stream = encode_corpus(subject.tokenizer, load_corpus("offline", max_chars=100_000), progress=False)
    ids, _ = consecutive_windows(stream, args.seq_len, args.batch)
    torch.manual_seed(0)  # the quick preset's forward model shape (1 head of 64, SwiGLU 1536)
    forward_model = ForwardModel(ForwardModelConfig(d_model=subject.d_model, n_head=1, d_head=64, mlp="swiglu",
                                                    swiglu_hidden=1536)).eval()
    predictor = as_predictor(forward_model)

    def shared():
        split = subject.split(SOURCE, TARGET)
        src = split.prefix(ids)
        return split.suffix(split.middle(src)), split.suffix(predictor(src)), split.suffix(src)

    def naive():
        normal = model(input_ids=ids, use_cache=False).logits.float()
        with subject.splice(predictor, SOURCE, TARGET):
            spliced = model(input_ids=ids, use_cache=False).logits.float()
        with subject.skip(SOURCE, TARGET):
            skipped = model(input_ids=ids, use_cache=False).logits.float()
        return normal, spliced, skipped

    times = {"shared": [], "naive": []}
    with torch.no_grad():
        outputs = {"shared": shared(), "naive": naive()}  # warm-up, and the logits compared
        for _ in range(args.repeats):
            for name, fn in (("shared", shared), ("naive", naive)):
                began = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - began)
    diff = max(float((a - b).abs().max()) for a, b in zip(outputs["shared"], outputs["naive"]))
    b = sum(p.numel() for p in subject.blocks[0].parameters())
    h = model.get_output_embeddings().weight.numel()
    f = forward_model.num_params()
    n = subject.n_layers
    naive_flops = 3 * (n * b + h)
    shared_flops = (SOURCE + 1) * b + ((n - SOURCE - 1) * b + h) + ((n - TARGET - 1) * b + f + h) + ((n - TARGET - 1) * b + h)
    shared_s, naive_s = statistics.median(times["shared"]), statistics.median(times["naive"])
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "unknown")
    print(json.dumps({"model": "SmolLM2-135M", "pair": [SOURCE, TARGET], "batch": args.batch, "seq_len": args.seq_len,
                      "dtype": "float32", "threads": args.threads, "shared_seconds": shared_s, "naive_seconds": naive_s,
                      "naive_over_shared": naive_s / shared_s, "flop_bound": naive_flops / shared_flops,
                      "max_abs_logit_diff": diff, "cpu": cpu, "cores": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
