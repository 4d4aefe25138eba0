"""One training run in its own directory: config in, trained classifier and result record out.

A run directory holds ``config.json`` (the resolved :class:`RunConfig`, the data source and split,
package version, git commit), ``metrics.jsonl`` (one line per epoch), ``checkpoint.safetensors``
while training, and when finished ``model.safetensors`` (the trained module, self-model rows
included), ``classifier.safetensors`` (the pruned classifier) and ``result.json`` (the run's record;
its presence marks the run finished). Running a finished run again returns its record; running an
interrupted one resumes it from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfmodels.artifacts import load_tensors, read_json, read_jsonl, save_tensors, write_config, write_json
from selfmodels.configs import option, to_dict
from selfmodels.curves import Mirror
from selfmodels.errors import UserError
from selfmodels.nets.classifiers import ClassifierConfig, build_classifier
from selfmodels.runtime import seed_everything
from selfmodels.selfmodeling.config import METHODS
from selfmodels.selfmodeling.objectives import build_objective
from selfmodels.selfmodeling.presets import preset
from selfmodels.stages import content_key
from selfmodels.selfmodeling.train import CHECKPOINT, METRICS, OptimConfig, train_objective

RESULT = "result.json"
CLASSIFIER = "classifier.safetensors"
MODEL = "model.safetensors"


@dataclass
class ClassificationDataConfig:
    """Which data a run trains on (the split seed is fixed across training seeds)."""

    task: str = option("mnist", "classification task (mnist, fashion-mnist, cifar10, imdb)")
    source: str = option("auto", "auto (hub when reachable, else offline), hub or offline", choices=("auto", "hub", "offline"))
    val_fraction: float = option(0.1, "share of the training set held out for validation")
    val_is_test: bool = option(False, "use the test set as validation set, as the paper did")
    split_seed: int = option(0, "seed of the train/validation split")


@dataclass
class RunConfig:
    """One fully resolved run: data, model, objective, optimisation, seed and (optionally) LLC."""

    data: ClassificationDataConfig
    model: ClassifierConfig
    optim: OptimConfig
    method: str = option("baseline", "objective", choices=METHODS)
    strength: float = option(0.0, "strength w of the regulariser (auxiliary weight for self-model)")
    targets: list[str] = option([], "target module names (self-model / activation-l2)")
    detach: bool = option(True, "self-model: stop-gradient on the target")
    head: str = option("head", "name of the final Linear layer")
    seed: int = option(0, "seed of initialisation and data order")
    llc: Any = option(None, "an LLCConfig, or None for no LLC", cli=False)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not (self.strength >= 0) or self.strength == float("inf"):
            raise UserError(f"strengths must be finite and non-negative, got {self.strength}")
        if self.method == "baseline" and self.strength != 0:
            raise UserError("the baseline has no regulariser: give it strength 0")
        if self.method in ("self-model", "activation-l2") and not self.targets:
            raise UserError(f"method {self.method} needs at least one target module")
        self.model.validate()
        self.optim.validate()

    @property
    def name(self) -> str:
        """The run directory's name inside a grid."""
        return f"{self.data.task}_h{self.model.hidden}_{self.method}_w{self.strength:g}_seed{self.seed}"


def run_config_to_dict(config: RunConfig) -> dict:
    return to_dict(config)  # asdict also turns an LLCConfig into a dict


def run_config_from_dict(data: dict) -> RunConfig:
    """Rebuild a :class:`RunConfig` from ``config.json``'s ``run`` entry."""
    from selfmodels.configs import from_dict

    data = dict(data)
    llc = data.pop("llc", None)
    config = from_dict(RunConfig, data)
    if llc is not None:
        from selfmodels.complexity.llc import LLCConfig

        config.llc = from_dict(LLCConfig, llc)
    return config


def load_data(config: ClassificationDataConfig, *, source: str | None = None):
    """The run's :class:`~selfmodels.data.classification.ClassificationData`."""
    from selfmodels.data.classification import load_classification

    return load_classification(
        config.task, source=source or config.source, val_fraction=config.val_fraction,
        val_is_test=config.val_is_test, seed=config.split_seed,
    )


