"""One condition: train an LM with the objective, then measure it (``selfmodels selfmodel-lm``).

A run is two units of work, each kept under the key of its inputs (as every stage is, :mod:`selfmodels.stages`):

- **training**: ``metrics.jsonl``, ``checkpoint.safetensors`` (resume), ``main.safetensors`` (and ``aux.safetensors``),
  for the baseline ``snapshots/`` along training, then ``training.json`` with :func:`training_key` (every setting but
  the measurement-only ones, :data:`MEASUREMENT_ONLY`);
- **measurement**: ``result.json``, written last with the key of the whole config.

A finished run with the same key is read back, never recomputed; a run whose measurement settings changed (the
observer, the LLC) is measured again on its trained weights, without training; a directory trained with other
settings is refused (nothing is overwritten); an interrupted training resumes from its checkpoint. Every measurement
is made by :func:`measure_model`, which also serves the baseline's snapshots.

Data: our GPT reads the corpus through our byte-level BPE (fitted on the training part) and is trained from scratch;
any other ``main`` is a pretrained Hugging Face subject read with its own tokenizer and fine-tuned. The token stream's
last ``val_fraction`` is held out; its first half trains the fresh observer, its second half gives the evaluation
windows (validation loss, norms, the self-model's fit, the observer's evaluation).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from selfmodels import distributed
from selfmodels.artifacts import load_tensors, read_json, save_tensors, write_config, write_json
from selfmodels.configs import to_dict
from selfmodels.curves import Mirror
from selfmodels.data.windows import consecutive_windows, spread_windows
from selfmodels.errors import UserError, require
from selfmodels.lm_selfmodeling.config import METHODS, RESULT_VERSION, LMRunConfig, ObjectiveConfig  # defined there, torch-free
from selfmodels.lm_selfmodeling.objective import AuxiliaryObjective
from selfmodels.lm_selfmodeling.observer import observe
from selfmodels.lm_selfmodeling.sites import site_width
from selfmodels.lm_selfmodeling import measure
from selfmodels.runtime import cache_dir, seed_everything
from selfmodels.subjects.base import Subject
from selfmodels.subjects.lm_training import LMTrainConfig, train_language_model
from selfmodels.stages import content_key

@dataclass
class LMData:
    """Token streams and the fixed windows every measurement uses."""

    train: torch.Tensor
    observer_train: torch.Tensor  # (N, T) held-out windows the observer trains on
    eval_x: torch.Tensor  # (N, T)
    eval_y: torch.Tensor
    eval_bytes: int
    llc_windows: torch.Tensor  # (N, T+1) training windows
    info: dict
    tokenizer: object = None


def _windows(tokenizer, train: torch.Tensor, val: torch.Tensor, cfg: LMRunConfig, info: dict) -> LMData:
    T = cfg.seq_len
    half = val.numel() // 2
    obs_x, _ = spread_windows(val[:half], T, cfg.observer.train_windows, what="observer (held-out)")
    ex, ey = consecutive_windows(val[half:], T, max(cfg.eval_windows, cfg.observer.eval_windows), what="evaluation (held-out)")
    # Consecutive windows predict one contiguous piece of text: its UTF-8 length is the bytes the loss codes.
    n_bytes = len(tokenizer.decode(ey[: cfg.eval_windows].flatten().tolist()).encode("utf-8"))
    lx, ly = spread_windows(train, T, cfg.llc_windows, what="training")
    return LMData(train, obs_x, ex, ey, n_bytes, torch.cat([lx, ly[:, -1:]], dim=1), info, tokenizer)


def load_data(cfg: LMRunConfig, device: torch.device, progress: bool = False) -> LMData:
    """Our GPT's BPE and token streams (cached under ``$SELFMODELS_CACHE``), cut into the run's windows."""
    from selfmodels.subjects.text import DATA_FORMAT, prepare_text

    require(cfg.main == "gpt", "load_data serves our GPT; a pretrained subject brings its own tokenizer")
    store = cache_dir() / "lm-selfmodeling-data" / content_key({"corpus": to_dict(cfg.corpus), "format": DATA_FORMAT})
    tokenizer, train, val, info = prepare_text(cfg.corpus, store, progress)
    return _windows(tokenizer, train, val, cfg, info)


def build_subject(cfg: LMRunConfig, data: LMData | None, device: torch.device, progress: bool = False,
                  held: Subject | None = None) -> tuple[Subject, LMData]:
    """A fresh GPT (seeded) or the pretrained subject to fine-tune, with its data. ``held``: a subject the caller holds
    (:func:`selfmodels.open_subject`), fine-tuned as a copy (the caller's model is never changed), read with its own
    tokenizer, on its own device and in its own dtype."""
    if held is not None:
        from selfmodels.subjects.held import as_subject
        from selfmodels.subjects.registry import SubjectConfig, open_subject

        own = as_subject(copy.deepcopy(held.model), held.tokenizer, name=held.name)
        opened = open_subject(SubjectConfig(main=cfg.main), cfg.corpus, own.device, cfg.seed, progress=progress, held=own)
        return opened.subject, data or _windows(opened.tokenizer, opened.train, opened.val, cfg, opened.data)
    if cfg.main == "gpt":
        from selfmodels.nets.gpt import GPT
        from selfmodels.subjects.gpt import GPTSubject

        data = data or load_data(cfg, device, progress)
        seed_everything(cfg.seed)
        gpt_cfg = dataclasses.replace(cfg.gpt, vocab_size=data.tokenizer.get_vocab_size(), block_size=cfg.seq_len)
        return GPTSubject(GPT(gpt_cfg).to(device)), data
    from selfmodels.subjects.registry import SubjectConfig, open_subject

    opened = open_subject(SubjectConfig(main=cfg.main, dtype="float32"), cfg.corpus, device, cfg.seed, progress=progress)
    data = data or _windows(opened.tokenizer, opened.train, opened.val, cfg, opened.data)
    return opened.subject, data


def build_objective(cfg: ObjectiveConfig, subject: Subject) -> AuxiliaryObjective:
    """The auxiliary parameters for ``cfg`` on ``subject`` (created after the main model: its init is untouched)."""
    method = METHODS.get(cfg.method)
    forward_model = None
    if method.forward_form:
        from selfmodels.forward.architectures import build_forward_model
        from selfmodels.forward.config import ForwardModelConfig

        forward_model = build_forward_model(ForwardModelConfig(d_head=cfg.forward_d_head), subject.d_model)
    width = site_width(subject, cfg.site) if method.predicting else 0
    objective = AuxiliaryObjective(cfg.method, cfg.site, cfg.loss, cfg.detach_target, subject.d_model, width,
                                   forward_model, cfg.source, cfg.target, cfg.flow,
                                   lr=cfg.forward_lr if method.forward_form else None)
    return objective.to(subject.device)


def lm_train_config(cfg: LMRunConfig) -> LMTrainConfig:
    """The main model's optimisation; the weight-decay control replaces the baseline's decay by its strength."""
    if METHODS.get(cfg.objective.method).decay_from_strength:
        return dataclasses.replace(cfg.lm, weight_decay=cfg.objective.strength)
    return cfg.lm


def measure_model(subject: Subject, objective: AuxiliaryObjective | None, data: LMData, cfg: LMRunConfig,
                  with_llc: bool, mirror: Mirror | None = None) -> dict:
    """Every measurement of a trained (frozen) LM: LM metrics, weight spread, norms, the self-model's fit, the fresh
    observer on both pairs and (``with_llc``) the LLC."""
    subject.model.eval().requires_grad_(False)
    bs = cfg.lm.batch_size
    ex, ey = data.eval_x[: cfg.eval_windows], data.eval_y[: cfg.eval_windows]
    out = {**measure.lm_metrics(subject, ex, ey, data.eval_bytes, bs), **measure.weight_spread(subject),
           **measure.residual_norms(subject, ex, bs)}
    if objective is not None:
        out.update(measure.objective_fit(subject, objective, ex, bs))
    eval_obs = (data.eval_x[: cfg.observer.eval_windows], data.eval_y[: cfg.observer.eval_windows])
    for name, pair in cfg.observer.pairs().items():
        obs = observe(subject, pair, data.observer_train, eval_obs, cfg.observer, cfg.seed)
        out.update({f"observer_{name}_{k}": v for k, v in obs.items()})
    if with_llc:
        out.update(estimate_lm_llc(subject, data, cfg, mirror))
    return out


def estimate_lm_llc(subject: Subject, data: LMData, cfg: LMRunConfig, mirror: Mirror | None = None) -> dict:
    """The LM's LLC (``llc_*`` keys of :meth:`LLCResult.summary`), or ``llc_unavailable`` when the LM estimator
    is not in this installation; its traces also go to ``mirror`` (curve ``llc``, per draw)."""
    try:
        from selfmodels.complexity.lm_llc import lm_llc
    except ImportError:
        return {"llc_unavailable": "selfmodels.complexity.lm_llc is not available"}
    model = subject.model
    model.requires_grad_(True)
    try:
        result = lm_llc(model, data.llc_windows, cfg.llc, device=subject.device, progress=False)
    finally:
        model.requires_grad_(False)
    if mirror is not None:
        mirror.log_all(result.trace_records(), curve="llc", step="draw")
    return result.summary()


MEASUREMENT_ONLY = ("observer", "llc", "estimate_llc", "llc_windows")  # settings that never change the trained weights
TRAINING = "training.json"


def training_key(cfg: LMRunConfig, held: Subject | None = None) -> str:
    """The key of a run's training: its config without the measurement-only settings (and, for a subject the caller
    holds, the digest of its weights: another model under the same name is another run)."""
    settings = {k: v for k, v in to_dict(cfg).items() if k not in MEASUREMENT_ONLY}
    return content_key({"training": settings, "version": RESULT_VERSION, **_held_identity(held)})


def run_key(cfg: LMRunConfig, held: Subject | None = None) -> str:
    """The key of a run's record: its whole config (and a held subject's weights digest)."""
    return cfg.key() if held is None else content_key({"run": cfg.key(), **_held_identity(held)})


def _held_identity(held: Subject | None) -> dict:
    return {} if held is None else {"subject_weights_sha256": held.describe()["weights_sha256"]}


def _finished(out: Path, key: str, train_key: str) -> dict | None:
    """The run's record when ``out`` holds it under ``key``; None when it must be (re)measured or trained. A
    directory trained under another training key is refused."""
    done, trained = out / "result.json", out / TRAINING
    if done.is_file() and read_json(done).get("key") == key:
        return read_json(done)
    if trained.is_file():
        if read_json(trained).get("key") != train_key:
            raise UserError(f"{out} holds a run trained with other settings (training key {read_json(trained).get('key')} "
                            f"!= {train_key}): use another --out or delete it")
    elif done.is_file():  # a finished run of an older layout without its training key: its settings are unknown
        raise UserError(f"{out} holds a finished run with other settings (key {read_json(done).get('key')} != {key}): "
                        "use another --out or delete it")
    return None


def _train(cfg: LMRunConfig, out: Path, subject: Subject, objective: AuxiliaryObjective, data: LMData, progress: bool,
           mirror: Mirror, train_key: str) -> dict:
    """The training unit: trains (or resumes) and saves the weights, or loads them when ``training.json`` says they
    are these settings' (only the measurements changed); returns the training record."""
    main_only = distributed.main_only  # under torchrun every rank trains (data-parallel); rank 0 writes
    trained = out / TRAINING
    if trained.is_file():  # _finished has checked its key
        subject.model.load_state_dict(load_tensors(out / "main.safetensors"))
        if list(objective.parameters()):
            objective.load_state_dict(load_tensors(out / "aux.safetensors"))
        subject.model.eval().requires_grad_(False)
        objective.eval()
        return read_json(trained)["training"]
    training = train_language_model(subject, objective, cfg.objective.strength, lm_train_config(cfg), data.train,
                                    (data.eval_x[: cfg.eval_windows], data.eval_y[: cfg.eval_windows]), cfg.seq_len,
                                    out, cfg.seed, snapshots=cfg.snapshots, progress=progress, mirror=mirror)
    main_only(save_tensors)(out / "main.safetensors", subject.model.state_dict())
    if list(objective.parameters()):
        main_only(save_tensors)(out / "aux.safetensors", objective.state_dict())
    main_only(write_json)(trained, {"key": train_key, "training": training})
    return training


