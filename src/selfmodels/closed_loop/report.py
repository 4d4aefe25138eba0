"""report.md and the plots of a closed-loop grid, written from results.json's content.

The pre-grid checks come first. Each of the author's claims is then answered in words generated from a confidence
interval: a difference is called lower / higher only when its 95% interval (paired over seeds: the conditions share
seeds) excludes zero, and every answer sits beside both of the author's runs (``../shared/reference/closed-loop.md``:
one seed each, no intervals).
"""

from __future__ import annotations

import math
from pathlib import Path

from selfmodels.artifacts import write_text
from selfmodels.closed_loop import plots
from selfmodels.closed_loop.comparisons import EQUAL_FLOPS, FORWARD, HEADLINE, OPEN
from selfmodels.report.markdown import fmt, fmt_ci, table

# The author's two runs (seed 42, one run each; d = 256, 10,000 steps), as reference/closed-loop.md gives them.
AUTHOR_FIRST = {"closed_minus_open_val_loss": -0.087, "closed_val_loss": 5.469, "open_val_loss": 5.556,
                "dependency": 0.11, "probe_r2_open": 0.276, "probe_r2_closed": 0.406, "probe_r2_closed_off": 0.438,
                "forward_cosine_open": 0.935, "forward_cosine_closed": 0.927, "note": "learning rates differed"}
AUTHOR_BATTERY = {  # condition: (val loss with injection, without, dependency, gate norm, robustness ratio, F's cosine)
    "open-loop": (5.398, 5.398, 0.0, None, 1.000, 0.916),
    "forward": (5.422, 5.506, 0.084, 3.01, 0.413, 0.900),
    "shifted": (5.413, 5.411, -0.002, 2.18, 0.477, 0.921),
    "random-projection": (5.410, 5.490, 0.080, 3.28, 0.679, 0.881),
    "autoencoder": (5.402, 5.494, 0.092, 3.58, 0.636, 0.876),
}
AUTHOR_PROBE_GAINS = {  # ΔR² over open loop of vector probes to each condition's own F residual, injection off
    "post_block0": {"forward": 0.185, "shifted": 0.028, "random-projection": 0.171, "autoencoder": 0.179},
    "post_block1": {"forward": 0.200, "shifted": 0.037, "random-projection": 0.148, "autoencoder": 0.154},
    "post_block2": {"forward": 0.185, "shifted": 0.028, "random-projection": 0.111, "autoencoder": 0.123},
    "post_block3": {"forward": 0.161, "shifted": 0.010, "random-projection": 0.055, "autoencoder": 0.068},
}


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def interval(d: dict | None, digits: int = 4) -> str:
    """``difference [low, high]`` (CI n/a when it cannot be formed)."""
    if not d or _nan(d.get("difference")):
        return "-"
    if _nan(d.get("ci95_low")) or _nan(d.get("ci95_high")):
        return f"{fmt(d['difference'], digits)} (CI n/a)"
    return f"{fmt(d['difference'], digits)} [{fmt(d['ci95_low'], digits)}, {fmt(d['ci95_high'], digits)}]"


def verdict(d: dict | None, lower: str = "lower", higher: str = "higher") -> str:
    """``lower`` / ``higher`` when the 95% CI excludes 0, else ``no clear difference``; ``not estimable`` without one."""
    if not d or _nan(d.get("ci95_low")) or _nan(d.get("ci95_high")):
        return "not estimable"
    if d["ci95_high"] < 0:
        return lower
    if d["ci95_low"] > 0:
        return higher
    return "no clear difference"


def _comparison(results: dict, condition: str, measure: str) -> dict | None:
    return next((c for c in results["comparisons"] if c["condition"] == condition and c["measure"] == measure), None)


def _versus(results: dict, control: str, measure: str) -> dict | None:
    return next((c for c in results["versus_controls"] if c["control"] == control and c["measure"] == measure), None)


def _summary(results: dict, condition: str) -> dict | None:
    return next((s for s in results["summary"] if s["condition"] == condition), None)


def _mean(results: dict, condition: str, measure: str, digits: int = 4) -> str:
    s = _summary(results, condition)
    if s is None:
        return "-"
    return fmt_ci(s[measure]["mean"], s[measure]["ci95"], digits)


