"""``report.md`` of a forward-self-model run, for every subject: our numbers beside the paper's, with plots.

One writer with optional sections: the baseline, the sweeps, the decomposition and the analyses appear
when the run has them. It reads only ``results.json``-shaped data (and ``metrics.jsonl`` for curves).
"""

from __future__ import annotations

from pathlib import Path

from selfmodels.artifacts import read_jsonl, write_text
from selfmodels.report.figures import save_figure, subplots
from selfmodels.report.markdown import fmt, table

WEAK_SKIP_NATS = 0.3  # below this KL of skipping, recovery says little


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _index(k: int) -> str:
    return "embed (-1)" if k == -1 else str(k)


def _sweep_plot(rows: list[dict], x_key: str, x_label: str, paper_rows: list[dict], title: str, logx: bool, path: Path) -> str:
    fig, axes = subplots(1, 2, figsize=(9, 3.4))
    xs = [r[x_key] for r in rows]
    axes[0].plot(xs, [r["cosine"] for r in rows], "o-", label="ours")
    axes[0].plot(xs, [r["skip_cosine"] for r in rows], "s:", color="grey", label="skip baseline (ours)")
    if paper_rows:
        axes[0].plot([p[x_key] for p in paper_rows], [p["cosine"] for p in paper_rows], "x--", label="paper")
    axes[0].set(xlabel=x_label, ylabel="cosine", title=f"{title}: cosine")
    axes[1].plot(xs, [r["recovery"] for r in rows], "o-", label="ours")
    if paper_rows and "recovery" in paper_rows[0]:
        axes[1].plot([p[x_key] for p in paper_rows], [p["recovery"] for p in paper_rows], "x--", label="paper")
    axes[1].set(xlabel=x_label, ylabel="recovery", title=f"{title}: recovery")
    for ax in axes:
        if logx:
            ax.set_xscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _curves_plot(records: list[dict], path: Path) -> str | None:
    """The subject's LM loss (when trained here) and every forward model's training MSE."""
    subject = [r for r in records if r.get("model") == "subject"]
    models = sorted({r["model"] for r in records if r.get("model") != "subject" and "forward_mse" in r})
    if not subject and not models:
        return None
    fig, axes = subplots(1, 2 if subject else 1, figsize=(10 if subject else 5.5, 3.4), squeeze=False)
    axes = axes[0]
    if subject:
        # "ce": the LM's own loss ("loss" also counts a co-trained forward model's MSE); curves of earlier versions have "loss" only
        train = [(r["step"], r.get("ce", r.get("loss"))) for r in subject if "ce" in r or "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in subject if "val_loss" in r]
        if train:
            axes[0].plot(*zip(*train), label="train loss")
        if val:
            axes[0].plot(*zip(*val), "o-", label="validation loss")
        axes[0].set(xlabel="step", ylabel="cross-entropy (nats)", title="subject (our GPT)")
        axes[0].legend(fontsize=8)
    ax = axes[-1]
    for name in models:
        pts = [(r["step"], r["forward_mse"]) for r in records if r.get("model") == name and r.get("forward_mse")]
        if pts:
            ax.plot(*zip(*pts), label=name)
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="training MSE", title="forward models")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _header(r: dict) -> list[str]:
    m, d, pair, f, p = r["subject"], r["data"], r["pair"], r["forward_model"], r["paper"]
    c = f["config"]
    trained = m.get("training")
    origin = (f"our GPT trained here for {trained['steps']:,} steps ({trained.get('tokens_seen') or 0:,} tokens)"
              if trained else f"{m['id']} (revision {m.get('revision') or 'unknown'})")
    mlp = f"SwiGLU hidden {c['swiglu_hidden'] or c['mlp_mult'] * c['d_model']}" if c["mlp"] == "swiglu" else f"GELU MLP {c['mlp_mult']}x"
    architecture = c.get("architecture", "transformer")
    shape = (f"{c['n_layer']} block(s), {c['n_head']} head(s) x {c['d_head']}, {mlp}" if architecture == "transformer"
             else f"architecture {architecture}")
    train = f["train"]
    lines = [
        f"# Forward self-model on {m['name']}: {_index(pair['source'])} -> {_index(pair['target'])}\n",
        f"**Subject**: {m['family']}, {origin}; {m['params']:,} parameters, {m['n_layers']} blocks, d = {m['d_model']}, "
        f"{m['n_heads']} query heads in {m['n_kv_heads']} KV groups of d_head {m['d_head']}; {m['dtype']}; weights "
        f"sha256 {m['weights_sha256'][:16]}. Held-out cross-entropy {fmt(m['val_loss'])} nats/token.\n",
        f"**Data**: corpus `{d['corpus']}` ({d['source']}), {d['tokens']:,} tokens ({d['tokenizer']}); "
        f"{d['train_tokens']:,} training / {d['val_tokens']:,} held-out tokens, {d['split']}; windows of {d['seq_len']} "
        f"tokens ({'with' if d['bos'] else 'no'} BOS); evaluation on {d['eval_tokens']:,} held-out tokens "
        f"({d['eval_sequences']} windows). **Seed** {r['seed']}.\n",
        f"**Layers**: source {_index(pair['source'])} (`{m['source_hook']}`) -> target {_index(pair['target'])} "
        f"(`{m['target_hook']}`): the forward model stands in for {pair['blocks_predicted']} block(s).\n",
        f"**Forward model**: {shape}, {f['params']:,} "
        f"parameters ({_pct(f['share_of_main'])} of the subject); {pair['training']}"
        + (f", {train['steps']:,} steps of {f['train_config']['batch_size']} x {d['seq_len']} tokens at lr "
           f"{f['train_config']['lr']:g} in {train['seconds']:.0f} s" if "seconds" in train else "")
        + f". Saved in `{f['saved_to']}/` (load it with `ForwardModel.from_pretrained`).\n",
    ]
    if r.get("analysis_skipped"):
        lines.append(f"**Analyses**: not run: {r['analysis_skipped']}.\n")
    lines += [b["setup"] for b in (r.get("baselines") or {}).values() if b["setup"]]
    lines.append(f"**Paper**: {p['label']}.\n")
    return lines


