"""A nanoGPT-style GPT, for training and for forward self-models (as a subject: selfmodels.subjects.gpt).

Architecture: token + learned position embeddings; ``n_layer`` pre-LN blocks
(``h = h + Attn(LN(h))``, ``h = h + MLP(LN(h))`` with a fused QKV projection and a 4x GELU MLP);
final LayerNorm; an untied LM head. Weights start N(0, 0.02), biases and LayerNorm shifts zero; no
dropout.

The pieces of the forward pass (:meth:`GPT.embed`, :meth:`GPT.run_blocks`, :meth:`GPT.head`) are public so
that :class:`selfmodels.subjects.gpt.GPTSubject` can observe the model as a subject (residuals by layer
index, early exit, splitting, splicing), the one interface every forward self-model works through.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfmodels.errors import require
from selfmodels.nets.config import GPTConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # fused Q, K, V
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, return_attention: bool = False, explicit_attention: bool = False):
        """(B, T, d) -> (B, T, d); with ``return_attention``, also the weights (B, H, T, T).

        By default ``y = softmax(mask(Q Kᵀ / sqrt(d_head))) V`` runs in the fused kernel
        (``F.scaled_dot_product_attention``). With ``return_attention`` or ``explicit_attention`` it is
        computed in plain tensor ops (products, mask, softmax), which agree with the fused kernel up to
        float rounding. ``explicit_attention`` is for ``torch.func.vmap``: it batches these ops over its
        leading dimension, where the fused CPU kernel has no batching rule and is run once per element.
        """
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, dh)
        if return_attention:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.n_head)  # (B, H, T, T)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            attn = scores.masked_fill(mask, float("-inf")).softmax(-1)  # (B, H, T, T)
            y = attn @ v  # (B, H, T, dh)
        elif explicit_attention:
            y = explicit_causal_attention(q, k, v)  # (B, H, T, dh)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, dh)
        y = self.proj(y.transpose(1, 2).reshape(B, T, d))  # (B, T, d)
        return (y, attn) if return_attention else y


def explicit_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(Q Kᵀ / sqrt(d_head) + M) V`` with M[i, j] = -inf for j > i (causal), else 0, in plain tensor
    ops: q, k, v (..., T, d_head) -> (..., T, d_head). The scale goes into Q before the product."""
    T, dh = q.shape[-2], q.shape[-1]
    causal = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)  # M, (T, T)
    scores = (q * (1.0 / math.sqrt(dh))) @ k.transpose(-2, -1) + causal  # (..., T, T)
    return scores.softmax(-1) @ v  # (..., T, dh)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.fc_proj = nn.Linear(4 * cfg.d_model, cfg.d_model)

    def forward(self, h: torch.Tensor, return_attention: bool = False, explicit_attention: bool = False):
        """(B, T, d) -> (B, T, d); with ``return_attention``, also the attention weights (B, H, T, T);
        ``explicit_attention``: see :meth:`CausalSelfAttention.forward`."""
        if return_attention:
            a, attn = self.attn(self.ln1(h), True)
        else:
            a, attn = self.attn(self.ln1(h), explicit_attention=explicit_attention), None
        h = h + a  # (B, T, d)
        h = h + self.fc_proj(F.gelu(self.fc(self.ln2(h))))  # (B, T, d)
        return (h, attn) if return_attention else h


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    # --- pieces of the forward pass ---------------------------------------------------------------
    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings (the residual entering block 0): (B, T) -> (B, T, d)."""
        T = idx.shape[1]
        require(T <= self.cfg.block_size, f"sequence of {T} tokens is longer than the GPT's context {self.cfg.block_size}")
        return self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))

    def run_blocks(self, h: torch.Tensor, start: int, stop: int, return_attention: bool = False,
                   explicit_attention: bool = False):
        """Blocks ``start .. stop-1`` applied to the residual ``h`` (B, T, d).

        With ``return_attention``, returns ``(h, patterns)``: one (B, H, T, T) attention tensor per block run.
        ``explicit_attention``: attention in plain tensor ops, not the fused kernel (for ``torch.func.vmap``;
        see :meth:`CausalSelfAttention.forward`).
        """
        patterns = []
        for block in self.blocks[start:stop]:
            if return_attention:
                h, attn = block(h, True)
                patterns.append(attn)
            else:
                h = block(h, explicit_attention=explicit_attention)
        return (h, patterns) if return_attention else h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and LM head: (B, T, d) -> logits (B, T, V)."""
        return self.lm_head(self.ln_f(h))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_attention: bool = False,
                explicit_attention: bool = False):
        """Logits (B, T, V); with ``targets``, also the mean next-token cross-entropy; with
        ``return_attention``, also every block's attention weights (a list of (B, H, T, T)), last.

        ``explicit_attention`` computes attention in plain tensor ops instead of the fused kernel, equal up
        to float rounding: for running under ``torch.func.vmap`` (e.g. the LLC's SGLD chains,
        :func:`selfmodels.complexity.lm_llc.lm_llc`), which batches those ops and not the fused CPU kernel.
        """
        h = self.embed(idx)
        if return_attention:
            h, patterns = self.run_blocks(h, 0, self.cfg.n_layer, return_attention=True)
        else:
            h = self.run_blocks(h, 0, self.cfg.n_layer, explicit_attention=explicit_attention)
        logits = self.head(h)
        out = (logits,) if targets is None else (logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten()))
        if return_attention:
            out = out + (patterns,)
        return out[0] if len(out) == 1 else out

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, blocks: int | None = None, head: bool = True) -> int:
        """Forward FLOPs per token (2 per weight, plus attention products at average causal length)."""
        c = self.cfg
        n = c.n_layer if blocks is None else blocks
        per_block = 2 * 12 * c.d_model * c.d_model + 2 * 2 * (c.block_size // 2) * c.d_model
        return n * per_block + (2 * c.d_model * c.vocab_size if head else 0)
