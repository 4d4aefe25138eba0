"""Every SGLD chain of a multilayer perceptron at once, as a few large matrix products.

For a model that is a straight line of ``Linear`` layers and element-wise activations (checked by
tracing it with ``torch.fx``), every chain's forward and backward pass is written out on the stacked
parameters ``W`` (C, out, in), ``b`` (C, out), with activations kept feature-major, (C, features, B)::

    first layer   Z = Wf x^T + bf            one product for all chains, Wf = W.view(C*out, in), x (B, in)
                  dWf = dZ x                 one product; no input gradient is formed
    later layers  z_c = W_c a_c + b_c        batched products (baddbmm)
                  dW_c = dz_c a_c^T,  da_c = W_c^T dz_c,  db_c = sum over the batch of dz_c

Activations use their closed-form derivatives on the saved output (ReLU: ``dz = da [a > 0]``, tanh:
``da (1 - a^2)``, sigmoid: ``da a (1 - a)``) or input (GELU). The loss and its gradient with respect to
the logits are closed-form for the library's cross-entropy (:mod:`selfmodels.complexity.losses`) and
come from autograd on the user's ``loss_fn`` otherwise, one chain at a time (the logits are small).
Gradients are added, scaled, into buffers the caller gives (``C <- C + scale A B`` inside the
product), which lets the SGLD step put its drift straight into the noise buffer. Compared with
``vmap(functional_call)`` plus autograd this builds no graph per step and leaves the paper's MNIST MLP
with little besides the first layer's two products.

The numbers equal the ``vmap`` path's (tested to 1e-10 in float64); only the order of the
floating-point sums differs. Models this cannot express raise :class:`Unsupported` at construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from selfmodels.complexity.losses import LOGIT_GRADIENTS

_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.GELU: "gelu",
                nn.Identity: "identity", nn.Dropout: "identity"}
_FUNCTIONS = {torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh", torch.sigmoid: "sigmoid", F.gelu: "gelu"}


class Unsupported(ValueError):
    """The model is not a straight chain of Linear layers and element-wise activations."""


@dataclass
class _Layer:
    kind: str                       # "linear", an activation name, or "flatten"
    weight: int | None = None       # index of the weight in the chains' parameter list
    bias: int | None = None
    flatten_dims: tuple[int, int] = (1, -1)
    gelu_approximate: str = "none"


def _layers(model: nn.Module, names: Sequence[str]) -> list[_Layer]:
    """Trace ``model`` and describe it as a list of layers, or raise :class:`Unsupported`."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "not a plain MLP"
        raise Unsupported(f"cannot trace the model ({type(exc).__name__})") from exc
    modules = dict(model.named_modules())
    index = {name: i for i, name in enumerate(names)}
    layers, previous, covered = [], None, set()
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                raise Unsupported("the forward takes more than one input")
            previous = node
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise Unsupported("the output is not the last layer's result")
            continue
        if len(node.args) < 1 or node.args[0] is not previous or len(node.all_input_nodes) != 1:
            raise Unsupported(f"{node.name} does not simply continue the previous layer")
        layers.append(_describe(node, modules, index, covered))
        previous = node
    if not any(layer.kind == "linear" for layer in layers):
        raise Unsupported("the model has no Linear layer")
    if covered != set(names):
        raise Unsupported("some trainable parameters are not Linear weights or biases")
    first_linear = next(i for i, layer in enumerate(layers) if layer.kind == "linear")
    if any(layer.kind == "flatten" for layer in layers[first_linear:]):
        raise Unsupported("a flatten after the first Linear layer")
    return layers


def _describe(node: torch.fx.Node, modules: dict, index: dict, covered: set) -> _Layer:
    if node.op == "call_function" and node.target in _FUNCTIONS and not node.kwargs and len(node.args) == 1:
        return _Layer(_FUNCTIONS[node.target])
    if node.op != "call_module":
        raise Unsupported(f"unsupported operation {node.target}")
    module = modules[node.target]
    if isinstance(module, nn.Linear):
        w, b = f"{node.target}.weight", f"{node.target}.bias"  # all trainable: StackedMLP checked
        covered.update([w] + ([b] if module.bias is not None else []))
        return _Layer("linear", weight=index[w], bias=index[b] if module.bias is not None else None)
    if isinstance(module, nn.Flatten):
        return _Layer("flatten", flatten_dims=(module.start_dim, module.end_dim))
    if isinstance(module, nn.Dropout) and module.training:
        raise Unsupported("dropout in train mode")
    kind = next((k for cls, k in _ACTIVATIONS.items() if type(module) is cls), None)
    if kind is None:
        raise Unsupported(f"unsupported module {type(module).__name__}")
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        raise Unsupported(f"{node.target} has parameters or buffers")
    return _Layer(kind, gelu_approximate=getattr(module, "approximate", "none"))


def _activation(kind: str, z: torch.Tensor, approximate: str, in_place: bool) -> torch.Tensor:
    """act(z); ``in_place`` overwrites z where the backward needs only the output."""
    if kind in ("relu", "tanh", "sigmoid"):
        return getattr(z, kind + "_")() if in_place else getattr(torch, kind)(z)
    if kind == "gelu":
        return F.gelu(z, approximate=approximate)
    return z


