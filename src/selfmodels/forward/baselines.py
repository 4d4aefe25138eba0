"""Baselines beside the forward model: one class and one registry entry each.

A baseline predicts the target residual from the source, as the forward model does, and is evaluated the same way
on the same held-out windows: every registered metric (:mod:`selfmodels.forward.metrics`) and causal substitution.
The pipeline fits every registered baseline that is enabled for the run on the headline pair, and what follows from
the entry alone:

- ``results.json``: ``results[baseline.name]`` = what :meth:`Baseline.fit` records, the metrics, ``recovery`` and
  ``substitution`` (None when the baseline is switched off for the run);
- ``report.md``: a column ``baseline.column`` of the prediction table, the line :meth:`Baseline.describe` gives under
  the setup and the sentence :meth:`Baseline.note` gives under the table (kept in ``results["baselines"]``, so the
  report is written from the results alone).

(Copying the source, the "skip" baseline, is not an entry: it needs no fitting and every metric and KL carries it,
as ``skip_cosine`` and ``kl_skipped``.) Register one with::

    from selfmodels.forward.baselines import Baseline, Fitted, register_baseline

    class MeanUpdate(Baseline):
        name, column = "mean_update", "ours: mean update"
        def fit(self, run, source, target, headline):
            ...  # e.g. run.fit(...) to train a module on the pair from the activation cache
            return Fitted(model, key, {"what": "h + the mean update"})

    register_baseline(MeanUpdate())

``run`` is the pipeline run (:class:`selfmodels.forward.pipeline.PipelineRun`): its ``cfg``, ``subject``,
``d_model``, ``store`` (the stage store: keep what you fit under a key of its inputs), ``subject_key`` and
``data_key`` (the inputs every stage's key includes), ``fit(...)`` (train a module on a pair, kept as a stage) and
``train_windows()``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from selfmodels import training
from selfmodels.artifacts import load_tensors, save_tensors
from selfmodels.errors import require
from selfmodels.forward.architectures import build_forward_model, num_params
from selfmodels.forward.config import ForwardModelConfig
from selfmodels.forward.ridge import RidgeMap, fit_ridge_maps
from selfmodels.forward.train import ForwardTask, ForwardTrainConfig, PairBatches
from selfmodels.registries import Registry

class PipelineRun(Protocol):
    """What a baseline reads from the pipeline run it is fitted in (:class:`selfmodels.forward.pipeline.PipelineRun`
    is the one implementation; named here as a protocol so that this module does not import the pipeline above it)."""

    cfg: Any
    subject: Any
    d_model: int
    device: torch.device
    store: Any  # selfmodels.stages.StageStore
    subject_key: dict
    data_key: dict
    activations: Any  # the activation cache, once written

    def fit(self, *args: Any, **kwargs: Any) -> Any: ...
    def save_beside(self, *args: Any, **kwargs: Any) -> Any: ...
    def train_windows(self) -> torch.Tensor: ...


@dataclass
class Fitted:
    """A fitted baseline: ``model`` maps source activations (B, T, d) to a prediction of the target; ``key`` is the
    key of what was fitted (its evaluation is kept under it); ``entry`` is what ``results.json`` records besides the
    metrics."""

    model: torch.nn.Module
    key: str
    entry: dict


class Baseline:
    """One baseline. ``name``: its key in ``results.json``; ``column``: its column in the report's prediction table."""

    name: str = ""
    column: str = ""
    trains_from_cache: bool = False  # the pipeline then writes the activation cache even if nothing else needs it

    def enabled(self, run: "PipelineRun") -> bool:
        return True

    def fit(self, run: "PipelineRun", source: int, target: int, headline: dict) -> Fitted:
        """Fit on (source, target). ``headline``: the forward model's ``key`` and ``train`` record (e.g. to match its
        training time)."""
        raise NotImplementedError

    def parameters(self, entry: dict) -> str:
        """The report's "parameters" cell."""
        return f"{entry['params']:,}" if entry.get("params") is not None else "-"

    def describe(self, entry: dict) -> str | None:
        """A line for the report's setup section, or None."""
        return None

    def note(self, entry: dict) -> str | None:
        """A sentence under the report's prediction table, or None."""
        return None

    def presentation(self, entry: dict | None) -> dict:
        """What the report shows of this baseline (kept in ``results.json``'s ``baselines``, so the report is written
        from the results alone): its column, parameters cell, setup line and note; only the column when it is off."""
        if entry is None:
            return {"column": self.column, "parameters": "-", "setup": None, "note": None}
        return {"column": self.column, "parameters": self.parameters(entry), "setup": self.describe(entry),
                "note": self.note(entry)}


BASELINES: Registry[Baseline] = Registry("baseline")


def register_baseline(baseline: Baseline, *, replace: bool = False) -> Baseline:
    """Add ``baseline`` to every pipeline run from now on (``replace=True`` to redefine one of the same name)."""
    require(bool(baseline.column), f"baseline {baseline.name!r} needs a column (its report header)")
    return BASELINES.register(baseline.name, baseline, replace=replace)