def write_report(results: dict, out: str | Path) -> None:
    """``out/report.md`` and its plots."""
    out = Path(out)
    runs = results["runs"]
    inject = results["settings"]["base"]["loop"]["inject"]
    figures = [plots.loss_curves(runs, out), plots.probe_gain_by_depth(runs, inject, out), plots.robustness(runs, out)]
    lines = ["# Closed-loop self-models\n",
             "Does a network that reads its own forward model's prediction, h_m <- h_m + G(sg(F(h_i))), reach a lower "
             "loss at equal compute, come to depend on the injection, know more about its own computation than the "
             "covariates give away, resist perturbations better, or end up simpler (LLC), and does any of it need a "
             "preview of its own computation rather than any extra input? Every difference is condition - open loop "
             "over the seeds both share, paired (95% t interval) and Welch (95%); words follow the paired interval.\n"]
    if results.get("note"):
        lines.append(results["note"] + "\n")
    lines += _checks(results)
    lines += _setup(results)
    lines += _answers(results)
    lines += _tables(results)
    lines += _author(results)
    lines.append("\n## Plots\n")
    lines += [f"![{Path(p).name}]({Path(p).name})" for p in figures]
    lines.append("\n## Definitions\n")
    lines += [f"- `{k}`: {v}" for k, v in results["definitions"].items()]
    write_text(out / "report.md", "\n".join(lines) + "\n")


def _checks(results: dict) -> list[str]:
    checks = results["checks"]
    rows = []
    for c in checks["per_seed"]:
        cells = [c["seed"]]
        for name in ("skip_kl", "update_r2", "cosine"):
            x = c["checks"][name]
            cells.append(f"{fmt(x['value'], 4)} ({x['rule']}: {'pass' if x['passes'] else '**fail**'})")
        rows.append(cells)
    state = ("every seed's open-loop model passes all three" if checks["passes"] else
             "**at least one check fails**: the comparisons below are of a setting the issue's checks do not clear")
    return ["## Pre-grid checks (the open-loop model, held-out text)\n",
            f"Skipping blocks m+1..j must cost at least 0.3 nats of KL, the fresh observer's R² on h_j - h_m from h_i "
            f"must be at least 0.3 and its cosine at most 0.99: {state}.\n",
            table(["seed", "skip KL (nats)", "observer R² on h_j - h_m", "observer cosine"], rows), ""]


def _setup(results: dict) -> list[str]:
    s = results["settings"]
    b, g, f, loop, flops = s["base"], s["base"]["gpt"], s["base"]["forward"], s["base"]["loop"], s["flops"]
    bat = b["battery"]
    per = flops["per_token"]
    network = (f"Our GPT {g['n_layer']} x {g['n_head']} x {g['d_model']}, context {b['seq_len']}, vocabulary "
               f"{b['corpus']['vocab_size']} (byte-level BPE on the {b['corpus']['corpus']} corpus)"
               if b.get("main", "gpt") == "gpt" else
               f"The pretrained {b['main']} fine-tuned (in eval mode), context {b['seq_len']}, its own tokenizer on the "
               f"{b['corpus']['corpus']} corpus")
    return ["## Setup\n",
            f"{network}, {b['lm']['steps']} steps x "
            f"{b['lm']['batch_size']} windows, AdamW lr {b['lm']['lr']} (decay {b['lm']['weight_decay']}), evaluated every "
            f"{b['lm']['eval_every']} steps on {b['eval_windows']} held-out windows. Loop: F reads h_{loop['source']}, "
            f"predicts h_{loop['target']}, G writes into h_{loop['inject']} (shift k = {loop['shift']}); F: "
            f"{f['n_layer']} blocks of {f['n_head']} head(s) of {f['d_head']}, MLP {f['mlp_mult']}x, lr {loop['forward_lr']}. "
            f"Seeds {s['seeds']}; {s['workers']} worker process(es) x {s['threads']} thread(s) on {s['cpu_count']} CPU(s), "
            f"device {s['device']}.\n",
            f"Equal training FLOPs: {flops['rule']}. Per token: GPT {per['gpt']:,}, F {per['forward']:,}, G {per['gate']:,} "
            f"FLOPs; F and G are {100 * flops['share']:.1f}% of the GPT's, so the equal-FLOPs open loop trains "
            f"{flops['equal_flops_steps']:,} steps. Matched validation loss: that run's weights are kept every "
            f"{b['lm']['eval_every']} steps (and at its last), and each condition's run is compared with the snapshot "
            "of its seed whose validation loss is nearest its own (each such snapshot measured by the same battery).\n",
            f"Battery (battery.json per run): a fresh observer ({bat['observer']['model']['n_layer']} blocks, "
            f"{bat['observer']['steps']} steps x {bat['observer']['batch_size']} windows of the held-out first half), "
            f"ridge probes ({bat['probes']['windows']} windows to fit, {bat['probes']['windows']} to score, "
            f"{bat['probes']['folds']}-fold CV for λ), robustness ({bat['robustness']['directions']} directions, r in "
            f"{bat['robustness']['radii']}, {bat['robustness']['windows']} windows), LLC "
            f"({bat['llc']['chains']} chains x {bat['llc']['draws']} draws, ε {bat['llc']['epsilon']}, γ {bat['llc']['gamma']}; "
            f"{'on' if bat['estimate_llc'] else 'off'}).\n",
            _timing(s),
            "Conditions and their function classes (what G can end up reading), with each run's time (mean over seeds; "
            "training and the battery, one thread each):\n",
            table(["condition", "function class", "steps", "runs", "training s", "battery s"],
                  [[x["condition"], x["function_class"], x["steps"], x["n"], fmt(x.get("seconds"), 1),
                    fmt(x.get("battery_seconds"), 1)] for x in results["summary"]]), ""]