def _activation_backward(kind: str, grad: torch.Tensor, z: torch.Tensor, a: torch.Tensor,
                         approximate: str) -> torch.Tensor:
    """dL/dz from dL/da for a = act(z); may overwrite ``grad``."""
    aten = torch.ops.aten
    if kind == "relu":  # a > 0 exactly where z > 0; in place: grad is a fresh buffer
        return aten.threshold_backward.grad_input(grad, a, 0, grad_input=grad)
    if kind == "tanh":
        return aten.tanh_backward(grad, a)
    if kind == "sigmoid":
        return aten.sigmoid_backward(grad, a)
    if kind == "gelu":
        return aten.gelu_backward(grad, z, approximate=approximate)
    return grad


class StackedMLP:
    """Losses and gradients of C chains of an MLP from the chains' stacked parameters.

    ``params[i]`` has shape (C, *shape of parameter i); ``names`` are the parameter names in the same
    order. Raises :class:`Unsupported` if ``model`` is not a chain of Linear layers and element-wise
    activations whose trainable parameters are exactly the Linear ones.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], loss_fn: Callable[..., torch.Tensor]):
        if any(True for _ in model.buffers()):
            raise Unsupported("the model has buffers")
        if any(not p.requires_grad for p in model.parameters()):
            raise Unsupported("the model has frozen parameters")
        self.layers = _layers(model, names)
        self.loss_fn = loss_fn

    def losses_and_grads(self, params: Sequence[torch.Tensor], x: torch.Tensor, targets: tuple,
                         into: Sequence[torch.Tensor] | None = None,
                         scale: float = 1.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-chain losses (C,) and ``into[i] + scale * gradient_i`` for every parameter, in place.

        ``into``: contiguous tensors shaped like ``params`` (default: zeros, so the plain gradients
        come back). The SGLD step passes its noise buffers and ``scale = -epsilon nbeta / 2``.
        """
        into = [torch.zeros_like(p) for p in params] if into is None else list(into)
        with torch.no_grad():
            saved, out = self._forward(params, x, chains=params[0].shape[0])
        logits = out.transpose(1, 2).contiguous()  # (C, B, classes)
        if self.loss_fn in LOGIT_GRADIENTS:
            losses, grad = LOGIT_GRADIENTS[self.loss_fn](logits, *targets)
        else:
            logits.requires_grad_(True)
            with torch.enable_grad():
                losses = torch.stack([self.loss_fn(logits[c], *targets) for c in range(len(logits))])
                (grad,) = torch.autograd.grad(losses.sum(), logits)
        with torch.no_grad():
            self._backward(params, saved, grad.transpose(1, 2), into, scale)
        return losses.detach(), into

    # After the first Linear, activations are kept feature-major, (C, features, B): then the first
    # layer's forward and weight gradient are each ONE matrix product over all chains,
    # Z = Wf x^T + bf and dWf = dZ x with Wf = W.view(C*out, in), and the rest are batched products.
    def _forward(self, params, x, chains):
        saved, a = [], x  # a: the shared minibatch (B, ...) until the first Linear
        fresh = False     # a is a product of ours that nothing else holds (may be overwritten)
        for layer in self.layers:
            if layer.kind == "flatten":
                a = a.flatten(*layer.flatten_dims)
                saved.append(None)
            elif layer.kind == "linear":
                w, b = params[layer.weight], params[layer.bias] if layer.bias is not None else None
                saved.append(a)
                if a.dim() == 2:  # the first Linear: (B, in) -> (C, out, B)
                    rows = w.reshape(chains * w.shape[1], w.shape[2])  # every chain's rows, (C*out, in)
                    z = torch.addmm(b.reshape(-1, 1), rows, a.t()) if b is not None else rows @ a.t()
                    a = z.view(chains, w.shape[1], -1)
                elif a.dim() == 3:
                    a = torch.baddbmm(b.unsqueeze(2), w, a) if b is not None else torch.bmm(w, a)
                else:
                    raise Unsupported("a Linear layer's input is not (batch, features)")
                fresh = True
            else:
                z = a if layer.kind == "gelu" else None  # only GELU's derivative needs its input
                a = _activation(layer.kind, a, layer.gelu_approximate, in_place=fresh)
                saved.append((z, a))
                fresh = False
        if a.dim() != 3:
            raise Unsupported("no Linear layer ran")
        return saved, a

    def _backward(self, params, saved, grad, into, scale):
        """``grad`` = dL/d(model output), (C, out, B); adds ``scale`` x each parameter's gradient to ``into``."""
        for layer, keep in zip(reversed(self.layers), reversed(saved)):
            if layer.kind == "linear":
                if layer.bias is not None:
                    into[layer.bias].add_(grad.sum(2), alpha=scale)
                if keep.dim() == 2:  # the first Linear: one product for all chains, and nothing before it to reach
                    rows = grad.reshape(-1, grad.shape[2])                                      # (C*out, B)
                    into[layer.weight].view(rows.shape[0], -1).addmm_(rows, keep, alpha=scale)  # += dZ x
                    break
                into[layer.weight].baddbmm_(grad, keep.transpose(1, 2), alpha=scale)           # += dz_c a_c^T
                grad = torch.bmm(params[layer.weight].transpose(1, 2), grad)                    # W_c^T dz_c
            elif layer.kind != "flatten":
                z, a = keep
                grad = _activation_backward(layer.kind, grad, z, a, layer.gelu_approximate)
