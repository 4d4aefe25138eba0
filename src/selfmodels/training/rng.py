"""Random-number states as short JSON-able text, so a checkpoint can hold every rank's data position.

A ``torch.Generator``'s state is a byte tensor; :func:`generator_state` writes it as base64 text and
:func:`set_generator_state` puts it back. :func:`global_state` / :func:`set_global_state` do the same for the
process-wide generators a training step may draw from without naming one (dropout, ``torch.randn``): torch's CPU
generator and, when CUDA is initialised, every CUDA device's.
"""

from __future__ import annotations

import base64
import hashlib

import torch


def derived_seed(*parts) -> int:
    """A 63-bit seed from the given parts, so (seed, epoch) or (seed, rank) pairs never share a stream."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _text(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text.encode("ascii"))), dtype=torch.uint8).clone()


def generator_state(generator: torch.Generator) -> str:
    """The generator's state as base64 text."""
    return _text(generator.get_state())


def set_generator_state(generator: torch.Generator, text: str) -> None:
    """Restore :func:`generator_state`'s text into ``generator``."""
    generator.set_state(_tensor(text))


def global_state() -> dict:
    """torch's process-wide CPU generator state (and each CUDA device's, once CUDA is initialised), as text."""
    state = {"cpu": _text(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_text(s.cpu()) for s in torch.cuda.get_rng_state_all()]
    return state


def set_global_state(state: dict) -> None:
    """Restore :func:`global_state`'s output (the CUDA part only where this process has CUDA)."""
    torch.set_rng_state(_tensor(state["cpu"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor(s) for s in state["cuda"]])
