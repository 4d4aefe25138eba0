"""Stochastic gradient Langevin dynamics around trained weights w*, for several chains at once.

For every chain c and step t, with w* the model's trained (trainable) parameters::

    w_{t+1} = w_t - (epsilon / 2) * (nbeta * grad L_batch(w_t) + gamma * (w_t - w*)) + sqrt(epsilon) * noise_scale * xi_t

    epsilon      step size                      nbeta   inverse temperature n*beta
    gamma        localization strength          xi_t    ~ N(0, I), from chain c's own generator
    noise_scale  1 for SGLD; 0 turns the step into plain gradient descent (tests only)

This samples the local tempered posterior ``p(w) ∝ exp(-nbeta L(w) - gamma/2 |w - w*|^2)``.
``xi_t`` is drawn as one flat vector over all trainable parameters (in ``named_parameters`` order)
from a generator seeded with ``seeds[c]``, so the batched and the sequential paths use the same noise.

Two ways to compute the gradients of all chains:
- ``vmap``: the chains' parameters are stacked along a leading chain dimension and one
  ``torch.func.vmap(functional_call)`` forward runs every chain at once (one batched matmul per layer);
  one backward gives every chain's gradient.
- ``sequential``: one forward/backward per chain. Needed when the forward cannot be vmapped (e.g.
  BatchNorm in train mode updates its running statistics in place).
The parameter update is the same code for both.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

LossFn = Callable[..., torch.Tensor]  # loss_fn(model_output, *targets) -> scalar mean loss


class SGLDChains:
    """``chains`` SGLD chains started at the model's parameters w*, advanced one step per :meth:`step`."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, chains: int, epsilon: float, gamma: float,
                 nbeta: float, seeds: Sequence[int], path: str = "vmap", noise_scale: float = 1.0):
        if path not in ("vmap", "sequential"):
            raise ValueError(f"path must be 'vmap' or 'sequential', got {path!r}")
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
        self.numel = sum(w.numel() for w in w_star)
        device, dtype = w_star[0].device, w_star[0].dtype
        self.noise = torch.empty(chains, self.numel, device=device, dtype=dtype)       # (C, P)
        self.noise_views, start = [], 0
        for w in w_star:  # per-parameter views (C, *shape) into the flat noise
            self.noise_views.append(self.noise[:, start:start + w.numel()].unflatten(1, w.shape))
            start += w.numel()
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

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
        losses = torch.empty(self.chains, device=self.noise.device, dtype=self.noise.dtype)
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
        if self.path == "vmap":
            losses, grads = self._losses_and_grads_vmap(x, targets)
        else:
            losses, grads = self._losses_and_grads_sequential(x, targets)
        eps = self.epsilon
        with torch.no_grad():
            if self.gamma != 0.0:  # w - (eps/2) gamma (w - w*) = lerp(w, w*, eps gamma / 2): one pass
                torch._foreach_lerp_(self.params, self.w_star, eps * self.gamma / 2)
            torch._foreach_add_(self.params, grads, alpha=-eps * self.nbeta / 2)
            if self.noise_scale != 0.0:  # sqrt(eps) * noise_scale * xi, the scale applied while drawing
                std = math.sqrt(eps) * self.noise_scale
                for c, generator in enumerate(self.generators):
                    self.noise[c].normal_(0.0, std, generator=generator)
                torch._foreach_add_(self.params, self.noise_views)
        return losses

    def parameters_of_chain(self, c: int) -> dict[str, torch.Tensor]:
        """The current parameters of chain ``c`` (copies), by name."""
        return {n: p[c].detach().clone() for n, p in zip(self.names, self.params)}