def build_model(config: RunConfig, data) -> nn.Module:
    """The plain classifier for this run, initialised from the run's seed."""
    seed_everything(config.seed)
    return build_classifier(config.model, num_classes=data.num_classes, input_shape=data.input_shape, vocab_size=data.vocab_size)


def _training_fields(run: dict) -> dict:
    """A run's identity for resuming: everything but the LLC settings (the LLC is estimated after
    training, so it can be added to or redone on a finished run)."""
    return {k: v for k, v in run.items() if k != "llc"}


def training_key(run: dict) -> str:
    """The key of a run's training (:func:`selfmodels.stages.content_key` of everything but the LLC settings), as
    every area keys its finished work."""
    return content_key(_training_fields(json.loads(json.dumps(run))))


def _check_same_config(run_dir: Path, wanted: dict) -> None:
    """Refuse to continue a run directory that holds a run of another training key (nothing is overwritten)."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    stored_run = read_json(path).get("run") or {}
    if training_key(stored_run) != training_key(wanted):
        stored = _training_fields(json.loads(json.dumps(stored_run)))
        wanted = _training_fields(json.loads(json.dumps(wanted)))
        diffs = sorted(k for k in set(wanted) | set(stored) if stored.get(k) != wanted.get(k))
        raise UserError(
            f"{run_dir} already holds a different run (differs in: {', '.join(diffs) or 'format'}); "
            "choose another --out directory or delete that run directory"
        )


def _add_llc(record: dict, classifier: nn.Module, data, config: RunConfig, device, run_dir: Path | None = None,
             log: tuple[str, ...] = ()) -> dict:
    """Estimate the pruned classifier's LLC on the training set (mean cross-entropy, as ``classifier_llc``); its keys
    go into the record. With ``log``, its traces also go to those sinks in ``run_dir`` (curve ``llc``, per draw)."""
    from selfmodels.complexity.llc import cross_entropy, estimate_llc

    result = estimate_llc(classifier, data.train, cross_entropy, config.llc, device=device, progress=False)
    if log:
        with Mirror(run_dir, log, name=f"{config.name} llc", config={"llc": dict(result.config)}) as mirror:
            mirror.log_all(result.trace_records(), curve="llc", step="draw")
    llc = result.summary()
    record = {k: v for k, v in record.items() if not k.startswith("llc_")}
    record.update({key: value for key, value in llc.items() if key not in ("llc_config", "llc_trace_windows")})
    record["llc_settings"] = to_dict(config.llc)
    return record


def run_one(config: RunConfig, data, run_dir: str | Path, *, device: str | torch.device = "cpu", progress: bool = True,
            stop_after: int | None = None, log: tuple[str, ...] = ()) -> dict | None:
    """Train (or resume, or skip) one run; returns its record, or None when ``stop_after`` cut it short.

    A finished run is not trained again; if LLC settings are given that its record lacks (or that
    differ), only the LLC is estimated and the record updated. ``log`` names the sinks the training curve is
    mirrored to (:mod:`selfmodels.curves`), in ``run_dir``.
    """
    config.validate()
    run_dir = Path(run_dir)
    wanted = run_config_to_dict(config)
    _check_same_config(run_dir, wanted)
    device = torch.device(device)
    if (run_dir / RESULT).exists():
        record = read_json(run_dir / RESULT)
        if config.llc is not None and record.get("llc_settings") != json.loads(json.dumps(to_dict(config.llc))):
            classifier = build_model(config, data)
            classifier.load_state_dict(load_tensors(run_dir / CLASSIFIER))
            write_json(run_dir / RESULT, _add_llc(record, classifier.to(device), data, config, device, run_dir, log))
            record = read_json(run_dir / RESULT)
        return record
    kind = "offline" if str(data.source).startswith("offline") else "hub"
    write_config(run_dir, {"run": wanted, "data_source": data.source, "data_source_kind": kind, "split": data.split})

    model = build_model(config, data)
    example = data.train.tensors[0][:2]
    objective = build_objective(
        config.method, model, config.strength, targets=config.targets, example_input=example,
        head=config.head, detach=config.detach, seed=config.seed,
    )
    with Mirror(run_dir, log, name=config.name, config=wanted) as mirror:
        history = train_objective(
            objective, data.train, data.val, data.test, config.optim, run_dir,
            seed=config.seed, device=device, progress=progress, stop_after=stop_after, mirror=mirror,
        )
    if len(history) < config.optim.epochs:
        return None
    classifier = objective.classifier()
    save_tensors(run_dir / MODEL, objective.module.state_dict())
    save_tensors(run_dir / CLASSIFIER, classifier.state_dict())

    last = history[-1]
    record = {
        "task": config.data.task,
        "hidden": config.model.hidden,
        "method": config.method,
        "strength": config.strength,
        "seed": config.seed,
        "epochs": config.optim.epochs,
        "num_classes": data.num_classes,
        "test_accuracy": last["test_accuracy"],
        "val_accuracy": last["val_accuracy"],
        "weight_sd": last["weight_sd"],
        "identity_distance": last["identity_distance"],
        "train_ce": last["train_ce"],
        "train_aux": last["train_aux"],
        "data_source": data.source,
        "run_dir": run_dir.name,
    }
    if config.llc is not None:
        record = _add_llc(record, classifier, data, config, device, run_dir, log)
    # result.json marks the run finished; the checkpoint is no longer needed once it is written.
    write_json(run_dir / RESULT, record)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    return read_json(run_dir / RESULT)  # as stored: non-finite values (a flagged LLC) become null


def load_trained_classifier(run_dir: str | Path, *, data=None) -> tuple[nn.Module, Any, dict]:
    """The pruned classifier of a finished run, its data (same task, source kind and split) and config.

    Returns ``(classifier_only_model, ClassificationData, run_config_dict)``; the model is in eval mode.
    ``data`` (a ClassificationData) is the run's data when already at hand, and is returned as given;
    by default it is loaded as the run's config says.
    """
    run_dir = Path(run_dir)
    stored = read_json(run_dir / "config.json")
    if "run" not in stored:
        raise UserError(f"{run_dir / 'config.json'} is not a self-modeling run's config")
    if not (run_dir / CLASSIFIER).exists():
        raise UserError(f"{run_dir} holds no trained classifier yet ({CLASSIFIER} missing): finish the run first")
    config = run_config_from_dict(stored["run"])
    if data is None:
        data = load_data(config.data, source=stored.get("data_source_kind"))
    model = build_classifier(config.model, num_classes=data.num_classes, input_shape=data.input_shape, vocab_size=data.vocab_size)
    try:
        model.load_state_dict(load_tensors(run_dir / CLASSIFIER))
    except RuntimeError as exc:
        raise UserError(f"{run_dir / CLASSIFIER} does not fit the run's model ({str(exc).splitlines()[0]})") from None
    model.eval()
    return model, data, stored["run"]


def read_history(run_dir: str | Path) -> list[dict]:
    """The per-epoch metrics of a run."""
    return read_jsonl(Path(run_dir) / METRICS)


def resolve_run(task: str, *, hidden: int | None = None, method: str = "baseline", strength: float = 0.0,
                seed: int = 0, **overrides: Any) -> RunConfig:
    """A :class:`RunConfig` with the paper's settings for ``task``; ``overrides`` replace optimiser fields
    (``epochs``, ``lr``, ...), ``targets``, ``detach``, ``source`` and the like."""
    p = preset(task)
    optim_fields = {f.name for f in dataclasses.fields(OptimConfig)}
    data_fields = {f.name for f in dataclasses.fields(ClassificationDataConfig)} - {"task"}
    optim = dataclasses.replace(p.optim, **{k: v for k, v in overrides.items() if k in optim_fields and v is not None})
    data = ClassificationDataConfig(task=task, **{k: v for k, v in overrides.items() if k in data_fields and v is not None})
    rest = {k: v for k, v in overrides.items() if k not in optim_fields | data_fields and v is not None}
    targets = list(rest.pop("targets", None) or p.targets)
    model = ClassifierConfig(arch=p.arch, hidden=hidden if hidden is not None else p.hidden[0])
    return RunConfig(data=data, model=model, optim=optim, method=method, strength=float(strength), targets=targets, seed=seed, **rest)
