"""The ``selfmodels forward train / eval / sweep`` runs: one GPT, one (source, target) pair, one mode.

Modes: ``cotrain`` (the forward model learns beside the GPT, detached targets, separate optimizers),
``frozen`` (train the GPT, freeze it, compute activations per batch, stopping after the target
layer) and ``cache`` (freeze the GPT, write the activations of whole training sequences to disk,
train from the cache). A run directory holds config.json, tokenizer.json, tokens.npy, main.safetensors,
forward.safetensors, metrics.jsonl and results.json; everything resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from selfmodels.artifacts import load_tensors, read_json, save_tensors, write_config, write_json
from selfmodels.configs import from_dict, option, to_dict
from selfmodels.errors import UserError, require
from selfmodels.forward.baseline import PerPositionMLP
from selfmodels.forward.categories import TokenCategories
from selfmodels.forward.experiment import CAPACITY, DEFINITIONS, _sequences
from selfmodels.forward.lm import CoTrain, LMTrainConfig, train_lm
from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.forward.pipeline import (
    DataConfig, check_pair, collect_cache, eval_batches, evaluate_pair, fit_forward, load_gpt, prepare_data, tap,
    token_strings, vocab_size_of,
)
from selfmodels.forward.train import ForwardTrainConfig
from selfmodels.nets.gpt import GPT, GPTConfig
from selfmodels.runtime import resolve_device, seed_everything

MODES = ("cotrain", "frozen", "cache")


@dataclass
class TrainRunConfig:
    """One forward-self-model run on our GPT."""

    data: DataConfig = field(default_factory=DataConfig)
    gpt: GPTConfig = field(default_factory=GPTConfig)
    main: LMTrainConfig = field(default_factory=LMTrainConfig)
    fwd: ForwardModelConfig = field(default_factory=ForwardModelConfig)
    fwd_train: ForwardTrainConfig = field(default_factory=ForwardTrainConfig)
    source: int = option(0, "source layer: block index (-1 = post_embed, i = post_block{i})")
    target: int = option(1, "target layer: a block index after the source")
    mode: str = option("cotrain", "how the forward model is trained", choices=MODES)
    baseline: bool = option(True, "also train and evaluate the per-position MLP baseline (frozen)")
    cache_sequences: int = option(2048, "training sequences written to the activation cache (mode cache)")
    cache_dtype: str = option("float16", "activation cache precision", choices=("float16", "float32"))
    eval_sequences: int = option(256, "held-out sequences for evaluation")
    eval_batch: int = option(32, "sequences per evaluation batch")
    seed: int = option(0, "random seed (weights, data order)")

    def validate(self) -> None:
        self.gpt.validate()
        self.main.validate()
        self.fwd.validate()
        self.fwd_train.validate()
        check_pair(self.gpt.n_layer, self.source, self.target)
        require(self.fwd.d_model == self.gpt.d_model,
                f"the forward model's width --fwd.d-model {self.fwd.d_model} does not match the main model's --gpt.d-model {self.gpt.d_model}: make them equal")
        require(self.eval_sequences >= 1 and self.cache_sequences >= 1, "--eval-sequences and --cache-sequences must be at least 1")


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into ``module``; a file of another shape is a :class:`UserError` naming it."""
    try:
        module.load_state_dict(load_tensors(path))
    except RuntimeError as exc:
        raise UserError(f"{path} does not fit this model ({str(exc).splitlines()[-1].strip()}): it belongs to another configuration") from None


def _load_run_config(run_dir: Path) -> TrainRunConfig:
    record = read_json(Path(run_dir) / "config.json")
    require(record.get("experiment") == "forward-train", f"{run_dir} is not a `selfmodels forward train` run directory")
    return from_dict(TrainRunConfig, record["config"])


def _data_and_gpt(cfg: TrainRunConfig, run_dir: Path, device: torch.device, progress: bool):
    tokenizer, train, val, info = prepare_data(cfg.data, run_dir, progress)
    require(train.numel() > cfg.gpt.block_size + 1 and val.numel() > cfg.gpt.block_size + 1,
            f"corpus {cfg.data.corpus!r} is too small for sequences of {cfg.gpt.block_size} tokens")
    gpt_cfg = dataclasses.replace(cfg.gpt, vocab_size=vocab_size_of(tokenizer))
    return tokenizer, train, val, info, gpt_cfg