def _prediction(r: dict) -> list[str]:
    """The forward model beside every baseline of the run (``results["baselines"]``) and the paper."""
    from selfmodels.forward.metrics import METRICS

    s, p = r["substitution"], r["paper"]
    shown = r.get("baselines") or {}
    entries = [r.get(name) for name in shown]  # None: a baseline that was off for the run
    paper_pair = f"{p['source']} -> {p['target']}"

    def row(name, ours, of_baseline, paper):
        return [name, ours, *[("-" if e is None else of_baseline(e)) for e in entries], paper]

    rows = [[ "parameters", f"{r['forward_model']['params']:,}", *[b["parameters"] for b in shown.values()],
             f"{p['forward_params']:,}"]]
    for name, m in METRICS.items():  # every registered metric, in its order (built in: cosine .. MSE)
        shape = (lambda v: fmt(v, m.digits)) if m.digits else (lambda v: v)
        rows.append(row(m.label, shape(r[name]), lambda e: shape(e.get(name)), shape(p.get(name))))
    for mode in ("normal", "substituted", "skipped", "zero"):
        key = f"accuracy_{mode}"
        rows.append(row(f"accuracy {mode}", s[key], lambda e: e["substitution"].get(key), p.get(key)))
    for mode in ("substituted", "skipped", "zero"):
        key = f"kl_{mode}"
        rows.append(row(f"KL {mode} (nats)", s[key], lambda e: e["substitution"].get(key), p.get(key)))
    rows.append(row("**recovery**", s["recovery"], lambda e: e["recovery"], p["recovery"]))
    rows.append(row("recovery against zero-ablation", s["recovery_vs_zero"], lambda e: e["substitution"].get("recovery_vs_zero"), None))
    lines = [
        "## Prediction and causal substitution (held-out text)\n",
        "`cosine`: mean per-token cosine; `skip cosine`: the source itself against the target (what copying scores); "
        "`update cosine` / `update R²`: the predicted against the true update (target - source), which the paper did not "
        "report. Substitution replaces the predicted blocks' output and runs the rest of the subject; skipped = those blocks "
        "as the identity (the paper's \"ablated\"); zero = the target residual set to 0; recovery = 1 - mean KL_sub / mean KL_skip.\n",
        table(["", "ours: forward model", *[b["column"] for b in shown.values()], f"paper ({paper_pair})"], rows, digits=4),
        *[b["note"] for b in shown.values() if b["note"]],
        "MSE is in the subject's own activation units: it compares only within one subject.\n",
    ]
    if s["kl_skipped"] < WEAK_SKIP_NATS:
        lines.append(f"> Skipping the predicted blocks costs only {fmt(s['kl_skipped'])} nats (< {WEAK_SKIP_NATS}): the subject "
                     "barely uses them, so recovery says little here. Train the subject longer or pick another layer pair.\n")
    return lines


