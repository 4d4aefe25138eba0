"""The closed-loop grid's statistics: each run's headline scalars, per-condition means, the pre-grid checks, and every
condition against open loop (and the forward condition against each control).

A run's scalars (:func:`scalars`) come from its ``result.json`` and its ``battery.json``; the probe gains are summed
up by depth relative to the loop's indices (i, m, j):

- ``probe_gain_after`` = mean of gain(l) over m <= l < j (residuals that carry the injected vector, h_m after it);
- ``probe_gain_before`` = mean of gain(l) over -1 <= l < m, l != i (before the injection point; h_i is itself a
  covariate, so it adds nothing but a change in the ridge penalty's effect, and h_j's gain is trivial:
  r = h_j - O(h_i) is linear in [h_j, O(h_i)]);
- ``*_off``: the same with the residuals collected with the injection off (the author's collection).

Comparisons, for a condition c and a measure M, over the seeds both share (:mod:`selfmodels.stats`):

- ``final``: c's final run against the open-loop run of the same length;
- ``matched``: against the equal-FLOPs open-loop run's snapshot, same seed, whose validation loss is nearest c's
  (beside the validation-loss difference of those pairs: a difference at unequal loss is no claim at equal loss);
- ``equal_flops``: against the open-loop run trained for the closed loop's training FLOPs.

Each gives ``paired`` = mean_s (c_s - o_s) with its 95% t interval (the conditions share seeds, data order and
initial weights) and ``welch`` = mean(c) - mean(o) with Welch's 95% interval.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from selfmodels.closed_loop.checks import check
from selfmodels.closed_loop.complexity import drift_flag
from selfmodels.closed_loop.conditions import CONDITIONS
from selfmodels.stats import mean_ci95, paired_difference, welch_difference

OPEN, EQUAL_FLOPS, FORWARD = "open-loop", "open-loop-equal-flops", "forward"
RESULT_KEYS = ("val_loss", "val_loss_without_injection", "dependency", "bits_per_byte", "accuracy", "forward_cosine",
               "skip_cosine", "forward_cosine_without_injection", "skip_cosine_without_injection", "injection_norm",
               "gate_norm")
# (measure, label): every headline measure, in the report's order.
HEADLINE = (
    ("val_loss", "validation loss (nats/token)"),
    ("dependency", "dependency (loss without the injection - with, nats)"),
    ("bits_per_byte", "bits per byte"),
    ("accuracy", "next-token accuracy"),
    ("forward_cosine", "F's cosine (on-policy)"),
    ("skip_cosine", "skip cosine cos(h_i, h_j)"),
    ("probe_gain_after", "probe R² gain after the injection point (injection on)"),
    ("probe_gain_before", "probe R² gain before the injection point (injection on)"),
    ("probe_gain_after_off", "probe R² gain after the injection point (injection off)"),
    ("probe_gain_before_off", "probe R² gain before the injection point (injection off)"),
    ("robust_loss_increase", "loss increase, perturbation after the injection (r = largest)"),
    ("robust_loss_increase_source", "loss increase, perturbation at h_i (r = largest)"),
    ("robust_response", "response ||Δh_j|| / ||δ||, after the injection (r = largest)"),
    ("llc_mean", "LLC of the network and G (F frozen)"),
    ("unembedding_sd", "unembedding SD"),
    ("block_weight_sd_mean", "mean block weight SD"),
    ("observer_update_r2", "fresh observer's R² on h_j - h_m"),
    ("observer_cosine", "fresh observer's cosine"),
    ("skip_kl", "KL of skipping blocks m+1..j (nats)"),
)
MEASURES = tuple(m for m, _ in HEADLINE)
# What a matched open-loop snapshot's metrics.jsonl line holds under another name.
CURVE_NAMES = {"val_loss": "val_loss", "dependency": "dependency", "accuracy": "val_accuracy",
               "forward_cosine": "val_forward_cosine", "skip_cosine": "val_skip_cosine"}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def probe_gains(probes: dict, source: int, inject: int, target: int) -> dict:
    """``after`` / ``before`` (module docstring) and ``by_layer`` {l: gain} of one collection's probes."""
    by_layer = {int(l): v.get("gain") for l, v in probes.get("layers", {}).items()}
    after = [g for l, g in by_layer.items() if inject <= l < target]
    before = [g for l, g in by_layer.items() if l < inject and l != source]
    return {"after": _mean(after), "before": _mean(before), "by_layer": {str(l): g for l, g in sorted(by_layer.items())}}


def _largest_radius(site: dict) -> dict:
    return site[max(site, key=float)] if site else {}


