"""Decoding with the loop closed: :func:`closed_forward` and greedy :func:`generate`.

:func:`closed_forward` makes the network's own forward pass compute the closed loop: within the block, every pass of
the model (its ``forward``, Hugging Face ``generate()`` with or without the KV cache) adds ``G(u)`` to the residual
after block m, u the condition's signal of h_i. With a KV cache the model is fed only the new positions after the
first call, but F attends across positions, so it must see the whole prefix, as
:meth:`~selfmodels.subjects.base.Subject.splice` does: the source residuals h_i of the running sequence are kept,
extended at each cached call, F and the signal run on all of them (the shifted condition's ``t - k`` counts from the
sequence's start), and the new positions' ``G(u)`` is added. A call whose positions include 0 starts a new sequence
(:meth:`Subject._starts_sequence`). The hooks sit on block 0 (where a call begins: is it a new sequence; for i = -1
the source; for m = -1 the injection), block i (the source) and block m (the injection), and are always removed.

:func:`generate` decodes greedily, ``x_{t+1} = argmax_v logits_t(x_{<=t})[v]``, for exactly ``max_new_tokens`` steps
(no end-of-sequence stop), and returns the sequences and every step's logits. On a Hugging Face subject it feeds the
model its KV cache (``use_cache=True``: one new token per step, the hooks above keeping F's prefix) or the whole
sequence each step (``use_cache=False``). Our GPT has no KV cache: every step runs :meth:`ClosedLoop.run` on the whole
prefix, at most the GPT's context long. Either way the logits of step t equal those of :meth:`ClosedLoop.run` on the
final sequence at position t (tested: bit for bit uncached, within float rounding with the cache, where attention
over cached keys sums in another order).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from selfmodels.closed_loop.model import ClosedLoop
from selfmodels.closed_loop.trunk import GPTTrunk
from selfmodels.errors import require
from selfmodels.subjects.base import EMBED, Subject, _block_input, hidden_of, hooks, with_hidden


@dataclass
class Generated:
    """``sequences`` (B, T + N): the prompt and the N tokens decoded; ``logits`` (B, N, V) float32: step t's logits,
    from which token T + t was chosen."""

    sequences: torch.Tensor
    logits: torch.Tensor


def _subject_of(closed: ClosedLoop) -> Subject:
    """The subject whose blocks the hooks go on (a bare GPT is seen as its :class:`GPTSubject`)."""
    if closed.subject is not None:
        return closed.subject
    from selfmodels.subjects.gpt import GPTSubject

    return GPTSubject(closed.trunk.gpt, name="closed-loop gpt")


def _with_input(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """A block call's arguments with its input hidden state replaced (positional or keyword)."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@contextmanager
def closed_forward(closed: ClosedLoop, inject: bool = True) -> Iterator[ClosedLoop]:
    """Within the block, the network's own forward passes compute the closed loop (see the module docstring);
    ``inject=False``: nothing is added (the model as it is, the dependency's "without")."""
    subject = _subject_of(closed)
    blocks, i, m = subject.blocks, closed.source, closed.inject
    state: dict = {"source": None, "starts": True}

    def keep(h: torch.Tensor) -> None:
        previous = state["source"]
        state["source"] = h if state["starts"] or previous is None else torch.cat([previous, h], dim=1)

    def injected(h: torch.Tensor) -> torch.Tensor:
        """h_m (B, T_new, d) plus G(u) at its positions, u computed on the whole prefix's h_i."""
        if not inject:
            return h
        source = state["source"]  # (B, T_all, d)
        signal, _ = closed.signal(source, closed.forward_model(source.to(closed.gate.weight.dtype)))
        if signal is None:
            return h
        return h + closed.gate(signal[:, -h.shape[1]:]).to(h.dtype)

    def first_pre(module, args, kwargs):
        state["starts"] = subject._starts_sequence(args, kwargs)
        if i != EMBED:
            return None
        h = _block_input(args, kwargs)
        keep(h)
        return _with_input(args, kwargs, injected(h)) if m == EMBED else None

    def source_post(module, args, output):
        keep(hidden_of(output))

    def inject_post(module, args, output):
        return with_hidden(output, injected(hidden_of(output)))

    def register() -> list:
        handles = [blocks[0].register_forward_pre_hook(first_pre, with_kwargs=True)]
        if i != EMBED:
            handles.append(blocks[i].register_forward_hook(source_post))
        if m != EMBED:  # registered after the source's hook: with i = m, h_i is kept before the injection
            handles.append(blocks[m].register_forward_hook(inject_post))
        return handles

    observing = getattr(subject, "observing", None)
    with (observing() if observing is not None else _nothing()), hooks(register):
        yield closed


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _check_length(closed: ClosedLoop, length: int) -> None:
    context = closed.trunk.context
    require(context is None or length <= context,
            f"the prompt and the tokens to generate make {length} positions, more than the {context} the network takes: "
            "ask for fewer new tokens or give a shorter prompt")


@torch.no_grad()
def generate(closed: ClosedLoop, ids: torch.Tensor, max_new_tokens: int, inject: bool = True,
             use_cache: bool = True) -> Generated:
    """Greedy decoding of ``max_new_tokens`` tokens after the prompt ``ids`` (B, T) with the loop closed (``inject``)
    or open; ``use_cache``: feed a Hugging Face subject its KV cache (our GPT has none; see the module docstring)."""
    require(max_new_tokens >= 1, f"max_new_tokens must be at least 1, got {max_new_tokens}")
    require(ids.ndim == 2 and ids.shape[1] >= 1, f"the prompt must be token ids (B, T) with T >= 1, got shape {tuple(ids.shape)}")
    _check_length(closed, ids.shape[1] + max_new_tokens)
    modes = [(module, module.training) for module in closed.modules()]
    closed.eval()
    try:
        if isinstance(closed.trunk, GPTTrunk):
            return _decode(lambda seq, past: (closed(seq, inject=inject)[:, -1], None), ids, max_new_tokens, False,
                           closed.trunk.device)
        model = closed.trunk.module
        name = _cache_argument(model)

        def step(seq: torch.Tensor, past):
            fed = seq if past is None else seq[:, -1:]
            out = model(input_ids=fed, use_cache=use_cache, **{name: past})
            return out.logits[:, -1], getattr(out, name) if use_cache else None

        with closed_forward(closed, inject):
            return _decode(step, ids, max_new_tokens, use_cache, closed.trunk.device)
    finally:
        for module, training in modes:  # each module's own mode (a subject held in eval mode stays so)
            module.training = training


def _cache_argument(model) -> str:
    """What the model's forward calls its KV cache: ``cache`` (transformers 5.2x) or ``past_key_values`` (before)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _decode(step, ids: torch.Tensor, n: int, cached: bool, device: torch.device) -> Generated:
    """``n`` greedy steps: ``step(sequence, past) -> (logits (B, V) of its last position, past)``."""
    seq, past, logits = ids.to(device), None, []
    for _ in range(n):
        last, past = step(seq, past if cached else None)
        logits.append(last.float())
        seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
    return Generated(seq, torch.stack(logits, dim=1))
