"""The steps of a forward-self-model run on our GPT, as functions a notebook can call one by one.

``prepare_data`` (corpus -> BPE -> token stream split by position), ``main_model`` (train, resume, or
reuse a cached main GPT, optionally co-training a forward model), ``collect_cache`` (frozen
activations on disk), ``fit_forward`` (a forward model or baseline from the cache or on the fly),
``evaluate_pair`` (regression metrics and causal substitution on held-out sequences).
Layer arguments are *block indices*: ``-1`` is ``post_embed`` and ``i`` is ``post_block{i}``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selfmodels.artifacts import load_tensors, read_json, save_tensors, write_json
from selfmodels.configs import option, to_dict
from selfmodels.errors import UserError, require
from selfmodels.forward.cache import ActivationCache, CacheSpec, sha256_file, write_cache
from selfmodels.forward.categories import TokenCategories
from selfmodels.forward.lm import CoTrain, LMTrainConfig, eval_windows, train_lm
from selfmodels.forward.metrics import RegressionTotals
from selfmodels.forward.substitution import gpt_split, substitution_eval
from selfmodels.forward.train import ForwardTrainConfig, gpt_pair_collector, on_the_fly_batches, train_forward
from selfmodels.nets.gpt import GPT, GPTConfig


@dataclass
class DataConfig:
    """Where the token stream comes from."""

    corpus: str = option("offline", "corpus: offline (KJV + Wikipedia sample, no internet), kjv, wikipedia, fineweb-edu (online) or a .txt path")
    max_chars: int | None = option(None, "keep only the first N characters of the corpus")
    vocab_size: int = option(4096, "vocabulary of the byte-level BPE trained on the corpus")
    tokenizer: str | None = option(None, "a pretrained tokenizer name instead of our BPE (needs internet or the hub cache)")
    val_fraction: float = option(0.1, "the last fraction of the token stream held out for validation")


def tap(block: int) -> str:
    """Block index -> tap name (-1 -> post_embed)."""
    return "post_embed" if block == -1 else f"post_block{block}"


def check_pair(n_layer: int, source: int, target: int) -> None:
    """Source and target must be taps of this GPT with the target after the source."""
    require(-1 <= source < n_layer, f"--source {source} is out of range for a {n_layer}-layer GPT: use -1 (post_embed) to {n_layer - 1}")
    require(-1 <= target < n_layer, f"--target {target} is out of range for a {n_layer}-layer GPT: use 0 to {n_layer - 1}")
    require(target > source, f"--target ({target}) must come after --source ({source}): a forward model predicts a later layer")


# --- data ---------------------------------------------------------------------------------------
def prepare_data(cfg: DataConfig, store: Path, progress: bool = True) -> tuple[object, torch.Tensor, torch.Tensor, dict]:
    """Tokenizer and (train, val) token streams; the BPE and the stream are saved under ``store``
    (``tokenizer.json``, ``tokens.npy``) and reused when present."""
    from selfmodels.data.bpe import encode_corpus, load_tokenizer, pretrained_tokenizer, save_tokenizer, split_stream, train_bpe
    from selfmodels.data.corpora import load_corpus

    store = Path(store)
    tok_path, ids_path, info_path = store / "tokenizer.json", store / "tokens.npy", store / "data.json"
    if cfg.tokenizer is None and tok_path.is_file() and ids_path.is_file() and info_path.is_file():
        tokenizer = load_tokenizer(tok_path)
        tokens = torch.from_numpy(np.load(ids_path).astype(np.int64))
        info = read_json(info_path)
    else:
        corpus = load_corpus(cfg.corpus, max_chars=cfg.max_chars)
        if cfg.tokenizer is None:
            # Fit the BPE on the text before the validation cut, so held-out text plays no part in it
            # (the token stream is split by position, so its last tenth comes from the text's last tenth).
            train_chars = int(len(corpus.text) * (1 - cfg.val_fraction))
            tokenizer = train_bpe(corpus.text[:train_chars], cfg.vocab_size)
            save_tokenizer(tokenizer, tok_path)
            tok_id = "bpe:" + sha256_file(tok_path)
        else:
            tokenizer = pretrained_tokenizer(cfg.tokenizer)
            tok_id = f"pretrained:{cfg.tokenizer}"
        tokens = encode_corpus(tokenizer, corpus, progress=progress)
        require(tokens.numel() > 0, f"corpus {cfg.corpus!r} gave no tokens: give a corpus with some text")
        from selfmodels.artifacts import atomic_path

        with atomic_path(ids_path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, tokens.numpy().astype(np.int32))
        info = {"corpus": corpus.name, "source": corpus.source, "chars": len(corpus.text), "tokens": int(tokens.numel()), "tokenizer": tok_id}
        write_json(info_path, info)
    train, val = split_stream(tokens, cfg.val_fraction)
    return tokenizer, train, val, info


def vocab_size_of(tokenizer) -> int:
    return tokenizer.get_vocab_size() if hasattr(tokenizer, "get_vocab_size") else len(tokenizer)


def token_strings(tokenizer) -> list[str]:
    return [tokenizer.decode([i]) for i in range(vocab_size_of(tokenizer))]


# --- main model ---------------------------------------------------------------------------------
def config_key(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def load_gpt(path: Path, cfg: GPTConfig, device: torch.device) -> GPT:
    gpt = GPT(cfg)
    try:
        gpt.load_state_dict(load_tensors(path))
    except RuntimeError as exc:
        raise UserError(f"{path} does not hold a GPT of this shape ({str(exc).splitlines()[0]}): check the run's config") from None
    return gpt.to(device).eval()


def model_id(path: Path) -> str:
    return "gpt:" + sha256_file(path)


# --- forward models -----------------------------------------------------------------------------
def collect_cache(gpt: GPT, sequences: torch.Tensor, blocks: list[int], directory: Path, tokenizer_id: str, data_source: str, dtype: str, main_path: Path, device: torch.device, progress: bool = True) -> ActivationCache:
    """Residuals of the frozen GPT at ``blocks`` for whole ``sequences`` (N, T), stopping after the last."""
    taps = [tap(b) for b in blocks]
    spec = CacheSpec(model=model_id(main_path), tokenizer=tokenizer_id, data_source=data_source, layers=taps, seq_len=sequences.shape[1], d_model=gpt.cfg.d_model, dtype=dtype)
    return write_cache(directory, spec, sequences, lambda ids: gpt.activations(ids.to(device), taps), progress=progress)


def fit_forward(model: torch.nn.Module, cfg: ForwardTrainConfig, device: torch.device, seed: int, *, cache: ActivationCache | None = None, gpt: GPT | None = None, train_tokens: torch.Tensor | None = None, source: int = 0, target: int = 1, metrics_path: Path | None = None, checkpoint: Path | None = None, tag: dict | None = None, progress: bool = True) -> dict:
    """Train a forward model on a frozen GPT's (source, target) pair, from ``cache`` or on the fly."""
    generator = torch.Generator().manual_seed(seed)
    if cache is not None:
        batches = cache.batches(tap(source), tap(target), cfg.batch_size, generator)
    else:
        require(gpt is not None and train_tokens is not None, "on-the-fly training needs the GPT and its training tokens")
        collect = gpt_pair_collector(gpt, source + 1, target + 1)
        batches = on_the_fly_batches(train_tokens, gpt.cfg.block_size, cfg.batch_size, generator, collect, device)
    return train_forward(model, batches, cfg, device, metrics_path=metrics_path, checkpoint=checkpoint, generator=generator, progress=progress, desc=f"forward {tap(source)}->{tap(target)}", tag=tag)


