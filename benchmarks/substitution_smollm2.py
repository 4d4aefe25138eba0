"""Substitution on SmolLM2-135M 7 -> 8: normal, spliced and skipped logits on the same windows, by our shared prefix,
by nnsight's intervention doing the same and by three naive full passes, beside the FLOP bound of sharing the prefix:
time and peak memory side by side.

- ``shared``: ``subject.split(7, 8)``: the prefix (embeddings, blocks 0..7) once, then the normal suffix (block 8 on,
  the head), the suffix after the forward model, and the suffix after the skipped block;
- ``nnsight``: one ``LanguageModel.trace`` with three invokes on the same ids (normal; ``layers[8].output =
  predictor(layers[7].output)``; ``layers[8].output = layers[7].output``), each saving ``lm_head.output``: nnsight
  batches the invokes into one pass over 3 B sequences, so every block runs for all three;
- ``naive``: three full passes of the model: plain, inside ``subject.splice(forward_model, 7, 8)``, inside
  ``subject.skip(7, 8)``.

All give the same logits (checked: the largest absolute difference from ``shared`` is printed). The bound is the ratio
of the variants' matmul FLOPs at 2 FLOPs per parameter per token (attention scores left out; at T = 128 they are
small): naive ``3 (30 b + h)`` against shared ``8 b + (22 b + h) + (21 b + f + h) + (21 b + h)`` for a block of b
parameters, the LM head's h and the forward model's f (nnsight computes what naive does). Time: the variants take
turns, one warm-up round then the median of ``--repeats``. Peak memory: each variant again in a fresh process, the
growth of its resident set over the model-loaded baseline during one call (``benchmarks/_peak_memory.py``). Prints one
JSON line with the times, the ratios, the bound, the peak memory, the CPU and the load average (on a shared machine
the ratios are what to read).

    HF_HUB_OFFLINE=1 python benchmarks/substitution_smollm2.py [--batch 4] [--seq-len 128] [--repeats 3] [--threads 2]
        [--no-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

from selfmodels.data.bpe import encode_corpus
from selfmodels.data.corpora import load_corpus
from selfmodels.data.windows import consecutive_windows
from selfmodels.forward.evaluate import as_predictor
from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.runtime import set_threads
from selfmodels.subjects.hf_loading import load_causal_lm
from _machine import cpu_name  # benchmarks/ (this script's folder is on sys.path)
from _peak_memory import measure_in_child, peak_growth

SOURCE, TARGET = 7, 8
VARIANTS = ("shared", "nnsight", "naive")


def setup(batch: int, seq_len: int):
    """(subject, ids (B, T), forward model, {variant: () -> (normal, spliced, skipped) logits}, why a variant is missing)."""
    subject = load_causal_lm("smollm2")
    stream = encode_corpus(subject.tokenizer, load_corpus("offline", max_chars=100_000), progress=False)
    ids, _ = consecutive_windows(stream, seq_len, batch)
    torch.manual_seed(0)  # the quick preset's forward model shape (1 head of 64, SwiGLU 1536)
    forward_model = ForwardModel(ForwardModelConfig(d_model=subject.d_model, n_head=1, d_head=64, mlp="swiglu",
                                                    swiglu_hidden=1536)).eval()
    variants, missing = make_variants(subject, ids, as_predictor(forward_model), subject.tokenizer)
    return subject, ids, forward_model, variants, missing


def make_variants(subject, ids: torch.Tensor, predictor, tokenizer) -> tuple[dict, dict]:
    """({variant: () -> (normal, spliced, skipped) logits (B, T, V) in float32}, {variant: why it is missing})."""
    model = subject.model

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

    try:
        import nnsight
    except ImportError as exc:
        return {"shared": shared, "naive": naive}, {"nnsight": f"{exc} (pip install nnsight)"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0.8 announces TransformersModel in LanguageModel's place
        traced = nnsight.LanguageModel(model, tokenizer=tokenizer)

    def nn_interventions():  # one trace, three invokes: nnsight runs them as one batch of 3 B sequences
        with traced.trace() as tracer:
            with tracer.invoke(ids):
                normal = traced.lm_head.output.save()
            with tracer.invoke(ids):
                h = traced.model.layers[SOURCE].output
                traced.model.layers[TARGET].output = predictor(h).to(h.dtype)  # the block's dtype, as the splice does
                spliced = traced.lm_head.output.save()
            with tracer.invoke(ids):
                traced.model.layers[TARGET].output = traced.model.layers[SOURCE].output
                skipped = traced.lm_head.output.save()
        return normal.float(), spliced.float(), skipped.float()
    return {"shared": shared, "nnsight": nn_interventions, "naive": naive}, {}


def peak_child(args) -> None:
    """One variant's peak memory in this (fresh) process: prints one JSON line."""
    set_threads(args.threads)
    _, _, _, variants, missing = setup(args.batch, args.seq_len)
    if args.peak_variant in missing:
        print(json.dumps({"peak_error": missing[args.peak_variant]}))
        return
    with torch.no_grad():
        print(json.dumps(peak_growth(variants[args.peak_variant])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="time only (no peak-memory processes)")
    parser.add_argument("--peak-variant", choices=VARIANTS, help=argparse.SUPPRESS)  # the child measuring one variant
    args = parser.parse_args()
    if args.peak_variant:
        return peak_child(args)
    set_threads(args.threads)
    subject, ids, forward_model, variants, missing = setup(args.batch, args.seq_len)
    times = {name: [] for name in variants}
    with torch.no_grad():
        outputs = {name: fn() for name, fn in variants.items()}  # warm-up, and the logits compared
        for _ in range(args.repeats):
            for name, fn in variants.items():
                began = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - began)
    diffs = {name: max(float((a - b).abs().max()) for a, b in zip(outputs["shared"], out)) for name, out in outputs.items()}
    b = sum(p.numel() for p in subject.blocks[0].parameters())
    h = subject.model.get_output_embeddings().weight.numel()
    f = forward_model.num_params()
    n = subject.n_layers
    naive_flops = 3 * (n * b + h)
    shared_flops = (SOURCE + 1) * b + ((n - SOURCE - 1) * b + h) + ((n - TARGET - 1) * b + f + h) + ((n - TARGET - 1) * b + h)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    del subject, variants, outputs
    memory = {}
    if args.memory:  # each variant alone in a fresh process
        for name in seconds:
            memory[name] = measure_in_child(Path(__file__), ["--peak-variant", name, "--batch", str(args.batch),
                                                             "--seq-len", str(args.seq_len), "--threads", str(args.threads)])
    growth = {name: m.get("peak_growth_mib") for name, m in memory.items()}
    row = {"model": "SmolLM2-135M", "pair": [SOURCE, TARGET], "batch": args.batch, "seq_len": args.seq_len,
           "dtype": "float32", "threads": args.threads, "repeats": args.repeats,
           **{f"{name}_seconds": s for name, s in seconds.items()},
           "naive_over_shared": seconds["naive"] / seconds["shared"], "flop_bound": naive_flops / shared_flops,
           **({"nnsight_over_shared": seconds["nnsight"] / seconds["shared"]} if "nnsight" in seconds else missing),
           "max_abs_logit_diff_vs_shared": {k: v for k, v in diffs.items() if k != "shared"},
           "peak_growth_mib": growth, "peak_measure": next((m["peak_measure"] for m in memory.values() if "peak_measure" in m), None),
           **({"memory_vs_shared": {k: v / growth["shared"] for k, v in growth.items() if v and k != "shared"}}
              if growth.get("shared") else {}),
           **{f"peak_error_{k}": m["peak_error"] for k, m in memory.items() if "peak_error" in m},
           "cpu": cpu_name(), "cores": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
