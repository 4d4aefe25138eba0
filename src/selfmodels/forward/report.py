"""``report.md`` for a forward-self-models run: our numbers beside the paper's, with plots."""

from __future__ import annotations

from pathlib import Path

from selfmodels.artifacts import atomic_path, read_jsonl, write_text
from selfmodels.report.markdown import fmt, table


def _plot(path: Path, draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _sweep_plot(rows, x_key, x_label, paper_rows, paper_x, title, logx):
    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        xs = [r[x_key] for r in rows]
        axes[0].plot(xs, [r["cosine"] for r in rows], "o-", label="ours")
        axes[0].plot(xs, [r["identity_cosine"] for r in rows], "s:", color="grey", label="skip baseline (ours)")
        if paper_rows:
            axes[0].plot([p[paper_x] for p in paper_rows], [p["cosine"] for p in paper_rows], "x--", label="paper")
        axes[0].set(xlabel=x_label, ylabel="cosine", title=f"{title}: cosine")
        axes[1].plot(xs, [r["recovery"] for r in rows], "o-", label="ours")
        if paper_rows and "recovery" in paper_rows[0]:
            axes[1].plot([p[paper_x] for p in paper_rows], [p["recovery"] for p in paper_rows], "x--", label="paper")
        axes[1].set(xlabel=x_label, ylabel="recovery", title=f"{title}: recovery")
        for ax in axes:
            if logx:
                ax.set_xscale("log")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        return fig

    return draw


def _curve_plot(records):
    def draw(plt):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
        if train:
            ax.plot(*zip(*train), label="train loss")
        if val:
            ax.plot(*zip(*val), "o-", label="validation loss")
        ax.set(xlabel="step", ylabel="cross-entropy (nats)", title="main GPT")
        ax.legend()
        ax.grid(alpha=0.3)
        return fig

    return draw


def write_report(out: Path, r: dict) -> None:
    out = Path(out)
    p, s, ps = r["paper"], r["substitution"], r["paper"]["substitution"]
    mm, fm = r["main_model"], r["forward_model"]
    lines = [
        "# Forward self-models on our GPT\n",
        f"Main model: GPT {mm['n_layer']} layers x {mm['n_head']} heads x d={mm['d_model']}, context {mm['block_size']}, "
        f"vocabulary {mm['vocab_size']}, {mm['params']:,} parameters, {mm['tokens_seen']:,} training tokens; "
        f"**validation loss {fmt(mm['val_loss'])} nats**. Data: {r['data']['source']} ({r['data']['tokens']:,} tokens, last 10% held out).",
        f"Paper: {p['source']}.\n",
        f"Forward model: {r['pair']['source']} -> {r['pair']['target']}, {r['pair']['training']}, {fm['params']:,} parameters "
        f"({100 * fm['share_of_main']:.1f}% of the main model). Evaluated on {r['data']['eval_tokens']:,} held-out tokens. "
        "The paper's headline values are for post_block0 -> post_block1 of its GPT.\n",
        "## Prediction\n",
        table(["metric", "ours", "paper"], [
            ["cosine", r["cosine"], p["cosine"]],
            ["skip baseline cosine (source vs target)", r["identity_cosine"], None],
            ["delta cosine (predicted vs true update)", r["delta_cosine"], None],
            ["delta R² (update energy explained)", r["delta_r2"], None],
            ["MSE", r["mse"], p["mse"]],
            ["per-position MLP baseline cosine", r["baseline_mlp"]["cosine"], p["baseline_mlp_cosine"]],
            ["per-position MLP baseline delta R²", r["baseline_mlp"]["delta_r2"], None],
            ["per-position MLP baseline recovery", r["baseline_mlp"]["recovery"], None],
        ], digits=4),
        "\nThe skip baseline says how much cosine copying the source already earns; delta cosine and delta R² "
        "measure only the layer's update. The paper reported neither.\n",
        "## Causal substitution\n",
        table(["mode", "accuracy (ours)", "accuracy (paper)", "KL vs normal (ours)", "KL (paper)", "CE (ours)"], [
            ["normal", s["accuracy_normal"], ps["accuracy_normal"], "-", "-", s["ce_normal"]],
            ["substituted (forward model)", s["accuracy_substituted"], ps["accuracy_substituted"], s["kl_substituted"], ps["kl_substituted"], s["ce_substituted"]],
            ["skipped (paper: ablated)", s["accuracy_skipped"], ps["accuracy_skipped"], s["kl_skipped"], ps["kl_skipped"], s["ce_skipped"]],
            ["zero-ablated", s["accuracy_zero"], None, s["kl_zero"], None, s["ce_zero"]],
        ], digits=4),
        (f"\n> Skipping the predicted layer costs only {fmt(s['kl_skipped'])} nats (< 0.3): the main model barely uses it, "
         "so recovery says little here. Train the main model longer or pick another layer pair.\n" if s["kl_skipped"] < 0.3 else ""),
        f"\n**Recovery = 1 - mean KL_sub / mean KL_skip = {fmt(s['recovery'])}** (paper {fmt(ps['recovery'], 2)}); "
        f"against zero-ablation: {fmt(s['recovery_vs_zero'])}.\n",
        "### By category (KL in nats)\n",
        table(["category", "tokens", "KL sub", "KL skip", "recovery"],
              [[name, c["tokens"], c["kl_substituted"], c["kl_skipped"], c["recovery"]] for name, c in r["categories"].items()], digits=4),
        f"\nPaper (toy): KL_sub {p['categories_kl_substituted']}. Category definitions: docs/forward-self-models.md.\n",
    ]
    cap_rows = [[c["name"], c["params"], f"{100 * c['share_of_main']:.1f}%", c["cosine"], c["identity_cosine"], c["delta_r2"], c["recovery"],
                 next((q["cosine"] for q in p["capacity_sweep"] if q["name"] == c["name"]), None)] for c in r["capacity_sweep"]]
    c0 = r["capacity_sweep"][0]
    lines += [f"## Capacity sweep (frozen, {c0['source']} -> {c0['target']}; paper: post_block0 -> post_block3)\n",
              table(["config", "params", "% of main", "cosine", "skip cosine", "delta R²", "recovery", "paper cosine"], cap_rows)]
    cap_png = _plot(out / "capacity_sweep.png", _sweep_plot(r["capacity_sweep"], "params", "forward-model parameters", p["capacity_sweep"], "params", "capacity", True))
    lines += [f"\n![capacity sweep]({cap_png})\n"]
    gap_rows = []
    for g in r["layer_gap_sweep"]:
        q = next((q for q in p["layer_gap_sweep"] if q["gap"] == g["gap"]), {})
        gap_rows.append([g["gap"], g["params"], g["cosine"], q.get("cosine"), g["kl_substituted"], g["kl_skipped"], g["recovery"], q.get("recovery")])
    lines += [f"## Layer-gap sweep (frozen, from {r['layer_gap_sweep'][0]['source']}; paper: from post_block0)\n",
              table(["gap", "params", "cosine", "paper cosine", "KL sub", "KL skip", "recovery", "paper recovery"], gap_rows, digits=4),
              f"\nNote: {p['layer_gap_note']}.\n"]
    gap_png = _plot(out / "layer_gap_sweep.png", _sweep_plot(r["layer_gap_sweep"], "gap", "layers predicted", p["layer_gap_sweep"], "gap", "layer gap", False))
    lines += [f"![layer-gap sweep]({gap_png})\n"]
    if "analysis" in r:
        lines += _analysis_section(r)
    records = read_jsonl(out / "metrics.jsonl")
    if records:
        lines += ["## Main-model training\n", f"![training curve]({_plot(out / 'training.png', _curve_plot(records))})\n"]
    lines += ["## Definitions\n"] + [f"- `{k}`: {v}" for k, v in r["definitions"].items()]
    lines += [f"\nWall time: {r['seconds']:.0f} s. Seed {r['seed']}.\n"]
    write_text(out / "report.md", "\n".join(lines))


def _analysis_section(r: dict) -> list[str]:
    """The paper's analyses of the headline pair, ours beside the paper's toy-GPT values."""
    a, p, plot = r["analysis"], r["paper"]["analysis"], r["analysis_plots"]
    g, sp = a["gauge"], a["residual_spectrum"]
    ranks = sp["variance_ranks"]
    cosines = lambda xs: " / ".join(f"{x:.3f}" for x in xs)  # noqa: E731
    pair = f"{r['pair']['source']} -> {r['pair']['target']}"
    lines = [f"## Analyses of the headline pair ({pair}; {a['tokens']:,} held-out tokens)\n"]
    if (r["pair"]["source"], r["pair"]["target"]) != ("post_block0", "post_block1"):
        lines.append(f"> The paper analysed post_block0 -> post_block1 of a 4 x 256 GPT; this run predicts "
                     f"{pair} (its forward model stands in for {a['compared_block']}, compared below), so the "
                     "numbers describe a different block and are not like for like.\n")
    lines += [
        f"### Attention similarity (forward model vs each head of {a['compared_block']})\n",
        "Best forward-model head per GPT head. Per example: each sequence's own pattern, then averaged. "
        "Batch-averaged (the paper's way): patterns averaged over sequences first, which leaves mostly positional structure.\n",
        table(["", "per GPT head (ours)", "paper"], [
            ["per example", cosines(a["attention_cosine_per_example"]), "-"],
            ["batch-averaged", cosines(a["attention_cosine_batch_averaged"]), p["attention_cosine"]]]),
        f"\n![attention similarity]({plot['attention']})\n",
        "### Gauge symmetry (forward head vs each GPT head, means over GPT heads)\n",
        "Raw cosines of the Q/K/V read weights (slices of the fused QKV, LayerNorm gains folded in) are not "
        "expected to match (any invertible R gives the same function); the QK circuit W_Qᵀ W_K and OV circuit "
        "W_O W_V are gauge-invariant. Raw cosines need equal head widths ('-' where the forward model's d_head "
        "differs from the GPT's). Overlaps: mean cos² of principal angles between read / write subspaces (null: random subspaces).\n",
        table(["", "Q cos", "K cos", "V cos", "QK circuit cos", "OV circuit cos", "Q read overlap", "O write overlap", "null overlap"], [
            ["ours", g["mean_q_cosine"], g["mean_k_cosine"], g["mean_v_cosine"], g["mean_qk_circuit_cosine"],
             g["mean_ov_circuit_cosine"], g["mean_q_read_overlap"], g["mean_o_write_overlap"], g["mean_null_overlap"]],
            ["paper", p["qkv_weight_cosine"], "", "", "-", "-", "-", "-", "-"]]),
        "\n### Linear CKA\n",
        table(["", "prediction vs target", "post-attention (forward vs GPT block)", "source vs target", "source vs prediction"], [
            ["ours", a["cka"]["prediction_vs_target"], a["cka"]["post_attention"], a["cka"]["source_vs_target"], a["cka"]["source_vs_prediction"]],
            ["paper", p["cka"], "-", p["cka_source"], p["cka_source"]]]),
        "\nSource vs target is the baseline: how similar the representations already are before the block.\n",
        "### Residual structure (r = target - prediction)\n",
        table(["", "ours", "paper (toy GPT, d=256)"], [
            ["ranks for 50 / 90 / 95% variance", f"{ranks['50%']} / {ranks['90%']} / {ranks['95%']} of {sp['max_rank']}", p["variance_ranks"]],
            ["effective rank exp(H(S²/ΣS²))", f"{a['effective_rank_entropy_s2']:.1f} of {sp['max_rank']}", p["eff_rank_s2"]],
            ["effective rank exp(H(S/ΣS))", f"{a['effective_rank_entropy_s']:.1f} of {sp['max_rank']}", p["eff_rank_s"]],
            ["top-1 PC variance", f"{100 * sp['top1_variance']:.1f}%", p["top1_variance"]],
            ["corr(residual norm, attention entropy)", a["entropy_correlation"]["raw"], "-"],
            ["corr(residual norm / update norm, attention entropy)", a["entropy_correlation"]["normalised_by_update_norm"], p["entropy_corr"]],
        ]),
        f"\n![residual spectrum]({plot['spectrum']}) ![entropy vs residual]({plot['entropy']})\n",
        "Residual norm by token category: d vs overall = (category mean - overall mean) / overall std (what the "
        "paper calls Cohen's d); pooled d = two-group Cohen's d (category vs the rest). "
        f"{a['positions'][0].upper() + a['positions'][1:]}; the update norm is ||target - source||; entropy is "
        f"the head-mean attention entropy of {a['compared_block']}.\n",
        table(["category", "tokens", "mean residual norm", "d vs overall", "pooled d", "paper d (toy)"],
              [[n, c["tokens"], c["mean"], c["d_vs_overall"], c["d_pooled"], p.get(n, "-")] for n, c in a["residual_categories"].items()]),
        f"\n![residual by category]({plot['categories']})\n",
    ]
    return lines