def _final_skip_kl(r: dict, block: int) -> tuple[float | None, str]:
    """Block ``block``'s skip KL at the end of our GPT's training and where it was measured: the last snapshot if it
    was taken at the last step, else the headline substitution when it skips exactly that block."""
    training = r["subject"].get("training") or {}
    shots = training.get("snapshots") or []
    if shots and shots[-1]["step"] == training.get("steps") and block < len(shots[-1]["skip_kl"]):
        return shots[-1]["skip_kl"][block], f"the snapshot at step {shots[-1]['step']:,}, on the GPT's validation windows"
    pair = r["pair"]
    if (pair["source"], pair["target"]) == (block - 1, block):
        return r["substitution"]["kl_skipped"], "the substitution's held-out windows"
    return None, "not measured"


def _skip_verdict(r: dict) -> list[str]:
    """First, when our GPT was trained with snapshots: whether the paper's block (1) matters to it at the end."""
    training = r["subject"].get("training") or {}
    if not training.get("snapshots"):
        return []
    block = r["paper"].get("target", 1)
    kl, where = _final_skip_kl(r, block)
    paper = r["paper"].get("kl_skipped")
    if kl is None:
        return [f"> Block {block}'s skip KL at the end of training was not measured.\n"]
    if kl < WEAK_SKIP_NATS:
        return [f"> **Block {block}'s skip KL at the end of training is {fmt(kl, 4)} nats, under {WEAK_SKIP_NATS}** ({where}; "
                f"the paper's {fmt(paper)}): our GPT barely uses block {block}, so the block-{block} numbers below, recovery first, "
                "cannot be compared with the paper's.\n"]
    return [f"> Block {block}'s skip KL at the end of training: {fmt(kl, 4)} nats ({where}; the paper's {fmt(paper)}), "
            f"at least {WEAK_SKIP_NATS}: our GPT uses block {block}.\n"]


