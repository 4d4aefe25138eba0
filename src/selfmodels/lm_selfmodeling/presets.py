"""The reproduction's settings, in one place: the quick CPU grid and the full (GPU-sized) one.

One run's settings are data (``preset_files/*.json``, the presets of ``selfmodels selfmodel-lm``: ``quick``
for any subject, ``full`` for our GPT or a pretrained one); the grids here set the conditions around them."""

from __future__ import annotations

import dataclasses

from selfmodels.lm_selfmodeling.grid import LMGrid, quick_conditions
from selfmodels.lm_selfmodeling.run import LMRunConfig
from selfmodels.lm_selfmodeling.config import PRESETS  # defined there, torch-free

SEEDS = [0, 1, 2]
QUICK_NOTE = ("Quick CPU run: a 4 x 4 x 64 GPT (512-token BPE, context 64) trained 1,000 steps of 16 sequences on the "
              "offline corpus; compare directions and CIs, not sizes, with larger models.")
FULL_NOTE = ("Full run (sized for one GPU): the forward paper's 4 x 4 x 256 toy GPT (4,096-token BPE, context 128, "
             "10,000 steps of 64) and, separately, a self-modeling fine-tune of SmolLM2-135M.")


def quick_run() -> LMRunConfig:
    """One quick run's settings (``selfmodel-lm --preset quick``)."""
    return PRESETS.config(LMRunConfig, "quick")


def quick_grids(workers: int, device: str, llc: str = "yes") -> dict[str, LMGrid]:
    base = dataclasses.replace(quick_run(), estimate_llc=llc == "yes")
    return {"gpt": LMGrid(base, quick_conditions(), SEEDS, workers=workers, threads=1, device=device, note=QUICK_NOTE)}


def full_grids(workers: int, device: str, llc: str = "yes") -> dict[str, LMGrid]:
    gpt = dataclasses.replace(PRESETS.config(LMRunConfig, "full", "gpt"), estimate_llc=llc == "yes")
    pretrained = dataclasses.replace(PRESETS.config(LMRunConfig, "full", "smollm2"), main="smollm2", estimate_llc=llc == "yes")
    return {"gpt": LMGrid(gpt, quick_conditions(), SEEDS, workers=1, threads=None, device=device, note=FULL_NOTE),
            "pretrained": LMGrid(pretrained, quick_conditions(weight_decay=0.1), SEEDS, workers=1, threads=None,
                                 device=device, note=FULL_NOTE)}
