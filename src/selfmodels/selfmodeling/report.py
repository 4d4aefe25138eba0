"""``report.md`` for a grid: settings, findings in words generated from the numbers, tables with the
paper's values beside ours, and the plots."""

from __future__ import annotations

from pathlib import Path

from selfmodels.artifacts import write_text
from selfmodels.report.markdown import fmt, fmt_ci, table
from selfmodels.selfmodeling import comparison, plots, reference

NAMES = {"weight_sd": "weight SD", "test_accuracy": "test accuracy", "llc_mean": "LLC"}


def _ci(low: float | None, high: float | None, digits: int) -> str:
    return f"[{fmt(low, digits)}, {fmt(high, digits)}]"


def _effect(trend: dict, digits: int) -> str:
    """'falls (slope ..., 95% CI [...])' for one measure of one method and hidden size."""
    verb = {"falls": "falls", "rises": "rises", "no clear trend": "shows no clear linear trend",
            "not estimable": "has no estimable trend"}[trend["direction"]]
    text = f"{NAMES[trend['measure']]} {verb}"
    if trend["direction"] != "not estimable":
        text += f" (slope {fmt(trend['slope'], 5)} per unit w, 95% CI {_ci(trend['ci95_low'], trend['ci95_high'], 5)})"
    parts = []
    for d in trend["differences"]:
        if d["difference"] is None or d["difference"] != d["difference"]:  # no value (e.g. every LLC flagged)
            parts.append(f"w = {d['strength']:g}: n/a")
            continue
        sign = "+" if d["difference"] > 0 else ""
        parts.append(f"w = {d['strength']:g}: {sign}{fmt(d['difference'], digits)} {_ci(d['ci95_low'], d['ci95_high'], digits)}")
    if parts:
        text += "; vs baseline " + ", ".join(parts)
    return text


def finding(trends_of_condition: list[dict]) -> str:
    """One bullet for a method and hidden size: what weight SD, accuracy (and LLC) do as w rises."""
    first = trends_of_condition[0]
    collapsed = first["collapsed"]
    fitted = "as w rises" + (" (collapsed strengths left out of the slope)" if collapsed else "")
    text = f"**{first['method']}, H = {first['hidden']}**, {fitted}: "
    by_measure = {t["measure"]: t for t in trends_of_condition}
    pieces = [_effect(by_measure[m], 4 if m == "weight_sd" else 3) for m in ("weight_sd", "test_accuracy", "llc_mean") if m in by_measure]
    text += "; ".join(pieces) + "."
    if collapsed:
        text += (f" Training collapsed (mean accuracy nearer chance than the baseline's) at w = "
                 f"{', '.join(f'{s:g}' for s in collapsed)}: there a low weight SD or LLC reflects a failed fit, not a simpler model.")
    return text


def answer(trends: list[dict], summary: list[dict]) -> list[str]:
    """The two questions of the issue, answered from the numbers: does weight SD fall as the auxiliary
    weight rises, and what does the activation-regularisation control do at the same strengths?"""
    lines = []
    for method, question in (("self-model", "Does weight SD fall as the auxiliary weight rises?"),
                             ("activation-l2", "What does activation regularisation do at the same strengths?"),
                             ("weight-decay", "And weight decay (at the strengths it ran with)?")):
        rows = [t for t in trends if t["method"] == method and t["measure"] == "weight_sd"]
        if not rows:
            continue
        said = []
        for t in sorted(rows, key=lambda t: t["hidden"]):
            ok = [d for d in t["differences"] if d["strength"] not in t["collapsed"]]
            lower = [f"{d['strength']:g}" for d in ok if d["ci95_high"] is not None and d["ci95_high"] < 0]
            higher = [f"{d['strength']:g}" for d in ok if d["ci95_low"] is not None and d["ci95_low"] > 0]
            phrase = {"falls": "falls with w (slope CI below 0)", "rises": "rises with w (slope CI above 0)",
                      "no clear trend": "no clear linear trend", "not estimable": "no trend estimable"}[t["direction"]]
            bits = [phrase]
            if lower:
                bits.append(f"below baseline at w = {', '.join(lower)}")
            if higher:
                bits.append(f"above baseline at w = {', '.join(higher)}")
            if t["collapsed"]:
                bits.append(f"collapsed at w = {', '.join(f'{s:g}' for s in t['collapsed'])}")
            said.append(f"H = {t['hidden']}: " + ", ".join(bits))
        lines.append(f"- *{question}* Weight SD, {method}: " + "; ".join(said) + " (95% CIs in the findings below).")
    for method in ("self-model", "activation-l2"):
        rows = [t for t in trends if t["method"] == method and t["measure"] == "llc_mean"]
        said = []
        for t in sorted(rows, key=lambda t: t["hidden"]):
            loss = {r["strength"]: r.get("llc_loss_at_wstar_mean") for r in summary
                    if r["hidden"] == t["hidden"] and r["method"] in ("baseline", method)}
            kept = sorted(w for w in loss if w not in t["collapsed"])
            trail = ", ".join(f"{fmt(loss[w], 3)} at w = {w:g}" for w in kept)
            said.append(f"H = {t['hidden']}: LLC {t['direction']} with w; training loss at w* {trail}")
        if said:
            lines.append(f"- *LLC, {method}* (an LLC difference means more when the training loss it starts from "
                         "is the same): " + "; ".join(said) + ".")
    return lines


