"""Sites: the named activations of a subject that a self-model predicts or a control regularises.

Site names (``n`` = the subject's blocks):

    head-input   the LM head's input (after the final norm), (B, T, d): the exact analogue of the self-modeling
                 paper's MNIST setup, where the final layer predicts its own input
    resid:K      the residual stream at index K (-1 = embeddings, K = after block K), (B, T, d)
    mlp:K        block K's MLP hidden layer (the input of its output projection, after the nonlinearity),
                 (B, T, d_mlp)

Each site also names the residual indices it touches (:func:`site_indices`): a fresh observer's layer pair must
share none of them. Capture goes through forward hooks registered in a context manager that always removes
them; the captured tensors keep their autograd graph (the training loop decides what to detach).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from selfmodels.errors import UserError
from selfmodels.lm_selfmodeling.config import HEAD_INPUT, parse_site, site_indices, valid_sites  # defined there, torch-free
from selfmodels.subjects.base import EMBED, Subject, hidden_of, hooks
from selfmodels.subjects.lm_training import logits_of  # noqa: F401 - the full pass, with the sites' hooks in place

_MLP_OUT_NAMES = ("fc_proj", "down_proj", "c_proj", "dense_4h_to_h")  # ours, Llama-like, GPT-2, GPT-NeoX


def head_module(subject: Subject) -> nn.Module:
    """The LM head (unembedding) of a subject: ``get_output_embeddings()`` where the model has it, else ``lm_head``."""
    model = subject.model
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if getter is not None else None
    return head if head is not None else model.lm_head


def mlp_out_projection(subject: Subject, k: int) -> nn.Module:
    """The output projection of block ``k``'s MLP, whose input is the MLP's hidden layer."""
    block = subject.blocks[k]
    mlp = getattr(subject, "spec", None) and subject.part(k, "mlp")
    for owner in (block, mlp):
        for name in _MLP_OUT_NAMES:
            if owner is not None and hasattr(owner, name):
                return getattr(owner, name)
    raise UserError(f"{subject.name}: cannot find block {k}'s MLP output projection (looked for {', '.join(_MLP_OUT_NAMES)})")


def site_width(subject: Subject, name: str) -> int:
    """Width of the site's activation vectors."""
    kind, index = parse_site(name, subject.n_layers)
    if kind != "mlp":
        return subject.d_model
    proj = mlp_out_projection(subject, index)
    weight = proj.weight  # nn.Linear (out, in); GPT-2's Conv1D stores (in, out)
    return weight.shape[0] if type(proj).__name__ == "Conv1D" else weight.shape[1]


@contextmanager
def capture(subject: Subject, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward pass of ``subject.model`` fills the yielded dict with each site's
    activation (graph kept). Hooks are always removed."""
    got: dict[str, torch.Tensor] = {}

    def pre(name):
        return lambda module, args: got.__setitem__(name, args[0])

    def post(name):
        return lambda module, args, output: got.__setitem__(name, hidden_of(output))

    def register() -> list:
        handles = []
        for name in dict.fromkeys(names):
            kind, index = parse_site(name, subject.n_layers)
            if kind == HEAD_INPUT:
                handles.append(head_module(subject).register_forward_pre_hook(pre(name)))
            elif kind == "resid" and index == EMBED:
                handles.append(subject.blocks[0].register_forward_pre_hook(
                    lambda module, args, kwargs, _n=name: got.__setitem__(_n, args[0] if args else kwargs["hidden_states"]),
                    with_kwargs=True))
            elif kind == "resid":
                handles.append(subject.blocks[index].register_forward_hook(post(name)))
            else:
                handles.append(mlp_out_projection(subject, index).register_forward_pre_hook(pre(name)))
        return handles

    with hooks(register):
        yield got
