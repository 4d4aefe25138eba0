"""The closed loop on a network: ``h_m <- h_m + G(sg(u))``, u the condition's signal of h_i, i <= m < j.

One pass of :meth:`ClosedLoop.run` on token ids (B, T)::

    h_{-1} = embed(ids);  h_k = block_k(h_{k-1})                     (the network's own blocks, unchanged)
    p      = F(sg(h_i))                                               F's prediction of h_j
    u      = signal(sg(h_i), sg(p))                                   (sg(p) -> p with lm_into_forward)
    h_m   <- h_m + G(u)                                               before block m + 1; G(x) = W x + b, W = b = 0 at init
    logits = head(h_{n-1})

When i = m, F reads h_m before the injection. F's target is **on-policy**: h_j of this same pass, the injection
active. The LM loss sees F's output only through ``sg``, so it trains the network and G; F (and a signal's own
module) learn from their MSE on detached inputs and targets, so no MSE gradient reaches the network or G.

The network is our GPT trained from scratch or any pretrained :class:`~selfmodels.subjects.base.Subject` fine-tuned,
seen through a :class:`~selfmodels.closed_loop.trunk.Trunk` (embeddings, blocks, head). Our GPT is driven through its
public pieces (:meth:`GPT.embed`, :meth:`GPT.run_blocks`, :meth:`GPT.head`), its own ``forward`` untouched, and with
no injection this pass is the GPT's pass, op for op (tested bit for bit); a Hugging Face subject is driven through
the subject interface, and with no injection this pass equals the model's own forward bit for bit on CPU (tested on
a tiny Llama and GPT-2: the same blocks called with the same arguments, then the same final norm and head).

Greedy decoding with the loop closed, with a KV cache where the network has one: :mod:`selfmodels.closed_loop.generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfmodels.closed_loop.signals import Signal
from selfmodels.closed_loop.trunk import Trunk, trunk_of
from selfmodels.nets.gpt import GPT
from selfmodels.subjects.base import Subject


@dataclass
class Pass:
    """What one pass gives: ``logits`` (B, T, V); ``source`` sg(h_i) and ``target`` sg(h_j) (B, T, d); ``prediction``
    F(h_i); ``signal`` u (None: nothing injected); ``injected`` G(u) as added to h_m (None when nothing was);
    ``signal_loss`` the signal's own training loss (None: none)."""

    logits: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor
    prediction: torch.Tensor
    signal: torch.Tensor | None
    injected: torch.Tensor | None
    signal_loss: torch.Tensor | None


class ClosedLoop(nn.Module):
    """A network with the forward model ``forward_model`` (F, i -> j), the condition's ``signal`` and the gate G
    (``d x d`` linear with bias, zero-initialised), closing the loop at residual ``inject`` (m).

    ``network``: our :class:`GPT` (or its subject) or any :class:`Subject`, seen through its :class:`Trunk`
    (``self.trunk``); its module is the submodule ``network`` (state-dict keys ``network.*``), also reachable as
    ``gpt`` (the name the GPT-only loop had). ``subject``: the subject it was built from (None: a bare GPT);
    ``tokenizer``: the tokenizer its ids come from, when known."""

    def __init__(self, network: GPT | Subject | Trunk, forward_model: nn.Module, signal: Signal, source: int, inject: int,
                 target: int, lm_into_forward: bool = False, tokenizer=None):
        super().__init__()
        trunk = network if isinstance(network, Trunk) else trunk_of(network)
        d = trunk.d_model
        self.trunk, self.subject, self.tokenizer = trunk, trunk.subject, tokenizer
        self.network, self.forward_model, self.signal = trunk.module, forward_model, signal
        self.source, self.inject, self.target, self.lm_into_forward = source, inject, target, lm_into_forward
        self.gate = nn.Linear(d, d)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    @property
    def gpt(self) -> nn.Module:
        """The main network's module (``network``): our GPT, or the pretrained subject's model."""
        return self.network

    def run(self, ids: torch.Tensor, inject: bool = True) -> Pass:
        """One pass on ``ids`` (B, T); ``inject=False`` leaves h_m alone (the dependency's "without")."""
        trunk, i, m, j, n = self.trunk, self.source, self.inject, self.target, self.trunk.n_layers
        h, args = trunk.embed(ids)  # h_{-1} (B, T, d); the blocks' arguments for this batch
        h = trunk.blocks(h, 0, i + 1, args)  # h_i (B, T, d)
        source = h.detach()
        h = trunk.blocks(h, i + 1, m + 1, args)  # h_m, before the injection (B, T, d)
        prediction = self.forward_model(source)  # F(h_i) (B, T, d)
        signal, signal_loss = self.signal(source, prediction if self.lm_into_forward else prediction.detach())
        injected = None
        if inject and signal is not None:
            injected = self.gate(signal)  # G(u) (B, T, d)
            h = h + injected
        h = trunk.blocks(h, m + 1, j + 1, args)  # h_j (B, T, d)
        target = h.detach()
        h = trunk.blocks(h, j + 1, n, args)  # h_{n-1}
        return Pass(trunk.head(h, args), source, target, prediction, signal, injected, signal_loss)

    def forward(self, ids: torch.Tensor, inject: bool = True) -> torch.Tensor:
        """Logits (B, T, V)."""
        return self.run(ids, inject).logits
