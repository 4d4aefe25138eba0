"""The network a closed loop is wired into, seen in residual pieces: :class:`Trunk`.

A pass of the closed loop needs three pieces of the network, on token ids (B, T)::

    h_{-1}, args = embed(ids)                 the embeddings, and whatever the blocks need for this batch (masks,
                                              rotary embeddings): None for our GPT
    h_stop       = blocks(h_start-1, start, stop, args)      blocks start .. stop-1
    logits       = head(h_{n-1}, args)        final norm and LM head (B, T, V)

:class:`GPTTrunk` is our GPT driven through its public pieces (:meth:`GPT.embed`, :meth:`GPT.run_blocks`,
:meth:`GPT.head`), op for op the GPT's own pass, so the closed loop on our GPT stays what it was. :class:`SubjectTrunk`
is any :class:`~selfmodels.subjects.base.Subject` (a pretrained Hugging Face causal LM) through the subject
interface: ``residuals(ids, [-1])`` for the embeddings (gradients flow), ``block_arguments(ids)`` for the blocks'
extra arguments, ``run_blocks`` and ``logits_from``. A Hugging Face subject runs its blocks in eval mode (no dropout,
:meth:`~selfmodels.subjects.hf.HFSubject.observing`), in training too: the closed-loop pass is then deterministic and
equal, with G at zero, to the subject's own (eval-mode) forward.
"""

from __future__ import annotations

import torch
from torch import nn

from selfmodels.nets.gpt import GPT
from selfmodels.subjects.base import EMBED, Subject


class Trunk:
    """The main network in residual pieces. ``module``: the ``nn.Module`` whose parameters the LM loss trains;
    ``subject``: the subject it is seen as (None: a bare GPT); ``n_layers``, ``d_model``; ``context``: the most
    positions it takes (None: no limit known)."""

    module: nn.Module
    subject: Subject | None
    n_layers: int
    d_model: int
    context: int | None

    def embed(self, ids: torch.Tensor) -> tuple[torch.Tensor, object]:
        """``(h_{-1} (B, T, d), args)``: the embeddings of ``ids`` (B, T) and the blocks' arguments for this batch."""
        raise NotImplementedError

    def blocks(self, h: torch.Tensor, start: int, stop: int, args: object) -> torch.Tensor:
        """Blocks ``start .. stop-1`` on the residual ``h`` (B, T, d)."""
        raise NotImplementedError

    def head(self, h: torch.Tensor, args: object) -> torch.Tensor:
        """Logits (B, T, V) from the last residual h_{n-1} (B, T, d)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype


class GPTTrunk(Trunk):
    """Our GPT, through its own pieces (no hooks): the closed loop on it is the GPT's pass op for op."""

    def __init__(self, gpt: GPT, subject: Subject | None = None):
        self.module, self.gpt, self.subject = gpt, gpt, subject
        self.n_layers, self.d_model, self.context = gpt.cfg.n_layer, gpt.cfg.d_model, gpt.cfg.block_size

    def embed(self, ids):
        return self.gpt.embed(ids), None

    def blocks(self, h, start, stop, args):
        return self.gpt.run_blocks(h, start, stop)

    def head(self, h, args):
        return self.gpt.head(h)


class SubjectTrunk(Trunk):
    """Any subject, through the subject interface (see the module docstring)."""

    def __init__(self, subject: Subject):
        self.module, self.subject = subject.model, subject
        self.n_layers, self.d_model = subject.n_layers, subject.d_model
        config = getattr(subject, "text_config", None)
        self.context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def embed(self, ids):
        ids = ids.to(self.subject.device)
        return self.subject.residuals(ids, [EMBED])[EMBED], self.subject.block_arguments(ids)

    def blocks(self, h, start, stop, args):
        return self.subject.run_blocks(h, start, stop, args)

    def head(self, h, args):
        return self.subject.logits_from(h, self.n_layers - 1, args)


def trunk_of(network: GPT | Subject) -> Trunk:
    """The trunk of our GPT (a bare :class:`GPT` or its :class:`~selfmodels.subjects.gpt.GPTSubject`: driven through
    the GPT's own pieces) or of any other subject (through the subject interface)."""
    if isinstance(network, GPT):
        return GPTTrunk(network)
    if isinstance(network, Subject):
        gpt = getattr(network, "gpt", None)
        return GPTTrunk(gpt, network) if isinstance(gpt, GPT) else SubjectTrunk(network)
    raise TypeError(f"a closed loop is built around our GPT or a Subject, not {type(network).__name__}")
