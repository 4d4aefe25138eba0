"""The measurement battery of one trained, frozen closed loop: a fresh observer, probes without leakage,
robustness, the LLC with F frozen, weight spread and residual norms, as one JSON-able dict.

Which text each part reads (the held-out stream is the last ``val_fraction`` of the corpus's tokens, ``H``; halves
and quarters by token count, as :mod:`selfmodels.closed_loop.data` splits it):

| part | windows (``settings``) |
| --- | --- |
| observer O, trained | ``observer.train_windows`` spread over H's first half (reserved for it: the evaluation windows come from the second half) |
| O's fit, probes fitted (λ chosen) | ``probes.windows`` spread over H's third quarter (O's fit: third and fourth quarters) |
| probes scored, residual norms, robustness | ``probes.windows`` / ``norm_windows`` / ``robustness.windows`` spread over H's fourth quarter |
| LLC | ``llc_windows`` spread over the training stream, T + 1 tokens each |

O and the probes are measured twice, with the injection on (primary: the loop as trained) and off (h_m left alone;
an observer trained on those residuals): ``observer.on`` / ``observer.off``, ``probes.on`` / ``probes.off``. When
the condition injects nothing (open loop) both passes are the same computation and ``off`` is ``on``'s copy with
``same_as_on`` true. Robustness and norms use the injection on. Every key is named in ``definitions``.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from selfmodels.closed_loop.battery_config import BatteryConfig
from selfmodels.closed_loop.complexity import DRIFT_RULE, loop_llc, residual_norms, weight_spread
from selfmodels.closed_loop.data import LoopData
from selfmodels.closed_loop.model import ClosedLoop
from selfmodels.closed_loop.observer import observer_fit, predict, train_observer
from selfmodels.closed_loop.probes import layer_gains
from selfmodels.closed_loop.residuals import Collected, collect
from selfmodels.closed_loop.robustness import robustness
from selfmodels.configs import to_dict
from selfmodels.data.windows import spread_windows

BATTERY_VERSION = 1

DEFINITIONS = {
    "observer.*.cosine": "mean over tokens of cos(O(h_i), h_j), O a fresh forward model (never the co-trained F) trained "
                         "i -> j by MSE on the frozen loop's held-out residuals (first half of the held-out stream); "
                         "measured on the second half",
    "observer.*.skip_cosine": "mean over tokens of cos(h_i, h_j): the skip baseline beside O's cosine",
    "observer.*.update_r2": "1 - sum_t ||h_j - O(h_i)||^2 / sum_t ||u_t - mean(u)||^2, u = h_j - h_m (h_m as block m+1 "
                            "reads it): R^2 of O's implied prediction O(h_i) - h_m of the update h_j - h_m (the pre-grid check)",
    "observer.*.delta_r2": "1 - sum_t ||h_j - O(h_i)||^2 / sum_t ||h_j - h_i||^2 (the forward package's update R^2)",
    "observer.*.mse": "mean over elements of (O(h_i) - h_j)^2; train_mse: its last logged training value",
    "probes.*.layers.L.r2": "held-out R^2 (fourth quarter; pooled over dimensions, about the test mean) of a ridge map "
                            "[h_L, h_i, O(h_i), G(u)] -> r = h_j - O(h_i), fitted on the third quarter in float64 with "
                            "lambda chosen by k-fold CV over whole windows there (regressors standardised); G(u) left "
                            "out when nothing is injected; h_m after the injection",
    "probes.*.covariates.r2": "the same with the covariates [h_i, O(h_i), G(u)] alone",
    "probes.*.layers.L.gain": "r2(L) - covariates r2: what layer L holds about O's residual beyond the covariates",
    "robustness.sites.S.R.response_mean": "mean over directions of mean_t ||dh_j|| / ||delta_t||, delta_t = R ||h_m,t|| v "
                                          "(v a random unit direction, h_m clean, after the injection) added at S: "
                                          "'inject' = to h_m after the injection, 'source' = to h_i before F reads it",
    "robustness.sites.S.R.cosine_mean": "mean over directions of mean_t cos(dh_j,t, delta_t)",
    "robustness.sites.S.R.loss_increase_mean": "mean over directions of CE(perturbed) - CE(clean), nats/token; *_sd: SD "
                                               "over directions",
    "llc.llc_mean": "LLC of the GPT and G with F and the signal frozen (SGLD on per-token CE of training windows; "
                    "nbeta = n / ln n, n = predicted tokens per minibatch); null when flagged (llc_flags)",
    "weights.unembedding_sd": "SD (Bessel) of every entry of the LM head's weight (V, d)",
    "weights.block_weight_sd": "per block, SD of every entry of its matrices; block_weight_sd_mean their mean",
    "norms.resid_norm": "mean over held-out tokens of ||h_k||_2, k = -1 .. n-1, injection on, h_m after the injection "
                        "(resid_norm_before_injection: h_m before it)",
    "norms.update_norm": "mean over held-out tokens of ||h_k - h_{k-1}||_2, block k's write (block m's before the injection)",
    "drift": DRIFT_RULE + " (closed_loop.complexity.drift_flag; set by the grid, which holds the baseline)",
}


def held_out_parts(held_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """The held-out stream's first half and its third and fourth quarters (by tokens)."""
    half = held_out.numel() // 2
    second = held_out[half:]
    quarter = second.numel() // 2
    return {"first_half": held_out[:half], "third_quarter": second[:quarter], "fourth_quarter": second[quarter:]}


def _take(collected: Collected, count: int) -> Collected:
    """The first ``count`` windows of a collection."""
    return Collected({k: v[:count] for k, v in collected.residuals.items()}, collected.before_injection[:count],
                     None if collected.injected is None else collected.injected[:count])


