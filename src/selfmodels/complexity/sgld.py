"""Stochastic gradient Langevin dynamics around trained weights w*, for several chains at once.

For every chain c and step t, with w* the model's trained (trainable) parameters::

    w_{t+1} = w_t - (epsilon / 2) * (nbeta * grad L_batch(w_t) + gamma * (w_t - w*)) + sqrt(epsilon) * noise_scale * xi_t

    epsilon      step size                      nbeta   inverse temperature n*beta
    gamma        localization strength          xi_t    ~ N(0, I), from chain c's own generator
    noise_scale  1 for SGLD; 0 turns the step into plain gradient descent (tests only)

This samples the local tempered posterior ``p(w) ∝ exp(-nbeta L(w) - gamma/2 |w - w*|^2)``.

``sampler="rmsprop_sgld"`` preconditions the step per parameter (preconditioned SGLD, Li et al. 2016,
without its Γ correction term, as devinterp's RMSprop-SGLD), with g_t = grad L_batch(w_t)::

    V_t     = alpha * V_{t-1} + (1 - alpha) * g_t^2              (V_0 = 0; alpha = rmsprop_alpha)
    G_t     = 1 / (sqrt(V_t) + eps)                               (eps = rmsprop_eps)
    w_{t+1} = w_t - (epsilon / 2) * G_t * (nbeta * g_t + gamma * (w_t - w*)) + sqrt(epsilon * G_t) * noise_scale * xi_t

Drift and noise are scaled by the same G_t, so for a G that changes slowly the chain still samples
p(w) (a constant preconditioner leaves the Langevin diffusion's stationary law unchanged); each
parameter's effective step is epsilon * G_t, up to epsilon / eps. With noise_scale = 0 and gamma = 0
the step is ``torch.optim.RMSprop`` with lr = epsilon * nbeta / 2.
``xi_t`` is drawn from a generator seeded with ``seeds[c]``, one parameter tensor after another in
``named_parameters`` order, so every path uses the same noise.

Three ways to compute the gradients of all chains:
- ``stacked``: for a plain MLP (Linear layers and element-wise activations) or our GPT on CPU, every
  chain's layers as a few large (batched) matrix products with the backward written out
  (:mod:`selfmodels.complexity.stacked_mlp`, :mod:`selfmodels.complexity.stacked_gpt`); the fastest on
  small models, where ``vmap``'s per-op overheads and autograd's bookkeeping show.
- ``vmap``: the chains' parameters are stacked along a leading chain dimension and one
  ``torch.func.vmap(functional_call)`` forward runs every chain at once (one batched matmul per layer);
  one backward gives every chain's gradient.
- ``sequential``: one forward/backward per chain. Needed when the forward cannot be vmapped (e.g.
  BatchNorm in train mode updates its running statistics in place).
The update is the same for all three (localization, drift, noise); the stacked path adds its drift
into the freshly drawn noise inside its matrix products, the others in a separate pass.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from selfmodels.complexity.config import PATHS, SAMPLERS  # the choices, beside the settings that name them
from selfmodels.complexity.stacked_gpt import StackedGPT, gpt_of
from selfmodels.complexity.stacked_mlp import StackedMLP, Unsupported

LossFn = Callable[..., torch.Tensor]  # loss_fn(model_output, *targets) -> scalar mean loss


def stacked_chains(model: nn.Module, names: Sequence[str], loss_fn: LossFn) -> StackedMLP | StackedGPT:
    """The stacked path's gradients for ``model``: :class:`StackedGPT` for our GPT (or the LM LLC's wrapper
    around it), :class:`StackedMLP` for anything else (which raises :class:`Unsupported` unless a plain MLP)."""
    try:
        gpt_of(model)
    except Unsupported as not_gpt:
        try:
            return StackedMLP(model, names, loss_fn)
        except Unsupported as not_mlp:
            raise Unsupported(f"not a plain MLP ({not_mlp}) nor our GPT ({not_gpt})") from not_mlp
    return StackedGPT(model, names, loss_fn)


class SGLDChains:
    """``chains`` SGLD chains started at the model's parameters w*, advanced one step per :meth:`step`."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, chains: int, epsilon: float, gamma: float,
                 nbeta: float, seeds: Sequence[int], path: str = "vmap", noise_scale: float = 1.0,
                 stacked: StackedMLP | StackedGPT | None = None, sampler: str = "sgld", rmsprop_alpha: float = 0.99,
                 rmsprop_eps: float = 0.1):
        if path not in PATHS:
            raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if sampler != "sgld" and path == "stacked":  # its fused products add the plain SGLD drift only
            raise Unsupported(f"the stacked path runs plain SGLD only, not {sampler}")
        self.model, self.loss_fn, self.path = model, loss_fn, path
        self.chains = chains
        self.epsilon, self.gamma, self.nbeta, self.noise_scale = epsilon, gamma, nbeta, noise_scale
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in trainable]
        # Frozen parameters and buffers enter the forward as constants shared by every chain.
        self.constants = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        self.constants.update(dict(model.named_buffers()))
        # Train-mode modules (BatchNorm) write their buffers: give each chain its own copy.
        self.chain_constants = [{n: t.clone() for n, t in self.constants.items()} for _ in range(chains)] \
            if model.training else None
        w_star = [p.detach() for _, p in trainable]
        self.w_star = [w.unsqueeze(0).expand(chains, *w.shape) for w in w_star]          # (C, *shape), no copy
        self.params = [w.unsqueeze(0).repeat(chains, *([1] * w.dim())).requires_grad_(True) for w in w_star]
        device = w_star[0].device
        self.noise = [torch.empty_like(p, requires_grad=False) for p in self.params]   # (C, *shape) each
        self.rmsprop_alpha, self.rmsprop_eps = rmsprop_alpha, rmsprop_eps
        # RMSprop-SGLD's running mean of squared gradients V, per chain and parameter (None: plain SGLD).
        self.square_avg = [torch.zeros_like(p, requires_grad=False) for p in self.params] \
            if sampler == "rmsprop_sgld" else None
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        # Raises stacked_mlp.Unsupported (a ValueError) when the model is neither a plain MLP nor our GPT on
        # CPU. ``stacked``: one built before for the same architecture (tracing is not thread-safe; chain
        # groups share it).
        self.stacked = (stacked or stacked_chains(model, self.names, loss_fn)) if path == "stacked" else None

    # -- gradients -------------------------------------------------------------------------------------
    def _chain_loss(self, params: dict, constants: dict, x: torch.Tensor, targets: tuple) -> torch.Tensor:
        return self.loss_fn(functional_call(self.model, (params, constants), (x,)), *targets)

    def _losses_and_grads_vmap(self, x, targets):
        params = dict(zip(self.names, self.params))
        losses = vmap(self._chain_loss, in_dims=(0, None, None, None))(params, self.constants, x, targets)  # (C,)
        # Chain c's loss depends only on chain c's parameters, so d(sum)/dw_c = dL_c/dw_c.
        grads = torch.autograd.grad(losses.sum(), self.params)
        return losses.detach(), list(grads)

    def _losses_and_grads_sequential(self, x, targets):
        losses = torch.empty(self.chains, device=self.params[0].device, dtype=self.params[0].dtype)
        grads = [torch.empty_like(p) for p in self.params]
        for c in range(self.chains):
            leaves = [p[c].detach().requires_grad_(True) for p in self.params]
            constants = self.chain_constants[c] if self.chain_constants is not None else self.constants
            loss = self._chain_loss(dict(zip(self.names, leaves)), constants, x, targets)
            for g, gc in zip(grads, torch.autograd.grad(loss, leaves)):
                g[c].copy_(gc)
            losses[c] = loss.detach()
        return losses, grads

    # -- one step --------------------------------------------------------------------------------------
    def step(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Advance every chain by one SGLD step on ``batch`` = (inputs, *targets); return the losses
        L_batch(w_t) of each chain *before* the step, shape (C,)."""
        x, targets = batch[0], tuple(batch[1:])
        drift = -self.epsilon * self.nbeta / 2
        if self.path == "stacked":  # noise first: the products then add the drift into it directly
            self._draw_noise()
            losses, _ = self.stacked.losses_and_grads(self.params, x, targets, into=self.noise, scale=drift)
            with torch.no_grad():
                self._localize()
                torch._foreach_add_(self.params, self.noise)
            return losses
        if self.path == "vmap":
            losses, grads = self._losses_and_grads_vmap(x, targets)
        else:
            losses, grads = self._losses_and_grads_sequential(x, targets)
        with torch.no_grad():
            if self.square_avg is not None:
                self._preconditioned_update(grads)
                return losses
            self._localize()
            torch._foreach_add_(self.params, grads, alpha=drift)
            if self.noise_scale != 0.0:
                self._draw_noise()
                torch._foreach_add_(self.params, self.noise)
        return losses

    def _preconditioned_update(self, grads: list[torch.Tensor]) -> None:
        """RMSprop-SGLD (module docstring): V <- alpha V + (1 - alpha) g², G = 1 / (sqrt(V) + eps),
        w <- w - (eps/2) G (nbeta g + gamma (w - w*)) + sqrt(eps G) xi."""
        torch._foreach_mul_(self.square_avg, self.rmsprop_alpha)
        torch._foreach_addcmul_(self.square_avg, grads, grads, value=1 - self.rmsprop_alpha)
        precond = torch._foreach_sqrt(self.square_avg)
        torch._foreach_add_(precond, self.rmsprop_eps)
        torch._foreach_reciprocal_(precond)                                  # G, (C, *shape) each
        step = torch._foreach_sub(self.params, self.w_star)                  # w - w*
        torch._foreach_mul_(step, self.gamma)
        torch._foreach_add_(step, grads, alpha=self.nbeta)                   # nbeta g + gamma (w - w*)
        torch._foreach_mul_(step, precond)
        torch._foreach_add_(self.params, step, alpha=-self.epsilon / 2)
        if self.noise_scale != 0.0:
            self._draw_noise()                                               # sqrt(eps) xi
            torch._foreach_sqrt_(precond)
            torch._foreach_mul_(self.noise, precond)                         # sqrt(eps G) xi
            torch._foreach_add_(self.params, self.noise)

    def _localize(self) -> None:
        """w <- w - (eps/2) gamma (w - w*) = lerp(w, w*, eps gamma / 2): one pass."""
        if self.gamma != 0.0:
            torch._foreach_lerp_(self.params, self.w_star, self.epsilon * self.gamma / 2)

    def _draw_noise(self) -> None:
        """noise <- sqrt(eps) * noise_scale * xi; chain c draws from its generator, parameter by parameter."""
        if self.noise_scale == 0.0:
            torch._foreach_zero_(self.noise)
            return
        std = math.sqrt(self.epsilon) * self.noise_scale
        for c, generator in enumerate(self.generators):
            for noise in self.noise:
                noise[c].normal_(0.0, std, generator=generator)

    def parameters_of_chain(self, c: int) -> dict[str, torch.Tensor]:
        """The current parameters of chain ``c`` (copies), by name."""
        return {n: p[c].detach().clone() for n, p in zip(self.names, self.params)}
