"""Every SGLD chain of our GPT at once, with the chains stacked and the backward pass written out.

The chains' parameters carry a leading chain axis, ``W`` (C, out, in), ``b`` (C, out), and every
activation is (C, N, features) with N = B·T the batch's tokens. For C chains on one batch of ids (B, T)::

    embeddings    h_c = E_c[ids] + P_c[:T]                    one gather over all chains
    per block     a = LN(h) (affine per chain),  qkv_c = a_c W_qkv,cᵀ + b_qkv,c         (baddbmm)
                  y = softmax(Q Kᵀ / sqrt(d_head) + M_causal) V   over the merged (C·B) axis
                  h <- h + y W_projᵀ + b_proj;   h <- h + GELU(LN(h) W_fcᵀ + b_fc) W_fc_projᵀ + b_fc_proj
    head          z_c = LN_f(h_c) W_head,cᵀ                   L_c = -mean_n log softmax(z_cn)[y_n]
    backward      dL/dz_c = (softmax(z_c) - onehot(y)) / N,   then for each Linear (out = a Wᵀ + b):
                  dW_c = dout_cᵀ a_c,  db_c = Σ_n dout_cn,  da_c = dout_c W_c   (batched products)
                  LayerNorm, GELU and attention through their aten backward kernels

The attention runs the fused CPU kernel (``_scaled_dot_product_flash_attention_for_cpu`` and its
backward) on the chains and windows merged into one batch axis, so it needs no vmap batching rule;
with ``explicit_attention`` it is written out as batched products (scores, softmax, P V and their
backward). Gradients are added, scaled, into buffers the caller gives (``C <- C + scale A B`` inside
the products), as :mod:`selfmodels.complexity.stacked_mlp` does, so the SGLD step puts its drift
straight into its noise. For the mean cross-entropy (a sum over windows) the batch runs in passes of at
most ``rows_per_pass`` chain tokens, each pass's gradient weighted by its share of the batch, so that
the activations a pass writes are still in cache when it reads them back. Nothing builds an autograd graph; per step this is a few hundred tensor
operations for all chains together, where ``vmap`` plus autograd (or one chain at a time) pays the
dispatcher and the graph for every chain and op.

The numbers equal one-chain-at-a-time autograd through :class:`selfmodels.nets.gpt.GPT` (tested to
1e-10 in float64); only the order of the floating-point sums differs. Models other than our GPT
(or a wrapper that returns its logits unchanged) raise :class:`Unsupported` at construction.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfmodels.complexity.lm_logits import LogitsOf, gpt_logits_explicit_attention, next_token_cross_entropy
from selfmodels.complexity.losses import cross_entropy, cross_entropy_with_logit_gradient
from selfmodels.complexity.stacked_mlp import Unsupported
from selfmodels.nets.gpt import GPT

aten = torch.ops.aten
# Chains x tokens per forward/backward pass: at 1,024 rows a 4d-wide activation of d = 64 (1 MiB) stays in a
# core's L2 cache between the products and element-wise kernels that use it (the quick grid's 2 chains x
# 16 windows x 64 tokens then run as two passes of 8 windows). Measured: benchmarks/lm_llc_batched.py.
ROWS_PER_PASS = 1024
_LN_EPS = 1e-5  # nn.LayerNorm's default, which the GPT uses

# Per block, the parameters' names below ``blocks.{i}.``, in the order the forward uses them.
_BLOCK = ("ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
          "ln2.weight", "ln2.bias", "fc.weight", "fc.bias", "fc_proj.weight", "fc_proj.bias")
_TOP = ("tok_emb.weight", "pos_emb.weight", "ln_f.weight", "ln_f.bias", "lm_head.weight")


def gpt_of(model: nn.Module) -> tuple[GPT, str, bool]:
    """``(gpt, prefix, explicit_attention)`` when ``model``'s forward is our GPT's logits: the GPT itself, or
    the LM LLC's :class:`~selfmodels.complexity.lm_logits.LogitsOf` around it (without ``logits_fn``, or with
    the explicit-attention one); ``prefix`` is the GPT's name inside ``model``. Else :class:`Unsupported`."""
    if type(model) is GPT:  # exact type: a subclass may change the forward
        return model, "", False
    if isinstance(model, LogitsOf) and type(model.model) is GPT:
        if model.logits_fn is None:
            return model.model, "model.", False
        if model.logits_fn is gpt_logits_explicit_attention:
            return model.model, "model.", True
        raise Unsupported("the GPT's logits are taken by a logits_fn of the caller's")
    raise Unsupported(f"{type(model).__name__} is not selfmodels' GPT")