def _self_knowledge(closed: ClosedLoop, windows: dict[str, torch.Tensor], inject: bool, cfg: BatteryConfig,
                    device: torch.device) -> tuple[dict, dict, Collected]:
    """O trained with the injection ``inject``, its fit and the probes; also the fourth quarter's collection."""
    i, m, j, bs = closed.source, closed.inject, closed.target, cfg.batch_size
    train = collect(closed, windows["observer"], inject, bs, indices=(i, j))
    observer, info = train_observer(train.residuals[i], train.residuals[j], cfg.observer, cfg.seed, device)
    fit, test = (collect(closed, windows[name], inject, bs) for name in ("fit", "test"))
    p_fit, p_test = predict(observer, fit.residuals[i], bs), predict(observer, test.residuals[i], bs)
    probe_test = _take(test, cfg.probes.windows)
    both = lambda f, t: torch.cat([f, t])  # noqa: E731  O's fit is measured on every window it never saw
    middle = lambda c: c.residuals[m]  # noqa: E731  h_m as block m + 1 reads it
    fit_stats = observer_fit(both(p_fit, p_test[: cfg.probes.windows]), both(fit.residuals[i], probe_test.residuals[i]),
                             both(middle(fit), middle(probe_test)), both(fit.residuals[j], probe_test.residuals[j]))
    observer_record = {**fit_stats, **info, "injected_during_training": train.injected is not None}

    def covariates(c: Collected, prediction: torch.Tensor) -> torch.Tensor:
        parts = [c.residuals[i], prediction] + ([c.injected] if c.injected is not None else [])
        return torch.cat(parts, dim=-1)

    pt = p_test[: cfg.probes.windows]
    probes = layer_gains(fit.residuals, covariates(fit, p_fit), fit.residuals[j] - p_fit,
                         probe_test.residuals, covariates(probe_test, pt), probe_test.residuals[j] - pt,
                         cfg.probes.lambdas, cfg.probes.folds)
    probes["covariates_used"] = ["h_i", "O(h_i)"] + (["G(u)"] if fit.injected is not None else [])
    return observer_record, probes, test


def measure_battery(closed: ClosedLoop, data: LoopData, settings: BatteryConfig, device: torch.device | str = "cpu",
                    progress: bool = False) -> dict:
    """Every measurement of the module docstring on the frozen loop ``closed`` (moved to ``device``, otherwise left as
    it was found: weights, modes and ``requires_grad`` flags), with ``data``'s held-out and training streams; one
    JSON-able dict. ``settings.seed`` seeds the observers and the directions: give it the run's seed."""
    settings.validate()
    began = time.perf_counter()
    device = torch.device(device)
    closed = closed.to(device)
    T = int(data.eval_x.shape[1])
    parts = held_out_parts(data.held_out)
    q4_count = max(settings.probes.windows, settings.norm_windows, settings.robustness.windows)
    windows = {"observer": spread_windows(parts["first_half"], T, settings.observer.train_windows,
                                          what="observer (held-out first half)")[0],
               "fit": spread_windows(parts["third_quarter"], T, settings.probes.windows,
                                     what="probe fitting (held-out third quarter)")[0]}
    test_x, test_y = spread_windows(parts["fourth_quarter"], T, q4_count, what="probe scoring (held-out fourth quarter)")
    windows["test"] = test_x
    seconds: dict[str, float] = {}
    bar = tqdm(total=5, desc="closed-loop battery", disable=not progress, leave=False)

    def lap(name: str, start: float) -> float:
        seconds[name] = time.perf_counter() - start
        bar.update(1)
        return time.perf_counter()

    t = time.perf_counter()
    observer, probes = {}, {}
    observer["on"], probes["on"], test_on = _self_knowledge(closed, windows, True, settings, device)
    t = lap("observer_and_probes_on", t)
    if test_on.injected is None:  # nothing injected: the pass without the injection is the same computation
        observer["off"] = {**observer["on"], "same_as_on": True}
        probes["off"] = {**probes["on"], "same_as_on": True}
    else:
        observer["off"], probes["off"], _ = _self_knowledge(closed, windows, False, settings, device)
    t = lap("observer_and_probes_off", t)
    robust = robustness(closed, test_x[: settings.robustness.windows], test_y[: settings.robustness.windows],
                        settings.robustness, settings.seed)
    t = lap("robustness", t)
    norms = residual_norms(_take(test_on, settings.norm_windows), closed.inject)
    weights = weight_spread(closed)
    t = lap("norms_and_weights", t)
    if settings.estimate_llc:
        lx, ly = spread_windows(data.train, T, settings.llc_windows, what="LLC (training)")
        llc = loop_llc(closed, torch.cat([lx, ly[:, -1:]], dim=1), settings.llc, device)
    else:
        llc = {"llc_skipped": "estimate_llc is off"}
    lap("llc", t)
    bar.close()
    seconds["total"] = time.perf_counter() - began
    return {
        "version": BATTERY_VERSION,
        "indices": {"source": closed.source, "inject": closed.inject, "target": closed.target},
        "observer": observer, "probes": probes, "robustness": robust, "llc": llc, "weights": weights, "norms": norms,
        "windows": {"observer": int(windows["observer"].shape[0]), "probe_fit": int(windows["fit"].shape[0]),
                    "probe_test": min(settings.probes.windows, int(test_x.shape[0])),
                    "norms": min(settings.norm_windows, int(test_x.shape[0])),
                    "robustness": min(settings.robustness.windows, int(test_x.shape[0])), "tokens_per_window": T},
        "settings": to_dict(settings), "seconds": seconds, "definitions": DEFINITIONS,
    }