def run_one(cfg: LMRunConfig, out: str | Path, data: LMData | None = None, device: torch.device | str = "cpu",
            progress: bool = True, log: tuple[str, ...] = (), subject: Subject | None = None) -> dict:
    """Train and measure one condition in ``out``; returns the run's record (read back when already finished; only
    measured again when only measurement settings changed, see the module).
    ``log``: sinks the training curve and LLC traces are mirrored to (:mod:`selfmodels.curves`); not an input.
    ``subject``: a subject the caller holds, fine-tuned as a copy in place of opening ``cfg.main`` (which names it)."""
    out = Path(out)
    device = torch.device(device)
    held = subject
    key, train_key = run_key(cfg, held), training_key(cfg, held)
    record = _finished(out, key, train_key)
    if record is not None:
        return record
    began = time.perf_counter()
    with distributed.main_first():  # rank 0 fills the corpus and model caches; the others read them
        subject, data = build_subject(cfg, data, device, progress, held)
    cfg.validate(subject.n_layers)
    objective = build_objective(cfg.objective, subject)
    main_only = distributed.main_only  # under torchrun every rank trains (data-parallel) and measures; rank 0 writes
    main_only(write_config)(out, {**to_dict(cfg), "key": key})
    sinks = log if distributed.is_main() else ()
    with Mirror(out, sinks, name=f"{cfg.objective.label}-seed{cfg.seed}", config=to_dict(cfg)) as mirror:
        training = _train(cfg, out, subject, objective, data, progress, mirror, train_key)
        o, method = cfg.objective, METHODS.get(cfg.objective.method)
        record = {
            "key": key, "condition": o.label, "method": o.method, "strength": o.strength, "seed": cfg.seed,
            "site": o.site if method.reads_site else None, "loss": o.loss,
            "detach_target": o.detach_target, "forward_pair": [o.source, o.target] if method.forward_form else None,
            "flow": o.flow if method.forward_form else None, "main": cfg.main, "params": subject.n_params,
            "training": training, "data": data.info,
            **measure_model(subject, objective, data, cfg, cfg.estimate_llc, mirror),
        }
    record["seconds"] = time.perf_counter() - began
    main_only(write_json)(out / "result.json", record)
    distributed.barrier()
    return read_json(out / "result.json")  # the JSON form (NaN as null), the same a resumed call returns


def measure_snapshot(cfg: LMRunConfig, run_dir: Path, step: int, data: LMData, device: torch.device) -> dict:
    """The measurements of the baseline's snapshot at ``step`` (kept in ``run_dir/matched/step_N.json``)."""
    path = Path(run_dir) / "matched" / f"step_{step}.json"
    key = content_key({"run": cfg.key(), "step": step})
    if path.is_file() and read_json(path).get("key") == key:
        return read_json(path)
    subject, data = build_subject(cfg, data, device)
    subject.model.load_state_dict(load_tensors(Path(run_dir) / "snapshots" / f"step_{step}.safetensors"))
    record = {"key": key, "step": step, **measure_model(subject, None, data, cfg, cfg.estimate_llc)}
    write_json(path, record)
    return read_json(path)


def nearest_snapshot(run_dir: Path, val_loss: float) -> tuple[int, float] | None:
    """(step, val_loss) of the baseline snapshot whose validation loss is nearest ``val_loss``."""
    from selfmodels.artifacts import read_jsonl

    rows = read_jsonl(Path(run_dir) / "snapshots.jsonl")
    if not rows:
        return None
    best = min(rows, key=lambda r: abs(r["val_loss"] - val_loss))
    return int(best["step"]), float(best["val_loss"])