def train_run(cfg: TrainRunConfig, out: Path, device_name: str = "auto", progress: bool = True) -> dict:
    cfg.validate()
    out = Path(out)
    device = resolve_device(device_name)
    config_path = out / "config.json"
    if config_path.is_file():
        previous = read_json(config_path).get("config")
        require(previous == to_dict(cfg), f"{out} holds a run with other settings: use another --out or the same settings to resume it")
    tokenizer, train, val, info, gpt_cfg = _data_and_gpt(cfg, out, device, progress)  # bad data fails before config.json
    write_config(out, {"experiment": "forward-train", "config": to_dict(cfg), "device": str(device)})
    seed_everything(cfg.seed)
    gpt = GPT(gpt_cfg)
    fwd = ForwardModel(cfg.fwd)
    lm_done = out / "lm_result.json"
    if lm_done.is_file():
        gpt = load_gpt(out / "main.safetensors", gpt_cfg, device)
        lm_result = read_json(lm_done)
    else:
        cotrain = CoTrain(fwd, cfg.source + 1, cfg.target + 1, cfg.fwd_train.lr, cfg.fwd_train.weight_decay, cfg.fwd_train.grad_clip) if cfg.mode == "cotrain" else None
        lm_result = train_lm(gpt, train, val, cfg.main, out, device, cfg.seed, cotrain, progress)
        write_json(lm_done, lm_result)
    gpt.eval().requires_grad_(False)
    cache = None
    if cfg.mode == "cotrain":
        load_weights(fwd, out / "forward.safetensors")
    else:
        if cfg.mode == "cache":
            cache = collect_cache(gpt, _sequences(train, gpt_cfg.block_size, cfg.cache_sequences), [cfg.source, cfg.target], out / "cache",
                                  info["tokenizer"], info["source"], cfg.cache_dtype, out / "main.safetensors", device, progress)
        torch.manual_seed(cfg.seed)
        fit_forward(fwd, cfg.fwd_train, device, cfg.seed, cache=cache, gpt=gpt, train_tokens=train, source=cfg.source, target=cfg.target,
                    metrics_path=out / "forward_metrics.jsonl", checkpoint=out / "forward_checkpoint.safetensors", progress=progress)
        save_tensors(out / "forward.safetensors", fwd.state_dict())
    if cfg.baseline:
        torch.manual_seed(cfg.seed)
        base = PerPositionMLP(gpt_cfg.d_model)
        fit_forward(base, cfg.fwd_train, device, cfg.seed, cache=cache, gpt=gpt, train_tokens=train, source=cfg.source, target=cfg.target,
                    metrics_path=out / "forward_metrics.jsonl", checkpoint=out / "baseline_checkpoint.safetensors", tag={"run": "baseline_mlp"}, progress=progress)
        save_tensors(out / "baseline_mlp.safetensors", base.state_dict())
    return eval_run(out, device_name, progress=progress)


def eval_run(run_dir: Path, device_name: str = "auto", eval_sequences: int | None = None, progress: bool = True) -> dict:
    """Evaluate a trained run directory on its held-out tokens; writes ``results.json``."""
    run_dir = Path(run_dir)
    require(run_dir.is_dir(), f"run directory {run_dir} does not exist")
    cfg = _load_run_config(run_dir)
    device = resolve_device(device_name)
    require((run_dir / "forward.safetensors").is_file(), f"{run_dir} has no forward.safetensors: finish `selfmodels forward train` first")
    tokenizer, train, val, info, gpt_cfg = _data_and_gpt(cfg, run_dir, device, progress)
    gpt = load_gpt(run_dir / "main.safetensors", gpt_cfg, device)
    fwd = ForwardModel(cfg.fwd)
    load_weights(fwd, run_dir / "forward.safetensors")
    fwd.to(device).eval()
    batches = eval_batches(val, gpt_cfg.block_size, eval_sequences or cfg.eval_sequences, cfg.eval_batch)
    categories = TokenCategories(token_strings(tokenizer), torch.bincount(train, minlength=gpt_cfg.vocab_size))
    m = evaluate_pair(gpt, fwd, batches, cfg.source, cfg.target, device, categories, progress)
    lm = read_json(run_dir / "lm_result.json")
    results = {
        "definitions": DEFINITIONS,
        "data": {**info, "eval_tokens": m["substitution"]["tokens"]},
        "main_model": {"params": gpt.num_params(), **to_dict(gpt_cfg), "val_loss": lm["val_loss"]},
        "pair": {"source": tap(cfg.source), "target": tap(cfg.target), "training": cfg.mode},
        "forward_model": {"params": fwd.num_params(), **to_dict(cfg.fwd)},
        **{k: m[k] for k in ("cosine", "mse", "identity_cosine", "delta_cosine", "delta_r2")},
        "substitution": {k: v for k, v in m["substitution"].items() if k != "categories"},
        "categories": m["substitution"]["categories"],
    }
    if (run_dir / "baseline_mlp.safetensors").is_file():
        base = PerPositionMLP(gpt_cfg.d_model)
        load_weights(base, run_dir / "baseline_mlp.safetensors")
        b = evaluate_pair(gpt, base.to(device).eval(), batches, cfg.source, cfg.target, device)
        results["baseline_mlp"] = {"params": base.num_params(), **{k: b[k] for k in ("cosine", "mse", "identity_cosine", "delta_cosine", "delta_r2")},
                                   "recovery": b["substitution"]["recovery"]}
    write_json(run_dir / "results.json", results)
    return results


