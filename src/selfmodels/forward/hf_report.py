"""``report.md`` of a pretrained-model reproduction: our numbers beside the paper's Llama-3.2-1B ones."""

from __future__ import annotations

from pathlib import Path

from selfmodels.artifacts import write_text
from selfmodels.report.markdown import fmt, table

# Gilley (2026), Llama-3.2-1B layers 7 -> 8, 26.2M SwiGLU forward model (see
# ../shared/reference/forward-self-models-setup.md). None: the paper gives no such number.
PAPER_LLAMA = {
    "main_params": 1.24e9, "forward_params": 26_225_024, "fraction": 0.021,
    "cosine": 0.937, "mse": 0.0018, "identity_cosine": None, "delta_cosine": None, "delta_r2": None,
    "accuracy_normal": 0.470, "accuracy_substituted": 0.456, "accuracy_skipped": 0.419,
    "kl_substituted": 0.093, "kl_skipped": 0.353, "recovery": 0.74,
    "heads_norm_share": 0.84, "heads_cos_residual_mean": 0.019, "heads_cos_range": "-0.009 .. 0.048",
    "mlp_cos_residual": 0.410, "mlp_norm_corr": 0.577, "heads_norm_corr": 0.07,
    "head_variance_fraction": "3.5% .. 4.9% (null 3.1%)",
    "effective_rank_fraction": 0.93, "top1_variance": 0.006,
    "category_recovery": {"high_confidence": 0.78, "low_confidence": 0.72, "function_words": 0.73, "punctuation": 0.75},
}
# Toy GPT numbers the paper reports for analyses it ran only there.
PAPER_TOY = {"attention_cosine": "0.989 / 0.998 / 0.995 / 0.916 (batch-averaged)", "cka": "0.98",
             "variance_ranks": "62 / 189 / 217 of 256", "eff_rank_s2": "199.8 of 256",
             "entropy_corr": "+0.332", "before_closer": "+0.84", "sentence_start": "-0.85",
             "after_punctuation": "-0.62", "after_opener": "+0.62", "focused_attention": "-0.61"}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def write_report(out: Path, r: dict) -> None:
    """Write ``out/report.md`` from a results dict (see hf_reproduce.run)."""
    m, f, sub, base = r["main_model"], r["forward_model"], r["substitution"], r["baseline_mlp"]
    p = PAPER_LLAMA
    lines = [
        f"# Forward self-model on {m['name']}: layers {r['layers']['source']} -> {r['layers']['target']}",
        "",
        f"Main model: {m['source']} ({m['params']:,} parameters, {m['n_layers']} layers, d={m['d_model']}, "
        f"{m['n_heads']} query heads in {m['n_kv_heads']} KV groups, d_head={m['d_head']}, MLP {m['mlp_hidden']}), "
        f"{m['dtype']}; held-out cross-entropy {fmt(m['val_loss'])} nats/token. Data: {r['data']['corpus']}; "
        f"{r['data']['train_tokens']:,} training tokens in chunks of {r['data']['seq_len']} "
        f"({'with' if r['data']['bos'] else 'no'} BOS); {r['data']['split']}.",
        "",
        f"Forward model: 1 block, {f['config']['n_head']} head x {f['config']['d_head']}, SwiGLU hidden "
        f"{f['config']['swiglu_hidden']}, {f['params']:,} parameters ({_pct(f['fraction_of_main'])} of the main model), "
        f"trained {f['train']['steps']} steps of {f['batch'][0]} x {f['batch'][1]} tokens at lr {f['lr']:g} "
        f"in {f['train']['seconds']:.0f} s. Baseline: per-position MLP d -> {base['hidden_mult']} d -> d (GELU), "
        f"{base['params']:,} parameters, {base['train']['steps']} steps in {base['train']['seconds']:.0f} s "
        "(steps chosen from its measured speed to match the forward model's training time).",
        "",
        f"![training curves]({'plots/' + r['plots']['training']})",
        "",
        "## Prediction and causal substitution (held-out text)",
        "",
        "`cosine`: mean per-token cosine; `skip cosine`: the source itself against the target (what copying "
        "scores); `update cosine` / `update R²`: of the predicted against the true update (target - source). "
        "Substitution replaces the predicted layer's output and runs the rest of the model; skipped = the layer "
        "as identity (the paper's \"ablated\"); recovery = 1 - mean KL_sub / mean KL_skip.",
        "",
        table(["", "ours: forward model", "ours: per-position MLP", "paper (Llama-3.2-1B 7->8)"], [
            ["parameters", f"{f['params']:,}", f"{base['params']:,}", f"{p['forward_params']:,}"],
            ["cosine", r["cosine"], base["cosine"], p["cosine"]],
            ["skip cosine (copy source)", r["identity_cosine"], r["identity_cosine"], "-"],
            ["update cosine", r["delta_cosine"], base["delta_cosine"], "-"],
            ["update R²", r["delta_r2"], base["delta_r2"], "-"],
            ["MSE", fmt(r["mse"], 4), fmt(base["mse"], 4), fmt(p["mse"], 4)],
            ["accuracy normal", sub["accuracy_normal"], base["substitution"]["accuracy_normal"], p["accuracy_normal"]],
            ["accuracy substituted", sub["accuracy_substituted"], base["substitution"]["accuracy_substituted"], p["accuracy_substituted"]],
            ["accuracy skipped", sub["accuracy_skipped"], base["substitution"]["accuracy_skipped"], p["accuracy_skipped"]],
            ["KL substituted", sub["kl_substituted"], base["substitution"]["kl_substituted"], p["kl_substituted"]],
            ["KL skipped", sub["kl_skipped"], base["substitution"]["kl_skipped"], p["kl_skipped"]],
            ["KL zero-ablated", sub["kl_zero"], base["substitution"]["kl_zero"], "-"],
            ["recovery", sub["recovery"], base["recovery"], p["recovery"]],
        ]),
        "MSE is in the model's own activation units: SmolLM2's residual norms (~120) differ from Llama's, so "
        "only cosines, KLs and recovery compare across models.",
        "",
    ]
    if "categories" in sub:
        rows = [[name, c["tokens"], c["kl_substituted"], c["kl_skipped"], c["recovery"],
                 fmt(p["category_recovery"].get(name))] for name, c in sub["categories"].items()]
        lines += ["### Per category (forward model)", "",
                  table(["category", "tokens", "KL sub", "KL skip", "recovery", "paper recovery"], rows), ""]
    d = r.get("decomposition")
    if d:
        lines += [
            "## Decomposition of the predicted layer's update", "",
            f"Update = per-head contributions + MLP output; reconstruction error {d['reconstruction_error']:.2e} "
            f"(relative Frobenius, fp32). Residual = target - forward-model prediction.", "",
            table(["", "ours", "paper"], [
                ["attention norm share", _pct(d["heads_norm_share"]), _pct(p["heads_norm_share"])],
                ["MLP norm share", _pct(d["mlp_norm_share"]), _pct(1 - p["heads_norm_share"])],
                ["cos(head, residual), mean", d["heads_cos_residual_mean"], p["heads_cos_residual_mean"]],
                ["cos(head, residual), range", f"{d['heads_cos_residual_min']:+.3f} .. {d['heads_cos_residual_max']:+.3f}", p["heads_cos_range"]],
                ["cos(MLP, residual)", d["mlp_cos_residual"], p["mlp_cos_residual"]],
                ["corr(|MLP|, |residual|)", d["mlp_norm_corr"], p["mlp_norm_corr"]],
                ["corr(|head|, |residual|), mean", d["heads_norm_corr_mean"], p["heads_norm_corr"]],
                ["residual variance in a head's output subspace", f"{_pct(d['head_residual_variance_fraction_min'])} .. "
                 f"{_pct(d['head_residual_variance_fraction_max'])} (null {_pct(d['head_null_fraction'])})", p["head_variance_fraction"]],
            ]),
            table(["KV group", "heads", "norm share", "cos(group, residual)", "corr(|group|, |residual|)", "residual variance fraction (null)"],
                  [[g["kv_group"], str(g["heads"]), _pct(g["norm_share"]), g["cos_residual"], g["norm_corr"],
                    f"{_pct(g['residual_variance_fraction'])} ({_pct(d['group_null_fraction'])})"] for g in d["kv_groups"]]),
            f"![decomposition]({'plots/' + r['plots']['decomposition']})", "",
        ]
    a = r["analysis"]
    heads = ", ".join(f"{x:.3f}" for x in a["attention_cosine_per_example"])
    heads_avg = ", ".join(f"{x:.3f}" for x in a["attention_cosine_batch_averaged"])
    g = a["gauge"]
    sp = a["residual_spectrum"]
    ranks = sp["variance_ranks"]
    lines += [
        f"## Analyses ({a['tokens']:,} held-out tokens)", "",
        "### Attention similarity", "",
        "Cosine between the forward model's attention pattern and each head of the predicted layer (best "
        "forward head), per example (each sequence's own pattern, then averaged) and batch-averaged (patterns "
        "averaged over sequences first, the paper's way: mostly positional structure).", "",
        table(["", "per layer head", "paper (toy GPT)"], [
            ["per example", heads, "-"], ["batch-averaged", heads_avg, PAPER_TOY["attention_cosine"]]]),
        f"![attention]({'plots/' + r['plots']['attention']})", "",
        "### Gauge symmetry (forward head vs each layer head, means over layer heads)", "",
        "Raw cosines of the Q/K/V read weights (norm gains folded in), and gauge-invariant comparisons: the "
        "QK circuit W_Qᵀ W_K (before RoPE) and OV circuit W_O W_V cosines, and the mean cos² of principal angles "
        "between read / write subspaces (null: random subspaces).", "",
        table(["Q cos", "K cos", "V cos", "QK circuit cos", "OV circuit cos", "Q read overlap", "O write overlap", "null overlap"],
              [[g["mean_q_cosine"], g["mean_k_cosine"], g["mean_v_cosine"], g["mean_qk_circuit_cosine"],
                g["mean_ov_circuit_cosine"], g["mean_q_read_overlap"], g["mean_o_write_overlap"], g["mean_null_overlap"]]]),
        "Paper (toy GPT): raw Q/K/V cosines between -0.056 and +0.021.", "",
        "### Linear CKA", "",
        table(["prediction vs target", "post-attention (forward vs layer)", "source vs target", "source vs prediction", "paper"],
              [[a["cka"]["prediction_vs_target"], a["cka"]["post_attention"], a["cka"]["source_vs_target"],
                a["cka"]["source_vs_prediction"], PAPER_TOY["cka"] + " (toy; input 0.74-0.75)"]]),
        "### Residual structure", "",
        table(["", "ours", "paper (toy GPT, d=256)", "paper (Llama)"], [
            ["ranks for 50 / 90 / 95% variance", f"{ranks['50%']} / {ranks['90%']} / {ranks['95%']} of {sp['max_rank']}", PAPER_TOY["variance_ranks"], "-"],
            ["effective rank exp(H(S²/ΣS²))", f"{a['effective_rank_entropy_s2']:.1f}", PAPER_TOY["eff_rank_s2"], "-"],
            ["effective rank exp(H(S/ΣS))", f"{a['effective_rank_entropy_s']:.1f}", "247 (1% model)", f"{_pct(p['effective_rank_fraction'])} of max (definition not stated)"],
            ["top-1 PC variance", _pct(sp["top1_variance"]), "2.4%", _pct(p["top1_variance"])],
            ["corr(residual norm, attention entropy)", a["entropy_correlation"]["raw"], "-", "-"],
            ["corr(residual norm / update norm, attention entropy)", a["entropy_correlation"]["normalised_by_update_norm"], PAPER_TOY["entropy_corr"], "-"],
        ]),
        f"![spectrum]({'plots/' + r['plots']['spectrum']}) ![entropy]({'plots/' + r['plots']['entropy']})", "",
        "Residual norm by token category: d vs overall = (category mean - overall mean) / overall std (what the "
        "paper calls Cohen's d); pooled d = two-group Cohen's d (category vs the rest). "
        + a["positions"][0].upper() + a["positions"][1:] + ".", "",
        table(["category", "tokens", "mean residual norm", "d vs overall", "pooled d", "paper d (toy)"],
              [[n, c["tokens"], c["mean"], c["d_vs_overall"], c["d_pooled"],
                PAPER_TOY.get(n, "-")] for n, c in a["residual_categories"].items()]),
        f"![categories]({'plots/' + r['plots']['categories']})", "",
    ]
    write_text(out / "report.md", "\n".join(lines) + "\n")
