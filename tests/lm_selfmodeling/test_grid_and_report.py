"""The grid's statistics on synthetic records: Welch differences, matched-loss comparisons, the drift flag, the report."""

from __future__ import annotations

import pytest

from selfmodels.lm_selfmodeling.grid import LMGrid, add_drift, quick_conditions, summarize_results
from selfmodels.lm_selfmodeling.presets import quick_run
from selfmodels.lm_selfmodeling.report import write_report
from selfmodels.stats import welch_difference


def _record(method, strength, seed, val, sd, resid=(1.0, 2.0, 3.0), update=(1.0, 1.0), matched=None):
    r = {"condition": "baseline" if method == "baseline" else f"{method}-{strength:g}", "method": method,
         "strength": strength, "seed": seed, "val_loss": val, "unembedding_sd": sd, "block_weight_sd": [sd, sd],
         "resid_norm": list(resid), "update_norm": list(update), "observer_near_recovery": 0.9,
         "observer_near_counts": True, "observer_far_counts": True, "observer_near_delta_r2": 0.8, "params": 10}
    if matched is not None:
        r["matched"] = matched
        r["matched_step"] = 500
    return r


def _records():
    base = [_record("baseline", 0.0, s, 3.0 + 0.01 * s, 0.10 + 0.001 * s) for s in range(3)]
    sm = [_record("self-model", 10.0, s, 3.1 + 0.01 * s, 0.08 + 0.001 * s,
                  matched={"val_loss": 3.1 + 0.01 * s, "unembedding_sd": 0.09 + 0.001 * s, "block_weight_sd": [0.09, 0.09],
                           "resid_norm": [1, 2, 3], "update_norm": [1, 1]}) for s in range(3)]
    drifted = [_record("forward", 1.0, s, 3.5, 0.1, resid=(1.0, 2.0, 6.5), update=(1.0, 0.1),
                       matched={"val_loss": 3.5, "unembedding_sd": 0.1}) for s in range(3)]
    return base + sm + drifted


def test_drift_flag():
    records = _records()
    norms = add_drift(records)
    assert norms["resid_norm"] == pytest.approx([1.0, 2.0, 3.0])
    assert [r["drift"] for r in records] == [False] * 6 + [True] * 3
    assert records[-1]["drift_resid_ratio_max"] == pytest.approx(6.5 / 3) and records[-1]["drift_update_ratio_min"] == pytest.approx(0.1)


def test_differences_are_welch_and_carry_the_loss_difference(tmp_path):
    grid = LMGrid(quick_run(), quick_conditions(), [0, 1, 2])
    results = summarize_results(grid, _records())
    d = next(x for x in results["differences"] if x["condition"] == "self-model-10" and x["measure"] == "unembedding_sd")
    expected = welch_difference([0.080, 0.081, 0.082], [0.100, 0.101, 0.102])
    assert d["vs_final_baseline"]["difference"] == pytest.approx(-0.02)
    assert d["vs_final_baseline"]["ci95_low"] == pytest.approx(expected["ci95_low"])
    assert d["vs_matched_baseline"]["difference"] == pytest.approx(-0.01)  # against the matched snapshots
    assert d["val_loss_difference_vs_final"]["difference"] == pytest.approx(0.1)
    assert d["val_loss_difference_vs_matched"]["difference"] == pytest.approx(0.0)
    summary = {r["condition"]: r for r in results["summary"]}
    assert summary["forward-1"]["drift_runs"] == 3 and summary["self-model-10"]["drift_runs"] == 0
    assert summary["baseline"]["val_loss_mean"] == pytest.approx(3.01)
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "self-model-10" in text and "3 of 3 runs drifted" in text
    assert "Unembedding SD: against the final baseline lower" in text
    assert (tmp_path / "measures_vs_strength.png").is_file() and (tmp_path / "residual_norms.png").is_file()


def test_presets_are_valid_grids():
    """The quick grid (7 conditions x 3 seeds) and the full one (toy GPT 4 x 256, SmolLM2 fine-tune) expand and
    validate; the observer pairs avoid every trained index (checked by validate)."""
    from selfmodels.lm_selfmodeling.presets import full_grids, quick_grids

    quick = quick_grids(2, "cpu")["gpt"]
    assert len(quick.runs()) == 21 and quick.base.gpt.d_model == 64 and quick.base.lm.steps == 1000
    for _, cfg in quick.runs():
        cfg.validate(cfg.gpt.n_layer)
    full = full_grids(1, "cpu")
    assert full["gpt"].base.gpt.d_model == 256 and full["pretrained"].base.main == "smollm2"
    for _, cfg in full["gpt"].runs():
        cfg.validate(cfg.gpt.n_layer)
    for _, cfg in full["pretrained"].runs():
        cfg.validate(30)  # SmolLM2-135M has 30 blocks
