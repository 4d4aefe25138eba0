"""The closed-loop grid's comparisons against hand-computed paired and Welch intervals, the probe-gain summary by
depth, the pre-grid checks' rules and skip KL (0 when the skipped blocks write nothing), and the report's rows."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from closed_loop_tiny import ids, tiny_loop, wake
from selfmodels.closed_loop.checks import check, skip_kl
from selfmodels.closed_loop.comparisons import probe_gains, summarize
from selfmodels.closed_loop.report import write_report

SEEDS = (0, 1, 2)
# val_loss per seed: open loop, forward, the equal-FLOPs open loop (and its matched snapshots).
OPEN = {0: 1.0, 1: 2.0, 2: 4.0}
FORWARD = {0: 1.5, 1: 2.0, 2: 5.0}
EQUAL = {0: 0.9, 1: 1.8, 2: 3.9}


def _battery(value: float) -> dict:
    layers = {str(l): {"r2": 0.5, "gain": value * (l + 2)} for l in range(-1, 4)}
    probes = {"layers": layers, "covariates": {"r2": 0.1}}
    site = {"0.1": {"loss_increase_mean": value / 10, "response_mean": 1.0, "cosine_mean": 0.9},
            "1.0": {"loss_increase_mean": value, "response_mean": 1.0, "cosine_mean": 0.9}}
    return {"indices": {"source": 0, "inject": 1, "target": 3}, "probes": {"on": probes, "off": probes},
            "robustness": {"sites": {"inject": site, "source": site}}, "llc": {"llc_mean": 10 * value},
            "weights": {"unembedding_sd": 0.02, "block_weight_sd_mean": 0.02},
            "observer": {"on": {"update_r2": 0.5, "cosine": 0.95, "skip_cosine": 0.8}}, "skip_kl": 0.6,
            "norms": {"resid_norm": [1.0] * 5, "update_norm": [1.0] * 4}, "seconds": {"total": 1.0}}


def _row(condition: str, seed: int, loss: float, role: str = "condition", steps: int = 10) -> dict:
    record = {"condition": condition, "seed": seed, "function_class": f"class of {condition}",
              "training": {"steps": steps}, "seconds": 1.0, "val_loss": loss, "val_loss_without_injection": loss + 0.1,
              "dependency": 0.1 if condition != "open-loop" else 0.0, "bits_per_byte": 2 * loss, "accuracy": 0.3,
              "forward_cosine": 0.9, "skip_cosine": 0.8, "injection_norm": 1.0, "gate_norm": 1.0}
    name = f"{condition}-seed{seed}" if role == "condition" else f"open-loop-equal-flops-seed{seed}"
    curve = [{"step": s, "val_loss": loss + 1 / s, "val_loss_without_injection": loss + 0.1 + 1 / s} for s in (5, 10)]
    return {"run": name, "role": role, "record": record, "battery": _battery(loss), "curve": curve}


def _results() -> dict:
    rows = []
    for s in SEEDS:
        rows.append(_row("open-loop", s, OPEN[s]))
        forward = _row("forward", s, FORWARD[s])
        forward["matched"] = {"step": 10, "val_loss": EQUAL[s], "battery": _battery(EQUAL[s]),
                              "line": {"step": 10, "val_loss": EQUAL[s], "dependency": 0.0, "val_accuracy": 0.3,
                                       "val_forward_cosine": 0.9, "val_skip_cosine": 0.8}}
        rows.append(forward)
        rows.append(_row("open-loop", s, EQUAL[s], role="equal-flops", steps=12))
    settings = {"base": {"seq_len": 16, "gpt": {"n_layer": 4, "n_head": 4, "d_model": 64},
                         "lm": {"steps": 10, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.01, "eval_every": 5},
                         "corpus": {"corpus": "offline", "vocab_size": 512}, "eval_windows": 4,
                         "loop": {"source": 0, "inject": 1, "target": 3, "shift": 10, "forward_lr": 1e-3},
                         "forward": {"n_layer": 2, "n_head": 1, "d_head": 16, "mlp_mult": 2},
                         "battery": {"observer": {"model": {"n_layer": 2}, "steps": 3, "batch_size": 4},
                                     "probes": {"windows": 4, "folds": 2},
                                     "robustness": {"directions": 16, "radii": [0.1, 1.0], "windows": 2},
                                     "llc": {"chains": 1, "draws": 4, "epsilon": 1e-4, "gamma": 100.0},
                                     "estimate_llc": True}},
                "seeds": list(SEEDS), "workers": 2, "threads": 1, "device": "cpu", "cpu_count": 2,
                "flops": {"rule": "3 x forward", "per_token": {"gpt": 100, "forward": 15, "gate": 5}, "share": 0.2,
                          "equal_flops_steps": 12, "steps": 10}}
    return summarize(rows, settings)


def _comparison(results, measure):
    return next(c for c in results["comparisons"] if c["condition"] == "forward" and c["measure"] == measure)


def test_paired_and_welch_differences_are_the_hand_computed_ones():
    final = _comparison(_results(), "val_loss")["final"]
    d = [FORWARD[s] - OPEN[s] for s in SEEDS]  # 0.5, 0, 1
    mean, sd = sum(d) / 3, math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert final["paired"]["difference"] == pytest.approx(0.5)
    assert final["paired"]["ci95_low"] == pytest.approx(mean - half) and final["paired"]["ci95_high"] == pytest.approx(mean + half)
    a, b = list(FORWARD.values()), list(OPEN.values())
    va = sum((x - sum(a) / 3) ** 2 for x in a) / 2 / 3
    vb = sum((x - sum(b) / 3) ** 2 for x in b) / 2 / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    welch_half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert final["welch"]["difference"] == pytest.approx(0.5)
    assert final["welch"]["ci95_high"] - final["welch"]["ci95_low"] == pytest.approx(2 * welch_half)
    equal = _comparison(_results(), "val_loss")["equal_flops"]["paired"]
    assert equal["difference"] == pytest.approx(sum(FORWARD[s] - EQUAL[s] for s in SEEDS) / 3)
    matched = _comparison(_results(), "val_loss")["matched"]
    assert matched["paired"]["difference"] == pytest.approx(equal["difference"])  # the snapshots' losses are EQUAL's
    assert matched["steps"] == {0: 10, 1: 10, 2: 10}
    bpb = _comparison(_results(), "bits_per_byte")["matched"]["paired"]  # from the snapshot's loss, the run's factor
    assert bpb["difference"] == pytest.approx(2 * equal["difference"])
    llc = _comparison(_results(), "llc_mean")["final"]["paired"]
    assert llc["difference"] == pytest.approx(10 * 0.5)


def test_probe_gains_average_after_and_before_the_injection_point_leaving_out_h_i_and_h_j():
    layers = {"layers": {str(l): {"gain": float(l)} for l in range(-1, 5)}}
    gains = probe_gains(layers, source=0, inject=2, target=4)
    assert gains["after"] == pytest.approx((2 + 3) / 2)  # m <= l < j
    assert gains["before"] == pytest.approx((-1 + 1) / 2)  # l < m, l != i
    assert list(gains["by_layer"]) == ["-1", "0", "1", "2", "3", "4"]


def test_the_checks_apply_the_issues_thresholds():
    ok = check({"skip_kl": 0.3, "update_r2": 0.3, "cosine": 0.99})
    assert ok["passes"] and all(c["passes"] for c in ok["checks"].values())
    for bad in ({"skip_kl": 0.29}, {"update_r2": 0.29}, {"cosine": 0.991}, {"skip_kl": None}):
        values = {"skip_kl": 0.5, "update_r2": 0.5, "cosine": 0.9, **bad}
        out = check(values)
        assert not out["passes"] and [n for n, c in out["checks"].items() if not c["passes"]] == list(bad)


def test_skip_kl_is_zero_when_the_skipped_blocks_write_nothing_and_positive_otherwise():
    closed = wake(tiny_loop("forward", inject=0, target=1))  # skipped: block 1
    x = ids(batch=3)
    assert skip_kl(closed, x, batch_size=2) > 1e-6
    block = closed.gpt.blocks[1]
    with torch.no_grad():  # a block whose attention and MLP write zero is the identity: skipping it changes nothing
        for module in block.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features == closed.gpt.cfg.d_model:
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
    assert skip_kl(closed, x, batch_size=2) == pytest.approx(0.0, abs=1e-6)


def test_the_report_answers_every_claim_with_the_checks_first(tmp_path):
    results = _results()
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    order = ["## Pre-grid checks", "## Setup", "**Lower loss at equal compute?**", "**Dependency?**",
             "**Self-knowledge beyond the covariates?**", "**Robustness?**", "**LLC?**", "## Per condition",
             "## Each condition against open loop", "## Beside the author's two runs", "## Plots", "## Definitions"]
    assert [text.index(h) for h in order] == sorted(text.index(h) for h in order)
    assert "every seed's open-loop model passes all three" in text
    assert "| forward | val_loss | 0.5000 [" in text  # the paired interval's row
    assert "class of forward" in text and "5.422" in text and "0.413" in text  # function class; the author's battery
    assert "no clear difference (0.5000" in text  # 3 seeds, CI [−0.74, 1.74]: words follow the interval
    for png in ("loss_curves.png", "probe_gain_by_depth.png", "robustness.png"):
        assert f"![{png}]({png})" in text and (tmp_path / png).stat().st_size > 0