def _condition_rows(summary: list[dict], hidden: int, has_llc: bool) -> tuple[list[str], list[list]]:
    headers = ["method", "w", "n", "accuracy", "paper acc.", "weight SD", "paper weight SD", "‖W_self − I‖_F"]
    if has_llc:
        headers += ["LLC", "LLC kept", "loss at w*", "LLC flags", "paper RLCT"]
    else:
        headers += ["paper RLCT"]
    rows = []
    for r in summary:
        if r["hidden"] != hidden:
            continue
        row = [r["method"], f"{r['strength']:g}", r["n"],  # :g keeps 1e-4 and 0.5 readable
               fmt_ci(r["accuracy_mean"], r["accuracy_ci95"]), fmt(r["paper_accuracy"], 3),
               fmt_ci(r["weight_sd_mean"], r["weight_sd_ci95"], 4), fmt(r["paper_weight_sd"], 3),
               fmt_ci(r["identity_distance_mean"], r["identity_distance_ci95"], 2)]
        if has_llc:
            row += [fmt_ci(r.get("llc_mean"), r.get("llc_ci95"), 1), f"{r.get('llc_n', 0)}/{r['n']}",
                    fmt(r.get("llc_loss_at_wstar_mean"), 4), ", ".join(r.get("llc_flags") or []) or "none"]
        row.append(fmt(r["paper_rlct"], 1))
        rows.append(row)
    return headers, rows


TEXT_TASKS = ("imdb",)
# The quick reproduction leaves CIFAR-10 out: one line in its report says why and how to run it.
CIFAR_LINE = ("**CIFAR-10**, the paper's third task, is not in the quick reproduction: no package ships it, so it needs "
              "the Hugging Face hub (`uoft-cs/cifar10`); with internet, `selfmodels regularize --task cifar10 --data hub "
              "--val-is-test --methods baseline self-model --seeds 0 1 2 --llc paper --device cuda --out runs/cifar10` runs "
              "the paper's setup (ResNet-18, Adam 1e-4, batch 64, 250 epochs, AW 0.5, 1, 2; a GPU job).")


def _steps(settings: dict, task: str = "mnist") -> str:
    """' of 118 steps (5,900 SGD steps on 60,000 training images; validation = test set)' where known."""
    if not settings.get("steps"):
        return ""
    val = "; validation = the test set, as the paper" if settings.get("val_is_test") else ""
    noun = "texts" if task in TEXT_TASKS else "images"
    return (f" of {settings['steps_per_epoch']:,} steps ({settings['steps']:,} SGD steps on {settings['train_size']:,} "
            f"training {noun}{val})")