class StackedGPT:
    """Losses and gradients of C chains of our GPT from the chains' stacked parameters.

    ``params[i]`` has shape (C, *shape of parameter i); ``names`` are the parameter names in the same
    order (as ``model.named_parameters()`` gives them). Every GPT parameter must be trainable, on CPU.
    ``loss_fn``: the library's mean cross-entropy (closed-form logit gradient) or any other mean loss
    of (logits (B, T, V), targets (B, T)) (autograd on the logits, chain by chain).
    """

    def __init__(self, model: nn.Module, names: Sequence[str], loss_fn: Callable[..., torch.Tensor],
                 rows_per_pass: int = ROWS_PER_PASS):
        gpt, prefix, self.explicit_attention = gpt_of(model)
        if any(True for _ in model.buffers()):
            raise Unsupported("the model has buffers")
        if any(p.device.type != "cpu" for p in gpt.parameters()):  # its attention kernels are the CPU ones
            raise Unsupported("the stacked GPT runs on CPU only (on GPU, vmap batches the fused attention)")
        index = {name: i for i, name in enumerate(names)}
        wanted = [prefix + n for n in _TOP] + [f"{prefix}blocks.{b}.{n}" for b in range(gpt.cfg.n_layer) for n in _BLOCK]
        if sorted(wanted) != sorted(names):
            raise Unsupported("the trainable parameters are not exactly the GPT's (frozen or extra parameters)")
        self.top = {n: index[prefix + n] for n in _TOP}
        self.blocks = [{n: index[f"{prefix}blocks.{b}.{n}"] for n in _BLOCK} for b in range(gpt.cfg.n_layer)]
        self.n_head, self.block_size = gpt.cfg.n_head, gpt.cfg.block_size
        self.loss_fn = loss_fn
        self.closed_form = loss_fn in (cross_entropy, next_token_cross_entropy)
        if rows_per_pass < 1:
            raise ValueError(f"rows_per_pass must be at least 1, got {rows_per_pass}")
        self.rows_per_pass = rows_per_pass

    def losses_and_grads(self, params: Sequence[torch.Tensor], x: torch.Tensor, targets: tuple,
                         into: Sequence[torch.Tensor] | None = None,
                         scale: float = 1.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-chain losses (C,) and ``into[i] + scale * gradient_i`` for every parameter, in place.

        ``x`` (B, T) token ids, ``targets`` = (ids (B, T),). ``into``: contiguous tensors shaped like
        ``params`` (default: zeros, so the plain gradients come back).
        """
        into = [torch.zeros_like(p) for p in params] if into is None else list(into)
        if x.dim() != 2 or x.shape[1] > self.block_size:
            raise Unsupported(f"ids must be (B, T) with T <= {self.block_size}, got {tuple(x.shape)}")
        with torch.no_grad():
            if self.closed_form and len(targets) == 1:
                return self._mean_cross_entropy(params, x, targets[0], into, scale), into
            saved, logits = self._forward(params, x)                       # logits (C, N, V)
            losses, grad = self._autograd_logit_gradient(logits, targets)
            self._backward(params, x, saved, grad, into, scale)
        return losses, into

    # -- loss --------------------------------------------------------------------------------------
    def _mean_cross_entropy(self, params, x, y, into, scale):
        """The mean cross-entropy's losses (C,), its gradients added into ``into``. The loss is a sum over
        windows, so windows go in passes of at most ``rows_per_pass`` chain tokens, each pass's mean and
        gradient weighted by its share of the batch (its activations then stay in cache)."""
        C, B, T = params[0].shape[0], x.shape[0], x.shape[1]
        per_pass = max(1, self.rows_per_pass // (C * T))
        losses = torch.zeros(C, dtype=params[0].dtype, device=params[0].device)
        for start in range(0, B, per_pass):
            xs, ys = x[start:start + per_pass], y[start:start + per_pass]
            share = xs.shape[0] / B
            saved, logits = self._forward(params, xs)                     # logits (C, n, V)
            part, grad = cross_entropy_with_logit_gradient(logits, ys.reshape(-1))  # (softmax - onehot) / n
            losses.add_(part, alpha=share)
            self._backward(params, xs, saved, grad, into, scale * share)
        return losses

    def _autograd_logit_gradient(self, logits, targets):
        """L (C,) and dL/dlogits (C, N, V) for any other loss, by autograd on the logits, chain by chain."""
        C, B = logits.shape[0], targets[0].shape[0]
        logits = logits.view(C, B, -1, logits.shape[-1]).requires_grad_(True)  # (C, B, T, V)
        with torch.enable_grad():
            losses = torch.stack([self.loss_fn(logits[c], *targets) for c in range(C)])
            (grad,) = torch.autograd.grad(losses.sum(), logits)
        return losses.detach(), grad.reshape(C, -1, grad.shape[-1])

    # -- forward -----------------------------------------------------------------------------------
    def _forward(self, params, x):
        C = params[0].shape[0]
        B, T = x.shape
        ids = x.reshape(-1)
        p = {n: params[i] for n, i in self.top.items()}
        h = p["tok_emb.weight"][:, ids].view(C, B, T, -1).add_(p["pos_emb.weight"][:, None, :T])  # (C, B, T, d)
        h = h.view(C, B * T, -1)                                                              # (C, N, d)
        saved = []
        for block in self.blocks:
            w = {n: params[i] for n, i in block.items()}
            s = {"h": h}
            s["ln1"], a = _layer_norm(h, w["ln1.weight"], w["ln1.bias"])
            s["a1"] = a
            qkv = _linear(a, w["attn.qkv.weight"], w["attn.qkv.bias"])                         # (C, N, 3d)
            s["qkv"] = qkv
            s["attn"], y = self._attention(qkv, C, B, T)                                       # y (C, N, d)
            s["y"] = y
            h = _linear(y, w["attn.proj.weight"], w["attn.proj.bias"]).add_(h)
            s["h_mid"] = h
            s["ln2"], a = _layer_norm(h, w["ln2.weight"], w["ln2.bias"])
            s["a2"] = a
            z = _linear(a, w["fc.weight"], w["fc.bias"])                                       # (C, N, 4d)
            g = F.gelu(z)
            s["z"], s["g"] = z, g
            h = _linear(g, w["fc_proj.weight"], w["fc_proj.bias"]).add_(h)
            saved.append(s)
        top = {"h": h}
        top["ln_f"], a = _layer_norm(h, p["ln_f.weight"], p["ln_f.bias"])
        top["a"] = a
        saved.append(top)
        return saved, torch.bmm(a, p["lm_head.weight"].transpose(1, 2))                     # (C, N, V)

    def _heads(self, qkv, C, B, T):
        """q, k, v as (C·B, H, T, d_head) views of qkv (C, N, 3d)."""
        d = qkv.shape[-1] // 3
        parts = qkv.view(C * B, T, 3, self.n_head, d // self.n_head)
        return [parts[:, :, i].transpose(1, 2) for i in range(3)]

    def _attention(self, qkv, C, B, T):
        """(what the backward needs, y (C, N, d)) for the causal attention of every chain and window."""
        q, k, v = self._heads(qkv, C, B, T)
        if self.explicit_attention:
            scale = 1.0 / math.sqrt(q.shape[-1])
            causal = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)   # M, (T, T)
            probs = torch.matmul(q * scale, k.transpose(-2, -1)).add_(causal).softmax(-1)       # (C·B, H, T, T)
            out = torch.matmul(probs, v)                                                      # (C·B, H, T, dh)
            kept = probs
        else:
            out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)
            kept = (out, lse)
        return kept, out.transpose(1, 2).reshape(C, B * T, -1)

    def _attention_backward(self, s, dy, C, B, T):
        """dL/dqkv (C, N, 3d) from dL/dy (C, N, d)."""
        q, k, v = self._heads(s["qkv"], C, B, T)
        H = self.n_head
        dout = dy.view(C * B, T, H, -1).transpose(1, 2)                                        # (C·B, H, T, dh)
        if self.explicit_attention:
            probs = s["attn"]
            scale = 1.0 / math.sqrt(q.shape[-1])
            dv = torch.matmul(probs.transpose(-2, -1), dout)
            dprobs = torch.matmul(dout, v.transpose(-2, -1))
            dscores = aten._softmax_backward_data(dprobs, probs, -1, probs.dtype)               # (C·B, H, T, T)
            dq = torch.matmul(dscores, k).mul_(scale)
            dk = torch.matmul(dscores.transpose(-2, -1), q).mul_(scale)
        else:
            out, lse = s["attn"]
            dq, dk, dv = aten._scaled_dot_product_flash_attention_for_cpu_backward(
                dout, q, k, v, out, lse, 0.0, True)
        dqkv = torch.stack([t.transpose(1, 2) for t in (dq, dk, dv)], dim=2)                    # (C·B, T, 3, H, dh)
        return dqkv.view(C, B * T, -1)

    # -- backward ----------------------------------------------------------------------------------
    def _backward(self, params, x, saved, grad, into, scale):
        """``grad`` = dL/dlogits (C, N, V); adds ``scale`` x each parameter's gradient to ``into``."""
        C = params[0].shape[0]
        B, T = x.shape
        top = saved[-1]
        i = self.top
        into[i["lm_head.weight"]].baddbmm_(grad.transpose(1, 2), top["a"], alpha=scale)        # dW = dzᵀ a
        da = torch.bmm(grad, params[i["lm_head.weight"]])                                     # (C, N, d)
        dh = _layer_norm_backward(da, top["h"], top["ln_f"], params[i["ln_f.weight"]],
                                  into[i["ln_f.weight"]], into[i["ln_f.bias"]], scale)
        for block, s in zip(reversed(self.blocks), reversed(saved[:-1])):
            w = {n: params[j] for n, j in block.items()}
            g = {n: into[j] for n, j in block.items()}
            dg = _linear_backward(dh, s["g"], w["fc_proj.weight"], g["fc_proj.weight"], g["fc_proj.bias"], scale)
            dz = aten.gelu_backward(dg, s["z"])
            da = _linear_backward(dz, s["a2"], w["fc.weight"], g["fc.weight"], g["fc.bias"], scale)
            dh = dh + _layer_norm_backward(da, s["h_mid"], s["ln2"], w["ln2.weight"], g["ln2.weight"], g["ln2.bias"], scale)
            dy = _linear_backward(dh, s["y"], w["attn.proj.weight"], g["attn.proj.weight"], g["attn.proj.bias"], scale)
            dqkv = self._attention_backward(s, dy, C, B, T)
            da = _linear_backward(dqkv, s["a1"], w["attn.qkv.weight"], g["attn.qkv.weight"], g["attn.qkv.bias"], scale)
            dh = dh + _layer_norm_backward(da, s["h"], s["ln1"], w["ln1.weight"], g["ln1.weight"], g["ln1.bias"], scale)
        into[i["tok_emb.weight"]].index_add_(1, x.reshape(-1), dh, alpha=scale)                # dE[id] += dh
        into[i["pos_emb.weight"]][:, :T].add_(dh.view(C, B, T, -1).sum(1), alpha=scale)


def _linear(a, weight, bias):
    """a (C, N, in) Wᵀ + b: (C, N, out) for W (C, out, in), b (C, out)."""
    return torch.baddbmm(bias.unsqueeze(1), a, weight.transpose(1, 2))


def _linear_backward(dout, a, weight, dweight, dbias, scale):
    """Adds scale·doutᵀ a to dweight and scale·Σ_n dout to dbias; returns dL/da = dout W (C, N, in)."""
    dbias.add_(dout.sum(1), alpha=scale)
    dweight.baddbmm_(dout.transpose(1, 2), a, alpha=scale)
    return torch.bmm(dout, weight)


def _layer_norm(h, weight, bias):
    """LN(h) with chain c's affine: ((xhat, mean, rstd), xhat·w_c + b_c), xhat = (h - mean) rstd."""
    xhat, mean, rstd = aten.native_layer_norm(h, [h.shape[-1]], None, None, _LN_EPS)
    return (xhat, mean, rstd), torch.addcmul(bias.unsqueeze(1), xhat, weight.unsqueeze(1))


def _layer_norm_backward(da, h, kept, weight, dweight, dbias, scale):
    """Adds scale·Σ_n da·xhat to dweight and scale·Σ_n da to dbias; returns dL/dh (C, N, d)."""
    xhat, mean, rstd = kept
    dweight.add_((da * xhat).sum(1), alpha=scale)
    dbias.add_(da.sum(1), alpha=scale)
    dxhat = da * weight.unsqueeze(1)
    return aten.native_layer_norm_backward(dxhat, h, [h.shape[-1]], mean, rstd, None, None, [True, False, False])[0]