def scalars(record: dict, battery: dict | None) -> dict:
    """The headline scalars of one run (module docstring): ``result.json``'s and ``battery.json``'s."""
    out = {k: record.get(k) for k in RESULT_KEYS}
    if not battery:
        return out
    i, m, j = (battery["indices"][k] for k in ("source", "inject", "target"))
    for suffix, part in (("", "on"), ("_off", "off")):
        gains = probe_gains(battery["probes"][part], i, m, j)
        out[f"probe_gain_after{suffix}"], out[f"probe_gain_before{suffix}"] = gains["after"], gains["before"]
        out[f"probe_gain_by_layer{suffix}"] = gains["by_layer"]
        out[f"probe_covariates_r2{suffix}"] = battery["probes"][part]["covariates"]["r2"]
    sites = battery["robustness"]["sites"]
    out["robust_loss_increase"] = _largest_radius(sites["inject"]).get("loss_increase_mean")
    out["robust_response"] = _largest_radius(sites["inject"]).get("response_mean")
    out["robust_loss_increase_source"] = _largest_radius(sites["source"]).get("loss_increase_mean")
    out["robustness"] = sites
    out["llc_mean"] = battery["llc"].get("llc_mean")
    out["unembedding_sd"] = battery["weights"].get("unembedding_sd")
    out["block_weight_sd_mean"] = battery["weights"].get("block_weight_sd_mean")
    observer = battery["observer"]["on"]
    out["observer_update_r2"], out["observer_cosine"] = observer.get("update_r2"), observer.get("cosine")
    out["observer_skip_cosine"] = observer.get("skip_cosine")
    out["skip_kl"] = battery.get("skip_kl")
    out["norms"] = battery["norms"]
    return out


def matched_scalars(matched: dict, bpb_per_nat: float | None) -> dict:
    """A matched open-loop snapshot's scalars: its battery's, and its evaluation line's under the record's names
    (bits per byte from its loss: the windows are the same, so bpb = loss x the run's bits-per-byte factor)."""
    out = scalars({}, matched.get("battery"))
    line = matched.get("line") or {}
    for name, key in CURVE_NAMES.items():
        out[name] = line.get(key)
    out["val_loss"] = matched["val_loss"]
    out["bits_per_byte"] = None if bpb_per_nat is None else matched["val_loss"] * bpb_per_nat
    out["step"], out["same_as"] = matched["step"], matched.get("same_as")
    return out


def _compare(a: dict[int, float | None], b: dict[int, float | None]) -> dict:
    return {"paired": paired_difference(a, b), "welch": welch_difference(list(a.values()), list(b.values()))}


def _by_seed(rows: list[dict], measure: str, part: str = "scalars") -> dict[int, float | None]:
    return {r["seed"]: (r.get(part) or {}).get(measure) for r in rows}


