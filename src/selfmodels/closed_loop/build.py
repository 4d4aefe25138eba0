"""Building a closed loop around a network, so that every condition of a seed starts from the same weights.

The network comes first: our GPT built (seeded, by the caller) or a pretrained subject loaded; then F from the same
global generator, so F's initial weights are the same in every condition. The condition's signal (the random
projection, the autoencoder, the frozen forward model) is built from a generator of its own,
``derived_seed("closed-loop signal", seed, condition)``, inside :func:`torch.random.fork_rng`, so it leaves the
global generator where it was. G starts at zero. F, the signal and G are put on the network's device and in its
dtype; the network itself is left as it is (a cast would also cast a model's own buffers, e.g. rotary frequencies).
"""

from __future__ import annotations

import dataclasses

import torch

from selfmodels.closed_loop.conditions import CONDITIONS
from selfmodels.closed_loop.config import ClosedLoopConfig, LoopConfig, default_bottleneck
from selfmodels.closed_loop.model import ClosedLoop
from selfmodels.closed_loop.trunk import trunk_of
from selfmodels.forward.architectures import build_forward_model
from selfmodels.forward.config import ForwardModelConfig
from selfmodels.nets.gpt import GPT
from selfmodels.registries import resolve
from selfmodels.subjects.base import Subject
from selfmodels.training.rng import derived_seed


def build_closed_loop(network: GPT | Subject, loop: LoopConfig, forward: ForwardModelConfig, seed: int,
                      tokenizer=None) -> ClosedLoop:
    """The closed loop of ``loop.condition`` around ``network`` (our GPT, or any subject: a pretrained model is
    fine-tuned in place), F of architecture ``forward``; the indices are checked against the network's blocks.
    ``tokenizer``: the one its ids come from (default: the subject's own, if it has one)."""
    trunk = trunk_of(network)
    loop.validate(trunk.n_layers)
    d = trunk.d_model
    forward_model = build_forward_model(forward, d)
    condition = CONDITIONS.get(loop.condition)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed("closed-loop signal", seed, loop.condition))
        signal = resolve(condition.signal)(d, shift=loop.shift, bottleneck=loop.bottleneck or default_bottleneck(d),
                                           forward_cfg=forward)
    tokenizer = tokenizer if tokenizer is not None else getattr(trunk.subject, "tokenizer", None)
    closed = ClosedLoop(trunk, forward_model, signal, loop.source, loop.inject, loop.target, loop.lm_into_forward,
                        tokenizer=tokenizer)
    for part in (closed.forward_model, closed.signal, closed.gate):
        part.to(device=trunk.device, dtype=trunk.dtype)
    return closed


def build_run(cfg: ClosedLoopConfig, device: torch.device | str, tokenizer=None, subject: Subject | None = None) -> ClosedLoop:
    """The closed loop a run of ``cfg`` starts from: our GPT (``cfg.main == "gpt"``) built fresh after
    ``seed_everything(cfg.seed)``, its vocabulary the ``tokenizer``'s and its context ``cfg.seq_len``; or the pretrained
    subject ``subject`` (or ``cfg.main`` loaded in float32 on ``device``), seeded after it is loaded; then F, the signal
    and G (:func:`build_closed_loop`). A run and its reload (:func:`selfmodels.closed_loop.load.load_closed_loop`)
    build through here, so both start from the same modules."""
    from selfmodels.runtime import seed_everything
    from selfmodels.subjects.config import GPT_NAME

    if cfg.main == GPT_NAME:
        seed_everything(cfg.seed)
        gpt_cfg = dataclasses.replace(cfg.gpt, vocab_size=tokenizer.get_vocab_size(), block_size=cfg.seq_len)
        return build_closed_loop(GPT(gpt_cfg).to(device), cfg.loop, cfg.forward, cfg.seed, tokenizer=tokenizer)
    if subject is None:
        from selfmodels.subjects.hf_loading import load_causal_lm

        subject = load_causal_lm(cfg.main, device, torch.float32)
    seed_everything(cfg.seed)
    return build_closed_loop(subject, cfg.loop, cfg.forward, cfg.seed, tokenizer=tokenizer)
