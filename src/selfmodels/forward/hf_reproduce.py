"""``selfmodels reproduce forward-self-models --main smollm2|MODEL_ID``: the paper's Llama experiment.

Steps (each finished stage is kept in ``OUT`` and skipped when the same command runs again):

1. load the main model (SmolLM2-135M offline, or a hub id), fp32 on CPU / bf16 on CUDA;
2. tokenise the corpus with the model's tokenizer, split by stream position (90% / 10%), pack chunks;
3. cache the source and target layers' residuals (early exit: no layer after the target, no LM head);
4. train the SwiGLU forward model, then the per-position MLP baseline with about the same parameters for
   about the same wall-clock time (its step count is set from its measured speed);
5. evaluate both on held-out text: cosine, MSE, skip baseline, update cosine / R², causal substitution
   (accuracy, KL, recovery, per category);
6. decomposition of the predicted layer and the analyses (attention, gauge, CKA, residual structure);
7. ``results.json``, ``report.md`` with plots and the paper's Llama-3.2-1B numbers beside ours.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selfmodels.artifacts import load_tensors, read_json, read_jsonl, save_tensors, write_config, write_json
from selfmodels.configs import option, to_dict
from selfmodels.errors import UserError
from selfmodels.runtime import resolve_device, seed_everything, set_threads


@dataclass
class HFReproSettings:
    """Sizes of one reproduction run (``quick``: 2 CPU cores, <= 20 min; ``full``: paper-like, for a GPU)."""

    source: int = option(7, "source layer (residual after this decoder layer)")
    target: int = option(8, "target layer (the layers source+1..target are predicted)")
    corpus: str = option("offline", "text corpus (selfmodels.data.corpora name)")
    max_chars: int | None = option(600_000, "characters of the corpus to read (None: all)")
    seq_len: int = option(128, "tokens per packed chunk")
    bos: bool = option(False, "start each chunk with the tokenizer's BOS token (the paper: no BOS)")
    train_sequences: int = option(320, "training chunks cached")
    val_sequences: int = option(32, "held-out chunks for cosine / MSE")
    substitution_sequences: int = option(16, "held-out chunks for causal substitution")
    analysis_sequences: int = option(24, "held-out chunks for decomposition and analyses")
    cache_dtype: str = option("float32", "activation cache dtype")
    d_head: int = option(64, "forward model: width of its single attention head")
    n_head: int = option(1, "forward model: attention heads")
    swiglu_hidden: int = option(1536, "forward model: SwiGLU hidden width")
    baseline_hidden_mult: int = option(4, "per-position MLP baseline hidden width / d (parameter-matched)")
    steps: int = option(300, "forward-model optimizer steps")
    batch_size: int = option(16, "sequences per step")
    lr: float = option(1e-3, "AdamW learning rate (paper: 1e-4 at d=2048; 1e-3 converges in minutes at d=576)")
    collect_batch: int = option(8, "sequences per main-model forward pass when collecting")
    seed: int = option(0, "seed for data order and initialisation")

    @classmethod
    def quick(cls) -> "HFReproSettings":
        return cls()

    @classmethod
    def full(cls) -> "HFReproSettings":
        """Paper-like: 2048-token chunks, 10K steps of 16 sequences at lr 1e-4, fp16 cache. The offline
        corpus holds ~1.7M SmolLM2 tokens; with internet this reads ~8M tokens of FineWeb-Edu."""
        from selfmodels.data.hub import hub_offline

        online = not hub_offline()
        return cls(corpus="fineweb-edu" if online else "offline", max_chars=36_000_000 if online else None,
                   seq_len=2048, train_sequences=3600 if online else 700, val_sequences=64, substitution_sequences=32,
                   analysis_sequences=4, cache_dtype="float16", steps=10_000, batch_size=16, lr=1e-4, collect_batch=4)


def _stage(out: Path, name: str, compute):
    """Run ``compute()`` once; its JSON result is kept in ``OUT/stages/name.json`` and reused after."""
    path = out / "stages" / f"{name}.json"
    if path.is_file():
        return read_json(path)
    result = compute()
    write_json(path, result)
    return result


def _train(model, cache, source_key, target_key, steps, settings, device, out, name, generator) -> dict:
    from selfmodels.forward.train import ForwardTrainConfig, train_forward

    cfg = ForwardTrainConfig(steps=steps, batch_size=settings.batch_size, lr=settings.lr,
                             log_every=10, checkpoint_every=50)
    weights = out / f"{name}.safetensors"

    def compute():
        batches = cache.batches(source_key, target_key, settings.batch_size, generator)
        info = train_forward(model, batches, cfg, device, metrics_path=out / "metrics.jsonl",
                             checkpoint=out / "checkpoints" / f"{name}.ckpt", generator=generator,
                             desc=name, tag={"model": name})
        save_tensors(weights, model.state_dict())
        return info

    info = _stage(out, f"train_{name}", compute)
    model.load_state_dict(load_tensors(weights, device))
    model.to(device).eval()
    return info


def _seconds_per_step(model, cache, source_key, target_key, settings, device, steps: int = 4) -> float:
    """Measured seconds per training step of a throwaway copy of ``model`` (first step is warm-up)."""
    from selfmodels.forward.optim import make_adamw

    probe = copy.deepcopy(model).to(device).train()
    opt = make_adamw(probe.parameters(), settings.lr, 0.01)
    batches = cache.batches(source_key, target_key, settings.batch_size, torch.Generator().manual_seed(1))
    times = []
    for _ in range(steps + 1):
        x, y = next(batches)
        began = time.perf_counter()
        loss = torch.nn.functional.mse_loss(probe(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - began)
    return float(np.median(times[1:]))


@torch.no_grad()
def _regression(predict, cache, source_key, target_key, device) -> dict:
    from selfmodels.forward.metrics import RegressionTotals

    totals = RegressionTotals()
    for batch in cache.iter_ordered([source_key, target_key], 8):
        src, tgt = batch[source_key].to(device), batch[target_key].to(device)
        totals.add(predict(src), src, tgt)
    return totals.result()


def run(main: str, out: Path, quick: bool, device: str, threads: int | None,
        settings: HFReproSettings | None = None) -> int:
    """The reproduction for a Llama-family model ``main`` ("smollm2", a hub id or a local directory);
    writes into ``out``. ``settings`` overrides the quick / full preset (tests use tiny ones)."""
    from selfmodels.data.corpora import load_corpus
    from selfmodels.forward.baseline import PerPositionMLP
    from selfmodels.forward.categories import TokenCategories
    from selfmodels.forward.hf_analyze import analyze_layer
    from selfmodels.data.bpe import split_stream
    from selfmodels.forward.hf_collect import cache_activations, chunks, layer_key, tokenize
    from selfmodels.forward.hf_report import write_report
    from selfmodels.forward.model import ForwardModel, ForwardModelConfig
    from selfmodels.forward.substitution import substitution_eval
    from selfmodels.nets.hf_adapter import HFAdapter
    from selfmodels.nets.hf_loading import load_causal_lm

    began = time.perf_counter()
    out = Path(out)
    set_threads(threads)
    if settings is None:
        settings = HFReproSettings.quick() if quick else HFReproSettings.full()
    generator = seed_everything(settings.seed)
    dev = resolve_device(device)
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16  # bf16 is several times slower on CPU
    lm = load_causal_lm(main, dev, dtype)
    adapter = HFAdapter(lm.model, main)
    adapter.check_layers(settings.source, settings.target)
    s, t = settings.source, settings.target
    sk, tk = layer_key(s), layer_key(t)
    bos_id = lm.tokenizer.bos_token_id if settings.bos else None
    if settings.bos and bos_id is None:
        raise UserError(f"the tokenizer of {main} has no BOS token: run without BOS")
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, {"command": "reproduce forward-self-models", "main": main, "main_source": lm.source,
                       "quick": quick, "device": str(dev), "model_dtype": str(dtype).replace("torch.", ""),
                       "threads": threads, "settings": to_dict(settings)})

    # Data: split by position in the token stream, packed chunks (BOS choice recorded above).
    corpus = load_corpus(settings.corpus, max_chars=settings.max_chars)
    stream = tokenize(lm.tokenizer, corpus.text)
    train_stream, val_stream = split_stream(stream, 0.1)
    train_x, _ = chunks(train_stream, settings.seq_len, settings.train_sequences, bos_id, "training")
    n_val = max(settings.val_sequences, settings.substitution_sequences, settings.analysis_sequences)
    val_x, val_y = chunks(val_stream, settings.seq_len, n_val, bos_id, "validation")
    names = dict(model_name=f"{main}:{lm.source}", tokenizer_name=f"{main} tokenizer ({len(lm.tokenizer)} tokens)",
                 data_source=f"{corpus.source}; max_chars={settings.max_chars}")
    collect_began = time.perf_counter()
    train_cache = cache_activations(adapter, **names, sequences=train_x, source=s, target=t, directory=out / "cache" / "train",
                                    dtype=settings.cache_dtype, bos=settings.bos, batch_size=settings.collect_batch)
    val_cache = cache_activations(adapter, **names, sequences=val_x[: settings.val_sequences], source=s, target=t,
                                  directory=out / "cache" / "val", dtype=settings.cache_dtype, bos=settings.bos,
                                  batch_size=settings.collect_batch)
    collect_seconds = _stage(out, "collect", lambda: {"seconds": time.perf_counter() - collect_began})["seconds"]

    # Forward model (SwiGLU, ~2% of the main model) and the parameter-matched per-position MLP.
    fcfg = ForwardModelConfig(d_model=adapter.d_model, n_layer=1, n_head=settings.n_head, d_head=settings.d_head,
                              mlp="swiglu", swiglu_hidden=settings.swiglu_hidden, causal=True)
    torch.manual_seed(settings.seed)
    forward = ForwardModel(fcfg)
    baseline = PerPositionMLP(adapter.d_model, settings.baseline_hidden_mult)
    fwd_info = _train(forward, train_cache, sk, tk, settings.steps, settings, dev, out, "forward_model", generator)

    def baseline_steps() -> dict:
        per_step = _seconds_per_step(baseline, train_cache, sk, tk, settings, dev)
        steps = int(np.clip(round(fwd_info["seconds"] / per_step), 1, 2 * settings.steps))  # cap: timing on a shared machine is noisy
        return {"steps": steps, "seconds_per_step": per_step}

    plan = _stage(out, "baseline_plan", baseline_steps)
    base_info = _train(baseline, train_cache, sk, tk, plan["steps"], settings, dev, out, "baseline_mlp",
                       torch.Generator().manual_seed(settings.seed + 1))

    # Held-out evaluation.
    predict_fwd = lambda h: forward(h.float()).to(h.dtype)  # noqa: E731
    predict_base = lambda h: baseline(h.float()).to(h.dtype)  # noqa: E731
    reg_fwd = _stage(out, "eval_forward", lambda: _regression(predict_fwd, val_cache, sk, tk, dev))
    reg_base = _stage(out, "eval_baseline", lambda: _regression(predict_base, val_cache, sk, tk, dev))
    vocab = lm.model.get_input_embeddings().num_embeddings
    token_strings = [lm.tokenizer.decode([i]) for i in range(vocab)]
    counts = torch.bincount(train_stream, minlength=vocab)
    categories = TokenCategories(token_strings, counts)
    split = adapter.split(s, t)
    n_sub, b = settings.substitution_sequences, settings.collect_batch
    sub_batches = [(val_x[i:i + b].to(dev), val_y[i:i + b].to(dev)) for i in range(0, n_sub, b)]
    sub_fwd = _stage(out, "substitution_forward",
                     lambda: substitution_eval(split, predict_fwd, sub_batches, categories, progress=True))
    sub_base = _stage(out, "substitution_baseline",
                      lambda: substitution_eval(split, predict_base, sub_batches, None, progress=True))

    # Decomposition and analyses.
    analyses = _stage(out, "analyses", lambda: analyze_layer(
        adapter, forward, val_x[: settings.analysis_sequences], s, t, token_strings, out / "plots"))

    from selfmodels.forward.analysis.plots import plot_curves

    (out / "plots").mkdir(exist_ok=True)
    curves = plot_curves(read_jsonl(out / "metrics.jsonl"), out / "plots" / "training.png",
                         {"forward_model": "forward model", "baseline_mlp": "per-position MLP"})
    results = {
        "main_model": {**adapter.describe(), "source": lm.source, "dtype": str(dtype).replace("torch.", ""),
                       "val_loss": sub_fwd["ce_normal"], "val_loss_tokens": sub_fwd["tokens"]},
        "layers": {"source": s, "target": t, "convention": "residual after decoder layer k (hidden_states[k+1])"},
        "data": {"corpus": corpus.source, "train_tokens": int(train_x.numel()), "val_tokens": int(settings.val_sequences * settings.seq_len),
                 "substitution_tokens": int(n_sub * settings.seq_len), "analysis_tokens": int(settings.analysis_sequences * settings.seq_len),
                 "seq_len": settings.seq_len, "bos": settings.bos, "split": "first 90% of the token stream train, last 10% validation"},
        "forward_model": {"params": forward.num_params(), "fraction_of_main": forward.num_params() / adapter.n_params,
                          "config": dataclasses.asdict(fcfg), "train": fwd_info, "lr": settings.lr,
                          "batch": [settings.batch_size, settings.seq_len]},
        **{k: reg_fwd[k] for k in ("cosine", "mse", "identity_cosine", "delta_cosine", "delta_r2")},
        "substitution": sub_fwd,
        "baseline_mlp": {"params": baseline.num_params(), "hidden_mult": settings.baseline_hidden_mult, "train": base_info, "time_matching": plan,
                         **{k: reg_base[k] for k in ("cosine", "mse", "delta_cosine", "delta_r2")},
                         "substitution": sub_base, "recovery": sub_base["recovery"]},
        "capacity_sweep": None,
        "layer_gap_sweep": None,
        "sweeps_note": "capacity and layer-gap sweeps are not part of the pretrained-model run",
        "decomposition": analyses["decomposition"],
        "analysis": analyses["analysis"],
        "plots": {**analyses["plots"], "training": curves},
        "seconds": {"collection": collect_seconds, "total_this_invocation": time.perf_counter() - began},
    }
    write_json(out / "results.json", results)
    write_report(out, results)
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}: cosine {results['cosine']:.3f} "
          f"(skip {results['identity_cosine']:.3f}), recovery {sub_fwd['recovery']:.3f}, "
          f"baseline MLP recovery {sub_base['recovery']:.3f}")
    return 0