def _subject_training(r: dict) -> list[str]:
    """Our GPT's training beside the paper's (tokens seen, epochs, train / validation gap, snapshots), when it was
    trained with snapshots."""
    training, d, p = r["subject"].get("training") or {}, r["data"], r["paper"]
    shots = training.get("snapshots") or []
    if not shots:
        return []
    seen, train_tokens = training["tokens_seen"], d["train_tokens"]
    last = shots[-1]
    n_blocks = len(last["skip_kl"])
    block = p.get("target", 1)
    rows = [[f"{s['tokens']:,}", f"{s['step']:,}", f"{s['tokens_seen']:,}", f"{s['tokens_seen'] / train_tokens:.2f}",
             s["train_loss"], s["val_loss"], s["train_loss"] - s["val_loss"], *s["skip_kl"]] for s in shots]
    machine = training.get("machine") or {}
    load = machine.get("load_before")
    where = (f" Trained on {machine.get('cpu')} ({machine.get('cores')} cores, {machine.get('threads')} torch threads, "
             f"{machine.get('device')}) in {training['seconds']:.0f} s ({training['seconds'] / 60:.1f} min; the training call that "
             "finished it, from its start or its resumption)"
             + (f", load average {load[0]} before and {machine['load_after'][0]} after" if load and machine.get("load_after") else "")
             + "." if machine else "")
    if training.get("reused_from_cache"):
        where += f" (Reused from the cache, `{training['reused_from_cache']}`: the times are of the run that trained it.)"
    return [
        "## Our GPT's training against the paper's\n",
        f"Tokens seen: **{seen:,}** ({training['steps']:,} steps), against the paper's ~{p.get('training_tokens_seen', 0):,} "
        f"({p.get('training_setup', '-')}): {seen / p['training_tokens_seen']:.1%} of it. Epochs over the corpus's training "
        f"split ({train_tokens:,} tokens): **{seen / train_tokens:.2f}**. Train / validation gap at the end: "
        f"{fmt(last['train_loss'], 4)} - {fmt(last['val_loss'], 4)} = **{fmt(last['train_loss'] - last['val_loss'], 4)}** nats "
        "(both measured in eval mode on as many windows: the validation windows, and training windows spread over the "
        "training split)." + where + "\n",
        table(["snapshot (tokens)", "step", "tokens seen", "epochs", "train loss", "val loss", "gap",
               *[f"skip KL block {k}" + (" (paper's)" if k == block else "") for k in range(n_blocks)]], rows, digits=4),
        f"Skip KL of block k: mean KL(normal || block k as the identity) in nats over the validation windows' tokens "
        f"(the paper's block {block}: {fmt(p.get('kl_skipped'))}). Weights of each snapshot: `snapshots/tokens_N.safetensors` "
        "beside the GPT's cached training (`subject/token_snapshots.jsonl` here).\n",
    ]


def _baseline_sources(r: dict) -> list[str]:
    """The per-position MLP from each extra source (the paper's from the embeddings) beside the headline pair's."""
    extra = r.get("baseline_mlp_sources")
    if not extra:
        return []
    p, pair = r["paper"], r["pair"]
    rows = []
    head = r.get("baseline_mlp")
    if head:
        rows.append([f"{_index(pair['source'])} -> {_index(pair['target'])} (the headline pair)", f"{head['params']:,}",
                     f"{head['train']['steps']:,}", head["cosine"], head["skip_cosine"], head["delta_r2"], head["recovery"],
                     fmt(p.get("baseline_mlp_cosine")) if p.get("baseline_mlp_source") == pair["source"] else "-"])
    for e in extra:
        rows.append([f"{_index(e['source'])} -> {_index(e['target'])}", f"{e['params']:,}", f"{e['train']['steps']:,}",
                     e["cosine"], e["skip_cosine"], e["delta_r2"], e["recovery"],
                     fmt(p.get("baseline_mlp_cosine")) if p.get("baseline_mlp_source") == e["source"] else "-"])
    return ["### Per-position MLP by source\n",
            "The per-position MLP (no attention) on the headline pair and from each further source to the target, the same "
            "hidden width, steps and data; recovery from its own source skips the blocks it stands in for. The paper's 0.788 is "
            "its per-position MLP from the embeddings.\n",
            table(["pair", "params", "steps", "cosine", "skip cosine", "update R²", "recovery", "paper cosine"], rows, digits=4)]


def _categories(r: dict) -> list[str]:
    p = r["paper"]
    rows = [[name, c["tokens"], c["kl_substituted"], c["kl_skipped"], c["recovery"], fmt(p["category_recovery"].get(name))]
            for name, c in r["categories"].items()]
    return ["### By behavioural category (forward model)\n",
            table(["category", "tokens", "KL sub", "KL skip", "recovery", "paper recovery"], rows, digits=4),
            f"Paper: {p['categories']}. Category definitions: docs/forward-self-models.md.\n"]


