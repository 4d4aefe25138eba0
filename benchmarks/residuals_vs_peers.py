"""Residuals at two indices: ours against nnsight, TransformerLens and the plain Hugging Face pass, side by side:
tokens/s, peak memory, and the activations' largest difference from ours.

Two subjects, the same tokens (real offline text, SmolLM2's tokenizer) and dtype (fp32) for every method:

- ``smollm2``: SmolLM2-135M (30 blocks, d 576), the offline default;
- ``llama-1b-shape``: a random model built from Llama-3.2-1B's config (d 2048, 32 heads in 8 KV groups, SwiGLU 8192,
  vocabulary 128,256, RoPE base 500,000 with its llama3 scaling, tied embeddings) at reduced depth (``--llama-layers``,
  default 12 of its 16 blocks: 0.99B parameters); no weights are downloaded.

The methods, each asked for the residuals after blocks 7 and 8 (hidden_states[8] and [9]):

- ``selfmodels``: ``subject.residuals(ids, [7, 8])`` (forward hooks; the pass stops after block 8, no LM head);
- ``nnsight``: a trace saving ``model.layers[7].output`` and ``[8].output`` and stopping there (``tracer.stop()``);
- ``transformer_lens``: ``HookedTransformer.run_with_cache(ids, names_filter=[...], stop_at_layer=9)`` on the same
  weights (its config from the Hugging Face config by TransformerLens' own ``convert_hf_model_config``, the weights by
  its ``convert_llama_weights``; no processing, so no folding or centring: the activations are comparable);
- ``hf_output_hidden_states``: the whole model with ``output_hidden_states=True`` (every block and the LM head).

Time: one process, one warm-up round, then the median of ``--repeats`` rounds in which the methods take turns (a change
in the machine's load falls on all alike). Peak memory: every method again in a fresh process of its own, the growth
of the resident set over the model-loaded baseline during one call (``benchmarks/_peak_memory.py`` says why this
measures the activations and how). ``returned_mib`` is what the two residuals themselves take (2 B T d x 4 bytes).

Prints one JSON line per subject and method: tokens/s, seconds, ``time_vs_ours``, ``peak_growth_mib``,
``memory_vs_ours``, the largest absolute difference from ours (and relative to the largest activation), the CPU and the
load average (on a shared machine compare the ratios, not the figures). A peer that is not installed is printed as
unavailable, not hidden.

    HF_HUB_OFFLINE=1 python benchmarks/residuals_vs_peers.py [--models smollm2,llama-1b-shape] [--batch 8]
        [--seq-len 128] [--repeats 3] [--threads 2] [--llama-layers 12] [--no-memory]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from selfmodels.data.bpe import encode_corpus
from selfmodels.data.corpora import load_corpus
from selfmodels.data.windows import consecutive_windows
from selfmodels.runtime import cache_dir, set_threads
from selfmodels.subjects.hf import HFSubject
from selfmodels.subjects.hf_loading import SMOLLM2_CACHE_NAME, load_causal_lm
from _machine import cpu_name  # benchmarks/ (this script's folder is on sys.path)
from _peak_memory import measure_in_child, peak_growth
from _shapes import SUBJECTS as SHAPES

SOURCE, TARGET = 7, 8
MODELS = ("smollm2", "llama-1b-shape")
METHODS = ("selfmodels", "nnsight", "transformer_lens", "hf_output_hidden_states")
# Llama-3.2-1B's config.json beyond the shape gpu_check shares: head size, positions, norm, RoPE and its llama3 scaling
LLAMA_3_2_1B = dict(SHAPES["llama_3_2_1b"], head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5,
                    hidden_act="silu", rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                                        "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                                        "original_max_position_embeddings": 8192})


def open_model(name: str, llama_layers: int, config_dir: Path) -> tuple[HFSubject, Path, str]:
    """(subject, a directory holding its config.json for TransformerLens, its label)."""
    if name == "smollm2":
        return load_causal_lm("smollm2"), cache_dir() / SMOLLM2_CACHE_NAME, "SmolLM2-135M"
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**{**LLAMA_3_2_1B, "num_hidden_layers": llama_layers}, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    config.save_pretrained(config_dir)  # (a directory whose name has no "llama": TransformerLens reads it as a path)
    return HFSubject(model, name="random Llama-3.2-1B shape"), config_dir, f"Llama-3.2-1B config, {llama_layers} blocks, random"


def smollm2_tokenizer():
    """SmolLM2's tokenizer, from the fp32 copy's directory (written by the first ``load_causal_lm("smollm2")``)."""
    from transformers import AutoTokenizer

    directory = cache_dir() / SMOLLM2_CACHE_NAME
    return AutoTokenizer.from_pretrained(directory) if directory.is_dir() else load_causal_lm("smollm2").tokenizer


def text_ids(batch: int, seq_len: int) -> torch.Tensor:
    """(batch, seq_len) consecutive windows of the offline text in SmolLM2's tokens (within both vocabularies)."""
    tokenizer = smollm2_tokenizer()
    stream = encode_corpus(tokenizer, load_corpus("offline", max_chars=200_000), progress=False)
    return consecutive_windows(stream, seq_len, batch)[0]