def _seconds_per_step(model: torch.nn.Module, pairs, train: ForwardTrainConfig, device: torch.device, steps: int = 4) -> float:
    """Measured seconds per training step of a throwaway copy of ``model`` (the first step is warm-up)."""
    probe = ForwardTask({"probe": (copy.deepcopy(model), 0, 1)}, PairBatches(pairs, 0, 1),
                        dataclasses.replace(train, steps=steps + 1), device, "timing")
    return training.train(probe, training.Schedule(steps + 1), progress=False).seconds_per_step(warmup=1)


class PerPositionMLP(Baseline):
    """The paper's per-position MLP d -> k d -> d (no attention), trained from the activation cache on the forward
    model's steps, or on about its training time (``--baseline.steps time``)."""

    name, column, trains_from_cache = "baseline_mlp", "ours: per-position MLP", True

    def enabled(self, run: "PipelineRun") -> bool:
        return run.cfg.baseline.enabled

    def fit(self, run: "PipelineRun", source: int, target: int, headline: dict) -> Fitted:
        cfg = run.cfg
        torch.manual_seed(cfg.seed)
        model = build_forward_model(ForwardModelConfig(architecture="per-position-mlp", mlp_mult=cfg.baseline.hidden_mult),
                                    run.d_model)
        train, plan = cfg.train, None
        if cfg.baseline.steps == "time":
            seconds = headline["train"].get("seconds")
            require(seconds is not None, "--baseline.steps time needs a forward model fitted in this run (not co-trained): "
                                         "use --baseline.steps same")

            def measure(directory: Path) -> dict:
                batches = run.activations.batches(str(source), str(target), train.batch_size, torch.Generator().manual_seed(1))
                per_step = _seconds_per_step(model, batches, train, run.device)
                # capped: timing on a shared machine is noisy
                return {"steps": int(np.clip(round(seconds / per_step), 1, 2 * train.steps)), "seconds_per_step": per_step,
                        "forward_model_seconds": seconds}

            plan, _, _ = run.store.run("baseline_plan", {"forward_model": headline["key"], "hidden_mult": cfg.baseline.hidden_mult},
                                       measure)
            train = dataclasses.replace(train, steps=plan["steps"])
        info, key = run.fit("baseline_mlp", model, {"per_position_mlp": cfg.baseline.hidden_mult}, source, target, train)
        run.save_beside("baseline_mlp.safetensors", model)
        return Fitted(model, key, {"params": num_params(model), "share_of_main": num_params(model) / run.subject.n_params,
                                   "hidden_mult": cfg.baseline.hidden_mult, "steps_rule": cfg.baseline.steps,
                                   "time_matching": plan, "train": info})

    def describe(self, entry: dict) -> str:
        rule = ("steps chosen from its measured speed to match the forward model's training time"
                if entry["steps_rule"] == "time" else "the forward model's step count")
        return (f"**Baseline**: per-position MLP d -> {entry['hidden_mult']}d -> d (GELU, no attention), {entry['params']:,} "
                f"parameters, {entry['train']['steps']:,} steps ({rule}) in {entry['train']['seconds']:.0f} s.\n")


class RidgeMapBaseline(Baseline):
    """The closed-form ridge (affine) map source -> target, fitted on the training windows of the cache (the same
    sequences the cached models train on): what the forward model gains over it is what a linear map cannot do."""

    name, column = "ridge_map", "ours: ridge map"

    def fit(self, run: "PipelineRun", source: int, target: int, headline: dict) -> Fitted:
        cfg = run.cfg
        windows = run.train_windows()
        ridge = RidgeMap(run.d_model, cfg.ridge)

        def fit(directory: Path) -> dict:
            fitted = fit_ridge_maps(run.subject, windows, [(source, target)], cfg.ridge, cfg.eval_batch)[(source, target)]
            save_tensors(directory / "model.safetensors", fitted.state_dict())
            return {"tokens": fitted.tokens}

        info, directory, key = run.store.run("ridge_map", {**run.subject_key, **run.data_key, "source": source, "target": target,
                                                           "ridge": cfg.ridge, "train_sequences": cfg.train_sequences}, fit)
        ridge.load_state_dict(load_tensors(directory / "model.safetensors"))
        return Fitted(ridge.to(run.device), key, {"ridge": cfg.ridge, "fitted_on_tokens": info["tokens"]})

    def parameters(self, entry: dict) -> str:
        return "closed form"

    def note(self, entry: dict) -> str:
        return ("The ridge map is the closed-form affine map source -> target fitted on the training windows "
                f"({entry['fitted_on_tokens']:,} tokens, ridge {entry['ridge']:g}): what the forward model gains over it is "
                "what a linear map cannot do.\n")


register_baseline(PerPositionMLP())
register_baseline(RidgeMapBaseline())