def _sweeps(r: dict, out: Path) -> list[str]:
    p, lines = r["paper"], []
    cap = r.get("capacity_sweep") or []
    if cap:
        rows = [[c["name"], f"{c['params']:,}", _pct(c["share_of_main"]), c["cosine"], c["skip_cosine"], c["delta_r2"], c["recovery"],
                 next((q["cosine"] for q in p["capacity_sweep"] if q["name"] == c["name"]), None)] for c in cap]
        headers = ["config", "params", "% of subject", "cosine", "skip cosine", "update R²", "recovery", "paper cosine"]
        sloped = all("loss_slope" in c for c in cap)
        if sloped:  # --sweeps.slope-fraction: whether each size had converged
            headers += ["steps x batch", "final train MSE", f"MSE slope per 1k steps (last {cap[0]['loss_slope']['fraction']:.0%})",
                        "fitted change over it"]
            for row, c in zip(rows, cap):
                slope = c["loss_slope"]
                row += [f"{c['train_steps']:,} x {c['train_tokens'] // c['train_steps'] // r['data']['seq_len']}",
                        fmt(c["train_mse"], 5), "-" if slope["per_1k_steps"] is None else f"{slope['per_1k_steps']:+.2e}",
                        _pct(slope["relative_change"])]
        png = _sweep_plot(cap, "params", "forward-model parameters", p["capacity_sweep"], "capacity", True, out / "plots" / "capacity_sweep.png")
        lines += [f"## Capacity sweep ({_index(cap[0]['source'])} -> {_index(cap[0]['target'])}, from the activation cache; "
                  "paper: post_block0 -> post_block3)\n",
                  table(headers, rows)]
        if sloped:
            lines.append(f"\nEvery size trained on the same tokens ({cap[0]['train_tokens']:,} each; the paper: "
                         f"{p.get('capacity_setup', '-')}). The slope is the least-squares fit of the logged training MSE "
                         "against the step over the last part of its steps; the fitted change is slope x that span / its mean "
                         "MSE: near 0 once a size has converged, clearly negative while it is still learning.\n")
        lines.append(f"\n![capacity sweep](plots/{png})\n")
    gaps = r.get("layer_gap_sweep") or []
    if gaps:
        rows = []
        for g in gaps:
            q = next((q for q in p["layer_gap_sweep"] if q["gap"] == g["gap"]), {})
            rows.append([g["gap"], f"{g['params']:,}", g["cosine"], g["skip_cosine"], q.get("cosine"), g["kl_substituted"], g["kl_skipped"],
                         g["recovery"], q.get("recovery")])
        png = _sweep_plot(gaps, "gap", "blocks predicted", p["layer_gap_sweep"], "layer gap", False, out / "plots" / "layer_gap_sweep.png")
        lines += [f"## Layer-gap sweep (from {_index(gaps[0]['source'])}, from the activation cache; paper: from post_block0)\n",
                  table(["gap", "params", "cosine", "skip cosine", "paper cosine", "KL sub", "KL skip", "recovery", "paper recovery"], rows, digits=4),
                  (f"\nNote: {p['layer_gap_note']}.\n" if p.get("layer_gap_note") else "\n"), f"![layer-gap sweep](plots/{png})\n"]
    return lines


def _post_norm_note(subject: dict) -> str:
    """How the heads are split where the block normalises the attention output before adding it (Gemma, OLMo 2):
    the subject's own words (``describe()["structure"]["heads"]``, also in results.json)."""
    structure = subject.get("structure") or {}
    return f" Post-norm block: {structure['heads']}." if structure.get("norms") in ("pre+post", "post") else ""


