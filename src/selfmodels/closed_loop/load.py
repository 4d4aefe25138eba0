"""A trained closed loop on disk: :func:`save_model` writes ``model.safetensors``, :func:`load_closed_loop` reads a
run directory back into a :class:`~selfmodels.closed_loop.model.ClosedLoop` (:func:`read_state`: the state dict of
any file :func:`save_model` wrote, e.g. a snapshot).

``model.safetensors`` holds the whole loop's state dict (``network.*``, ``forward_model.*``, ``signal.*``,
``gate.*``; a tied LM head, as GPT-2's and SmolLM2's, is stored once and read back under both names:
:func:`~selfmodels.artifacts.save_tensors`); its metadata holds the run's key and the format. Reloading rebuilds the
run's modules from its ``config.json`` with
:func:`~selfmodels.closed_loop.build.build_run` (our GPT with the run's ``tokenizer.json``; a pretrained subject loaded
by name again, then overwritten), checks that the config's key is its settings' and the weights' key the config's,
and loads every tensor (strictly: none missing, none unexpected). Anything wrong is one :class:`UserError` naming
the file and the fix. The reloaded loop computes the saved loop's logits bit for bit (tested).
"""

from __future__ import annotations

from pathlib import Path

import torch

from selfmodels.artifacts import load_tensors, read_json, save_tensors
from selfmodels.errors import UserError, require

MODEL_FORMAT = "closed-loop-model/1"
RECORD_KEYS = ("selfmodels_version", "git_commit", "key")  # what write_config adds beside the settings


def save_model(closed: torch.nn.Module, path: str | Path, key: str) -> None:
    """Write the loop's state dict to ``path`` (atomically) with ``key``, the format and the tied names."""
    save_tensors(path, closed.state_dict(), metadata={"key": key, "format": MODEL_FORMAT})  # tied tensors once


def read_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The state dict a :func:`save_model` file holds, every tied name restored (for ``load_state_dict``)."""
    path = Path(path)
    _metadata(path)  # missing or corrupt: the closed loop's own message
    return load_tensors(path, device)


def _metadata(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    require(path.is_file(), f"{path} does not exist: the run has not finished training (run its command again to "
                            "finish it), or this is not a closed-loop run directory")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is corrupt or not a safetensors file ({exc}): run the closed-loop command again to "
                        "write it") from None


def _config(run_dir: Path):
    from selfmodels.closed_loop.config import ClosedLoopConfig
    from selfmodels.configs import from_dict

    path = run_dir / "config.json"
    require(run_dir.is_dir(), f"{run_dir} is not a directory: give a closed-loop run directory (selfmodels closed-loop "
                              "--out DIR)")
    require(path.is_file(), f"{run_dir} has no config.json: not a closed-loop run directory (selfmodels closed-loop "
                            "--out DIR writes one)")
    try:
        data = read_json(path)
        cfg = from_dict(ClosedLoopConfig, {k: v for k, v in data.items() if k not in RECORD_KEYS})
    except UserError as exc:
        raise UserError(f"{path} is not a closed-loop run's config: {exc}") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{path} is not a closed-loop run's config ({type(exc).__name__}: {exc})") from None
    require(data.get("key") == cfg.key(),
            f"{path}: its key {data.get('key')} is not its settings' key {cfg.key()} (the file was edited, or written by "
            "another version of the closed loop): run the closed-loop command again in a fresh directory")
    return cfg, data["key"]


def _tokenizer(run_dir: Path, cfg):
    """Our GPT's BPE: the run's copy, else the data cache it was fitted into; None for a pretrained subject."""
    from selfmodels.closed_loop.data import data_store
    from selfmodels.data.bpe import load_tokenizer
    from selfmodels.subjects.config import GPT_NAME

    if cfg.main != GPT_NAME:
        return None
    for path in (run_dir / "tokenizer.json", data_store(cfg.corpus) / "tokenizer.json"):
        if path.is_file():
            return load_tokenizer(path)
    raise UserError(f"{run_dir} has no tokenizer.json, and the corpus's BPE is not in the data cache "
                    f"({data_store(cfg.corpus)}): our GPT's vocabulary is the tokenizer's; run the closed-loop command "
                    "again to write it")


def load_closed_loop(run_dir: str | Path, device: str | torch.device = "cpu"):
    """The trained closed loop of ``run_dir`` on ``device``, in eval mode with gradients off (see the module);
    its ``tokenizer`` is our GPT's BPE or the pretrained subject's own."""
    from selfmodels.closed_loop.build import build_run

    run_dir = Path(run_dir)
    cfg, key = _config(run_dir)
    path = run_dir / "model.safetensors"
    meta = _metadata(path)
    require(meta.get("format") == MODEL_FORMAT,
            f"{path} is not a closed-loop model file (format {meta.get('format')!r}, not {MODEL_FORMAT!r})")
    require(meta.get("key") == key, f"{path} belongs to another run (key {meta.get('key')} != config.json's {key}): "
                                    "copy the run directory whole, or run the closed-loop command again")
    state = read_state(path, device)
    closed = build_run(cfg, device, _tokenizer(run_dir, cfg))
    expected = closed.state_dict().keys()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    require(not missing and not unexpected,
            f"{path} does not hold this run's modules (missing {', '.join(missing[:4]) or 'none'}; unexpected "
            f"{', '.join(unexpected[:4]) or 'none'}): run the closed-loop command again in a fresh directory")
    try:
        closed.load_state_dict(state)
    except RuntimeError as exc:  # a shape that does not match the modules the config builds
        raise UserError(f"{path} does not fit the modules its config.json builds ({str(exc).splitlines()[-1].strip()}): "
                        "run the closed-loop command again in a fresh directory") from None
    return closed.eval().requires_grad_(False)