def summarize(rows: list[dict], settings: dict, note: str = "") -> dict:
    """results.json from the grid's rows (``run``, ``role``, ``record``, ``battery``, ``curve``, ``matched``)."""
    runs = []
    for row in rows:
        record = row["record"]
        bpb_per_nat = (record["bits_per_byte"] / record["val_loss"]) if record.get("bits_per_byte") else None
        run = {"run": row["run"], "role": row["role"], "condition": record["condition"], "seed": record["seed"],
               "function_class": record["function_class"], "steps": record["training"]["steps"],
               "seconds": record.get("seconds"), "battery_seconds": (row.get("battery") or {}).get("seconds", {}).get("total"),
               "scalars": scalars(record, row.get("battery")), "curve": row.get("curve", [])}
        if row.get("matched"):
            run["matched"] = matched_scalars(row["matched"], bpb_per_nat)
        runs.append(run)
    open_rows = [r for r in runs if r["role"] == "condition" and r["condition"] == OPEN]
    if open_rows and all(r["scalars"].get("norms") for r in open_rows):  # drift against open loop's mean norms
        baseline = {k: np.mean([r["scalars"]["norms"][k] for r in open_rows], axis=0).tolist()
                    for k in ("resid_norm", "update_norm")}
        for r in runs:
            if r["scalars"].get("norms"):
                r["scalars"].update(drift_flag(r["scalars"]["norms"], baseline))
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[r["condition"] if r["role"] == "condition" else EQUAL_FLOPS].append(r)
    order = [c for c in CONDITIONS.names() if c in groups] + ([EQUAL_FLOPS] if EQUAL_FLOPS in groups else [])
    summary = []
    for name in order:
        members = groups[name]
        entry = {"condition": name, "n": len(members), "steps": members[0]["steps"],
                 "function_class": members[0]["function_class"] if name != EQUAL_FLOPS else
                 "none (open loop trained for the closed loop's training FLOPs)",
                 "drift_runs": sum(bool(r["scalars"].get("drift")) for r in members),
                 "seconds": _mean(r["seconds"] for r in members),
                 "battery_seconds": _mean(r["battery_seconds"] for r in members)}
        for m in MEASURES:
            entry[m] = dict(zip(("mean", "ci95"), mean_ci95([r["scalars"].get(m) for r in members])))
        summary.append(entry)
    comparisons = []
    base, equal = groups.get(OPEN, []), groups.get(EQUAL_FLOPS, [])
    for name in order:
        if name in (OPEN, EQUAL_FLOPS):
            continue
        members = groups[name]
        matched_members = [r for r in members if r.get("matched")]
        for m in MEASURES:
            a = _by_seed(members, m)
            if not any(v is not None for v in a.values()):
                continue
            entry = {"condition": name, "measure": m, "final": _compare(a, _by_seed(base, m))}
            if matched_members:
                entry["matched"] = {**_compare(_by_seed(matched_members, m), _by_seed(matched_members, m, "matched")),
                                    "val_loss": _compare(_by_seed(matched_members, "val_loss"),
                                                         _by_seed(matched_members, "val_loss", "matched")),
                                    "steps": {r["seed"]: r["matched"]["step"] for r in matched_members}}
            if equal:
                entry["equal_flops"] = _compare(a, _by_seed(equal, m))
            comparisons.append(entry)
    versus_controls = []
    forward = groups.get(FORWARD, [])
    for name in order:
        if name in (OPEN, EQUAL_FLOPS, FORWARD) or not forward:
            continue
        for m in MEASURES:
            a = _by_seed(forward, m)
            if any(v is not None for v in a.values()):
                versus_controls.append({"control": name, "measure": m, **_compare(a, _by_seed(groups[name], m))})
    checks = []
    for r in open_rows:
        s = r["scalars"]
        checks.append({"seed": r["seed"], **check({k: s.get(v) for k, v in
                                                   (("skip_kl", "skip_kl"), ("update_r2", "observer_update_r2"),
                                                    ("cosine", "observer_cosine"))})})
    return {"experiment": "closed-loop", "note": note, "settings": settings,
            "checks": {"per_seed": checks, "passes": bool(checks) and all(c["passes"] for c in checks)},
            "runs": runs, "summary": summary, "comparisons": comparisons, "versus_controls": versus_controls,
            "definitions": DEFINITIONS}


DEFINITIONS = {
    "val_loss": "mean next-token cross-entropy (nats/token) on the held-out evaluation windows, injection on",
    "dependency": "val_loss_without_injection - val_loss: how much the model relies on its injection (0 for open loop)",
    "bits_per_byte": "total nats / (ln 2 * UTF-8 bytes of the predicted text)",
    "forward_cosine": "mean over tokens of cos(F(h_i), h_j), the co-trained F, h_j on-policy (injection on)",
    "skip_cosine": "mean over tokens of cos(h_i, h_j): F's baseline",
    "probe_gain_after": "mean over m <= l < j of R^2([h_l, h_i, O(h_i), G(u)] -> h_j - O(h_i)) - R^2(covariates alone), "
                        "O a fresh observer; ridge fitted on the held-out third quarter, scored on the fourth",
    "probe_gain_before": "the same over -1 <= l < m, l != i",
    "robust_*": "16 random directions per seed, ||delta_t|| = r ||h_m,t||, r the largest radius of the battery (the "
                "results' robustness table has every radius): the loss increase (nats/token) and ||dh_j|| / ||delta||, "
                "averaged over directions within a seed",
    "llc_mean": "LLC of the GPT and G with F and the signal frozen (SGLD, nbeta = n / ln n); null when flagged",
    "unembedding_sd": "SD of every entry of the LM head's weight",
    "block_weight_sd_mean": "mean over blocks of the SD of every entry of the block's matrices",
    "observer_update_r2": "1 - sum ||h_j - O(h_i)||^2 / sum ||u - mean u||^2, u = h_j - h_m (the pre-grid check, >= 0.3)",
    "observer_cosine": "mean cos(O(h_i), h_j) of the fresh observer (the pre-grid check, <= 0.99)",
    "skip_kl": "mean_t KL(p_full || p_skip), blocks m+1..j skipped (the pre-grid check, >= 0.3 nats)",
    "final": "the condition's run against the open-loop run of the same steps (same seeds)",
    "matched": "against the equal-FLOPs open-loop run's snapshot (same seed; every eval_every steps) whose validation "
               "loss is nearest the condition's",
    "equal_flops": "against the open-loop run trained round(steps x (GPT + F + G) / GPT) steps (training FLOPs)",
    "paired": "mean over seeds of (condition - open loop) with its 95% t interval (df = n - 1)",
    "welch": "mean(condition) - mean(open loop) with Welch's 95% interval",
    "drift": "any residual norm > 2x open loop's mean at that index or any block update < 0.2x (closed_loop.complexity)",
}