def sweep_run(run_dir: Path, kind: str, out: Path, fwd_train: ForwardTrainConfig, source: int = 0, target: int = 3, gaps: tuple[int, ...] = (1, 2, 3),
              cache_sequences: int = 2048, device_name: str = "auto", progress: bool = True) -> list[dict]:
    """Capacity or layer-gap sweep of forward models on the frozen GPT of ``run_dir``, trained from a cache."""
    require(kind in ("capacity", "gap"), f"--kind must be capacity or gap, got {kind!r}")
    run_dir, out = Path(run_dir), Path(out)
    cfg = _load_run_config(run_dir)
    device = resolve_device(device_name)
    fwd_train.validate()
    tokenizer, train, val, info, gpt_cfg = _data_and_gpt(cfg, run_dir, device, progress)
    require((run_dir / "main.safetensors").is_file(), f"{run_dir} has no trained main model (main.safetensors)")
    pairs = [(source, target)] if kind == "capacity" else [(source, source + g) for g in gaps]
    for s, t in pairs:
        check_pair(gpt_cfg.n_layer, s, t)
    gpt = load_gpt(run_dir / "main.safetensors", gpt_cfg, device).requires_grad_(False)
    write_config(out, {"experiment": f"forward-sweep-{kind}", "run_dir": str(run_dir), "source": source, "target": target, "gaps": list(gaps),
                       "fwd_train": to_dict(fwd_train), "cache_sequences": cache_sequences})
    blocks = sorted({b for pair in pairs for b in pair})
    cache = collect_cache(gpt, _sequences(train, gpt_cfg.block_size, cache_sequences), blocks, out / "cache", info["tokenizer"], info["source"],
                          cfg.cache_dtype, run_dir / "main.safetensors", device, progress)
    batches = eval_batches(val, gpt_cfg.block_size, cfg.eval_sequences, cfg.eval_batch)
    configs = ([(name, s, t, ForwardModelConfig(gpt_cfg.d_model, n, h, dh, mm)) for name, n, h, dh, mm in CAPACITY for s, t in pairs]
               if kind == "capacity" else [(f"gap {t - s}", s, t, ForwardModelConfig(gpt_cfg.d_model)) for s, t in pairs])
    rows = []
    for name, s, t, fcfg in configs:
        torch.manual_seed(cfg.seed)
        model = ForwardModel(fcfg)
        fit_forward(model, fwd_train, device, cfg.seed, cache=cache, source=s, target=t, metrics_path=out / "metrics.jsonl", tag={"run": name}, progress=progress)
        m = evaluate_pair(gpt, model, batches, s, t, device)
        sub = m["substitution"]
        rows.append({"name": name, "source": tap(s), "target": tap(t), "params": model.num_params(), **{k: m[k] for k in ("cosine", "mse", "identity_cosine", "delta_cosine", "delta_r2")},
                     "kl_substituted": sub["kl_substituted"], "kl_skipped": sub["kl_skipped"], "recovery": sub["recovery"]})
    write_json(out / "results.json", {"kind": kind, "rows": rows, "definitions": DEFINITIONS})
    return rows