# --- evaluation ---------------------------------------------------------------------------------
def eval_batches(val_tokens: torch.Tensor, seq_len: int, sequences: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Held-out (inputs, next tokens) windows, in order: a fixed evaluation set."""
    x, y = eval_windows(val_tokens, seq_len, sequences)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]


@torch.no_grad()
def regression_eval(gpt: GPT, predictors: dict[str, torch.nn.Module], batches, source: int, target: int, device: torch.device) -> dict[str, dict]:
    """Cosine, MSE, skip-baseline cosine, delta cosine and delta R² of each predictor on held-out data."""
    totals = {name: RegressionTotals() for name in predictors}
    for x, _ in batches:
        src = gpt.run_blocks(gpt.embed(x.to(device)), 0, source + 1)  # (B, T, d)
        tgt = gpt.run_blocks(src, source + 1, target + 1)
        for name, model in predictors.items():
            totals[name].add(model(src), src, tgt)
    return {name: t.result() for name, t in totals.items()}


def evaluate_pair(gpt: GPT, fwd: torch.nn.Module, batches, source: int, target: int, device: torch.device, categories: TokenCategories | None = None, progress: bool = False) -> dict:
    """Regression metrics and causal substitution for one forward model on one (source, target) pair."""
    reg = regression_eval(gpt, {"forward": fwd}, batches, source, target, device)["forward"]
    moved = [(x.to(device), y.to(device)) for x, y in batches]
    sub = substitution_eval(gpt_split(gpt, source + 1, target + 1), fwd, moved, categories=categories, progress=progress)
    return {**reg, "substitution": sub}


def copy_into(src: Path, dst: Path) -> None:
    """Copy a file atomically (a cached artifact into a run directory)."""
    from selfmodels.artifacts import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


__all__ = [
    "DataConfig", "GPTConfig", "LMTrainConfig", "ForwardTrainConfig", "CoTrain", "tap", "check_pair", "prepare_data",
    "vocab_size_of", "token_strings", "config_key", "load_gpt", "model_id", "collect_cache", "fit_forward",
    "eval_batches", "regression_eval", "evaluate_pair", "copy_into", "train_lm", "save_tensors", "to_dict",
]
