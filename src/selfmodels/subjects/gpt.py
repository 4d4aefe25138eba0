"""Our nanoGPT-style GPT (:mod:`selfmodels.nets.gpt`) as a subject.

Its blocks are ``h = h + Attn(LN1(h)); h = h + MLP(LN2(h))`` with a fused QKV projection, so the per-head
parts are computed here from the block's own weights (the fused attention kernel does not expose them).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selfmodels.nets.gpt import GPT
from selfmodels.subjects.base import EMBED, WEIGHTS_HASH, Subject, weights_digest, weights_fingerprint
from selfmodels.subjects.weights import fused_qkv_heads, head_writes


class GPTSubject(Subject):
    """A :class:`~selfmodels.nets.gpt.GPT` as a subject; ``weights`` is the safetensors file it was loaded from (its
    directory is the subject's ``id``), ``tokenizer`` the one its token ids come from (our BPE; optional). As for every
    subject, ``weights_sha256`` is the digest of the weights in memory
    (:func:`~selfmodels.subjects.base.weights_digest`), never the file's hash."""

    family = "gpt"

    def __init__(self, gpt: GPT, weights: Path | None = None, name: str = "gpt", tokenizer=None):
        self.model, self.gpt, self.weights, self.name = gpt, gpt, None if weights is None else Path(weights), name
        self.tokenizer = tokenizer
        c = gpt.cfg
        self.n_layers, self.d_model, self.n_heads, self.n_kv_heads = c.n_layer, c.d_model, c.n_head, c.n_head
        self.d_head, self.vocab_size, self.context = c.d_model // c.n_head, c.vocab_size, c.block_size
        self._identity: tuple | None = None  # (weights_fingerprint, weights_digest)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.gpt.blocks

    def _run_trunk(self, ids: torch.Tensor) -> None:
        self.gpt.run_blocks(self.gpt.embed(ids), 0, self.n_layers)

    def _final(self, h: torch.Tensor) -> torch.Tensor:
        return self.gpt.head(h)

    def source_info(self) -> dict:
        """``id`` (the weight file's directory, else ``<name> (in memory)``), ``revision`` None, ``weights_sha256``:
        the digest of the weights in memory, kept while no weight moves or is written in place."""
        fingerprint = weights_fingerprint(self.gpt)
        if self._identity is None or self._identity[0] != fingerprint:
            self._identity = (fingerprint, weights_digest(self.gpt))
        origin = str(self.weights.parent) if self.weights is not None else f"{self.name} (in memory)"
        return {"id": origin, "revision": None, "weights_sha256": self._identity[1], "weights_hash": WEIGHTS_HASH}

    def head_weights(self, k: int) -> list[dict[str, torch.Tensor]]:
        self.check_index(k)
        b = self.blocks[k]
        return fused_qkv_heads(b.attn.qkv.weight, b.attn.proj.weight, b.ln1.weight, self.n_heads, self.d_head)

    def block_parts(self, ids: torch.Tensor, k: int, attention: bool = True) -> dict[str, torch.Tensor]:
        self.check_index(k)
        if k == EMBED:
            raise ValueError("block_parts needs a block index (0 or more), not the embeddings")
        block = self.blocks[k]
        h = self.residuals(ids, [k - 1])[k - 1]  # (B, T, d)
        B, T, d = h.shape
        q, key, v = block.attn.qkv(block.ln1(h)).split(d, dim=-1)
        q, key, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, key, v))  # (B, H, T, dh)
        scores = q @ key.transpose(-2, -1) / math.sqrt(self.d_head)  # (B, H, T, T)
        mask = torch.ones(T, T, dtype=torch.bool, device=h.device).triu(1)
        pattern = scores.masked_fill(mask, float("-inf")).softmax(-1)  # (B, H, T, T)
        z = (pattern @ v).transpose(1, 2).reshape(B, T, d)  # (B, T, H*dh), the projection's input
        heads = head_writes(z, block.attn.proj.weight, self.n_heads, self.d_head)  # (B, T, H, d)
        attn_out = block.attn.proj(z)  # (B, T, d)
        mlp_out = block.fc_proj(F.gelu(block.fc(block.ln2(h + attn_out))))  # (B, T, d)
        parts = {"input": h, "output": block(h), "heads": heads, "attn_bias": block.attn.proj.bias,
                 "attn_out": attn_out, "mlp_out": mlp_out}
        if attention:
            parts["attention"] = pattern
        return {name: t.detach().float() for name, t in parts.items()}