def _decomposition(r: dict) -> list[str]:
    d, p = r.get("decomposition"), r["paper"].get("decomposition") or {}
    if not d:
        return []
    return [
        "## Decomposition of the predicted block's update\n",
        f"Update = per-head writes + output-projection bias + MLP output; reconstruction error {d['reconstruction_error']:.2e} "
        "(relative Frobenius). Residual = target - forward-model prediction." + _post_norm_note(r["subject"]) + "\n",
        table(["", "ours", "paper (Llama 7 -> 8)"], [
            ["attention norm share", _pct(d["heads_norm_share"]), _pct(p.get("heads_norm_share"))],
            ["MLP norm share", _pct(d["mlp_norm_share"]), _pct(p.get("mlp_norm_share"))],
            ["cos(head, residual), mean", d["heads_cos_residual_mean"], p.get("heads_cos_residual_mean")],
            ["cos(head, residual), range", f"{d['heads_cos_residual_min']:+.3f} .. {d['heads_cos_residual_max']:+.3f}", p.get("heads_cos_range", "-")],
            ["cos(MLP, residual)", d["mlp_cos_residual"], p.get("mlp_cos_residual")],
            ["corr(|MLP|, |residual|)", d["mlp_norm_corr"], p.get("mlp_norm_corr")],
            ["corr(|head|, |residual|), mean", d["heads_norm_corr_mean"], p.get("heads_norm_corr")],
            ["residual variance in a head's output subspace", f"{_pct(d['head_residual_variance_fraction_min'])} .. "
             f"{_pct(d['head_residual_variance_fraction_max'])} (null {_pct(d['head_null_fraction'])})", p.get("head_variance_fraction", "-")],
        ]),
        table(["KV group", "heads", "norm share", "cos(group, residual)", "corr(|group|, |residual|)", "residual variance fraction (null)"],
              [[g["kv_group"], str(g["heads"]), _pct(g["norm_share"]), g["cos_residual"], g["norm_corr"],
                f"{_pct(g['residual_variance_fraction'])} ({_pct(d['group_null_fraction'])})"] for g in d["kv_groups"]]),
        f"![decomposition](plots/{r['plots']['decomposition']})\n" if "decomposition" in r["plots"] else "",
    ]


def _analyses(r: dict) -> list[str]:
    """The analyses of the pair; what a subject without block parts skipped is named, with the reason, first."""
    a = r.get("analysis")
    if not a:
        return []
    p, plot = r["paper"]["analysis"], r["plots"]
    sp = a["residual_spectrum"]
    ranks = sp["variance_ranks"]
    cosines = lambda xs: " / ".join(f"{x:.3f}" for x in xs)  # noqa: E731
    block = a["compared_block"]
    lines = [f"## Analyses of the pair ({a['tokens']:,} held-out tokens)\n",
             f"The forward model is compared with block {block}, the first block it stands in for (it reads the same residual). "
             "The paper's values are from its toy GPT's pair (0 -> 1, 4 heads of 64, d = 256): a different block of a different "
             "model, shown for scale, not like for like.\n"]
    if a.get("skipped"):
        lines.append(f"> **Skipped**: {', '.join(a['skipped']['analyses'])}. Why: {a['skipped']['reason']}.\n")
    if "attention_cosine_per_example" in a:
        lines += [f"### Attention similarity (forward model vs each head of block {block})\n",
                  "Best forward-model head per subject head. Per example: each sequence's own pattern, then averaged. "
                  "Batch-averaged (the paper's way): patterns averaged over sequences first, which leaves mostly positional structure.\n",
                  table(["", "per subject head (ours)", "paper"], [
                      ["per example", cosines(a["attention_cosine_per_example"]), "-"],
                      ["batch-averaged", cosines(a["attention_cosine_batch_averaged"]), p["attention_cosine"]]]),
                  f"\n![attention similarity](plots/{plot['attention']})\n"]
    if "gauge" in a:
        g = a["gauge"]
        lines += ["### Gauge symmetry (forward head vs each subject head, means over subject heads)\n",
                  "Raw cosines of the Q/K/V read weights (norm gains folded in) are not expected to match (any invertible R gives "
                  "the same function) and need equal head widths ('-' otherwise); the QK circuit W_Qᵀ W_K (before any rotary "
                  "embedding) and OV circuit W_O W_V are gauge-invariant. Overlaps: mean cos² of principal angles between read / "
                  "write subspaces (null: random subspaces).\n",
                  table(["", "Q cos", "K cos", "V cos", "QK circuit cos", "OV circuit cos", "Q read overlap", "O write overlap", "null overlap"], [
                      ["ours", g["mean_q_cosine"], g["mean_k_cosine"], g["mean_v_cosine"], g["mean_qk_circuit_cosine"],
                       g["mean_ov_circuit_cosine"], g["mean_q_read_overlap"], g["mean_o_write_overlap"], g["mean_null_overlap"]],
                      ["paper", p["qkv_weight_cosine"], "", "", "-", "-", "-", "-", "-"]])]
    entropy = a.get("entropy_correlation")
    structure = [
        ["ranks for 50 / 90 / 95% variance", f"{ranks['50%']} / {ranks['90%']} / {ranks['95%']} of {sp['max_rank']}", p["variance_ranks"]],
        ["effective rank exp(H(S²/ΣS²))", f"{a['effective_rank_entropy_s2']:.1f} of {sp['max_rank']}", p["eff_rank_s2"]],
        ["effective rank exp(H(S/ΣS))", f"{a['effective_rank_entropy_s']:.1f} of {sp['max_rank']}", p["eff_rank_s"]],
        ["top-1 PC variance", f"{100 * sp['top1_variance']:.1f}%", p["top1_variance"]],
    ]
    if entropy is not None:
        structure += [["corr(residual norm, attention entropy)", entropy["raw"], "-"],
                      ["corr(residual norm / update norm, attention entropy)", entropy["normalised_by_update_norm"], p["entropy_corr"]]]
    lines += ["\n### Linear CKA\n",
              table(["", "prediction vs target", "post-attention (forward vs subject block)", "source vs target", "source vs prediction"], [
                  ["ours", a["cka"]["prediction_vs_target"], a["cka"].get("post_attention", "-"), a["cka"]["source_vs_target"],
                   a["cka"]["source_vs_prediction"]],
                  ["paper", p["cka"], "-", p["cka_source"], p["cka_source"]]]),
              "\nSource vs target is the baseline: how similar the representations already are before the block.\n",
              "### Residual structure (r = target - prediction)\n",
              table(["", "ours", "paper (toy GPT, d=256)"], structure),
              ("\nPaper (Llama 7 -> 8): effective rank "
               f"{_pct(p['llama_effective_rank_fraction'])} of the maximum (definition not stated), top-1 PC variance "
               f"{_pct(p['llama_top1_variance'])}.\n" if "llama_effective_rank_fraction" in p else ""),
              f"\n![residual spectrum](plots/{plot['spectrum']})" + (f" ![entropy vs residual](plots/{plot['entropy']})" if "entropy" in plot else "") + "\n",
              "Residual norm by token category: d vs overall = (category mean - overall mean) / overall std (what the paper calls "
              f"Cohen's d); pooled d = two-group Cohen's d (category vs the rest). {a['positions'][0].upper() + a['positions'][1:]}; "
              "the update norm is ||target - source||" + (f"; entropy is the head-mean attention entropy of block {block}" if entropy else "") + ".\n",
              table(["category", "tokens", "mean residual norm", "d vs overall", "pooled d", "paper d (toy)"],
                    [[n, c["tokens"], c["mean"], c["d_vs_overall"], c["d_pooled"], p["residual_category_d"].get(n, "-")]
                     for n, c in a["residual_categories"].items()]),
              f"\n![residual by category](plots/{plot['categories']})\n"]
    return lines


