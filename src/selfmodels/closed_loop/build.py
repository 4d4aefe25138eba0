"""Building a closed loop around a GPT, so that every condition of a seed starts from the same weights.

The GPT is built first (seeded, by the caller), then F from the same global generator: F's initial weights are
therefore the same in every condition. The condition's signal (the random projection, the autoencoder, the frozen
forward model) is built from a generator of its own, ``derived_seed("closed-loop signal", seed, condition)``,
inside :func:`torch.random.fork_rng`, so it leaves the global generator where it was. G starts at zero.
"""

from __future__ import annotations

import torch

from selfmodels.closed_loop.conditions import CONDITIONS
from selfmodels.closed_loop.config import LoopConfig, default_bottleneck
from selfmodels.closed_loop.model import ClosedLoop
from selfmodels.forward.architectures import build_forward_model
from selfmodels.forward.config import ForwardModelConfig
from selfmodels.nets.gpt import GPT
from selfmodels.registries import resolve
from selfmodels.training.rng import derived_seed


def build_closed_loop(gpt: GPT, loop: LoopConfig, forward: ForwardModelConfig, seed: int) -> ClosedLoop:
    """The closed loop of ``loop.condition`` around ``gpt`` (on the GPT's device), F of architecture ``forward``."""
    loop.validate(gpt.cfg.n_layer)
    d = gpt.cfg.d_model
    forward_model = build_forward_model(forward, d)
    condition = CONDITIONS.get(loop.condition)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed("closed-loop signal", seed, loop.condition))
        signal = resolve(condition.signal)(d, shift=loop.shift, bottleneck=loop.bottleneck or default_bottleneck(d),
                                           forward_cfg=forward)
    closed = ClosedLoop(gpt, forward_model, signal, loop.source, loop.inject, loop.target, loop.lm_into_forward)
    return closed.to(next(gpt.parameters()).device)
