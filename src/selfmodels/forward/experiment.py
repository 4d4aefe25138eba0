"""The forward-self-models reproduction on our GPT: every step of the paper's toy experiments in one call.

``run(cfg, out)``: data -> main GPT co-trained with the headline forward model (post_block0 ->
post_block1, the paper's 330K model at d=256) -> held-out regression metrics and causal substitution
(with per-category KL) -> frozen activations cached on disk -> the per-position MLP baseline, the
capacity sweep (post_block0 -> post_block3) and the layer-gap sweep (from post_block0, gaps 1..3),
all trained from the cache -> ``results.json`` and ``report.md``.

The trained main model (and its co-trained forward model) is kept under ``selfmodels.runtime.cache_dir()`` keyed by
everything that determines it, so a second run with the same settings skips its training; an
interrupted training resumes from its checkpoint there.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from selfmodels.artifacts import load_tensors, read_json, save_tensors, write_config, write_json
from selfmodels.configs import option, to_dict
from selfmodels.errors import require
from selfmodels.forward.baseline import PerPositionMLP
from selfmodels.forward.categories import TokenCategories
from selfmodels.forward.hf_report import PAPER_TOY
from selfmodels.forward.lm import CoTrain, LMTrainConfig, eval_windows, train_lm
from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.forward.pipeline import (
    DataConfig, check_pair, collect_cache, config_key, copy_into, eval_batches, evaluate_pair, fit_forward,
    load_gpt, prepare_data, tap, token_strings, vocab_size_of,
)
from selfmodels.forward.train import ForwardTrainConfig
from selfmodels.nets.gpt import GPT, GPTConfig
from selfmodels.runtime import cache_dir, resolve_device, seed_everything

# The paper's capacity configurations: (name, n_layer, n_head, d_head, mlp_mult).
CAPACITY = [("1%", 1, 1, 64, 2), ("3%", 2, 2, 64, 2), ("10%", 3, 4, 128, 4), ("22%", 4, 4, 256, 4)]


@dataclass
class ReproduceConfig:
    """All settings of a reproduction. ``quick()`` and ``full()`` are the two presets."""

    data: DataConfig = field(default_factory=DataConfig)
    gpt: GPTConfig = field(default_factory=GPTConfig)
    lm: LMTrainConfig = field(default_factory=LMTrainConfig)
    forward: ForwardTrainConfig = field(default_factory=ForwardTrainConfig)
    source: int = 0
    target: int = 1
    cotrain_lr: float = 1e-3
    sweep_source: int = 0
    capacity_target: int = 3
    gaps: list[int] = field(default_factory=lambda: [1, 2, 3])
    cache_sequences: int = 2048
    eval_sequences: int = 256
    eval_batch: int = 32
    cache_dtype: str = "float16"
    analysis_sequences: int = option(64, "held-out sequences for the analyses (64 x 128 = 8,192 tokens; the paper used ~8,000)")
    seed: int = 0

    def validate(self) -> None:
        self.gpt.validate()
        self.lm.validate()
        self.forward.validate()
        check_pair(self.gpt.n_layer, self.source, self.target)
        require(self.analysis_sequences >= 2, f"analysis_sequences must be at least 2, got {self.analysis_sequences}")
        check_pair(self.gpt.n_layer, self.sweep_source, self.capacity_target)
        for gap in self.gaps:
            check_pair(self.gpt.n_layer, self.sweep_source, self.sweep_source + gap)


def quick() -> ReproduceConfig:
    """Sized for <= 15 minutes on 2 CPU cores, with a main model trained far enough to matter.

    After ~2M tokens a small GPT barely uses its block 1 (skipping it cost 0.017 nats at 500 of these
    steps, against the paper's 1.09), which would make recovery meaningless. Block 0 already carries
    most of the computation (skipping it cost 2.5 nats), so the quick run predicts block 0 from the
    embeddings (post_embed -> post_block0) and runs both sweeps from post_embed.
    """
    return ReproduceConfig(
        source=-1,
        target=0,
        sweep_source=-1,
        capacity_target=2,
        data=DataConfig(vocab_size=4096),
        gpt=GPTConfig(vocab_size=4096, block_size=128, n_layer=4, n_head=4, d_model=128),
        lm=LMTrainConfig(steps=1000, batch_size=16, lr=2e-3, eval_every=250, eval_batches=4),
        forward=ForwardTrainConfig(steps=200, batch_size=16, lr=1e-3),
        cache_sequences=512,
        eval_sequences=64,
        eval_batch=16,
    )


def full() -> ReproduceConfig:
    """The paper's sizes: 4 x 256 GPT, context 128, batch 64, 10K steps; forward models 10K steps."""
    return ReproduceConfig()


DATA_FORMAT = 2  # 2: the BPE is fitted on the training part of the text only


def _data_key(cfg: ReproduceConfig) -> dict:
    # DATA_FORMAT is part of both keys: a change in how the tokenizer is fitted must not reuse old caches.
    return {**to_dict(cfg.data), "format": DATA_FORMAT}


def _data_dir(cfg: ReproduceConfig) -> Path:
    """Where the tokenizer and token stream for ``cfg.data`` are kept between runs."""
    return cache_dir() / "forward-data" / config_key(_data_key(cfg))


def _main_model(cfg: ReproduceConfig, device: torch.device, progress: bool) -> tuple:
    """Train (or resume, or reuse) the main GPT co-trained with the headline forward model."""
    key = config_key({"data": _data_key(cfg), "gpt": to_dict(cfg.gpt), "lm": to_dict(cfg.lm), "seed": cfg.seed,
                      "cotrain": [cfg.source, cfg.target, cfg.cotrain_lr, cfg.gpt.d_model]})
    data_dir = _data_dir(cfg)
    work = cache_dir() / "forward-gpt" / key
    tokenizer, train, val, info = prepare_data(cfg.data, data_dir, progress)
    require(train.numel() > cfg.gpt.block_size + 1 and val.numel() > cfg.gpt.block_size + 1,
            f"corpus {cfg.data.corpus!r} is too small ({train.numel() + val.numel()} tokens) for sequences of {cfg.gpt.block_size}")
    gpt_cfg = dataclasses.replace(cfg.gpt, vocab_size=vocab_size_of(tokenizer))
    fwd = ForwardModel(ForwardModelConfig(d_model=gpt_cfg.d_model))
    done = work / "lm_result.json"
    if done.is_file():
        gpt = load_gpt(work / "main.safetensors", gpt_cfg, device)
        fwd.load_state_dict(load_tensors(work / "forward.safetensors"))
        lm_result = {**read_json(done), "reused_from_cache": str(work)}
    else:
        seed_everything(cfg.seed)
        gpt = GPT(gpt_cfg)
        lm_result = train_lm(gpt, train, val, cfg.lm, work, device, cfg.seed,
                             CoTrain(fwd, cfg.source + 1, cfg.target + 1, lr=cfg.cotrain_lr), progress=progress)
        write_json(done, lm_result)
        lm_result = {**lm_result, "reused_from_cache": None}
    fwd.to(device).eval()
    return gpt, fwd, tokenizer, train, val, info, work, data_dir, lm_result


def _sequences(tokens: torch.Tensor, seq_len: int, n: int) -> torch.Tensor:
    """``n`` whole non-overlapping training sequences spread over the stream: (n, T)."""
    total = tokens.numel() // seq_len
    require(total >= 1, "the training stream is shorter than one sequence")
    pick = torch.linspace(0, total - 1, min(n, total)).long()
    return tokens[: total * seq_len].view(total, seq_len)[pick]


def _analyses(cfg: ReproduceConfig, gpt: GPT, fwd: ForwardModel, val: torch.Tensor, tokenizer, out: Path) -> dict:
    """The paper's analyses of the headline pair on ``analysis_sequences`` held-out sequences."""
    from selfmodels.forward.gpt_analyze import analyze_gpt_pair

    tokens, _ = eval_windows(val, gpt.cfg.block_size, cfg.analysis_sequences)  # (B, T)
    analysis, plots = analyze_gpt_pair(gpt, fwd, tokens, cfg.source, cfg.target, token_strings(tokenizer), out / "plots")
    return {"analysis": analysis, "analysis_plots": {k: f"plots/{v}" for k, v in plots.items()}}


def _finished_without_analysis(cfg: ReproduceConfig, out: Path) -> dict | None:
    """The results of an earlier run in ``out`` with the same settings that predates the analyses, if its
    saved models and tokenizer are there and the tokenizer is the one the data cache holds now; else None."""
    files = [out / name for name in ("results.json", "config.json", "main.safetensors", "forward.safetensors", "tokenizer.json")]
    cached_tokenizer = _data_dir(cfg) / "tokenizer.json"
    if not all(f.is_file() for f in files) or not cached_tokenizer.is_file():
        return None
    settings = lambda c: {k: v for k, v in c.items() if k != "analysis_sequences"}  # noqa: E731  (added with the analyses)
    old = read_json(out / "config.json")
    if old.get("experiment") != "forward-self-models" or settings(old.get("config", {})) != settings(to_dict(cfg)):
        return None
    if cached_tokenizer.read_bytes() != (out / "tokenizer.json").read_bytes():
        return None
    results = read_json(out / "results.json")
    return None if "analysis" in results else results


def add_analysis(cfg: ReproduceConfig, out: Path, results: dict, device: torch.device, progress: bool = True) -> dict:
    """Add the analyses to a finished run from the models it saved in ``out``: no training."""
    tokenizer, _, val, _ = prepare_data(cfg.data, _data_dir(cfg), progress)
    gpt = load_gpt(out / "main.safetensors", dataclasses.replace(cfg.gpt, vocab_size=vocab_size_of(tokenizer)), device)
    fwd = ForwardModel(ForwardModelConfig(d_model=gpt.cfg.d_model))
    fwd.load_state_dict(load_tensors(out / "forward.safetensors"))
    fwd.to(device).eval()
    results = {**results, **_analyses(cfg, gpt, fwd, val, tokenizer, out), "paper": PAPER}
    write_json(out / "results.json", results)
    from selfmodels.forward.report import write_report

    write_report(out, results)
    return results


def run(cfg: ReproduceConfig, out: Path, device_name: str = "auto", progress: bool = True) -> dict:
    """The whole reproduction into ``out``. A finished run there with the same settings whose results.json
    predates the analyses only gets the analyses added (no training); otherwise everything runs (the main
    model itself comes from the cache when it was trained before)."""
    cfg.validate()
    out = Path(out)
    device = resolve_device(device_name)
    began = time.perf_counter()
    finished = _finished_without_analysis(cfg, out)
    if finished is not None:
        write_config(out, {"experiment": "forward-self-models", "config": to_dict(cfg), "device": str(device)})
        return add_analysis(cfg, out, finished, device, progress)
    write_config(out, {"experiment": "forward-self-models", "config": to_dict(cfg), "device": str(device)})
    gpt, fwd, tokenizer, train, val, info, work, data_dir, lm_result = _main_model(cfg, device, progress)
    for src in (work / "main.safetensors", work / "forward.safetensors", work / "metrics.jsonl", data_dir / "tokenizer.json"):
        if src.is_file():
            copy_into(src, out / src.name)
    batches = eval_batches(val, gpt.cfg.block_size, cfg.eval_sequences, cfg.eval_batch)
    counts = torch.bincount(train, minlength=gpt.cfg.vocab_size)
    categories = TokenCategories(token_strings(tokenizer), counts)
    log = out / "sweeps.jsonl"
    if log.exists():
        log.unlink()

    # Headline: the co-trained forward model.
    headline = evaluate_pair(gpt, fwd, batches, cfg.source, cfg.target, device, categories, progress)

    # The paper's analyses of the headline pair, on held-out sequences.
    analyses = _analyses(cfg, gpt, fwd, val, tokenizer, out)

    # Frozen activations for the baseline and the sweeps.
    blocks = sorted({cfg.source, cfg.target, cfg.sweep_source, cfg.capacity_target} | {cfg.sweep_source + g for g in cfg.gaps})
    cache = collect_cache(gpt, _sequences(train, gpt.cfg.block_size, cfg.cache_sequences), blocks, out / "cache",
                          info["tokenizer"], info["source"], cfg.cache_dtype, out / "main.safetensors", device, progress)

    torch.manual_seed(cfg.seed)
    baseline = PerPositionMLP(gpt.cfg.d_model)
    fit_forward(baseline, cfg.forward, device, cfg.seed, cache=cache, source=cfg.source, target=cfg.target, metrics_path=log, tag={"run": "baseline_mlp"}, progress=progress)
    save_tensors(out / "baseline_mlp.safetensors", baseline.state_dict())
    base_metrics = evaluate_pair(gpt, baseline, batches, cfg.source, cfg.target, device)

    capacity = []
    for name, n_layer, n_head, d_head, mlp_mult in CAPACITY:
        torch.manual_seed(cfg.seed)
        model = ForwardModel(ForwardModelConfig(d_model=gpt.cfg.d_model, n_layer=n_layer, n_head=n_head, d_head=d_head, mlp_mult=mlp_mult))
        trained = fit_forward(model, cfg.forward, device, cfg.seed, cache=cache, source=cfg.sweep_source, target=cfg.capacity_target, metrics_path=log, tag={"run": f"capacity {name}"}, progress=progress)
        m = evaluate_pair(gpt, model, batches, cfg.sweep_source, cfg.capacity_target, device)
        capacity.append(_sweep_row(name, model, gpt, m, trained, source=tap(cfg.sweep_source), target=tap(cfg.capacity_target), n_layer=n_layer, n_head=n_head, d_head=d_head, mlp_mult=mlp_mult))

    gaps = []
    for gap in cfg.gaps:
        torch.manual_seed(cfg.seed)
        model = ForwardModel(ForwardModelConfig(d_model=gpt.cfg.d_model))
        trained = fit_forward(model, cfg.forward, device, cfg.seed, cache=cache, source=cfg.sweep_source, target=cfg.sweep_source + gap, metrics_path=log, tag={"run": f"gap {gap}"}, progress=progress)
        m = evaluate_pair(gpt, model, batches, cfg.sweep_source, cfg.sweep_source + gap, device)
        gaps.append(_sweep_row(f"gap {gap}", model, gpt, m, trained, gap=gap, source=tap(cfg.sweep_source), target=tap(cfg.sweep_source + gap)))

    sub = headline["substitution"]
    results = {
        "definitions": DEFINITIONS,
        "data": {**info, "train_tokens": int(train.numel()), "val_tokens": int(val.numel()), "eval_tokens": sub["tokens"]},
        "main_model": {"params": gpt.num_params(), **to_dict(gpt.cfg), "val_loss": lm_result["val_loss"], "train_loss": lm_result["train_loss"],
                       "steps": lm_result["steps"], "tokens_seen": cfg.lm.steps * cfg.lm.batch_size * gpt.cfg.block_size,
                       "reused_from_cache": lm_result.get("reused_from_cache")},
        "pair": {"source": tap(cfg.source), "target": tap(cfg.target), "training": "co-trained"},
        "forward_model": {"params": fwd.num_params(), "share_of_main": fwd.num_params() / gpt.num_params(), **to_dict(fwd.cfg)},
        **{k: headline[k] for k in ("cosine", "mse", "identity_cosine", "delta_cosine", "delta_r2")},
        "substitution": {k: v for k, v in sub.items() if k != "categories"},
        "categories": sub["categories"],
        "baseline_mlp": {"params": baseline.num_params(), "training": "frozen, from cache",
                         **{k: base_metrics[k] for k in ("cosine", "mse", "identity_cosine", "delta_cosine", "delta_r2")},
                         "recovery": base_metrics["substitution"]["recovery"]},
        "capacity_sweep": capacity,
        "layer_gap_sweep": gaps,
        **analyses,
        "paper": PAPER,
        "seconds": time.perf_counter() - began,
        "seed": cfg.seed,
    }
    write_json(out / "results.json", results)
    from selfmodels.forward.report import write_report

    write_report(out, results)
    return results


def _sweep_row(name, model, gpt, m, trained, **extra) -> dict:
    s = m["substitution"]
    return {"name": name, **extra, "params": model.num_params(), "share_of_main": model.num_params() / gpt.num_params(),
            "cosine": m["cosine"], "identity_cosine": m["identity_cosine"], "delta_cosine": m["delta_cosine"], "delta_r2": m["delta_r2"],
            "mse": m["mse"], "kl_substituted": s["kl_substituted"], "kl_skipped": s["kl_skipped"], "recovery": s["recovery"],
            "train_mse": trained["final_mse"], "train_tokens_per_s": trained["tokens"] / max(trained["seconds"], 1e-9)}


DEFINITIONS = {
    "cosine": "mean over held-out tokens of cos(prediction_t, target_t)",
    "mse": "mean over all elements of (prediction - target)^2",
    "identity_cosine": "skip baseline: mean over tokens of cos(source_t, target_t)",
    "delta_cosine": "mean over tokens of cos(prediction_t - source_t, target_t - source_t)",
    "delta_r2": "1 - sum ||target - prediction||^2 / sum ||target - source||^2",
    "kl_*": "mean over tokens of KL(normal || mode) in nats; substituted = predicted layers replaced by the forward model, "
            "skipped = predicted layers skipped (identity; the paper's 'ablated'), zero = target residual set to 0",
    "recovery": "1 - mean KL_substituted / mean KL_skipped (a ratio of means)",
    "accuracy_*": "next-token argmax accuracy on held-out tokens",
}

PAPER = {
    "source": "Gilley (2026), toy GPT 4x256 (28.9M params incl. 50k-vocab embeddings), 10M FineWeb-Edu tokens",
    "cosine": 0.972, "mse": 0.003, "forward_model_params": 329_920,
    "substitution": {"accuracy_normal": 0.222, "accuracy_substituted": 0.217, "accuracy_skipped": 0.146,
                     "kl_substituted": 0.062, "kl_skipped": 1.094, "recovery": 0.94},
    "baseline_mlp_cosine": 0.788,
    "categories_kl_substituted": "0.04-0.07 (uniform)",
    "capacity_sweep": [{"name": "1%", "params": 330_000, "cosine": 0.890}, {"name": "3%", "params": 791_000, "cosine": 0.930},
                       {"name": "10%", "params": 3_200_000, "cosine": 0.999}, {"name": "22%", "params": 6_300_000, "cosine": 0.999}],
    "layer_gap_sweep": [{"gap": 1, "cosine": 0.995, "kl_substituted": 0.024, "kl_skipped": 0.258, "recovery": 0.91},
                        {"gap": 2, "cosine": 0.977, "kl_substituted": 0.092, "kl_skipped": 0.542, "recovery": 0.83},
                        {"gap": 3, "cosine": 0.950, "kl_substituted": 0.213, "kl_skipped": 0.894, "recovery": 0.76}],
    "layer_gap_note": "the paper's gap sweep used a frozen 77M GPT (8x512) and a 1.18M forward model",
    # The paper's analyses of its toy pair (post_block0 -> post_block1, 4 heads of 64, d=256).
    "analysis": {**PAPER_TOY, "qkv_weight_cosine": "-0.056 .. +0.021 (~0)", "cka_source": "0.74-0.75",
                 "eff_rank_s": "247 (1% model)", "top1_variance": "2.4%"},
}
