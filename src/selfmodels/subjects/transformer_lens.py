"""A TransformerLens ``HookedTransformer`` as a subject (the optional extra ``pip install 'selfmodels[transformer-lens]'``).

TransformerLens 3.x (``transformer-lens>=3.9,<4``): its 4.0 removed ``HookedTransformer`` for ``TransformerBridge``,
which wraps a Hugging Face model (open that model itself with ``selfmodels.open_subject(model, tokenizer)``).

The layer index is TransformerLens' own: index -1 is ``blocks.0.hook_resid_pre``, k is ``blocks.{k}.hook_resid_post``.
The blocks are ``model.blocks`` (each ``TransformerBlock(resid_pre, shortformer_pos_embed, past_kv_cache_entry,
attention_mask) -> resid_post``); the trunk is ``model(ids, stop_at_layer=n_layers)`` (no final norm, no unembedding)
and the logits after the last residual ``model(h, start_at_layer=n_layers)`` (``ln_final`` and ``unembed``). A block's
parts come from its hook points: ``attn.hook_z`` (B, T, H, d_head) through ``W_O`` gives each head's write,
``hook_attn_out`` / ``hook_mlp_out`` the attention and MLP writes, ``attn.hook_pattern`` the attention weights.
Observation runs in eval mode, modes restored. transformer_lens is never imported here: the model object brings it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from selfmodels.errors import UserError
from selfmodels.subjects.base import (EMBED, WEIGHTS_HASH, Subject, _StopForward, hooks, weights_digest,
                                      weights_fingerprint)

FAMILY = "transformer_lens"


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode within the block; every module's own mode restored after, also on an exception."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


class HookedSubject(Subject):
    """A ``HookedTransformer`` as a subject. ``tokenizer`` defaults to the model's own (None for a model built from
    a config); ``name`` to ``cfg.model_name``."""

    family = FAMILY

    def __init__(self, model: nn.Module, tokenizer=None, name: str | None = None):
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(model, "blocks") or not hasattr(cfg, "n_layers"):
            raise UserError(f"a HookedTransformer subject needs a transformer_lens.HookedTransformer, not {type(model).__name__}")
        if getattr(cfg, "positional_embedding_type", None) == "shortformer":
            raise UserError(f"{cfg.model_name}: shortformer positional embeddings are added inside every block's attention, "
                            "so a residual alone cannot restart the model: not supported as a subject")
        self.model, self.cfg = model, cfg
        self.name = name or cfg.model_name
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        self.n_layers, self.d_model, self.n_heads, self.d_head = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head
        self.n_kv_heads = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        self.vocab_size = getattr(cfg, "d_vocab_out", None) or cfg.d_vocab
        self.context = cfg.n_ctx
        self._identity: tuple | None = None  # (weights_fingerprint, weights_digest)

    # --- structure ---------------------------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.blocks

    @property
    def device(self) -> torch.device:
        return self.model.embed.W_E.device

    def check_ids(self, ids: torch.Tensor) -> None:
        rows = self.cfg.d_vocab
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= rows):
            raise UserError(f"token ids of {self.name} must lie in 0..{rows - 1} (its embedding has {rows} rows), got "
                            f"ids from {int(ids.min())} to {int(ids.max())}: use the model's own tokenizer")

    # --- running -----------------------------------------------------------------------------------
    def _run_trunk(self, ids: torch.Tensor) -> None:
        self.check_ids(ids)
        with eval_mode(self.model):
            self.model(ids, stop_at_layer=self.n_layers)

    def _final(self, h: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.model):
            return self.model(h.to(self.dtype), start_at_layer=self.n_layers).float()

    def run_blocks(self, h: torch.Tensor, start: int, stop: int, block_args: tuple = ((), {})) -> torch.Tensor:
        with eval_mode(self.model):
            return super().run_blocks(h, start, stop, block_args)

    @contextmanager
    def skip(self, source: int, target: int) -> Iterator["HookedSubject"]:
        with eval_mode(self.model), super().skip(source, target):
            yield self

    @contextmanager
    def splice(self, predictor, source: int, target: int) -> Iterator["HookedSubject"]:
        """:meth:`Subject.splice` for whole-sequence forward passes (TransformerLens' KV-cached ``generate`` passes
        its blocks a cache but no positions, so a splice cannot tell a continuation: use ``use_past_kv_cache=False``)."""
        with eval_mode(self.model), super().splice(predictor, source, target):
            yield self

    # --- source ------------------------------------------------------------------------------------
    def source_info(self) -> dict:
        """``id`` (``cfg.model_name``), ``revision`` None, ``weights_sha256`` the digest of the weights in memory."""
        fingerprint = weights_fingerprint(self.model)
        if self._identity is None or self._identity[0] != fingerprint:
            self._identity = (fingerprint, weights_digest(self.model))
        return {"id": self.cfg.model_name, "revision": None, "weights_sha256": self._identity[1], "weights_hash": WEIGHTS_HASH}

    # --- per-block pieces ------------------------------------------------------------------------------
    def _gain(self, k: int) -> torch.Tensor:
        """The pre-attention norm's gain (ones where TransformerLens folded it into the weights, ``LNPre``)."""
        weight = getattr(self.blocks[k].ln1, "w", None)
        return torch.ones(self.d_model) if weight is None else weight.detach().float().cpu()

    def head_weights(self, k: int) -> list[dict[str, torch.Tensor]]:
        """:meth:`Subject.head_weights` from ``W_Q`` / ``W_K`` / ``W_V`` (H, d, d_head; K and V repeated per query head
        under grouped-query attention) and ``W_O`` (H, d_head, d), the pre-attention norm's gain folded in."""
        self.check_index(k)
        if k == EMBED:
            raise ValueError("head_weights needs a block index (0 or more), not the embeddings")
        attn, gain = self.blocks[k].attn, self._gain(k)
        w_q, w_k, w_v, w_o = (w.detach().float().cpu() for w in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O))
        return [{"q": w_q[h].T * gain, "k": w_k[h].T * gain, "v": w_v[h].T * gain, "o": w_o[h].T}
                for h in range(self.n_heads)]

    def block_parts(self, ids: torch.Tensor, k: int, attention: bool = True) -> dict[str, torch.Tensor]:
        """:meth:`Subject.block_parts` from block k's hook points (all float32)."""
        self.check_index(k)
        if k == EMBED:
            raise ValueError("block_parts needs a block index (0 or more), not the embeddings")
        block = self.blocks[k]
        seen: dict[str, torch.Tensor] = {}

        def keeper(name: str, stop: bool = False):
            def hook(module, args, output):
                seen.setdefault(name, output.detach().float())
                if stop:
                    raise _StopForward
            return hook

        points = {"input": block.hook_resid_pre, "z": block.attn.hook_z, "attn_out": block.hook_attn_out,
                  "mlp_out": block.hook_mlp_out, **({"attention": block.attn.hook_pattern} if attention else {})}

        def register() -> list:
            return [point.register_forward_hook(keeper(name)) for name, point in points.items()] + \
                   [block.hook_resid_post.register_forward_hook(keeper("output", stop=True))]

        with torch.no_grad(), hooks(register):
            try:
                self._run_trunk(ids.to(self.device))
            except _StopForward:
                pass
        w_o = block.attn.W_O.detach().float()  # (H, d_head, d)
        seen["heads"] = torch.einsum("bthk,hkd->bthd", seen.pop("z"), w_o)  # (B, T, H, d)
        seen["attn_bias"] = block.attn.b_O.detach().float()
        return seen
