"""Seeds, devices and threads: the few global settings a run makes, in one place."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from selfmodels.errors import UserError


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator seeded the same way for data order."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an explicit name is checked, not silently replaced."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but no CUDA device is available: use --device cpu")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA (where it helps); none on CPU (bf16 is several times slower there)."""
    return torch.bfloat16 if device.type == "cuda" else None


def cache_dir() -> Path:
    """The user's cache for converted models and reusable trained main models:
    ``$SELFMODELS_CACHE`` if set, else ``~/.cache/selfmodels``."""
    root = os.environ.get("SELFMODELS_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "selfmodels"


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count (None leaves the default). One thread per process is the safe
    choice when several jobs share a small machine."""
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