def _timing(s: dict) -> str:
    m = s.get("machine") or {}
    if not m:
        return ""
    return (f"This call took {s['wall_seconds']:.0f} s wall (finished units are read back, so a resumed or read-back "
            f"grid takes less) on {m.get('cores')} x {m.get('cpu')}, device {m.get('device')}; load average (1 / 5 / 15 "
            f"min) {m.get('load_before')} before, {m.get('load_after')} after.\n")


def _claim(results: dict, condition: str, measure: str, part: str = "final") -> str:
    c = _comparison(results, condition, measure)
    if c is None or part not in c:
        return "not measured"
    return f"{verdict(c[part]['paired'])} ({interval(c[part]['paired'])})"


def _answers(results: dict) -> list[str]:
    if _summary(results, FORWARD) is None:
        return ["## Answers\n", "The grid has no forward condition: the author's claims are not addressed.\n"]
    controls = [s["condition"] for s in results["summary"] if s["condition"] not in (OPEN, FORWARD, EQUAL_FLOPS)]
    lines = ["## Answers to the author's claims\n"]
    # 1. loss at equal compute
    eq = _comparison(results, FORWARD, "val_loss")
    equal = eq.get("equal_flops") if eq else None
    lines.append("**Lower loss at equal compute?** The forward condition's validation loss minus open loop's: at the "
                 f"final step (equal steps) {_claim(results, FORWARD, 'val_loss')}; against the open loop trained for the "
                 f"closed loop's training FLOPs {verdict(equal['paired']) if equal else 'not run'} "
                 f"({interval(equal['paired']) if equal else '-'}). The author: -0.087 nats in the first run (learning "
                 "rates differed), +0.024 in the equal-lr battery (5.422 vs 5.398); one seed each, at equal steps.\n")
    for name in controls:
        lines.append(f"- {name}: final {_claim(results, name, 'val_loss')}; equal FLOPs "
                     f"{_claim(results, name, 'val_loss', 'equal_flops')}.")
    lines.append("")
    # 2. dependency
    lines.append(f"**Dependency?** The forward condition's loss rises by {_mean(results, FORWARD, 'dependency')} nats "
                 f"without its injection (mean ± 95% CI over seeds; {verdict(_comparison(results, FORWARD, 'dependency')['final']['paired'], 'negative', 'positive')} "
                 "against open loop's 0). The author: 0.11 (first run), 0.084 (battery). Against each control "
                 "(forward - control, paired):\n")
    for name in controls:
        v = _versus(results, name, "dependency")
        lines.append(f"- {name}: its dependency {_mean(results, name, 'dependency')}; forward - {name} "
                     f"{verdict(v['paired']) if v else '-'} ({interval(v['paired']) if v else '-'}); the author's "
                     f"{name}: {fmt(AUTHOR_BATTERY.get(name, (None,) * 6)[2], 3)}.")
    lines.append("")
    # 3. self-knowledge
    lines.append("**Self-knowledge beyond the covariates?** The probes' R² gain over [h_i, O(h_i), G(u)] (a fresh "
                 "observer O, never the co-trained F), forward - open loop, paired: after the injection point "
                 f"{_claim(results, FORWARD, 'probe_gain_after')} (injection on), "
                 f"{_claim(results, FORWARD, 'probe_gain_after_off')} (off); before it "
                 f"{_claim(results, FORWARD, 'probe_gain_before')} (on), {_claim(results, FORWARD, 'probe_gain_before_off')} "
                 "(off). The author (each condition's own co-trained F as the probes' target, no covariates, injection "
                 "off): forward's ΔR² over open loop +0.16 to +0.20 at every depth, larger than the controls' only after "
                 "the injection point. Forward - each control, paired (after / before the injection point, injection on):\n")
    for name in controls:
        a, b = _versus(results, name, "probe_gain_after"), _versus(results, name, "probe_gain_before")
        lines.append(f"- {name}: after {verdict(a['paired']) if a else '-'} ({interval(a['paired']) if a else '-'}); "
                     f"before {verdict(b['paired']) if b else '-'} ({interval(b['paired']) if b else '-'}).")
    lines.append("")
    # 4. robustness
    ratio = lambda name: _robust_ratio(results, name)  # noqa: E731
    lines.append("**Robustness?** Loss increase under random perturbations of h_m after the injection (largest r), "
                 f"forward - open loop: {_claim(results, FORWARD, 'robust_loss_increase')}; at h_i (F's input "
                 f"perturbed too): {_claim(results, FORWARD, 'robust_loss_increase_source')}. As the author's ratio to "
                 f"open loop's increase (mean of per-seed ratios): forward {ratio(FORWARD)} (the author: 0.413, the "
                 "largest robustness of five conditions). Controls:\n")
    for name in controls:
        v = _versus(results, name, "robust_loss_increase")
        lines.append(f"- {name}: ratio {ratio(name)} (author: {fmt(AUTHOR_BATTERY.get(name, (None,) * 6)[4], 3)}); "
                     f"forward - {name} {verdict(v['paired']) if v else '-'} ({interval(v['paired']) if v else '-'}).")
    lines.append("")
    # 5. LLC
    lines.append(f"**LLC?** The GPT's and G's LLC with F frozen, forward - open loop: {_claim(results, FORWARD, 'llc_mean')} "
                 f"(forward {_mean(results, FORWARD, 'llc_mean', 1)}, open loop {_mean(results, OPEN, 'llc_mean', 1)}); "
                 f"at matched validation loss {_claim(results, FORWARD, 'llc_mean', 'matched')}. The author did not "
                 "estimate it.\n")
    drift = [f"{s['condition']} ({s['drift_runs']}/{s['n']})" for s in results["summary"] if s["drift_runs"]]
    lines.append("Drift (a residual norm over 2x open loop's, or a block update under 0.2x): "
                 + (", ".join(drift) if drift else "no run drifted") + ".\n")
    return lines


