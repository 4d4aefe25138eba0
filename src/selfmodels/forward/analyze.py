"""Run every analysis of :mod:`selfmodels.forward.analysis` for a forward model on one (source, target) pair.

One driver for every subject (our GPT, Hugging Face models): everything about the subject comes through
the :class:`~selfmodels.subjects.base.Subject` interface (``residuals``, ``block_parts``, ``head_weights``,
``n_heads`` / ``n_kv_heads`` / ``d_head``), never through a concrete model class.

The forward model maps the residual at ``source`` to the one at ``target`` (-1 = embeddings, k = after block
k), i.e. it stands in for blocks source+1 .. target. Its attention and weights are compared with the *first*
predicted block, source+1: that block reads the same residual the forward model reads, so the two
attentions see the same inputs (for a one-block pair it is also the target block). The block's update is
decomposed into heads, attention bias and MLP only for a one-block pair (target = source + 1).

Returned analyses: attention similarity (per example and batch-averaged), gauge symmetry (raw Q/K/V
cosines and QK/OV circuits, norm gains folded into the read weights), linear CKA, and the structure of the
residual target - prediction (spectrum, token categories, correlation with attention entropy).

A subject that cannot split a block into its parts (``subject.parts_unavailable``: a Hugging Face model found
structurally, with no FAMILIES row) gets every analysis that needs only residuals and the forward model (CKA
of the residuals, the residual's spectrum, the token-string categories); those that need the block's parts
(:data:`NEED_PARTS`) are left out and ``analysis["skipped"]`` names them and says why.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from selfmodels.errors import require
from selfmodels.forward.analysis import plots
from selfmodels.forward.analysis.attention import attention_entropy, attention_similarity
from selfmodels.forward.analysis.cka import linear_cka
from selfmodels.forward.analysis.decomposition import decomposition_report
from selfmodels.forward.analysis.gauge import head_comparison
from selfmodels.forward.analysis.residual import (
    category_effects, pearson, singular_values, spectrum_summary, token_categories,
)
from selfmodels.forward.model import ForwardModel
from selfmodels.subjects.base import Subject
from selfmodels.subjects.weights import fused_qkv_heads

# What comes from the compared block's insides (``block_parts``: per-head writes, MLP output, attention weights;
# ``head_weights``), so a subject without them skips it.
NEED_PARTS = ("decomposition (per-head writes and MLP)", "attention similarity", "gauge (head weights)",
              "post-attention CKA", "attention entropy correlation", "attention token categories (focused, distributed)")

POSITION0 = ("every causal head attends only to itself at position 0 (attention entropy exactly 0), and in "
             "pretrained models position 0 is the attention sink")


def forward_model_heads(model: ForwardModel, block: int = 0) -> list[dict[str, torch.Tensor]]:
    """Per head of a forward-model block: read weights q, k, v (d_head, d) with the LayerNorm gain folded
    in (W · diag(γ)), and the write weight o (d, d_head)."""
    b = model.blocks[block]
    return fused_qkv_heads(b.attn.qkv.weight, b.attn.out.weight, b.ln1.weight, model.cfg.n_head, model.cfg.d_head)


@contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """The modules in eval mode within the block, their previous modes restored after."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def positions_note(first_position: int) -> str:
    """What the residual-structure statistics cover, and why position 0 is left out (for the record)."""
    span = f"residual structure over positions {first_position}..T-1"
    if first_position == 0:
        return f"{span} (position 0 included, although {POSITION0})"
    if first_position == 1:
        return f"{span} (position 0 excluded: {POSITION0})"
    return f"{span} (positions 0..{first_position - 1} excluded; {POSITION0})"


@torch.no_grad()
def _decomposition(subject: Subject, parts: dict, block_heads: list[dict], target_act: torch.Tensor,
                   pred: torch.Tensor) -> dict:
    """:func:`decomposition_report` of the block's parts, with the forward model's residual target - prediction."""
    cpu = {k: parts[k].cpu() for k in ("input", "output", "heads", "attn_bias", "mlp_out")}
    residual = target_act.cpu() - pred.detach().cpu().float()  # (B, T, d)
    return decomposition_report(cpu["input"], cpu["output"], cpu["heads"], cpu["attn_bias"], cpu["mlp_out"], residual,
                                [w["o"] for w in block_heads], subject.n_kv_heads)


