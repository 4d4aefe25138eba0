"""report.md and the plots of a self-modeling-transformers grid, written from results.json's content.

The words are generated from the confidence intervals: a difference is called lower / higher only when its 95%
Welch CI excludes zero, and every such sentence carries the validation-loss difference of the same comparison.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from selfmodels.artifacts import write_text
from selfmodels.lm_selfmodeling.config import METHODS
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
        for method in METHODS.names()[1:]:
            rows = sorted((r for r in summary if r["method"] == method), key=lambda r: r["strength"])
            if not rows:
                continue
            line = ([] if method == "weight-decay" else base) + rows  # weight decay's strengths are its own scale
            x = [r["strength"] for r in line]
            y = [r.get(f"{measure}_mean", np.nan) for r in line]
            err = [r.get(f"{measure}_ci95") or 0.0 for r in line]
            ax.errorbar(x, np.asarray(y, float), yerr=np.nan_to_num(np.asarray(err, float)), marker="o", capsize=3,
                        color=COLORS.get(method), label=method)
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
        style = dict(marker="o", color=COLORS.get(r["method"]), alpha=0.5 + 0.5 * (r["strength"] >= 10), label=r["condition"])
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
        axes[0][0].plot(r["llc_trace_windows"], color=COLORS.get(r["method"]), alpha=0.6, label=label)
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
    """``out/report.md`` and its plots: the question, the setup, the answers, the tables, the definitions."""
    out = Path(out)
    plots = [measure_vs_strength(results["summary"], out), residual_norms(results["summary"], out)]
    traces = llc_traces(results["runs"], out)
    if traces:
        plots.append(traces)
    lines = ["# Self-modeling transformers\n",
             "Do language models that model themselves become simpler (LLC, weight spread) and easier for a fresh "
             "forward model to predict, at equal validation loss? Every difference below is mean(condition) - "
             "mean(baseline) with Welch's 95% CI over seeds, beside the validation-loss difference of the same "
             "comparison (nats/token): a difference in complexity that comes with a worse loss is not a simpler model "
             "at equal skill.\n"]
    if results.get("note"):
        lines.append(results["note"] + "\n")
    lines.append(_setup(results["settings"]))
    lines += _answers(results)
    lines += _tables(results)
    lines.append("\n## Plots\n")
    lines += [f"![{p}]({p})" for p in plots]
    lines.append("\n## Definitions\n")
    lines += [f"- `{k}`: {v}" for k, v in results["definitions"].items()]
    write_text(out / "report.md", "\n".join(lines) + "\n")


def _setup(s: dict) -> str:
    base, g, o, llc = s["base"], s["base"]["gpt"], s["base"]["observer"], s["base"]["llc"]
    model = f"our GPT {g['n_layer']} x {g['n_head']} x {g['d_model']}" if base["main"] == "gpt" else base["main"]
    return (f"Setup: {model} ({s.get('params')} parameters), context {base['seq_len']}, vocabulary "
            f"{base['corpus']['vocab_size']} (byte-level BPE on the {base['corpus']['corpus']} corpus), {base['lm']['steps']} "
            f"steps x {base['lm']['batch_size']} sequences, AdamW lr {base['lm']['lr']} (decay {base['lm']['weight_decay']}); "
            f"seeds {s['seeds']}; {s['workers']} worker(s) on {s['cpu_count']} CPU(s). Observer: 1-block forward model "
            f"({o['n_head']} x {o['d_head']}), {o['steps']} steps x {o['batch_size']} held-out windows; near pair {o['near']}, "
            f"far pair {o['far']}. LLC: {llc['chains']} chains x {llc['draws']} draws, epsilon {llc['epsilon']}, gamma "
            f"{llc['gamma']}, sampler {llc.get('sampler', 'sgld')}, nβ = n / ln n with n the predicted tokens of a minibatch.\n")


GLANCE = ("llc_mean", "unembedding_sd", "block_weight_sd_mean", "observer_near_delta_r2", "observer_near_recovery")
SENTENCES = (("llc_mean", "LLC"), ("unembedding_sd", "Unembedding SD"), ("block_weight_sd_mean", "Block weight SD"),
             ("observer_near_delta_r2", "Fresh observer's update R² (near pair)"),
             ("observer_near_recovery", "Fresh observer's recovery (near pair)"),
             ("observer_far_recovery", "Fresh observer's recovery (far pair)"))


def _glance_row(results: dict, summary: dict) -> list:
    c = summary["condition"]
    any_row = _row(results, c, "unembedding_sd") or {}
    loss_m = any_row.get("val_loss_difference_vs_matched", {})
    matched = {"no clear difference": "CI includes 0", "not estimable": "not estimable"}.get(_verdict(loss_m), "differ")
    row = [c, _diff_text(any_row.get("val_loss_difference_vs_final", {}), 3), f"{matched} ({_diff_text(loss_m, 3)})"]
    for m in GLANCE:
        d = _row(results, c, m)
        row.append("-" if d is None else f"{_verdict(d['vs_matched_baseline'])} ({_diff_text(d['vs_matched_baseline'], 3)})")
    return row + [f"{summary['drift_runs']}/{summary['n']}"]


def _answers(results: dict) -> list[str]:
    """The at-a-glance table, a paragraph per condition and whether the observer pairs count."""
    conditions = [r for r in results["summary"] if r["method"] != "baseline"]
    lines = ["## Answers\n",
             "At a glance: each cell is the verdict of the difference from the baseline snapshot at the nearest "
             "validation loss (lower / higher when its 95% Welch CI excludes 0), with the difference; the third "
             "column says whether those matched losses differ (CI excludes 0: no claim at equal loss; a wide CI that "
             "includes 0 is not evidence of equal loss either: read its width).\n",
             table(["condition", "val-loss diff vs final baseline", "matched losses", "LLC", "unembedding SD",
                    "block weight SD", "observer R² (near)", "observer recovery (near)", "drift"],
                   [_glance_row(results, r) for r in conditions]), ""]
    for r in conditions:
        drift = (f" **{r['drift_runs']} of {r['n']} runs drifted** (residual norm > 2x or a block update < 0.2x the "
                 "baseline's).") if r["drift_runs"] else ""
        lines.append(f"**{r['condition']}**.{drift}\n")
        lines += [f"- {_sentence(results, r['condition'], measure, name)}" for measure, name in SENTENCES]
        lines.append("")
    bad = [r["condition"] for r in results["summary"] if not (r["observer_near_counts"] and r["observer_far_counts"])]
    lines.append("Observer pairs count only when skipping their blocks costs at least 0.3 nats of KL: "
                 + ("every condition's pairs clear it." if not bad else f"**not cleared** in {', '.join(bad)} "
                    "(see kl_skipped below; recovery there means little).") + "\n")
    return lines


PER_CONDITION = ("val_loss", "bits_per_byte", "accuracy", "unembedding_sd", "block_weight_sd_mean", "llc_mean",
                 "observer_near_delta_r2", "observer_near_recovery", "observer_near_kl_skipped", "observer_far_recovery",
                 "observer_far_kl_skipped", "fit_mse", "fit_cosine")


def _tables(results: dict) -> list[str]:
    """Per condition (mean ± CI), the cosines beside their skip cosines, every difference from the baseline."""
    summary = results["summary"]
    per_condition = [[r["condition"], r["n"], *[fmt_ci(r.get(f"{m}_mean"), r.get(f"{m}_ci95"), 4) for m in PER_CONDITION],
                      str(r["drift_runs"])] for r in summary]
    cosines = [[r["condition"], *[fmt_ci(r.get(f"observer_{p}_{m}_mean"), r.get(f"observer_{p}_{m}_ci95"), 4)
                                  for p in ("near", "far") for m in ("cosine", "skip_cosine")]] for r in summary]
    differences = [[d["condition"], d["measure"], _diff_text(d["vs_final_baseline"]), _diff_text(d["val_loss_difference_vs_final"]),
                    _diff_text(d["vs_matched_baseline"]), _diff_text(d["val_loss_difference_vs_matched"]),
                    ", ".join(str(x) for x in d["matched_steps"])] for d in results["differences"]]
    return ["## Per condition (mean ± 95% CI over seeds)\n",
            table(["condition", "n", *PER_CONDITION, "drift runs"], per_condition),
            "\nCosine beside the skip cosine (near / far pair):\n",
            table(["condition", "near cosine", "near skip cosine", "far cosine", "far skip cosine"], cosines),
            "\n## Differences from the baseline (Welch 95% CI)\n",
            table(["condition", "measure", "vs final baseline", "val-loss diff", "vs matched-loss baseline",
                   "val-loss diff (matched)", "matched steps"], differences)]