def _comparison(summary: list[dict], trends: list[dict], data_source: str = "") -> list[str]:
    """The self-model's changes beside the paper's figures for the same setup: sentences, then the table."""
    rows = comparison.compare_with_paper(summary, trends)
    if not rows:
        return []
    task = summary[0]["task"]
    paper = comparison.paper_task(task)
    label = comparison.PAPER_LABELS[paper]
    measures = ", ".join(comparison.MEASURES[m][0] for m in comparison.COMPARED[paper])
    lines = ["Self-model against the baseline at the same H, as a relative change (difference / baseline mean; the CI is "
             "the Welch 95% CI of the difference over the baseline mean), beside the paper's relative change read off its "
             f"{label} figures ({measures}). Verdict: *agrees* / *differs* when our CI excludes 0 on the paper's / the other "
             "side, *unclear* when it includes 0, *collapsed* where the fit failed (accuracy near chance). A verdict "
             "*differs* is a finding, stated with its CI.", ""]
    if task != paper or str(data_source).startswith("offline") and task in TEXT_TASKS:
        ours = "the Rotten Tomatoes snippets" if task in TEXT_TASKS else task
        lines += [f"Our data is {ours}, the paper's {label}: compare directions and relative sizes, not values.", ""]
    return lines + comparison.paper_sentences(rows) + ["", comparison.paper_table(rows, paper)]


def _sentiment_section(sentiment: dict) -> list[str]:
    """The main report's part on the sentiment grid: its setup and data in words, its effects beside the paper's
    IMDB figures, its conditions."""
    summary, trends = sentiment["summary"], sentiment["trends"]
    if not summary:
        return []
    lines = ["## The paper's IMDB setup, on Rotten Tomatoes snippets", "",
             f"Its runs, results.json and report (with its plots) are in `{sentiment['dir']}/`. " + sentiment.get("note", ""), ""]
    lines += _comparison(summary, trends, sentiment.get("settings", {}).get("data_source", ""))
    has_llc = any("llc_mean" in r for r in summary)
    for hidden in sorted({r["hidden"] for r in summary}):
        headers, rows = _condition_rows(summary, hidden, has_llc)
        lines += ["", f"Conditions at H = {hidden} (mean ± 95% CI over seeds; paper values for IMDB):", "", table(headers, rows)]
    return lines


def _paper_section(results: dict) -> list[str]:
    """Directions and relative changes beside the paper's figures for the same setup (MNIST's for MNIST and
    Fashion-MNIST, IMDB's for sentiment); with a regime arm, whether a difference comes from the dataset or from the
    regime."""
    summary, trends = results["summary"], results["trends"]
    if not summary or summary[0]["task"] not in comparison.PAPER_TASKS:
        return []
    found = _comparison(summary, trends, results.get("settings", {}).get("data_source", ""))
    if not found:
        return []
    lines = ["## Compared with the paper", ""] + found
    arm = results.get("arm")
    if arm:
        regime = results.get("regime") or {}
        rows = comparison.regime_rows(results, arm)
        hidden, strength = comparison.arm_condition(arm)
        seeds = arm["summary"][0]["n"]
        lines += ["## Dataset or regime?", "",
                  f"The regime arm (`{arm['dir']}/`) trains the MNIST 5k subset for the paper's step count, H {hidden}, "
                  f"baseline and AW {strength:g}, {seeds} seeds; beside it the same conditions of this grid.", "",
                  comparison.regime_sentence(rows, bool(regime.get("paper_regime"))), "", comparison.regime_table(rows)]
    return lines


def _other_tasks(results: dict) -> list[str]:
    """After this grid's own sections: the sentiment grid's part, and in the quick reproduction the line on CIFAR-10."""
    lines = []
    if results.get("sentiment"):
        lines += _sentiment_section(results["sentiment"]) + [""]
    if results.get("mode") == "quick":
        lines += ["## Not run here", "", CIFAR_LINE, ""]
    return lines