def transformer_lens_model(hf_model, config_dir: Path):
    """The Hugging Face model's weights in a HookedTransformer, through TransformerLens' own conversions (no processing),
    in the model's dtype, on its device."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    cfg_dict = convert_hf_model_config(str(config_dir))
    cfg_dict = {k: v for k, v in cfg_dict.items() if k in HookedTransformerConfig.__dataclass_fields__}
    cfg_dict.pop("tokenizer_name", None)  # ids go in as tensors: no tokenizer to load (the random model has none)
    weight = hf_model.get_input_embeddings().weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**cfg_dict, dtype=weight.dtype, device=str(weight.device)))
    model.load_and_process_state_dict(convert_llama_weights(hf_model, model.cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
    return model.eval()


def make_methods(subject: HFSubject, config_dir: Path, ids: torch.Tensor, only: str | None = None,
                 tokenizer=None) -> tuple[dict, dict]:
    """({method: () -> {7: (B,T,d), 8: (B,T,d)}}, {method: why it is unavailable}); ``only`` builds one method;
    ``tokenizer`` is what nnsight is handed (default: the subject's, else SmolLM2's)."""
    model, methods, unavailable = subject.model, {}, {}
    wanted = (lambda m: only is None or m == only)
    if wanted("selfmodels"):
        methods["selfmodels"] = lambda: subject.residuals(ids, [SOURCE, TARGET])
    if wanted("nnsight"):
        try:
            import nnsight

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # 0.8 announces TransformersModel in LanguageModel's place
                traced = nnsight.LanguageModel(model, tokenizer=tokenizer or subject.tokenizer or smollm2_tokenizer())

            def nn_trace():
                with traced.trace(ids) as tracer:
                    a = traced.model.layers[SOURCE].output.save()  # a tensor in transformers 5 (a tuple before)
                    b = traced.model.layers[TARGET].output.save()
                    tracer.stop()
                return {k: out[0] if isinstance(out, tuple) else out for k, out in ((SOURCE, a), (TARGET, b))}
            methods["nnsight"] = nn_trace
        except ImportError as exc:
            unavailable["nnsight"] = f"{exc} (pip install nnsight)"
    if wanted("transformer_lens"):
        try:
            hooked = transformer_lens_model(model, config_dir)
            names = [f"blocks.{SOURCE}.hook_resid_post", f"blocks.{TARGET}.hook_resid_post"]

            def tl():
                _, cache = hooked.run_with_cache(ids, names_filter=names, stop_at_layer=TARGET + 1)
                return {SOURCE: cache[names[0]], TARGET: cache[names[1]]}
            methods["transformer_lens"] = tl
        except ImportError as exc:
            unavailable["transformer_lens"] = f"{exc} (pip install 'selfmodels[transformer-lens]')"
    if wanted("hf_output_hidden_states"):
        def hidden_states():  # hidden_states[k + 1] is the residual after block k (the last one: after the norm)
            states = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
            return {k: states[k + 1] for k in (SOURCE, TARGET)}
        methods["hf_output_hidden_states"] = hidden_states
    return methods, unavailable


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


def peak_child(args) -> None:
    """One method's peak memory in this (fresh) process: prints one JSON line."""
    set_threads(args.threads)
    ids = torch.load(args.ids, weights_only=True)
    with tempfile.TemporaryDirectory(prefix="peers_cfg_") as tmp:
        subject, config_dir, _ = open_model(args.peak_model, args.llama_layers, Path(tmp) / "config")
        methods, unavailable = make_methods(subject, config_dir, ids, only=args.peak_method)
    if args.peak_method in unavailable:
        print(json.dumps({"peak_error": unavailable[args.peak_method]}))
        return
    if args.peak_method == "transformer_lens":  # its own copy of the weights serves it: drop the Hugging Face one's
        for p in subject.model.parameters():
            p.data = torch.empty(0)
        gc.collect()
    with torch.no_grad():
        print(json.dumps(peak_growth(methods[args.peak_method])))


