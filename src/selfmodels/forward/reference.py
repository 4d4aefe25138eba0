"""What a forward-self-model ``results.json`` means: its schema version, the definitions of its metrics, and
the paper's published numbers shown beside ours (Gilley, 2026; ../shared/reference/forward-self-models-setup.md).

The paper ran two settings: a toy GPT (4 x 256, post_block0 -> post_block1, index pair 0 -> 1) with capacity
and layer-gap sweeps and the representation analyses, and Llama-3.2-1B layers 7 -> 8 with the per-head / MLP
decomposition. A run on our GPT is shown beside the toy numbers, a run on a pretrained model beside the
Llama ones; analyses the paper ran only on its toy GPT are shown with the toy values in both.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

DEFINITIONS = {
    "indices": "layer index -1 = the residual entering block 0 (embeddings), k = the residual after block k "
               "(TransformerLens blocks.k.hook_resid_post); the forward model stands in for blocks source+1..target",
    "kl_*": "mean over tokens of KL(normal || mode) in nats; substituted = predicted blocks replaced by the forward model, "
            "skipped = predicted blocks skipped (identity; the paper's 'ablated'), zero = target residual set to 0",
    "recovery": "1 - mean KL_substituted / mean KL_skipped (a ratio of means)",
    "accuracy_*": "next-token argmax accuracy on held-out tokens",
    "ce_*": "next-token cross-entropy in nats on held-out tokens; subject.val_loss = ce_normal",
}



def definitions() -> dict[str, str]:
    """``results.json``'s definitions: the layer indices, every registered regression metric, substitution."""
    from selfmodels.forward.metrics import metric_definitions

    return {"indices": DEFINITIONS["indices"], **metric_definitions(), **{k: v for k, v in DEFINITIONS.items() if k != "indices"}}


# Analyses the paper ran on its toy GPT's pair (4 heads of 64, d = 256).
_TOY_ANALYSIS = {
    "attention_cosine": "0.989 / 0.998 / 0.995 / 0.916 (batch-averaged)", "cka": "0.98", "cka_source": "0.74-0.75",
    "qkv_weight_cosine": "-0.056 .. +0.021 (~0)", "variance_ranks": "62 / 189 / 217 of 256",
    "eff_rank_s2": "199.8 of 256", "eff_rank_s": "247 (1% model)", "top1_variance": "2.4%", "entropy_corr": "+0.332",
    "residual_category_d": {"before_closer": "+0.84", "sentence_start": "-0.85", "after_punctuation": "-0.62",
                            "after_opener": "+0.62", "focused_attention": "-0.61"},
}

PAPER = {
    "toy": {
        "label": "Gilley (2026), toy GPT 4x256 (28.9M params incl. 50k-vocab embeddings), 10M FineWeb-Edu tokens, "
                 "post_block0 -> post_block1 (0 -> 1), forward model co-trained",
        "source": 0, "target": 1, "forward_params": 329_920,
        "cosine": 0.972, "mse": 0.003, "skip_cosine": None, "delta_cosine": None, "delta_r2": None,
        "accuracy_normal": 0.222, "accuracy_substituted": 0.217, "accuracy_skipped": 0.146,
        "kl_substituted": 0.062, "kl_skipped": 1.094, "recovery": 0.94,
        "baseline_mlp_cosine": 0.788, "baseline_mlp_source": -1,  # the paper's per-position MLP: embeddings -> block 1
        "training_tokens_seen": 81_920_000, "training_unique_tokens": 10_000_000,  # 10K steps x 64 x 128; FineWeb-Edu
        "training_setup": "10,000 steps x 64 x 128 tokens (81.9M seen) over 10M unique FineWeb-Edu tokens (~8.2 epochs)",
        "categories": "KL substituted 0.04-0.07 in every category (uniform)", "category_recovery": {},
        "capacity_sweep": [{"name": "1%", "params": 330_000, "cosine": 0.890}, {"name": "3%", "params": 791_000, "cosine": 0.930},
                           {"name": "10%", "params": 3_200_000, "cosine": 0.999}, {"name": "22%", "params": 6_300_000, "cosine": 0.999}],
        "layer_gap_sweep": [{"gap": 1, "cosine": 0.995, "kl_substituted": 0.024, "kl_skipped": 0.258, "recovery": 0.91},
                            {"gap": 2, "cosine": 0.977, "kl_substituted": 0.092, "kl_skipped": 0.542, "recovery": 0.83},
                            {"gap": 3, "cosine": 0.950, "kl_substituted": 0.213, "kl_skipped": 0.894, "recovery": 0.76}],
        "layer_gap_note": "the paper's gap sweep used a frozen 77M GPT (8x512) and a 1.18M forward model",
        "capacity_setup": "frozen GPT, each size 10K steps x 64 sequences of 128 from its activations",
        "decomposition": None,
        "analysis": _TOY_ANALYSIS,
    },
    "llama": {
        "label": "Gilley (2026), Llama-3.2-1B layers 7 -> 8, 26.2M SwiGLU forward model (2.1% of the subject), "
                 "100M FineWeb-Edu tokens, trained from cached activations",
        "source": 7, "target": 8, "forward_params": 26_225_024,
        "cosine": 0.937, "mse": 0.0018, "skip_cosine": None, "delta_cosine": None, "delta_r2": None,
        "accuracy_normal": 0.470, "accuracy_substituted": 0.456, "accuracy_skipped": 0.419,
        "kl_substituted": 0.093, "kl_skipped": 0.353, "recovery": 0.74,
        "baseline_mlp_cosine": None,
        "categories": "recovery 0.72-0.78 by category",
        "category_recovery": {"high_confidence": 0.78, "low_confidence": 0.72, "function_words": 0.73, "punctuation": 0.75},
        "capacity_sweep": [], "layer_gap_sweep": [], "layer_gap_note": None,
        "decomposition": {"heads_norm_share": 0.84, "mlp_norm_share": 0.16, "heads_cos_residual_mean": 0.019,
                          "heads_cos_range": "-0.009 .. 0.048", "mlp_cos_residual": 0.410, "mlp_norm_corr": 0.577,
                          "heads_norm_corr": 0.07, "head_variance_fraction": "3.5% .. 4.9% (null 3.1%)"},
        "analysis": {**_TOY_ANALYSIS, "llama_effective_rank_fraction": 0.93, "llama_top1_variance": 0.006},
    },
}


def paper_reference(family: str) -> dict:
    """The paper's numbers to show beside a run on a subject of ``family`` (our GPT: toy; otherwise Llama)."""
    return {"setting": "toy" if family == "gpt" else "llama", **PAPER["toy" if family == "gpt" else "llama"]}
