"""``selfmodels selfmodel-lm`` in a line from a notebook: ``selfmodels.selfmodel_lm(method=..., strength=...)``.

Settings resolve as the command's do (:class:`~selfmodels.lm_selfmodeling.config.LMRunConfig`'s defaults < the preset
< the keyword arguments, each a setting's name, nested ones as dicts: ``lm={"steps": 200}``), and the run goes through
:func:`selfmodels.lm_selfmodeling.run.run_one`, the function the command runs, into ``out`` (a new temporary directory
when not given; a finished run there with the same settings is read back).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LMRun:
    """One self-modeling LM condition, trained and measured: ``record`` is its ``result.json``."""

    record: dict
    out: Path

    def __repr__(self) -> str:
        r = self.record
        return (f"LMRun({r['condition']}, seed {r['seed']}, {r['main']}: val loss {r['val_loss']:.4f} nats/token, "
                f"unembedding SD {r['unembedding_sd']:.4f}, observer recovery (near) {r['observer_near_recovery']:.3f}; "
                f"out={self.out})")


def selfmodel_lm(method: str = "self-model", strength: float = 1.0, *, subject="gpt", tokenizer=None,
                 preset: str = "quick", out: str | Path | None = None, seed: int = 0, device: str = "auto",
                 progress: bool = False, **settings) -> LMRun:
    """Train one language model with ``method`` at ``strength`` and measure it: validation loss, weight spread, residual
    norms, the self-model's fit, a fresh observer's predictability and (``estimate_llc``) the LLC. ``subject``: gpt
    (ours, from scratch), a pretrained name to fine-tune, or a model object you hold (with its ``tokenizer``; any
    object :func:`selfmodels.open_subject` takes), fine-tuned as a copy: your model is not changed."""
    from selfmodels.configs import from_dict, overlay, to_dict
    from selfmodels.lm_selfmodeling.config import PRESETS, LMRunConfig
    from selfmodels.lm_selfmodeling.run import run_one
    from selfmodels.runtime import resolve_device

    held = None
    if not isinstance(subject, str):
        from selfmodels.subjects.held import as_subject

        held = as_subject(subject, tokenizer)
        subject = held.name
    data = overlay(to_dict(LMRunConfig()), PRESETS.load(preset, subject), f"preset {preset}: ")
    given = {"main": subject, "seed": seed, "objective": {"method": method, "strength": strength}}
    cfg = from_dict(LMRunConfig, overlay(overlay(data, given), settings))
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="selfmodels-lm-"))
    return LMRun(run_one(cfg, out, device=resolve_device(device), progress=progress, subject=held), out)
