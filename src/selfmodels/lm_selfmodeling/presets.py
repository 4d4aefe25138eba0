"""The reproduction's settings, in one place: the quick CPU grid and the full (GPU-sized) one."""

from __future__ import annotations

import dataclasses

from selfmodels.complexity.llc import LLCConfig
from selfmodels.lm_selfmodeling.grid import LMGrid, quick_conditions
from selfmodels.lm_selfmodeling.observer import ObserverConfig
from selfmodels.lm_selfmodeling.run import LMRunConfig
from selfmodels.nets.gpt import GPTConfig
from selfmodels.subjects.lm_training import LMTrainConfig
from selfmodels.subjects.registry import CorpusConfig

SEEDS = [0, 1, 2]
QUICK_NOTE = ("Quick CPU run: a 4 x 4 x 64 GPT (512-token BPE, context 64) trained 1,000 steps of 16 sequences on the "
              "offline corpus; compare directions and CIs, not sizes, with larger models.")
FULL_NOTE = ("Full run (sized for one GPU): the forward paper's 4 x 4 x 256 toy GPT (4,096-token BPE, context 128, "
             "10,000 steps of 64) and, separately, a self-modeling fine-tune of SmolLM2-135M.")


def quick_run() -> LMRunConfig:
    """One quick run's settings (``selfmodel-lm``'s defaults)."""
    return LMRunConfig(
        seq_len=64, gpt=GPTConfig(n_layer=4, n_head=4, d_model=64),
        lm=LMTrainConfig(steps=1000, batch_size=16, lr=1e-3, weight_decay=0.01, eval_every=100),
        corpus=CorpusConfig(vocab_size=512),
        observer=ObserverConfig(near=[-1, 1], far=[-1, 0], steps=300, batch_size=16, train_windows=512, eval_windows=64),
        # epsilon 3e-4: on a trained baseline the trace settles within the burn-in (1e-4 was still rising at the
        # half: 303 against 321); 2 chains x 200 draws, no flags.
        llc=LLCConfig(chains=2, draws=200, batch_size=16, epsilon=3e-4, gamma=100.0),
    )


def quick_grids(workers: int, device: str, llc: str = "yes") -> dict[str, LMGrid]:
    base = dataclasses.replace(quick_run(), estimate_llc=llc == "yes")
    return {"gpt": LMGrid(base, quick_conditions(), SEEDS, workers=workers, threads=1, device=device, note=QUICK_NOTE)}


def full_grids(workers: int, device: str, llc: str = "yes") -> dict[str, LMGrid]:
    gpt = LMRunConfig(
        seq_len=128, gpt=GPTConfig(n_layer=4, n_head=4, d_model=256),
        lm=LMTrainConfig(steps=10_000, batch_size=64, lr=3e-4, weight_decay=0.01, eval_every=500),
        corpus=CorpusConfig(vocab_size=4096), eval_windows=256,
        observer=ObserverConfig(near=[-1, 1], far=[-1, 0], steps=2000, batch_size=64, d_head=64, train_windows=2048,
                                eval_windows=256),
        llc=LLCConfig(chains=4, draws=1000, batch_size=64, epsilon=1e-4, gamma=100.0), llc_windows=2048,
        estimate_llc=llc == "yes")
    pretrained = LMRunConfig(
        main="smollm2", seq_len=256,
        lm=LMTrainConfig(steps=2000, batch_size=16, lr=3e-5, weight_decay=0.01, eval_every=200),
        eval_windows=128,
        observer=ObserverConfig(near=[-1, 1], far=[-1, 0], steps=1000, batch_size=16, d_head=64, train_windows=1024,
                                eval_windows=64),
        llc=LLCConfig(chains=4, draws=500, batch_size=8, epsilon=1e-5, gamma=1000.0, sampler="rmsprop_sgld"),
        llc_windows=512, estimate_llc=llc == "yes")
    return {"gpt": LMGrid(gpt, quick_conditions(), SEEDS, workers=1, threads=None, device=device, note=FULL_NOTE),
            "pretrained": LMGrid(pretrained, quick_conditions(weight_decay=0.1), SEEDS, workers=1, threads=None,
                                 device=device, note=FULL_NOTE)}
