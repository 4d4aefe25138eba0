"""Forward-model architectures: the one place a forward model is built from its config.

Every builder of a forward model goes through :func:`build_forward_model` (the pipeline's headline, co-trained and
sweep models, the profile's per-pair models, the explorer, the self-modeling LMs' observer and forward objective),
and so does loading one: ``save_pretrained`` records ``config.architecture`` and
:func:`selfmodels.forward.pretrained.load_forward_model` builds that architecture before reading the weights.

An architecture is a name, a builder ``ForwardModelConfig -> nn.Module`` (``d_model`` already set to the subject's
width) and what the analyses may read from it (``attention``: per-head attention patterns from
``model(x, return_attention=True)`` and ``blocks[i].attn`` weights, as :class:`~selfmodels.forward.model.ForwardModel`
has). The module maps activations (B, T, d) to a prediction (B, T, d) and keeps its config as ``.cfg``; the
training, evaluation, substitution and artifacts need nothing else. Register one with::

    from selfmodels.forward.architectures import register_architecture
    register_architecture("linear", lambda cfg: MyLinearMap(cfg), "one d x d matrix, identity at init")

and choose it with ``--model.architecture linear`` (or ``ForwardModelConfig(architecture="linear")``).

This module imports no torch (the command line's help and validation read it); builders import what they need.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from selfmodels.registries import Registry, resolve

if TYPE_CHECKING:
    from torch import nn


class ForwardModelConfig(Protocol):
    """What a builder is given: a :class:`selfmodels.forward.config.ForwardModelConfig` (``d_model`` set to the
    subject's width). Named here as a protocol so that this registry does not import the config module, which
    imports the registry to check a name."""

    d_model: int
    architecture: str


@dataclass(frozen=True)
class Architecture:
    """A registered forward-model architecture."""

    name: str
    builder: Callable[["ForwardModelConfig"], "nn.Module"] | str  # or "module:attribute", imported when first used
    description: str
    attention: bool = False  # the analyses may read per-head attention (patterns and Q/K/V/O weights)

    def build(self, cfg: "ForwardModelConfig") -> "nn.Module":
        return resolve(self.builder)(cfg)


ARCHITECTURES: Registry[Architecture] = Registry("forward-model architecture")


def register_architecture(name: str, build: Callable[["ForwardModelConfig"], "nn.Module"] | str, description: str, *,
                          attention: bool = False, replace: bool = False) -> Architecture:
    """Add an architecture under ``name`` (``replace=True`` to redefine one); returns its entry. ``build``: a callable
    ``ForwardModelConfig -> nn.Module``, or its ``"module:attribute"`` path."""
    return ARCHITECTURES.register(name, Architecture(name, build, description, attention), replace=replace)


def architecture(name: str) -> Architecture:
    """The entry of ``name``; a UserError listing the registered ones when there is none."""
    return ARCHITECTURES.get(name)


def build_forward_model(cfg: "ForwardModelConfig", d_model: int | None = None) -> "nn.Module":
    """A fresh forward model of ``cfg`` (with ``d_model`` the subject's width when given), in the architecture its
    ``cfg.architecture`` names. Its initial weights come from torch's global generator, as every module's do."""
    if d_model is not None:
        cfg = dataclasses.replace(cfg, d_model=d_model)
    cfg.validate()
    model = architecture(cfg.architecture).build(cfg)
    if not hasattr(model, "cfg"):
        model.cfg = cfg
    return model


def num_params(model: "nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())


def reads_attention(model: "nn.Module") -> bool:
    """Whether the analyses may read per-head attention from ``model`` (its architecture says so)."""
    cfg = getattr(model, "cfg", None)
    name = getattr(cfg, "architecture", None)
    return name in ARCHITECTURES and ARCHITECTURES.get(name).attention


# The built-in builders are named by module path (selfmodels.registries.resolve), imported when a model is built:
# knowing the names (validation, --help) then needs no torch, and this registry imports no model.
register_architecture("transformer", "selfmodels.forward.model:ForwardModel", "pre-norm causal transformer blocks, output "
                      "projections zero at init (the identity map); GELU or SwiGLU MLP (the paper's forward model)",
                      attention=True)
register_architecture("per-position-mlp", "selfmodels.forward.baseline:PerPositionMLP.from_config", "h + W_2 GELU(W_1 h), "
                      "d -> mlp_mult d -> d at each position, no attention, W_2 zero at init (the paper's per-position "
                      "MLP baseline)")
