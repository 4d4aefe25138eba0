"""report.md and the plots of a self-modeling-transformers grid, written from results.json's content.

The words are generated from the confidence intervals: a difference is called lower / higher only when its 95%
Welch CI excludes zero, and every such sentence carries the validation-loss difference of the same comparison.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from selfmodels.artifacts import write_text
from selfmodels.lm_selfmodeling.objective import METHODS
from selfmodels.report.figures import save_figure, subplots
from selfmodels.report.markdown import fmt, fmt_ci, table

COLORS = {"baseline": "black", "self-model": "tab:blue", "forward": "tab:purple", "activation-l2": "tab:orange",
          "random-target": "tab:red", "weight-decay": "tab:green"}
PLOTTED = (("val_loss", "validation loss (nats/token)"), ("unembedding_sd", "unembedding SD"),
           ("block_weight_sd_mean", "mean block weight SD"), ("llc_mean", "LLC"),
           ("observer_near_delta_r2", "observer update R² (near pair)"), ("observer_near_recovery", "observer recovery (near)"),
           ("observer_far_recovery", "observer recovery (far)"), ("final_resid_norm", "final residual norm"))


def _diff_text(d: dict, digits: int = 4) -> str:
    lo, hi = d.get("ci95_low"), d.get("ci95_high")
    if d.get("difference") is None:
        return "-"
    if lo is None or hi is None:
        return f"{fmt(d['difference'], digits)} (CI n/a)"
    return f"{fmt(d['difference'], digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def _verdict(d: dict) -> str:
    lo, hi = d.get("ci95_low"), d.get("ci95_high")
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return "not estimable"
    if hi < 0:
        return "lower"
    if lo > 0:
        return "higher"
    return "no clear difference"


def measure_vs_strength(summary: list[dict], out: Path) -> str:
    """One panel per measure: mean ± 95% CI against strength, a line per method (baseline at strength 0)."""
    fig, axes = subplots(2, 4, figsize=(18, 7.5), squeeze=False, constrained_layout=True)
    base = [r for r in summary if r["method"] == "baseline"]
    for ax, (measure, label) in zip(axes.flat, PLOTTED):
        for method in METHODS[1:]:
            rows = sorted((r for r in summary if r["method"] == method), key=lambda r: r["strength"])
            if not rows:
                continue
            line = ([] if method == "weight-decay" else base) + rows  # weight decay's strengths are its own scale
            x = [r["strength"] for r in line]
            y = [r.get(f"{measure}_mean", np.nan) for r in line]
            err = [r.get(f"{measure}_ci95") or 0.0 for r in line]
            ax.errorbar(x, np.asarray(y, float), yerr=np.nan_to_num(np.asarray(err, float)), marker="o", capsize=3,
                        color=COLORS[method], label=method)
        for r in base:
            if r.get(f"{measure}_mean") is not None:
                ax.axhline(r[f"{measure}_mean"], color="black", lw=0.8, ls=":")
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlim(left=-0.02)  # strengths are never negative
        ax.set_xlabel("strength w (0 = baseline, dotted; weight decay: its coefficient)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, out / "measures_vs_strength.png")


def residual_norms(summary: list[dict], out: Path) -> str:
    """Residual norm per index and block update norm per block, one line per condition (means over seeds)."""
    fig, axes = subplots(1, 2, figsize=(11, 4), squeeze=False, constrained_layout=True)
    for r in summary:
        style = dict(marker="o", color=COLORS[r["method"]], alpha=0.5 + 0.5 * (r["strength"] >= 10), label=r["condition"])
        axes[0][0].plot(range(-1, len(r["resid_norm_mean"]) - 1), r["resid_norm_mean"], **style)
        axes[0][1].plot(range(len(r["update_norm_mean"])), r["update_norm_mean"], **style)
    axes[0][0].set(xlabel="residual index (-1 = embeddings)", ylabel="mean ||h||", title="residual-stream norm")
    axes[0][1].set(xlabel="block", ylabel="mean ||h_k - h_{k-1}||", title="block update norm")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7)
    return save_figure(fig, out / "residual_norms.png")


def llc_traces(runs: list[dict], out: Path) -> str | None:
    """The chain-averaged λ̂ trace (10 window means) of every run, coloured by method."""
    rows = [r for r in runs if r.get("llc_trace_windows")]
    if not rows:
        return None
    fig, axes = subplots(1, 1, figsize=(7, 4), squeeze=False, constrained_layout=True)
    seen = set()
    for r in rows:
        label = r["condition"] if r["condition"] not in seen else None
        seen.add(r["condition"])
        axes[0][0].plot(r["llc_trace_windows"], color=COLORS[r["method"]], alpha=0.6, label=label)
    axes[0][0].set(xlabel="draw window (tenths of the chain, burn-in included)", ylabel="λ̂ (window mean)",
                   title="LLC traces")
    axes[0][0].legend(fontsize=7)
    axes[0][0].grid(alpha=0.3)
    return save_figure(fig, out / "llc_traces.png")


def _row(results: dict, condition: str, measure: str) -> dict | None:
    for d in results["differences"]:
        if d["condition"] == condition and d["measure"] == measure:
            return d
    return None


def _sentence(results: dict, condition: str, measure: str, name: str) -> str:
    d = _row(results, condition, measure)
    if d is None:
        return f"{name}: not measured."
    final, matched = d["vs_final_baseline"], d["vs_matched_baseline"]
    unequal = _verdict(d["val_loss_difference_vs_matched"]) in ("lower", "higher")
    caveat = " The matched losses still differ (CI excludes 0): no claim at equal loss." if unequal else ""
    return (f"{name}: against the final baseline {_verdict(final)} ({_diff_text(final)}; validation loss "
            f"{_diff_text(d['val_loss_difference_vs_final'])} nats); against the baseline snapshot at the nearest "
            f"validation loss {_verdict(matched)} ({_diff_text(matched)}; loss difference "
            f"{_diff_text(d['val_loss_difference_vs_matched'])}).{caveat}")


def write_report(results: dict, out: str | Path) -> None:
    out = Path(out)
    plots = [measure_vs_strength(results["summary"], out), residual_norms(results["summary"], out)]
    traces = llc_traces(results["runs"], out)
    if traces:
        plots.append(traces)
    s = results["settings"]
    base = s["base"]
    lines = ["# Self-modeling transformers\n",
             "Do language models that model themselves become simpler (LLC, weight spread) and easier for a fresh "
             "forward model to predict, at equal validation loss? Every difference below is mean(condition) - "
             "mean(baseline) with Welch's 95% CI over seeds, beside the validation-loss difference of the same "
             "comparison (nats/token): a difference in complexity that comes with a worse loss is not a simpler model "
             "at equal skill.\n"]
    if results.get("note"):
        lines.append(results["note"] + "\n")
    g = base["gpt"]
    lines.append(f"Setup: {'our GPT ' + str(g['n_layer']) + ' x ' + str(g['n_head']) + ' x ' + str(g['d_model']) if base['main'] == 'gpt' else base['main']}"
                 f" ({s.get('params')} parameters), context {base['seq_len']}, vocabulary {base['corpus']['vocab_size']} "
                 f"(byte-level BPE on the {base['corpus']['corpus']} corpus), {base['lm']['steps']} steps x "
                 f"{base['lm']['batch_size']} sequences, AdamW lr {base['lm']['lr']} (decay {base['lm']['weight_decay']}); "
                 f"seeds {s['seeds']}; {s['workers']} worker(s) on {s['cpu_count']} CPU(s). Observer: 1-block forward "
                 f"model ({base['observer']['n_head']} x {base['observer']['d_head']}), {base['observer']['steps']} steps x "
                 f"{base['observer']['batch_size']} held-out windows; near pair {base['observer']['near']}, far pair "
                 f"{base['observer']['far']}. LLC: {base['llc']['chains']} chains x {base['llc']['draws']} draws, "
                 f"epsilon {base['llc']['epsilon']}, gamma {base['llc']['gamma']}, sampler {base['llc'].get('sampler', 'sgld')}, "
                 f"nβ = n / ln n with n the predicted tokens of a minibatch.\n")
    lines.append("## Answers\n")
    conditions = [r for r in results["summary"] if r["method"] != "baseline"]
    lines.append("At a glance: each cell is the verdict of the difference from the baseline snapshot at the nearest "
                 "validation loss (lower / higher when its 95% Welch CI excludes 0), with the difference; the third "
                 "column says whether those matched losses differ (CI excludes 0: no claim at equal loss; a wide CI that "
                 "includes 0 is not evidence of equal loss either: read its width).\n")
    glance = []
    for r in conditions:
        c = r["condition"]
        row = [c, _diff_text((_row(results, c, "unembedding_sd") or {}).get("val_loss_difference_vs_final", {}), 3)]
        any_row = _row(results, c, "unembedding_sd") or {}
        loss_m = any_row.get("val_loss_difference_vs_matched", {})
        loss_verdict = _verdict(loss_m)
        row.append({"no clear difference": "CI includes 0", "not estimable": "not estimable"}.get(loss_verdict, "differ")
                   + f" ({_diff_text(loss_m, 3)})")
        for m in ("llc_mean", "unembedding_sd", "block_weight_sd_mean", "observer_near_delta_r2", "observer_near_recovery"):
            d = _row(results, c, m)
            row.append("-" if d is None else f"{_verdict(d['vs_matched_baseline'])} ({_diff_text(d['vs_matched_baseline'], 3)})")
        row.append(f"{r['drift_runs']}/{r['n']}")
        glance.append(row)
    lines.append(table(["condition", "val-loss diff vs final baseline", "matched losses", "LLC", "unembedding SD",
                        "block weight SD", "observer R² (near)", "observer recovery (near)", "drift"], glance))
    lines.append("")
    for r in conditions:
        c = r["condition"]
        drift = f" **{r['drift_runs']} of {r['n']} runs drifted** (residual norm > 2x or a block update < 0.2x the baseline's)." if r["drift_runs"] else ""
        lines.append(f"**{c}**.{drift}\n")
        for measure, name in (("llc_mean", "LLC"), ("unembedding_sd", "Unembedding SD"),
                              ("block_weight_sd_mean", "Block weight SD"),
                              ("observer_near_delta_r2", "Fresh observer's update R² (near pair)"),
                              ("observer_near_recovery", "Fresh observer's recovery (near pair)"),
                              ("observer_far_recovery", "Fresh observer's recovery (far pair)")):
            lines.append(f"- {_sentence(results, c, measure, name)}")
        lines.append("")
    counts = [(r["condition"], r["observer_near_counts"], r["observer_far_counts"]) for r in results["summary"]]
    bad = [c for c, near, far in counts if not (near and far)]
    lines.append("Observer pairs count only when skipping their blocks costs at least 0.3 nats of KL: "
                 + ("every condition's pairs clear it." if not bad else f"**not cleared** in {', '.join(bad)} "
                    "(see kl_skipped below; recovery there means little).") + "\n")
    lines.append("## Per condition (mean ± 95% CI over seeds)\n")
    cols = ["val_loss", "bits_per_byte", "accuracy", "unembedding_sd", "block_weight_sd_mean", "llc_mean",
            "observer_near_delta_r2", "observer_near_recovery", "observer_near_kl_skipped", "observer_far_recovery",
            "observer_far_kl_skipped", "fit_mse", "fit_cosine"]
    rows = [[r["condition"], r["n"], *[fmt_ci(r.get(f"{m}_mean"), r.get(f"{m}_ci95"), 4) for m in cols], str(r["drift_runs"])]
            for r in results["summary"]]
    lines.append(table(["condition", "n", *cols, "drift runs"], rows))
    lines.append("\nCosine beside the skip cosine (near / far pair):\n")
    rows = [[r["condition"], *[fmt_ci(r.get(f"observer_{p}_{m}_mean"), r.get(f"observer_{p}_{m}_ci95"), 4)
                               for p in ("near", "far") for m in ("cosine", "skip_cosine")]] for r in results["summary"]]
    lines.append(table(["condition", "near cosine", "near skip cosine", "far cosine", "far skip cosine"], rows))
    lines.append("\n## Differences from the baseline (Welch 95% CI)\n")
    rows = [[d["condition"], d["measure"], _diff_text(d["vs_final_baseline"]), _diff_text(d["val_loss_difference_vs_final"]),
             _diff_text(d["vs_matched_baseline"]), _diff_text(d["val_loss_difference_vs_matched"]),
             ", ".join(str(x) for x in d["matched_steps"])] for d in results["differences"]]
    lines.append(table(["condition", "measure", "vs final baseline", "val-loss diff", "vs matched-loss baseline",
                        "val-loss diff (matched)", "matched steps"], rows))
    lines.append("\n## Plots\n")
    lines += [f"![{p}]({p})" for p in plots]
    lines.append("\n## Definitions\n")
    lines += [f"- `{k}`: {v}" for k, v in results["definitions"].items()]
    write_text(out / "report.md", "\n".join(lines) + "\n")