def run_model(name: str, args, ids: torch.Tensor, ids_file: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="peers_cfg_") as tmp:
        began = time.perf_counter()
        subject, config_dir, label = open_model(name, args.llama_layers, Path(tmp) / "config")
        load_s = time.perf_counter() - began
        methods, unavailable = make_methods(subject, config_dir, ids)
    for method, why in unavailable.items():
        print(json.dumps({"model": label, "method": method, "unavailable": why}), flush=True)
    seconds_of, outputs = timed_round_robin(methods, args.repeats)
    reference = outputs["selfmodels"]
    d, params = subject.d_model, subject.n_params
    del methods, subject
    gc.collect()
    memory = {}
    if args.memory:  # after this process let its models go: one model in memory at a time
        for method in outputs:
            memory[method] = measure_in_child(Path(__file__), ["--peak-method", method, "--peak-model", name, "--ids",
                                                               str(ids_file), "--threads", str(args.threads),
                                                               "--llama-layers", str(args.llama_layers)])
    common = {"model": label, "params": params, "dtype": "float32", "batch": args.batch, "seq_len": args.seq_len,
              "indices": [SOURCE, TARGET], "threads": args.threads, "repeats": args.repeats, "model_open_s": load_s,
              "returned_mib": 2 * ids.numel() * d * 4 / 2**20, "cpu": cpu_name(), "cores": os.cpu_count()}
    ours_s, ours_mib = seconds_of["selfmodels"], memory.get("selfmodels", {}).get("peak_growth_mib")
    for method, out in outputs.items():
        diff = max(float((out[k].float() - reference[k].float()).abs().max()) for k in (SOURCE, TARGET))
        scale = max(float(reference[k].float().abs().max()) for k in (SOURCE, TARGET))
        row = {**common, "method": method, "seconds": seconds_of[method], "tokens_per_s": ids.numel() / seconds_of[method],
               "time_vs_ours": seconds_of[method] / ours_s, "max_abs_diff_vs_ours": diff,
               "max_abs_diff_relative_to_max_abs": diff / scale, **memory.get(method, {})}
        if ours_mib and "peak_growth_mib" in row:
            row["memory_vs_ours"] = row["peak_growth_mib"] / ours_mib
        print(json.dumps({**row, "load_average_1min": os.getloadavg()[0]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-layers", type=int, default=12, help="blocks of the Llama-3.2-1B-shaped model (>= 9)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="time only (no peak-memory processes)")
    parser.add_argument("--peak-method", choices=METHODS, help=argparse.SUPPRESS)  # the child measuring one method
    parser.add_argument("--peak-model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_method:
        return peak_child(args)
    models = args.models.split(",")
    if unknown := set(models) - set(MODELS):
        parser.error(f"unknown model(s) {sorted(unknown)}; known: {', '.join(MODELS)}")
    if args.llama_layers <= TARGET:
        parser.error(f"--llama-layers must exceed {TARGET} (the residual after block {TARGET} is collected)")
    set_threads(args.threads)
    ids = text_ids(args.batch, args.seq_len)
    with tempfile.TemporaryDirectory(prefix="peers_ids_") as tmp:
        ids_file = Path(tmp) / "ids.pt"
        torch.save(ids, ids_file)  # the children read the very same tokens
        for name in models:
            run_model(name, args, ids, ids_file)


if __name__ == "__main__":
    main()