def _robust_ratio(results: dict, name: str) -> str:
    """mean ± CI over seeds of (condition's loss increase / open loop's, same seed), largest radius, after the injection."""
    from selfmodels.stats import mean_ci95

    by = {}
    for r in results["runs"]:
        if r["role"] == "condition":
            by.setdefault(r["condition"], {})[r["seed"]] = r["scalars"].get("robust_loss_increase")
    ratios = [v / by.get(OPEN, {}).get(s) for s, v in by.get(name, {}).items()
              if v is not None and by.get(OPEN, {}).get(s)]
    mean, half = mean_ci95(ratios)
    return fmt_ci(mean, half, 3)


TABLE_MEASURES = ("val_loss", "dependency", "bits_per_byte", "accuracy", "forward_cosine", "skip_cosine",
                  "probe_gain_after", "probe_gain_before", "robust_loss_increase", "robust_response", "llc_mean",
                  "unembedding_sd", "observer_update_r2", "observer_cosine", "skip_kl")


def _tables(results: dict) -> list[str]:
    labels = dict(HEADLINE)
    per = [[s["condition"], s["n"], *[fmt_ci(s[m]["mean"], s[m]["ci95"], 4) for m in TABLE_MEASURES]] for s in results["summary"]]
    rows = []
    for c in results["comparisons"]:
        matched = c.get("matched")
        rows.append([c["condition"], c["measure"], interval(c["final"]["paired"]), interval(c["final"]["welch"]),
                     interval(matched["paired"]) if matched else "-",
                     interval(matched["val_loss"]["paired"]) if matched else "-",
                     ", ".join(str(v) for v in matched["steps"].values()) if matched else "-",
                     interval(c["equal_flops"]["paired"]) if c.get("equal_flops") else "-",
                     interval(c["equal_flops"]["welch"]) if c.get("equal_flops") else "-"])
    versus = [[v["control"], v["measure"], interval(v["paired"]), interval(v["welch"])] for v in results["versus_controls"]]
    robust = []
    for s in results["summary"]:
        name = s["condition"]
        members = [r for r in results["runs"] if (r["condition"] if r["role"] == "condition" else EQUAL_FLOPS) == name]
        tables = [r["scalars"].get("robustness") or {} for r in members]
        for site in ("inject", "source"):
            for radius in sorted({k for t in tables for k in t.get(site, {})}, key=float):
                from selfmodels.stats import mean_ci95

                cell = lambda key: fmt_ci(*mean_ci95([(t.get(site, {}).get(radius) or {}).get(key) for t in tables]), 4)  # noqa: E731
                robust.append([name, site, radius, cell("loss_increase_mean"), cell("response_mean"), cell("cosine_mean")])
    return ["## Per condition (mean ± 95% CI over seeds)\n",
            "Columns: " + "; ".join(f"`{m}` {labels[m]}" for m in TABLE_MEASURES) + ".\n",
            table(["condition", "n", *TABLE_MEASURES], per),
            "\n## Each condition against open loop (condition - open loop)\n",
            "Final: against the open-loop run of the same steps. Matched: against the equal-FLOPs open loop's snapshot "
            "nearest in validation loss (beside that pair's loss difference: unequal loss, no claim at equal loss). "
            "Equal FLOPs: against the open loop trained for the closed loop's FLOPs.\n",
            table(["condition", "measure", "final, paired", "final, Welch", "matched, paired", "matched loss diff",
                   "matched steps", "equal FLOPs, paired", "equal FLOPs, Welch"], rows),
            "\n## The forward condition against each control (forward - control, final step)\n",
            table(["control", "measure", "paired", "Welch"], versus),
            "\n## Robustness by site and radius (mean ± 95% CI over seeds; directions averaged within a seed)\n",
            table(["condition", "site", "r", "loss increase", "response ||Δh_j||/||δ||", "cos(Δh_j, δ)"], robust), ""]