def analyze_pair(subject: Subject, model: ForwardModel, ids: torch.Tensor, source: int, target: int,
                 token_strings: list[str], plot_dir: Path, first_position: int = 1) -> dict:
    """All analyses of ``model`` (predicting ``target`` from ``source``) on the sequences ``ids`` (B, T).

    ``token_strings[i]`` is token i decoded (for the token categories); plots go into ``plot_dir``.
    Residual-structure statistics use positions ``first_position``..T-1: at position 0 every causal head
    attends only to itself (entropy exactly 0, an outlier that would dominate the entropy correlation), and
    in pretrained models it is the attention sink. The entropy correlation is normalised by the norm of the
    whole predicted update, target - source.

    Returns ``{"decomposition": dict | None, "analysis": dict, "plots": {name: file name}}``; the analysis
    says which block the forward model was compared with (``compared_block`` = source + 1) and, for a subject
    without block parts, what it skipped and why (``skipped``: ``{"analyses": [...], "reason": ...}``).
    """
    subject.check_pair(source, target)
    require(ids.dim() == 2 and ids.shape[0] >= 2,
            f"analyses need a (B, T) batch of at least 2 sequences, got shape {tuple(ids.shape)}")
    require(0 <= first_position < ids.shape[1] - 1,
            f"first_position {first_position} leaves too few positions of {ids.shape[1]}")
    plot_dir = Path(plot_dir)
    compared = source + 1
    first = next(model.parameters())

    with _eval_mode(subject.model, model):
        residuals = subject.residuals(ids, [source, target])
        source_act, target_act = residuals[source].float(), residuals[target].float()  # (B, T, d) each
        src = residuals[source].to(device=first.device, dtype=first.dtype)  # the forward model's input
        pred, fwd_patterns = model(src, return_attention=True)  # (B, T, d), [(B, Hf, T, T)]
        parts = subject.block_parts(ids, compared) if subject.parts_unavailable is None else None  # float32
        # Residual after the attention sublayer only, in both models (the compared block's).
        fblock = model.blocks[0]
        fwd_post_attn = src + fblock.attn(fblock.ln1(src))[0]  # (B, T, d)
    strings = [[token_strings[i] for i in row] for row in ids.tolist()]
    if parts is None:  # only what residuals and the forward model give
        analysis, names = pair_analyses(fwd_patterns[0], None, source_act, pred, target_act, target_act - source_act, None,
                                        strings, plot_dir, first_position=first_position)
        analysis["compared_block"] = compared
        analysis["skipped"] = {"analyses": list(NEED_PARTS), "reason": subject.parts_unavailable}
        return {"decomposition": None, "analysis": analysis, "plots": names}

    block_post_attn = parts["input"] + parts["attn_out"]  # (B, T, d)
    as_cpu = lambda heads: [{k: v.detach().cpu().float() for k, v in h.items()} for h in heads]  # noqa: E731
    block_heads = as_cpu(subject.head_weights(compared))  # per query head: q, k, v (d_head, d), o (d, d_head)

    one_block = target == compared  # the per-head / MLP decomposition is of one block's update
    decomposition = _decomposition(subject, parts, block_heads, target_act, pred) if one_block else None

    gauge = [[head_comparison(f, h) for h in block_heads] for f in as_cpu(forward_model_heads(model))]
    analysis, names = pair_analyses(
        fwd_patterns[0], parts["attention"], source_act, pred, target_act, target_act - source_act, gauge, strings,
        plot_dir, extra_cka={"post_attention": linear_cka(fwd_post_attn.detach().cpu().float(), block_post_attn.cpu())},
        first_position=first_position)
    analysis["compared_block"] = compared
    if decomposition is not None:
        names["decomposition"] = plots.plot_decomposition(decomposition, plot_dir / "decomposition.png")
    return {"decomposition": decomposition, "analysis": analysis, "plots": names}


