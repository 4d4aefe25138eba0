"""The LLC of a causal language model under its mean next-token cross-entropy.

For token windows ``x`` (N, T+1), inputs ``x[:, :-1]`` and targets ``x[:, 1:]``, the loss of a batch of
B windows is the mean over its B·T predicted tokens::

    L_batch(w) = -1/(B T) * sum_{b, t} log softmax(f_w(x_b[:T]))_t[x_b[t+1]]

and the estimate is the classifier path's (:mod:`selfmodels.complexity.llc`):
``λ̂ = nβ (E_{w ~ p_local}[L_batch(w)] - L(w*))`` with the same SGLD (or RMSprop-SGLD) chains, the
same L(w*), the same flags.

**n counts tokens.** The likelihood of a window under a causal LM is the product of its T next-token
conditionals, so the tempered posterior is ``exp(-β Σ_tokens ℓ_t(w))`` = ``exp(-nβ L_n(w))`` with
L_n the per-token mean and n the number of predicted tokens. The default inverse temperature is
therefore ``nβ = n / ln n`` with n = b·T, the tokens of one minibatch of b windows (or N·T, the
dataset's tokens, with ``use_dataset_size_for_nbeta``): β = 1 / ln n is the WBIC temperature for n
samples, and the samples of a next-token likelihood are its tokens. Counting windows instead would
make nβ about T times smaller, a posterior T times hotter than the per-token loss defines, in which
the localization γ rather than the loss shapes the chains, and the estimate would depend on the
context length. devinterp's ``default_nbeta`` counts the loader's batch size in windows, so pass
``nbeta`` explicitly when comparing with it.

**Chains of our GPT.** On CPU, ``batched="auto"`` runs our GPT's chains on the ``stacked`` path
(:mod:`selfmodels.complexity.stacked_gpt`): the chains' weights stacked along a leading axis, every
Linear one batched product, the fused attention kernel over the merged chains x windows axis, the
backward written out (no autograd graph). On the vmap path the fused kernel
(``F.scaled_dot_product_attention``) has no vmap batching rule on CPU and runs once per chain;
``explicit_attention=True`` has the GPT compute ``softmax(Q Kᵀ / sqrt(d_head) + M_causal) V`` in plain
tensor ops instead (:meth:`selfmodels.nets.gpt.GPT.forward`; the stacked path then writes that form out
too). All agree up to float rounding (tests/complexity/test_lm_llc_stacked.py,
test_lm_llc_batched.py); timings: ``benchmarks/lm_llc_batched.py`` and docs/llc.md, "Language models".
Other models (Hugging Face LMs, wrappers such as the closed loop) take the vmap path as before.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from selfmodels.complexity.llc import LLCConfig, LLCResult, default_nbeta, estimate_llc
from selfmodels.complexity.lm_logits import LogitsFn, LogitsOf, gpt_logits_explicit_attention, next_token_cross_entropy
from selfmodels.configs import to_dict
from selfmodels.errors import require
from selfmodels.nets.gpt import GPT


def lm_token_count(windows: torch.Tensor, config: LLCConfig) -> int:
    """n in the default nβ = n / ln n: predicted tokens per minibatch (b·T), or in the dataset (N·T)."""
    n_windows, tokens_per_window = windows.shape[0], windows.shape[1] - 1
    sequences = n_windows if config.use_dataset_size_for_nbeta else min(config.batch_size, n_windows)
    return sequences * tokens_per_window


def _check_windows(model: LogitsOf, windows: torch.Tensor, device: torch.device) -> None:
    """Refuse windows that cannot be split into inputs and targets, or whose ids the model has no logit for."""
    require(isinstance(windows, torch.Tensor), f"LM LLC windows must be a tensor of token ids, got {type(windows).__name__}")
    require(not windows.is_floating_point() and not windows.is_complex() and windows.dtype != torch.bool,
            f"LM LLC windows must hold integer token ids, got dtype {windows.dtype}")
    require(windows.dim() == 2, f"LM LLC windows must be (N, T+1) token ids, got shape {tuple(windows.shape)}")
    require(windows.shape[0] >= 1, "LM LLC windows are empty: give at least one window")
    require(windows.shape[1] >= 2, f"LM LLC windows need T+1 >= 2 tokens each (inputs x[:, :-1], targets x[:, 1:]); "
            f"got windows of {windows.shape[1]} token(s)")
    low = int(windows.min())
    require(low >= 0, f"LM LLC windows hold a negative token id ({low})")
    training = model.training
    model.eval()  # the probe must not move the user's buffers (e.g. running statistics)
    try:
        with torch.no_grad():  # one probe of id 0 gives the vocabulary size without reading the user's ids
            probe = model(torch.zeros(1, windows.shape[1] - 1, dtype=torch.long, device=device))
    finally:
        model.train(training)
    require(isinstance(probe, torch.Tensor) and probe.dim() == 3 and tuple(probe.shape[:2]) == (1, windows.shape[1] - 1),
            f"the LM must return logits (B, T, V) for ids (B, T) (or an output with .logits, or pass logits_fn); "
            f"got {tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__} for ids (1, {windows.shape[1] - 1})")
    vocab = probe.shape[-1]
    high = int(windows.max())
    require(high < vocab, f"LM LLC windows hold token id {high}, outside the model's vocabulary of {vocab} logits")


def lm_llc(model: nn.Module, windows: torch.Tensor, config: LLCConfig, device: str | torch.device = "cpu",
           progress: bool = False, logits_fn: LogitsFn | None = None, explicit_attention: bool = False) -> LLCResult:
    """Estimate the LLC of a causal LM's current weights w* under mean next-token cross-entropy.

    ``windows`` (N, T+1) token ids: inputs ``windows[:, :-1]``, targets ``windows[:, 1:]``, batched by
    ``config.batch_size`` windows in a seeded order. ``model(ids)`` returns logits (B, T, V) or an
    output with ``.logits``; ``logits_fn(model, ids)`` overrides that. nβ defaults to n / ln n with n
    the predicted tokens per batch (see the module docstring). Chains run as in :func:`estimate_llc`
    (``batched``: vmap where the model allows, else sequential); the model is not modified.
    ``explicit_attention`` (our :class:`~selfmodels.nets.gpt.GPT` only): attention in plain tensor ops that
    vmap batches over the chains, instead of the fused kernel that vmap runs chain by chain on CPU (module
    docstring); on every path (stacked included), so ``batched="sequential"`` with it is the
    one-chain-at-a-time reference.
    ``result.diagnostics`` adds ``nbeta_counts`` ("tokens"), ``nbeta_n``, ``tokens_per_window``.
    """
    config.validate()
    require(isinstance(model, nn.Module), f"lm_llc needs a torch.nn.Module, got {type(model).__name__}")
    if explicit_attention:
        require(isinstance(model, GPT), f"lm_llc explicit_attention=True needs selfmodels' GPT "
                f"(selfmodels.nets.gpt.GPT), got {type(model).__name__}; drop the flag for other models")
        require(logits_fn is None, "lm_llc: give either explicit_attention=True or logits_fn, not both "
                "(explicit_attention sets how the GPT's logits are taken)")
        logits_fn = gpt_logits_explicit_attention
    wrapped = LogitsOf(model, logits_fn)
    _check_windows(wrapped, windows, next((p.device for p in model.parameters()), torch.device("cpu")))
    windows = windows.long()
    n = lm_token_count(windows, config)
    nbeta = float(config.nbeta) if config.nbeta is not None else default_nbeta(n)
    result = estimate_llc(wrapped, (windows[:, :-1], windows[:, 1:]), next_token_cross_entropy,
                          dataclasses.replace(config, nbeta=nbeta), device=device, progress=progress)
    # The config as the caller gave it (nbeta unset means "tokens / ln tokens"), with the value used.
    result.config = {**to_dict(config), "nbeta_used": nbeta, "nbeta_counts": "tokens"}
    result.diagnostics.update(nbeta_counts="tokens", nbeta_n=n, tokens_per_window=int(windows.shape[1] - 1),
                              num_windows=int(windows.shape[0]))
    return result


__all__ = ["lm_llc", "LogitsOf", "LogitsFn", "next_token_cross_entropy", "lm_token_count", "gpt_logits_explicit_attention"]