def render(results: dict, images: dict[str, str | None]) -> str:
    """The markdown text of the report."""
    settings = results.get("settings", {})
    grid = results["grid"]
    summary, trends = results["summary"], results["trends"]
    has_llc = any("llc_mean" in r for r in summary)
    hiddens = sorted({r["hidden"] for r in summary})
    optim = settings.get("optimizer", {})
    lines = [f"# Self-modeling as an auxiliary objective: {grid['task']}", ""]
    if results.get("note"):
        lines += [results["note"], ""]
    lines += [
        f"- **Data**: {settings.get('data_source', 'unknown')}.",
        f"- **Grid**: H in {{{', '.join(map(str, hiddens))}}}; methods {', '.join(grid['methods'])}; "
        f"seeds {len({r['seed'] for r in results['runs']})} per condition; {len(results['runs'])} runs.",
        f"- **Training**: {optim.get('optimizer', '?')} lr {optim.get('lr')} "
        f"{'(momentum ' + str(optim.get('momentum')) + (', Nesterov' if optim.get('nesterov') else '') + ')' if optim.get('optimizer') == 'sgd' else ''}, "
        f"batch {optim.get('batch_size')}, {optim.get('epochs')} epochs{', augmentation' if optim.get('augment') else ''}"
        f"{_steps(settings, grid['task'])}; "
        f"targets {', '.join(settings.get('targets', []))} ({'detached' if settings.get('detach', True) else 'not detached'}).",
        "- **Definitions**: accuracy = test accuracy after the last epoch (argmax over the class logits); "
        "weight SD = standard deviation of the final layer's classification rows (self-model rows excluded); "
        "‖W_self − I‖_F = Frobenius distance of the square self-model block (the rows predicting the head's own "
        "input) from the identity; ± = half-width of the 95% Student-t CI over seeds. Methods: self-model "
        "`CE + w·mse(pred, a)`, activation-l2 `CE + w·mean(a²)` on the same targets, weight-decay `CE + w/2·‖θ‖²`.",
        f"- **Paper values** ({reference.PAPER}) are for the self-model method only, trained on the paper's "
        "full datasets (MNIST 60k, CIFAR-10, IMDB), which may differ from the data above; the controls have none.",
    ]
    if results.get("sentiment"):
        lines.append("- **Also in this reproduction**: the paper's IMDB setup on the Rotten Tomatoes snippets, beside the "
                     f"paper's IMDB figures (its section at the end of this report; runs in `{results['sentiment']['dir']}/`).")
    lines.append("")
    if not has_llc:
        lines += ["**LLC not computed** (run with `--llc paper` to estimate each run's local learning coefficient).", ""]
    lines += ["## Answers", ""] + answer(trends, summary) + [""] + _paper_section(results) + ["## Findings", ""]
    order = {m: i for i, m in enumerate(("self-model", "activation-l2", "weight-decay"))}
    keys = sorted({(t["hidden"], t["method"]) for t in trends}, key=lambda k: (k[0], order.get(k[1], 9)))
    for hidden, method in keys:
        lines.append("- " + finding([t for t in trends if t["hidden"] == hidden and t["method"] == method]))
    lines += ["", "Differences are mean(condition) − mean(baseline) with Welch 95% CIs; slopes are OLS over runs "
              "with t-based 95% CIs (definitions in docs/self-modeling.md).", ""]
    for hidden in hiddens:
        headers, rows = _condition_rows(summary, hidden, has_llc)
        lines += [f"## H = {hidden}", "", table(headers, rows)]
    lines += ["## Plots", ""]
    for title, name in images.items():
        if name:
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
    lines += _other_tasks(results)
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: str | Path) -> Path:
    """Write the plots and ``report.md`` into ``out``; returns the report's path."""
    out = Path(out)
    summary = results["summary"]
    images: dict[str, str | None] = {
        "Weight SD against strength": plots.measure_vs_strength(summary, out, "weight_sd", "weight SD", "paper_weight_sd", "weight_sd_vs_strength.png"),
        "Test accuracy against strength": plots.measure_vs_strength(summary, out, "accuracy", "test accuracy", "paper_accuracy", "accuracy_vs_strength.png"),
    }
    if any("llc_mean" in r for r in summary):
        images["LLC against strength"] = plots.measure_vs_strength(summary, out, "llc", "LLC", "paper_rlct", "llc_vs_strength.png")
    for hidden in sorted({r["hidden"] for r in summary}):
        images[f"Training curves, H = {hidden}"] = plots.training_curves(results["runs"], out / "runs", out, hidden)
    images["Self-model block vs identity"] = plots.identity_curves(results["runs"], out / "runs", out)
    path = out / "report.md"
    write_text(path, render(results, images))
    return path