def _author(results: dict) -> list[str]:
    ours = {s["condition"]: s for s in results["summary"]}
    rows = []
    for name, (on, off, dep, gate, ratio, cos) in AUTHOR_BATTERY.items():
        s = ours.get(name)
        rows.append([name, fmt(on, 3), fmt(off, 3), fmt(dep, 3), fmt(ratio, 3), fmt(cos, 3),
                     _mean(results, name, "val_loss") if s else "-", _mean(results, name, "dependency") if s else "-",
                     _robust_ratio(results, name) if s else "-", _mean(results, name, "forward_cosine") if s else "-"])
    probe = [[layer, *[fmt(v.get(c), 3) for c in ("forward", "shifted", "random-projection", "autoencoder")]]
             for layer, v in AUTHOR_PROBE_GAINS.items()]
    a = AUTHOR_FIRST
    return ["## Beside the author's two runs\n",
            f"First run ({a['note']}): closed loop {a['closed_val_loss']} vs open loop {a['open_val_loss']} "
            f"({a['closed_minus_open_val_loss']:+} nats), dependency ~{a['dependency']}, probe R² to F's residual "
            f"{a['probe_r2_open']} (open) vs {a['probe_r2_closed']} (closed, {a['probe_r2_closed_off']} injection removed). "
            "The equal-lr battery beside ours (the author's d = 256, 10,000 steps, one seed; ours the grid's sizes, "
            "mean ± 95% CI over seeds; the robustness ratio is the loss increase relative to open loop's, the author's "
            "at a perturbation of 2 x the residual's SD, ours at the largest r):\n",
            table(["condition", "author: val loss", "author: without", "author: dependency", "author: robustness ratio",
                   "author: F's cosine", "ours: val loss", "ours: dependency", "ours: robustness ratio",
                   "ours: F's cosine"], rows),
            "\nThe author's probe ΔR² over open loop (targets: each condition's own co-trained F, so they differ by "
            "condition; no covariates; injection off):\n",
            table(["layer", "forward", "shifted", "random-projection", "autoencoder"], probe), ""]