def write_report(out: Path, r: dict) -> None:
    """Write ``out/report.md`` (and its plots into ``out/plots``) from a results dict."""
    out = Path(out)
    lines = (_header(r) + _subject_training(r) + _prediction(r) + _baseline_sources(r) + _categories(r) + _sweeps(r, out)
             + _decomposition(r) + _analyses(r))
    if (out / "explorer.html").is_file():  # written by `reproduce` (or `forward explore`): docs/explorer.md
        lines[1:1] = ["**Explore it token by token**: [explorer.html](explorer.html) (one self-contained page; "
                      "the per-token arrays in explorer.npz).\n"]
    lines[1:1] = _skip_verdict(r)  # first, under the title
    curves = _curves_plot(read_jsonl(out / "metrics.jsonl"), out / "plots" / "training.png")
    if curves:
        lines += ["## Training curves\n", f"![training curves](plots/{curves})\n"]
    lines += ["## Definitions\n"] + [f"- `{k}`: {v}" for k, v in r["definitions"].items()]
    computed = [name for name, s in r["stages"].items() if s["computed"]]
    lines += [f"\nWall time of this invocation: {r['seconds']:.0f} s; stages computed now: {', '.join(computed) or 'none (all reused)'}. "
              f"Results schema version {r['schema_version']} (docs/forward-self-models.md).\n"]
    write_text(out / "report.md", "\n".join(lines))
