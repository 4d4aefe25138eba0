"""Run every analysis of :mod:`selfmodels.forward.analysis` for a forward model on our GPT.

The forward model maps the residual at ``source`` to the one at ``target`` (block indices, -1 = post_embed),
i.e. it stands in for GPT blocks source+1 .. target. Its attention and weights are compared with the
*first* predicted block, source+1: that block reads the same residual the forward model reads, so the two
attentions see the same inputs (for the usual single-block pair it is the only predicted block).

Returned keys match the HF reproduction's (:func:`selfmodels.forward.hf_analyze.pair_analyses`):
attention similarity (per example and batch-averaged), gauge symmetry (raw Q/K/V cosines and QK/OV
circuits, LayerNorm gains folded into the read weights), linear CKA, and the residual structure.
"""

from __future__ import annotations

from pathlib import Path

import torch

from selfmodels.errors import require
from selfmodels.forward.analysis.cka import linear_cka
from selfmodels.forward.analysis.gauge import head_comparison
from selfmodels.forward.hf_analyze import forward_model_heads, fused_qkv_heads, pair_analyses
from selfmodels.forward.model import ForwardModel
from selfmodels.forward.pipeline import check_pair
from selfmodels.nets.gpt import GPT


def gpt_block_heads(gpt: GPT, block: int) -> list[dict[str, torch.Tensor]]:
    """Per head of GPT block ``block``: q, k, v (d_head, d) sliced from the fused QKV with the ln1 gain folded
    in, and o (d, d_head) from the output projection."""
    b = gpt.blocks[block]
    return fused_qkv_heads(b.attn.qkv.weight, b.attn.proj.weight, b.ln1.weight, gpt.cfg.n_head, gpt.cfg.d_model // gpt.cfg.n_head)


@torch.no_grad()
def analyze_gpt_pair(gpt: GPT, model: ForwardModel, tokens: torch.Tensor, source: int, target: int,
                     token_strings: list[str], plot_dir: Path, first_position: int = 1) -> tuple[dict, dict]:
    """All analyses on the held-out sequences ``tokens`` (B, T); returns (analysis dict, plot file names).

    Residual-structure statistics use positions ``first_position``..T-1: at position 0 every causal head
    attends only to itself (entropy exactly 0), an outlier that would dominate the entropy correlation.
    The entropy correlation is normalised by the norm of the whole predicted update, target - source.
    """
    check_pair(gpt.cfg.n_layer, source, target)
    require(tokens.dim() == 2 and tokens.shape[0] >= 2, f"analyses need a (B, T) batch of at least 2 sequences, got shape {tuple(tokens.shape)}")
    require(0 <= first_position < tokens.shape[1] - 1, f"first_position {first_position} leaves too few positions of {tokens.shape[1]}")
    device = next(gpt.parameters()).device
    gpt.eval()
    model.eval()
    x = tokens.to(device)
    src = gpt.run_blocks(gpt.embed(x), 0, source + 1)  # (B, T, d)
    target_act, patterns = gpt.run_blocks(src, source + 1, target + 1, return_attention=True)  # (B,T,d), [(B,H,T,T)]
    pred, fwd_patterns = model(src, return_attention=True)  # (B, T, d), [(B, Hf, T, T)]

    # Residual after the attention sublayer only, in both models (the first predicted block's).
    block, fblock = gpt.blocks[source + 1], model.blocks[0]
    gpt_post_attn = src + block.attn(block.ln1(src))  # (B, T, d)
    fwd_post_attn = src + fblock.attn(fblock.ln1(src))[0]  # (B, T, d)

    gauge = [[head_comparison(f, h) for h in gpt_block_heads(gpt, source + 1)] for f in forward_model_heads(model)]
    strings = [[token_strings[i] for i in row] for row in tokens.tolist()]
    analysis, names = pair_analyses(
        fwd_patterns[0], patterns[0], src, pred, target_act, target_act - src, gauge, strings, Path(plot_dir),
        extra_cka={"post_attention": linear_cka(fwd_post_attn.cpu(), gpt_post_attn.cpu())}, first_position=first_position,
        position0="whose attention is one-hot on itself")
    analysis["compared_block"] = f"block{source + 1}"
    return analysis, names
