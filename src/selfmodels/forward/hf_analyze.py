"""Run every analysis of :mod:`selfmodels.forward.analysis` for a forward model on one Hugging Face layer.

Inputs are the predicted (target) layer of an :class:`HFAdapter`, a trained forward model, and a few
validation sequences. Returns a JSON-ready dict and writes one plot per analysis into ``plot_dir``.
Residual-structure statistics (spectrum, categories, entropy correlation) use positions 1..T-1:
position 0 is the attention sink of these models, its residual-stream norm several times the others'.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from selfmodels.forward.analysis import plots
from selfmodels.forward.analysis.attention import attention_entropy, attention_similarity
from selfmodels.forward.analysis.cka import linear_cka
from selfmodels.forward.analysis.decomposition import decomposition_report
from selfmodels.forward.analysis.gauge import head_comparison
from selfmodels.forward.analysis.residual import (
    category_effects, pearson, singular_values, spectrum_summary, token_categories,
)
from selfmodels.forward.model import ForwardModel

if TYPE_CHECKING:  # the GPT path imports this module without loading transformers
    from selfmodels.nets.hf_adapter import HFAdapter


def fused_qkv_heads(qkv: torch.Tensor, out: torch.Tensor, gain: torch.Tensor, n_head: int, d_head: int) -> list[dict[str, torch.Tensor]]:
    """Per head of a fused-QKV attention, ``qkv`` (3·H·d_head, d) and ``out`` (d, H·d_head) as in nn.Linear,
    read after a LayerNorm with gain γ (d,): q, k, v (d_head, d) with the gain folded in (W · diag(γ)),
    and the write weight o (d, d_head)."""
    inner = n_head * d_head
    w_q, w_k, w_v = qkv.detach().float().split(inner, dim=0)  # (inner, d) each
    w_o, g = out.detach().float(), gain.detach().float()  # (d, inner), (d,)
    rows = lambda w, h: w[h * d_head:(h + 1) * d_head] * g  # noqa: E731  (d_head, d)
    return [{"q": rows(w_q, h), "k": rows(w_k, h), "v": rows(w_v, h), "o": w_o[:, h * d_head:(h + 1) * d_head]}
            for h in range(n_head)]


def forward_model_heads(model: ForwardModel, block: int = 0) -> list[dict[str, torch.Tensor]]:
    """Per head of a forward-model block: read weights q, k, v (d_head, d) with the LayerNorm gain folded
    in (W · diag(γ)), and the write weight o (d, d_head)."""
    b = model.blocks[block]
    return fused_qkv_heads(b.attn.qkv.weight, b.attn.out.weight, b.ln1.weight, model.cfg.n_head, model.cfg.d_head)


def layer_heads(adapter: HFAdapter, layer: int) -> list[dict[str, torch.Tensor]]:
    """Per query head of an HF layer: q, k, v (d_head, d) with the RMSNorm gain folded in (k and v are the
    head's KV group's), and o (d, d_head). RoPE rotates q and k after these weights: the QK circuit
    compared here is the one before rotation."""
    block = adapter.layers[layer]
    attn = block.self_attn
    gain = block.input_layernorm.weight.detach().float()  # (d,)
    dh, rep = adapter.d_head, adapter.heads_per_group
    w_q, w_k, w_v = (p.weight.detach().float() for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    w_o = attn.o_proj.weight.detach().float()  # (d, H*dh)
    heads = []
    for h in range(adapter.n_heads):
        g = h // rep
        heads.append({"q": w_q[h * dh:(h + 1) * dh] * gain, "k": w_k[g * dh:(g + 1) * dh] * gain,
                      "v": w_v[g * dh:(g + 1) * dh] * gain, "o": w_o[:, h * dh:(h + 1) * dh]})
    return heads


@torch.no_grad()
def analyze_layer(adapter: HFAdapter, model: ForwardModel, ids: torch.Tensor, source: int, target: int,
                  token_strings: list[str], plot_dir: Path) -> dict:
    """All analyses on the sequences ``ids`` (B, T); returns {"decomposition", "analysis", "plots"}."""
    device = next(model.parameters()).device
    src = adapter.collect(ids.to(next(adapter.model.parameters()).device), [source])[source].to(device)  # (B,T,d)
    parts = {k: v.to(device) for k, v in adapter.collect_layer_parts(ids.to(src.device), target).items()}
    post_attention = {}
    hook = model.blocks[0].attn.register_forward_hook(lambda m, a, out: post_attention.__setitem__("delta", out[0]))
    try:
        pred, patterns = model(src, return_attention=True)  # (B,T,d), [(B,Hf,T,T)]
    finally:
        hook.remove()
    target_act = parts["output"]
    residual = target_act - pred  # (B, T, d)

    # Decomposition of the predicted layer (valid for a single-layer gap: target = source + 1).
    o = adapter.o_proj(target)
    decomposition = None
    if target == source + 1:
        decomposition = decomposition_report(
            {k: parts[k].cpu() for k in ("input", "output", "o_proj_in", "mlp_out")}, residual.cpu(),
            o.weight.detach().float().cpu(), None if o.bias is None else o.bias.detach().float().cpu(),
            adapter.n_heads, adapter.d_head, adapter.n_kv_heads)

    gauge = [[head_comparison({k: v.cpu().float() for k, v in f.items()}, {k: v.cpu() for k, v in h.items()})
              for h in layer_heads(adapter, target)] for f in forward_model_heads(model)]
    tokens = [[token_strings[i] for i in row] for row in ids.tolist()]
    analysis, names = pair_analyses(
        patterns[0], parts["attention"], src, pred, target_act, target_act - parts["input"], gauge, tokens, plot_dir,
        extra_cka={"post_attention": linear_cka((src + post_attention["delta"]).cpu(), (parts["input"] + parts["attn_out"]).cpu())},
        first_position=1)
    if decomposition is not None:
        names["decomposition"] = plots.plot_decomposition(decomposition, plot_dir / "decomposition.png")
    return {"decomposition": decomposition, "analysis": analysis, "plots": names}


def pair_analyses(forward_attn: torch.Tensor, layer_attn: torch.Tensor, src: torch.Tensor, pred: torch.Tensor,
                  target_act: torch.Tensor, update: torch.Tensor, gauge: list[list[dict]], tokens: list[list[str]],
                  plot_dir: Path, extra_cka: dict[str, float] | None = None, first_position: int = 1,
                  position0: str = "the attention sink") -> tuple[dict, dict]:
    """The analyses shared by the HF and GPT reproductions, from tensors already computed.

    ``forward_attn`` (B, Hf, T, T): the forward model's attention; ``layer_attn`` (B, H, T, T): the
    predicted layer's; ``src``, ``pred``, ``target_act`` (B, T, d): source, prediction and target residuals;
    ``update`` (B, T, d): what the predicted layer(s) add (normalises the entropy correlation); ``gauge``:
    :func:`head_comparison` rows [forward head][layer head]; ``tokens``: B lists of T decoded strings.
    Residual-structure statistics use positions ``first_position``..T-1 (``position0`` says why position 0 is
    left out, for the record). Returns (analysis dict, plot names).
    """
    src, pred, target_act, update = (t.detach().cpu().float() for t in (src, pred, target_act, update))
    layer_attn = layer_attn.detach().cpu().float()
    residual = target_act - pred  # (B, T, d)
    sim = attention_similarity(forward_attn.detach().cpu().float(), layer_attn)
    cka = {
        "prediction_vs_target": linear_cka(pred, target_act),
        **(extra_cka or {}),
        "source_vs_target": linear_cka(src, target_act),
        "source_vs_prediction": linear_cka(src, pred),
    }

    p0 = first_position
    r = residual[:, p0:]  # (B, T-p0, d)
    spectrum = spectrum_summary(r)
    masks = {k: v[:, p0:] for k, v in token_categories(tokens, layer_attn).items()}
    r_norm = r.norm(dim=-1)  # (B, T-p0)
    update_norm = update[:, p0:].norm(dim=-1)
    entropy = attention_entropy(layer_attn).mean(1)[:, p0:].float()  # (B, T-p0), head mean
    normalised = r_norm / update_norm.clamp_min(1e-12)
    entropy_corr = {"raw": pearson(r_norm, entropy), "normalised_by_update_norm": pearson(normalised, entropy)}
    categories = category_effects(r_norm, masks)

    plot_dir.mkdir(parents=True, exist_ok=True)
    names = {
        "attention": plots.plot_attention_similarity(sim, plot_dir / "attention_similarity.png"),
        "spectrum": plots.plot_residual_spectrum(singular_values(r), spectrum, plot_dir / "residual_spectrum.png"),
        "categories": plots.plot_category_effects(categories, plot_dir / "residual_categories.png"),
        "entropy": plots.plot_entropy_scatter(entropy, normalised, entropy_corr["normalised_by_update_norm"],
                                              plot_dir / "entropy_vs_residual.png"),
    }
    mean = lambda rows, key: sum(row[key] for row in rows) / len(rows)  # noqa: E731
    analysis = {
        "tokens": int(residual.shape[0] * residual.shape[1]),
        "attention_cosine_per_example": sim["per_example"].max(0).values.tolist(),
        "attention_cosine_batch_averaged": sim["batch_averaged"].max(0).values.tolist(),
        "attention_similarity_matrices": {k: v.tolist() for k, v in sim.items()},
        "cka": cka,
        "effective_rank_entropy_s2": spectrum["effective_rank_entropy_s2"],
        "effective_rank_entropy_s": spectrum["effective_rank_entropy_s"],
        "residual_spectrum": spectrum,
        "residual_categories": categories,
        "entropy_correlation": entropy_corr,
        "gauge": {
            "per_layer_head": gauge[0],
            **{f"mean_{key}": mean(gauge[0], key) for key in gauge[0][0]},
        },
        "positions": (f"residual structure over positions {p0}..T-1 (position 0, {position0}, excluded)" if p0 == 1
                      else f"residual structure over positions {p0}..T-1"),
    }
    return analysis, names
