"""Residuals at two indices of SmolLM2-135M: ours against TransformerLens and the plain Hugging Face pass, side by side.

Same tokens (real offline text), same dtype (fp32), same process, one warm-up round then the median of ``--repeats``
rounds in which the methods take turns:

- ``selfmodels``: ``subject.residuals(ids, [7, 8])`` (forward hooks; the pass stops after block 8, no LM head);
- ``transformer_lens``: ``HookedTransformer.run_with_cache(ids, names_filter=[...], stop_at_layer=9)`` on the same
  weights (TransformerLens 3.x has no SmolLM2 in its model list: its config is converted from the local Hugging Face
  config with TransformerLens' own ``convert_hf_model_config`` and the weights with its ``convert_llama_weights``,
  no processing: no folding or centring, so the activations are comparable);
- ``hf_output_hidden_states``: the whole model with ``output_hidden_states=True`` (every block and the LM head);
- ``nnsight`` when it is installed (a trace that saves the two outputs and stops after block 8); its absence is
  printed, not hidden.

Prints one JSON line per method: tokens/s, seconds, the largest absolute difference of its activations from ours, the
CPU and the load average (on a shared machine compare the ratios, not the figures). Peak memory is not measured here
(one process serves all methods; ``benchmarks/stream_memory.py`` measures peak RSS of whole runs).

    HF_HUB_OFFLINE=1 python benchmarks/residuals_vs_peers.py [--batch 8] [--seq-len 128] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import torch

from selfmodels.data.bpe import encode_corpus
from selfmodels.data.corpora import load_corpus
from selfmodels.data.windows import consecutive_windows
from selfmodels.runtime import cache_dir, set_threads
from selfmodels.subjects.hf_loading import SMOLLM2_CACHE_NAME, load_causal_lm
from _machine import cpu_name  # benchmarks/ (this script's folder is on sys.path)

SOURCE, TARGET = 7, 8


def transformer_lens_model(hf_model):
    """SmolLM2's weights in a HookedTransformer, through TransformerLens' own conversions (no processing)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    cfg_dict = convert_hf_model_config(str(cache_dir() / SMOLLM2_CACHE_NAME))
    cfg_dict = {k: v for k, v in cfg_dict.items() if k in HookedTransformerConfig.__dataclass_fields__}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**cfg_dict, dtype=torch.float32))
    model.load_and_process_state_dict(convert_llama_weights(hf_model, model.cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
    return model.eval()


def timed_round_robin(methods: dict, repeats: int) -> tuple[dict[str, float], dict[str, dict]]:
    """Median seconds of each method and its output; the methods take turns (one warm-up round, then ``repeats``
    rounds), so a change in the machine's load falls on all of them alike."""
    times = {name: [] for name in methods}
    with torch.no_grad():
        outputs = {name: fn() for name, fn in methods.items()}  # warm-up
        for _ in range(repeats):
            for name, fn in methods.items():
                began = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - began)
    return {name: statistics.median(t) for name, t in times.items()}, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    subject = load_causal_lm("smollm2")
    model = subject.model
    stream = encode_corpus(subject.tokenizer, load_corpus("offline", max_chars=200_000), progress=False)
    ids, _ = consecutive_windows(stream, args.seq_len, args.batch)  # (B, T)
    names = [f"blocks.{SOURCE}.hook_resid_post", f"blocks.{TARGET}.hook_resid_post"]

    def hidden_states():  # hidden_states[k + 1] is the residual after block k (the last one excepted: after the norm)
        states = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        return {k: states[k + 1] for k in (SOURCE, TARGET)}

    methods = {"selfmodels": lambda: subject.residuals(ids, [SOURCE, TARGET]), "hf_output_hidden_states": hidden_states}
    try:
        hooked = transformer_lens_model(model)

        def tl():
            _, cache = hooked.run_with_cache(ids, names_filter=names, stop_at_layer=TARGET + 1)
            return {SOURCE: cache[names[0]], TARGET: cache[names[1]]}
        methods["transformer_lens"] = tl
    except ImportError as exc:
        print(json.dumps({"method": "transformer_lens", "unavailable": str(exc)}))
    try:
        import nnsight

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 0.8 announces TransformersModel in LanguageModel's place
            traced = nnsight.LanguageModel(model, tokenizer=subject.tokenizer)

        def nn_trace():
            with traced.trace(ids) as tracer:
                a = traced.model.layers[SOURCE].output.save()  # a tensor in transformers 5 (a tuple before)
                b = traced.model.layers[TARGET].output.save()
                tracer.stop()
            return {k: out[0] if isinstance(out, tuple) else out for k, out in ((SOURCE, a), (TARGET, b))}
        methods["nnsight"] = nn_trace
    except ImportError as exc:
        print(json.dumps({"method": "nnsight", "unavailable": f"{exc} (pip install nnsight)"}))

    seconds_of, outputs = timed_round_robin(methods, args.repeats)
    reference = outputs["selfmodels"]
    common = {"model": "SmolLM2-135M", "dtype": "float32", "batch": args.batch, "seq_len": args.seq_len,
              "indices": [SOURCE, TARGET], "threads": args.threads, "cpu": cpu_name(), "cores": os.cpu_count()}
    rows = []
    for name, out in outputs.items():
        seconds = seconds_of[name]
        diff = max(float((out[k].float() - reference[k].float()).abs().max()) for k in (SOURCE, TARGET))
        scale = max(float(reference[k].float().abs().max()) for k in (SOURCE, TARGET))
        rows.append({"method": name, "seconds": seconds, "tokens_per_s": ids.numel() / seconds, "max_abs_diff_vs_ours": diff,
                     "max_abs_diff_relative_to_max_abs": diff / scale})
    ours = rows[0]["seconds"]
    for row in rows:
        print(json.dumps({**common, **row, "time_vs_ours": row["seconds"] / ours, "load_average_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
