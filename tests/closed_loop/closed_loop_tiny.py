"""Tiny closed loops for the tests (a 3-block GPT of width 32, seconds on one CPU core)."""

from __future__ import annotations

import dataclasses

import torch

from selfmodels.closed_loop.build import build_closed_loop
from selfmodels.closed_loop.conditions import CONDITIONS
from selfmodels.closed_loop.config import LoopConfig
from selfmodels.forward.config import ForwardModelConfig
from selfmodels.nets.gpt import GPT, GPTConfig

VOCAB, SEQ = 61, 16
CONDITION_NAMES = CONDITIONS.names()
INJECTING = tuple(name for name in CONDITION_NAMES if name != "open-loop")
FORWARD = ForwardModelConfig(n_layer=2, n_head=1, d_head=8)


def tiny_loop(condition: str, seed: int = 0, source: int = 0, inject: int = 1, target: int = 2, shift: int = 3,
              lm_into_forward: bool = False):
    """A fresh tiny closed loop of ``condition``; the GPT and F are the same for every condition of a seed."""
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=VOCAB, block_size=SEQ, n_layer=3, n_head=2, d_model=32))
    loop = LoopConfig(condition=condition, source=source, inject=inject, target=target, shift=shift,
                      lm_into_forward=lm_into_forward)
    return build_closed_loop(gpt, loop, FORWARD, seed)


def loop_config(condition: str, **changes) -> LoopConfig:
    return dataclasses.replace(LoopConfig(condition=condition, source=0, inject=1, target=2, shift=3), **changes)


@torch.no_grad()
def wake(closed, seed: int = 1):
    """Give the loop a trained-looking state: a non-zero gate and non-zero output projections in F, so that the
    injection and F's prediction are not trivial."""
    g = torch.Generator().manual_seed(seed)
    closed.gate.weight.copy_(torch.randn(closed.gate.weight.shape, generator=g) * 0.3)
    closed.gate.bias.copy_(torch.randn(closed.gate.bias.shape, generator=g) * 0.1)
    for p in closed.forward_model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return closed


def ids(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def token_stream(n: int = 4000) -> torch.Tensor:
    """A token stream with structure (a noisy counter), so a few steps of training move the loss."""
    g = torch.Generator().manual_seed(0)
    base = torch.arange(n) % VOCAB
    noise = torch.randint(0, VOCAB, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.2, noise, base)