def _attention_analyses(forward_attn: torch.Tensor, layer_attn: torch.Tensor, r_norm: torch.Tensor, update: torch.Tensor,
                        p0: int, plot_dir: Path, names: dict) -> dict:
    """Attention similarity (forward model vs each head of the block) and the correlation of the residual norm
    ``r_norm`` (B, T-p0) with the block's attention entropy, raw and over the update's norm; plots added to ``names``."""
    sim = attention_similarity(forward_attn.detach().cpu().float(), layer_attn)
    entropy = attention_entropy(layer_attn).mean(1)[:, p0:].float()  # (B, T-p0), head mean
    normalised = r_norm / update.norm(dim=-1).clamp_min(1e-12)
    entropy_corr = {"raw": pearson(r_norm, entropy), "normalised_by_update_norm": pearson(normalised, entropy)}
    names["attention"] = plots.plot_attention_similarity(sim, plot_dir / "attention_similarity.png")
    names["entropy"] = plots.plot_entropy_scatter(entropy, normalised, entropy_corr["normalised_by_update_norm"],
                                                  plot_dir / "entropy_vs_residual.png")
    return {
        "attention_cosine_per_example": sim["per_example"].max(0).values.tolist(),
        "attention_cosine_batch_averaged": sim["batch_averaged"].max(0).values.tolist(),
        "attention_similarity_matrices": {k: v.tolist() for k, v in sim.items()},
        "entropy_correlation": entropy_corr,
    }


def pair_analyses(forward_attn: torch.Tensor, layer_attn: torch.Tensor | None, src: torch.Tensor, pred: torch.Tensor,
                  target_act: torch.Tensor, update: torch.Tensor, gauge: list[list[dict]] | None, tokens: list[list[str]],
                  plot_dir: Path, extra_cka: dict[str, float] | None = None, first_position: int = 1) -> tuple[dict, dict]:
    """The analyses of :func:`analyze_pair`, from tensors already computed.

    ``forward_attn`` (B, Hf, T, T): the forward model's attention; ``layer_attn`` (B, H, T, T): the compared
    block's; ``src``, ``pred``, ``target_act`` (B, T, d): source, prediction and target residuals;
    ``update`` (B, T, d): what the predicted block(s) add (normalises the entropy correlation); ``gauge``:
    :func:`head_comparison` rows [forward head][block head]; ``tokens``: B lists of T decoded strings.
    Residual-structure statistics use positions ``first_position``..T-1. Returns (analysis dict, plot names).
    ``layer_attn`` and ``gauge`` None (a subject without block parts): the attention similarity, the entropy
    correlation, the attention categories and the gauge comparison are left out of both.
    """
    src, pred, target_act, update = (t.detach().cpu().float() for t in (src, pred, target_act, update))
    residual = target_act - pred  # (B, T, d)
    cka = {
        "prediction_vs_target": linear_cka(pred, target_act),
        **(extra_cka or {}),
        "source_vs_target": linear_cka(src, target_act),
        "source_vs_prediction": linear_cka(src, pred),
    }

    p0 = first_position
    r = residual[:, p0:]  # (B, T-p0, d)
    spectrum = spectrum_summary(r)
    layer_attn = None if layer_attn is None else layer_attn.detach().cpu().float()
    masks = {k: v[:, p0:] for k, v in token_categories(tokens, layer_attn).items()}
    r_norm = r.norm(dim=-1)  # (B, T-p0)
    categories = category_effects(r_norm, masks)

    plot_dir.mkdir(parents=True, exist_ok=True)
    names = {
        "spectrum": plots.plot_residual_spectrum(singular_values(r), spectrum, plot_dir / "residual_spectrum.png"),
        "categories": plots.plot_category_effects(categories, plot_dir / "residual_categories.png"),
    }
    analysis = {
        "tokens": int(residual.shape[0] * residual.shape[1]),
        "cka": cka,
        "effective_rank_entropy_s2": spectrum["effective_rank_entropy_s2"],
        "effective_rank_entropy_s": spectrum["effective_rank_entropy_s"],
        "residual_spectrum": spectrum,
        "residual_categories": categories,
        "positions": positions_note(p0),
    }
    if layer_attn is not None:
        analysis.update(_attention_analyses(forward_attn, layer_attn, r_norm, update[:, p0:], p0, plot_dir, names))
    if gauge is not None:
        mean = lambda rows, key: sum(row[key] for row in rows) / len(rows)  # noqa: E731
        analysis["gauge"] = {"per_layer_head": gauge[0], **{f"mean_{key}": mean(gauge[0], key) for key in gauge[0][0]}}
    return analysis, names
