"""The one forward-self-model pipeline, the same for every subject.

corpus -> tokens -> subject -> activations -> fit -> evaluate -> analyze -> (sweeps) -> report:

1. open the subject and its token stream (:func:`selfmodels.subjects.registry.open_subject`; for our GPT
   this trains it, co-training the headline forward model when ``training = cotrain``, the only stage
   that exists for one kind of subject);
2. cut the held-out evaluation windows and the training windows for the activation cache;
3. cache the frozen subject's residuals at every index a model trains on (when any does);
4. fit the headline forward model (unless co-trained), the per-position MLP baseline and the sweeps'
   models;
5. evaluate each, and a closed-form ridge (affine) map fitted on the training windows, on the held-out
   windows: cosine beside the skip cosine, update cosine and R², causal
   substitution (KL substituted / skipped, recovery), per behavioural category for the headline model;
6. the analyses of the headline pair (attention, gauge, CKA, residual structure, decomposition);
7. ``results.json`` (schema in docs/forward-self-models.md), ``report.md`` with plots, the headline
   forward model saved with ``save_pretrained`` in ``forward_model/``.

Every stage is kept under a key of all its inputs (:mod:`selfmodels.stages`), so running the same
command again reuses finished work and resumes unfinished work, and a changed setting recomputes exactly
the stages it affects.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from selfmodels import distributed
from selfmodels.artifacts import atomic_path, append_jsonl, load_tensors, read_jsonl, save_tensors, write_config, write_json
from selfmodels.configs import to_dict
from selfmodels.curves import Mirror
from selfmodels.data.windows import consecutive_windows, spread_windows, window_count
from selfmodels.errors import UserError, require
from selfmodels.forward.architectures import build_forward_model, num_params, reads_attention
from selfmodels.forward.baselines import BASELINES
from selfmodels.forward.cache import ActivationCache, CacheSpec, write_cache
from selfmodels.forward.categories import TokenCategories
from selfmodels.forward.config import CAPACITY, ForwardModelConfig, RunConfig
from selfmodels.forward.evaluate import batches_of, evaluate
from selfmodels.forward.metrics import metric_names
from selfmodels.forward.pretrained import save_pretrained
from selfmodels.forward.reference import SCHEMA_VERSION, definitions, paper_reference
from selfmodels.forward.stream import ActivationStream
from selfmodels.forward.train import ForwardTrainConfig, train_forward, train_many
from selfmodels.runtime import resolve_device
from selfmodels.stages import StageStore
from selfmodels.subjects.base import Subject
from selfmodels.subjects.registry import CoTrain, OpenedSubject, open_subject
from selfmodels.training.rng import derived_seed

TRAINING_LABELS = {"cotrain": "co-trained", "cache": "frozen subject, from the activation cache",
                   "stream": "frozen subject, activations streamed through a shuffle buffer"}


def check_out(out: Path) -> Path:
    """``out`` must be a directory or not exist yet."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file: give a directory (it is created if missing)")
    return out


def check_pairs(cfg: RunConfig, n_layers: int, name: str) -> None:
    """Every (source, target) the run trains on lies inside a subject of ``n_layers`` blocks."""
    def check(source: int, target: int, what: str) -> None:
        require(-1 <= source < n_layers - 1, f"{what}: source {source} is out of range for {name} ({n_layers} blocks): "
                                             f"use -1 (embed) to {n_layers - 2}")
        require(target < n_layers, f"{what}: target {target} is out of range for {name} ({n_layers} blocks): use at most {n_layers - 1}")
        require(source < target, f"{what}: target {target} must come after source {source}: a forward model predicts a later layer")
    check(cfg.source, cfg.target, "--source/--target")
    if cfg.sweeps.capacity:
        check(cfg.sweeps.capacity_source, cfg.sweeps.capacity_target, "capacity sweep")
    for gap in cfg.sweeps.gaps:
        check(cfg.sweeps.gap_source, cfg.sweeps.gap_source + gap, f"layer-gap sweep (gap {gap})")
    for source in cfg.baseline.sources:
        check(source, cfg.target, f"--baseline.sources {source}")


def check_windows(cfg: RunConfig, train: torch.Tensor, val: torch.Tensor, bos_id: int | None, corpus: str) -> None:
    """``--whole-windows``: the corpus's training part holds ``train_sequences`` non-overlapping windows (one epoch of
    the run's training windows, none repeated) and its held-out part ``eval_sequences``."""
    if not cfg.whole_windows:
        return
    have_train, have_val = window_count(train, cfg.seq_len, bos_id), window_count(val, cfg.seq_len, bos_id)
    require(have_train >= cfg.train_sequences and have_val >= cfg.eval_sequences,
            f"corpus {corpus!r} is too small for this run's windows of {cfg.seq_len} tokens: its training part "
            f"({train.numel():,} tokens) holds {have_train:,} (--train-sequences {cfg.train_sequences:,}) and its held-out "
            f"part ({val.numel():,} tokens) {have_val:,} (--eval-sequences {cfg.eval_sequences:,}): give a larger corpus "
            "(e.g. --corpus offline), fewer sequences, or --no-whole-windows")


def _loss_slope(curve: Path, steps: int, fraction: float) -> dict:
    """The least-squares slope of a forward model's logged training MSE against the step over its last ``fraction``
    of ``steps``: ``per_1k_steps`` (MSE per 1,000 steps) and ``relative_change`` (slope x span / mean MSE there: the
    fitted change over that stretch as a fraction of the loss; ~0 once converged)."""
    first = steps - fraction * steps
    pts = [(r["step"], r["forward_mse"]) for r in read_jsonl(curve) if r.get("forward_mse") is not None and r["step"] >= first]
    if len(pts) < 2:
        return {"fraction": fraction, "points": len(pts), "per_1k_steps": None, "relative_change": None}
    xs, ys = torch.tensor([p[0] for p in pts], dtype=torch.float64), torch.tensor([p[1] for p in pts], dtype=torch.float64)
    slope = (((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum()).item()
    span = (xs.max() - xs.min()).item()
    return {"fraction": fraction, "from_step": int(xs.min()), "to_step": int(xs.max()), "points": len(pts),
            "mean_mse": ys.mean().item(), "per_1k_steps": 1000 * slope, "relative_change": slope * span / ys.mean().item()}


def _sweep_models(cfg: RunConfig, d_model: int) -> list[tuple[str, str, int, int, ForwardModelConfig]]:
    """(kind, name, source, target, config) of every sweep model."""
    rows = []
    for name in cfg.sweeps.capacity:
        n_layer, n_head, d_head, mlp_mult = CAPACITY[name]
        rows.append(("capacity", name, cfg.sweeps.capacity_source, cfg.sweeps.capacity_target,
                     ForwardModelConfig(d_model=d_model, n_layer=n_layer, n_head=n_head, d_head=d_head, mlp_mult=mlp_mult)))
    for gap in cfg.sweeps.gaps:
        rows.append(("gap", f"gap {gap}", cfg.sweeps.gap_source, cfg.sweeps.gap_source + gap,
                     dataclasses.replace(cfg.model, d_model=d_model)))
    return rows


class PipelineRun:
    """The state one pipeline run carries between its stages (what a registered baseline's ``fit`` is given)."""

    def __init__(self, cfg: RunConfig, out: Path, device: torch.device, progress: bool, mirror: Mirror | None = None,
                 held: Subject | None = None):
        self.cfg, self.out, self.device, self.progress, self.held = cfg, out, device, progress, held
        self.mirror = mirror or Mirror(out)  # --log: the curves trained here go to it as they are written
        self.store = StageStore(out)
        self.activations: ActivationCache | None = None
        self.cache_key: str | None = None
        self.cache_info: dict | None = None
        self.curves: dict[str, Path] = {}  # stage name -> its training curve

    # --- subject and data ------------------------------------------------------------------------
    def open(self) -> None:
        cfg = self.cfg
        if cfg.subject.trained_here:  # checked before training it
            check_pairs(cfg, cfg.subject.gpt.n_layer, "our GPT")
            if cfg.whole_windows and self.held is None:  # its tokens (kept for open_subject), checked before it trains
                from selfmodels.subjects.text import prepare_text, text_store

                with distributed.main_first():
                    _, train, val, _ = prepare_text(cfg.corpus, text_store(cfg.corpus), self.progress)
                check_windows(cfg, train, val, None, cfg.corpus.corpus)
        self.cotrained = None
        cotrain = None
        if cfg.training == "cotrain":
            torch.manual_seed(cfg.seed)  # the co-trained model's initial weights come from the run's seed
            self.cotrained = build_forward_model(cfg.model, cfg.subject.gpt.d_model)
            cotrain = CoTrain(self.cotrained, cfg.source, cfg.target, identity={"model": to_dict(self.cotrained.cfg)},
                              lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, grad_clip=cfg.train.grad_clip)
        with distributed.main_first():  # rank 0 fills the subject's cache (our GPT trained, a conversion); the others read it
            self.opened: OpenedSubject = open_subject(cfg.subject, cfg.corpus, self.device, cfg.seed, cotrain, self.progress,
                                                          mirror=self.mirror, held=self.held)
        self.subject = self.opened.subject
        check_pairs(cfg, self.subject.n_layers, self.subject.name)
        check_windows(cfg, self.opened.train, self.opened.val, self.opened.bos_id, cfg.corpus.corpus)
        self.described = self.subject.describe()
        self.d_model = self.subject.d_model
        self.subject_key = {"weights_sha256": self.described["weights_sha256"], "dtype": str(self.subject.dtype)}
        bos = self.opened.bos_id
        self.eval_x, self.eval_y = consecutive_windows(self.opened.val, cfg.seq_len, cfg.eval_sequences, bos, "validation")
        self.data_key = {"data": self.opened.data, "val_fraction": cfg.corpus.val_fraction, "bos": cfg.corpus.bos, "seq_len": cfg.seq_len}
        self.eval_key = {**self.data_key, "eval_sequences": cfg.eval_sequences}
        self.batches = batches_of(self.eval_x, self.eval_y, cfg.eval_batch)
        self.token_strings = self.opened.token_strings()
        counts = torch.bincount(self.opened.train, minlength=self.subject.vocab_size)
        self.categories = TokenCategories(self.token_strings, counts)

    # --- activations -------------------------------------------------------------------------------
    def cache(self, indices: list[int]) -> ActivationCache:
        cfg = self.cfg
        sequences, _ = spread_windows(self.opened.train, cfg.seq_len, cfg.train_sequences, self.opened.bos_id, "training")
        inputs = {**self.subject_key, **self.data_key, "train_sequences": cfg.train_sequences, "indices": indices,
                  "dtype": cfg.cache_dtype}
        spec = CacheSpec(model=self.described["weights_sha256"], tokenizer=str(self.opened.data["tokenizer"]),
                         data_source=str(self.opened.data["source"]), layers=[str(k) for k in indices],
                         seq_len=cfg.seq_len, d_model=self.d_model, dtype=cfg.cache_dtype, extra={"bos": cfg.corpus.bos})

        def collect(ids: torch.Tensor) -> dict[str, torch.Tensor]:
            acts = self.subject.residuals(ids, indices)
            return {str(k): acts[k].float().cpu() for k in indices}

        def compute(directory: Path) -> dict:
            write_cache(directory / "activations", spec, sequences, collect, shard_sequences=128,
                        batch_size=cfg.eval_batch, progress=self.progress)
            return {"sequences": int(sequences.shape[0]), "tokens": int(sequences.numel()), "indices": indices}

        began = time.perf_counter()
        result, directory, key = self.store.run("cache", inputs, compute)
        self.cache_key, self.cache_info = key, {**result, "seconds": time.perf_counter() - began}
        return ActivationCache(directory / "activations")

    # --- fitting -----------------------------------------------------------------------------------
    def fit(self, name: str, model: torch.nn.Module, identity: dict, source: int, target: int, train: ForwardTrainConfig,
            from_cache: bool = True) -> tuple[dict, str]:
        """Train ``model`` (whose shape ``identity`` describes) on (source, target), from the activation cache or
        from activations streamed on the fly; kept as stage ``name``. Under torchrun every rank trains on its own
        batches (a shard of the stream, or its own draws from the cache) and DDP averages the gradients."""
        cfg = self.cfg
        rank, ranks = distributed.world()
        streamed = {**self.data_key, "stream": [cfg.buffer_sequences, cfg.pass_sequences]}
        inputs = {**self.subject_key, "source": source, "target": target, "train": to_dict(train), "seed": cfg.seed,
                  "model": identity, "data": self.cache_key if from_cache else streamed, **({"ranks": ranks} if ranks > 1 else {})}

        def compute(directory: Path) -> dict:
            if not from_cache:
                stream = ActivationStream(self.subject, self.opened.train, [source, target], cfg.seq_len, train.batch_size,
                                          cfg.buffer_sequences, cfg.pass_sequences, cfg.seed, self.opened.bos_id,
                                          shard=(rank, ranks), autocast=torch.bfloat16 if self.device.type == "cuda" else None)
                info = train_many({name: (model, source, target)}, stream, train, self.device, directory, self.progress,
                                  self.mirror)[name]
            else:
                generator = torch.Generator().manual_seed(cfg.seed if ranks == 1 else derived_seed("cache", cfg.seed, rank, ranks))
                batches = self.activations.batches(str(source), str(target), train.batch_size, generator)
                info = train_forward(model, batches, train, self.device, directory, generator=generator,
                                     progress=self.progress, name=name, pair=(source, target), mirror=self.mirror)
            distributed.main_only(save_tensors)(directory / "model.safetensors", model.state_dict())
            return info

        info, directory, key = self.store.run(name, inputs, compute, every_rank=True)
        model.load_state_dict(load_tensors(directory / "model.safetensors"))
        model.to(self.device).eval()
        self.curves[name] = directory / "metrics.jsonl"
        return info, key

    def evaluate(self, name: str, model: torch.nn.Module, model_key: str, source: int, target: int, categories: bool = False) -> dict:
        inputs = {**self.subject_key, **self.eval_key, "model": model_key, "source": source, "target": target, "categories": categories}
        result, _, _ = self.store.run(f"evaluate {name}", inputs, lambda d: evaluate(
            self.subject, model, self.batches, source, target, self.categories if categories else None, self.progress))
        return result

    # --- the models ------------------------------------------------------------------------------
    def headline(self) -> tuple[torch.nn.Module, str, dict]:
        """The headline forward model (co-trained with the subject, or fitted here), its key and its training."""
        cfg = self.cfg
        if self.cotrained is not None:
            key = self.store.key("forward_model", {**self.subject_key, "cotrained": to_dict(self.cotrained.cfg)})
            training = self.opened.training
            record = {"training": TRAINING_LABELS["cotrain"], "steps": training["steps"], "train_loss": training["train_loss"],
                      "val_loss": training["val_loss"], "tokens": training["tokens_seen"]}
            return self.cotrained, key, record
        torch.manual_seed(cfg.seed)
        model = build_forward_model(cfg.model, self.d_model)
        info, key = self.fit("forward_model", model, {"forward_model": to_dict(model.cfg)}, cfg.source, cfg.target,
                             cfg.train, from_cache=cfg.training == "cache")
        return model, key, {"training": TRAINING_LABELS[cfg.training], **info}

    def baselines(self, headline_key: str, headline_train: dict) -> dict[str, dict | None]:
        """Every registered baseline (:mod:`selfmodels.forward.baselines`) fitted and evaluated on the headline pair:
        its results entry (None when it is off for this run)."""
        s, t = self.cfg.source, self.cfg.target
        entries: dict[str, dict | None] = {}
        for name, baseline in BASELINES.items():
            if not baseline.enabled(self):
                entries[name] = None
                continue
            fitted = baseline.fit(self, s, t, {"key": headline_key, "train": headline_train})
            ev = self.evaluate(name, fitted.model, fitted.key, s, t)
            entries[name] = {**fitted.entry, **{k: ev[k] for k in metric_names()}, "recovery": ev["substitution"]["recovery"],
                             "substitution": ev["substitution"]}
        return entries

    def baseline_sources(self, headline_key: str, headline_train: dict) -> list[dict]:
        """The per-position MLP from each ``--baseline.sources`` index to the target (the paper's from the embeddings),
        fitted and evaluated as the headline pair's (the same steps rule, data and held-out windows)."""
        cfg, rows = self.cfg, []
        for source in cfg.baseline.sources:
            torch.manual_seed(cfg.seed)
            model = build_forward_model(ForwardModelConfig(architecture="per-position-mlp", mlp_mult=cfg.baseline.hidden_mult),
                                        self.d_model)
            name = f"baseline_mlp {source} -> {cfg.target}"
            info, key = self.fit(name, model, {"per_position_mlp": cfg.baseline.hidden_mult}, source, cfg.target, cfg.train)
            ev = self.evaluate(name, model, key, source, cfg.target)
            rows.append({"source": source, "target": cfg.target, "params": num_params(model), "hidden_mult": cfg.baseline.hidden_mult,
                         "train": info, **{k: ev[k] for k in metric_names()}, "recovery": ev["substitution"]["recovery"],
                         "substitution": ev["substitution"]})
        return rows

    def train_windows(self) -> torch.Tensor:
        """The training windows (N, T) the activation cache holds (the same sequences the cached models train on)."""
        cfg = self.cfg
        return spread_windows(self.opened.train, cfg.seq_len, cfg.train_sequences, self.opened.bos_id, "training")[0]

    def save_beside(self, name: str, model: torch.nn.Module) -> None:
        """``OUT/name``: a fitted module's weights beside the results (rank 0 writes)."""
        distributed.main_only(save_tensors)(self.out / name, model.state_dict())

    def sweeps(self, models: list) -> tuple[list[dict], list[dict]]:
        """Fit and evaluate every sweep model; the capacity and layer-gap rows."""
        capacity, gaps = [], []
        sweep = self.cfg.sweeps
        train = self.cfg.train if sweep.steps is None else dataclasses.replace(self.cfg.train, steps=sweep.steps)
        for kind, name, a, b, model_cfg in models:
            torch.manual_seed(self.cfg.seed)
            model = build_forward_model(model_cfg)
            stage = name if kind == "gap" else f"capacity {name}"
            info, key = self.fit(stage, model, {"forward_model": to_dict(model_cfg)}, a, b, train)
            ev = self.evaluate(stage, model, key, a, b)
            sub = ev["substitution"]
            row = {"name": name, "source": a, "target": b, "params": num_params(model),
                   "share_of_main": num_params(model) / self.subject.n_params, **{k: ev[k] for k in metric_names()},
                   "kl_substituted": sub["kl_substituted"], "kl_skipped": sub["kl_skipped"], "recovery": sub["recovery"],
                   "train_mse": info["final_mse"], "train_tokens_per_s": info["tokens"] / max(info["seconds"], 1e-9)}
            if kind == "capacity":
                if sweep.slope_fraction > 0:
                    row = {**row, "train_steps": train.steps, "train_tokens": info["tokens"],
                           "loss_slope": _loss_slope(self.curves[stage], train.steps, sweep.slope_fraction)}
                capacity.append(row)
            else:
                gaps.append({**row, "gap": b - a})
        return capacity, gaps

    def analyses(self, model: torch.nn.Module, model_key: str) -> dict:
        """The analyses of the headline pair (plots copied into ``OUT/plots``)."""
        from selfmodels.forward.analyze import analyze_pair

        cfg = self.cfg
        if not cfg.analysis_sequences:
            return {"decomposition": None, "analysis": None, "plots": {}}
        if not reads_attention(model):  # the analyses compare the forward model's attention with the subject's
            return {"decomposition": None, "analysis": None, "plots": {},
                    "skipped": f"the {model.cfg.architecture} architecture has no attention for the analyses to read"}
        ids, _ = consecutive_windows(self.opened.val, cfg.seq_len, cfg.analysis_sequences, self.opened.bos_id, "validation")
        inputs = {**self.subject_key, **self.data_key, "model": model_key, "analysis_sequences": cfg.analysis_sequences}
        result, directory, _ = self.store.run("analyses", inputs, lambda d: analyze_pair(
            self.subject, model, ids, cfg.source, cfg.target, self.token_strings, d / "plots"))
        for name in result["plots"].values():
            distributed.main_only(_copy_into)(directory / "plots" / name, self.out / "plots" / name)
        return result


def run(cfg: RunConfig, out: Path, device_name: str = "auto", progress: bool = True,
        before_report: Callable[[Path, torch.device], None] | None = None, log: tuple[str, ...] = (),
        subject: Subject | None = None) -> dict:
    """The whole pipeline into ``out``; returns the results (also written to ``out/results.json``). ``before_report(out,
    device)`` runs once the results are written (``reproduce`` writes the explorer page there; the report links to it).
    ``log`` names the sinks the training curves are mirrored to (:mod:`selfmodels.curves`); never an input to a stage.
    ``subject``: a subject the caller holds (the library's objects), observed in place of opening ``cfg.subject.main``."""
    cfg.validate()
    out = check_out(out)
    began = time.perf_counter()
    main = distributed.is_main()  # under torchrun rank 0 alone writes what the ranks share
    r = PipelineRun(cfg, out, distributed.local_device(resolve_device(device_name)), progress and main,
                    Mirror(out, log if main else (), config=to_dict(cfg)), held=subject)
    r.open()
    s, t = cfg.source, cfg.target
    out.mkdir(parents=True, exist_ok=True)
    if main:
        write_config(out, {"experiment": "forward-self-models", "config": to_dict(cfg), "device": str(r.device),
                           "subject": {k: v for k, v in r.described.items() if k != "indices"}})
        for name, path in r.opened.files.items():
            _copy_into(path, out / "subject" / name)

    sweep_models = _sweep_models(cfg, r.d_model)
    from_cache = any(b.trains_from_cache and b.enabled(r) for b in BASELINES.values()) or bool(cfg.baseline.sources)
    if cfg.training == "cache" or from_cache or sweep_models:  # some model trains from the cache
        r.activations = r.cache(sorted({s, t} | {k for _, _, a, b, _ in sweep_models for k in (a, b)} | set(cfg.baseline.sources)))
    headline, headline_key, headline_train = r.headline()
    head_eval = r.evaluate("forward_model", headline, headline_key, s, t, categories=True)
    baselines = r.baselines(headline_key, headline_train)
    more = {"baseline_mlp_sources": r.baseline_sources(headline_key, headline_train)} if cfg.baseline.sources else {}
    capacity, gaps = r.sweeps(sweep_models)
    analyses = r.analyses(headline, headline_key)
    results = {**_results(r, headline, headline_train, head_eval), **baselines, **more,
               "baselines": {name: BASELINES.get(name).presentation(entry) for name, entry in baselines.items()},
               "capacity_sweep": capacity, "layer_gap_sweep": gaps,
               "decomposition": analyses["decomposition"], "analysis": analyses["analysis"], "plots": analyses["plots"],
               "analysis_skipped": analyses.get("skipped"), "paper": paper_reference(r.described["family"]),
               "seed": cfg.seed, "seconds": time.perf_counter() - began, "stages": r.store.log}
    if main:
        _write_outputs(out, r, headline, headline_train, results, before_report)
    return results


def _results(r: PipelineRun, headline: torch.nn.Module, headline_train: dict, head_eval: dict) -> dict:
    """``results.json`` up to the headline forward model's metrics: schema, definitions, subject, data, pair, model."""
    cfg, subject, sub = r.cfg, r.subject, head_eval["substitution"]
    s, t = cfg.source, cfg.target
    return {
        "schema_version": SCHEMA_VERSION,
        "definitions": definitions(),
        "subject": {**{k: v for k, v in r.described.items() if k != "indices"}, "dtype": str(subject.dtype).replace("torch.", ""),
                    "source_hook": subject.hook_name(s), "target_hook": subject.hook_name(t),
                    "val_loss": sub["ce_normal"], "val_loss_tokens": sub["tokens"], "training": r.opened.training},
        "data": {**r.opened.data, "train_tokens": int(r.opened.train.numel()), "val_tokens": int(r.opened.val.numel()),
                 "val_fraction": cfg.corpus.val_fraction, "seq_len": cfg.seq_len, "bos": cfg.corpus.bos,
                 "split": "by position: the first part of the token stream trains, the last part is held out",
                 "eval_sequences": int(r.eval_x.shape[0]), "eval_tokens": sub["tokens"], "cache": r.cache_info},
        "pair": {"source": s, "target": t, "blocks_predicted": t - s, "training": headline_train["training"]},
        "forward_model": {"params": num_params(headline), "share_of_main": num_params(headline) / subject.n_params,
                          "config": to_dict(headline.cfg), "train": headline_train, "train_config": to_dict(cfg.train),
                          "saved_to": "forward_model"},
        **{k: head_eval[k] for k in metric_names()},
        "substitution": {k: v for k, v in sub.items() if k != "categories"},
        "categories": sub["categories"],
    }


def _write_outputs(out: Path, r: PipelineRun, headline: torch.nn.Module, headline_train: dict, results: dict,
                   before_report: Callable[[Path, torch.device], None] | None) -> None:
    """The saved forward model, the curves, ``results.json``, then (after ``before_report``) the report."""
    from selfmodels.forward.report import write_report

    cfg = r.cfg
    if (out / "forward_model").is_dir():
        shutil.rmtree(out / "forward_model")
    save_pretrained(headline, out / "forward_model", subject=r.described, source=cfg.source, target=cfg.target, data={
        "corpus": r.opened.data["corpus"], "corpus_source": r.opened.data["source"],
        "training_tokens": int(headline_train.get("tokens") or 0), "seq_len": cfg.seq_len, "bos": cfg.corpus.bos})
    _write_curves(out, r)
    write_json(out / "results.json", results)
    if before_report is not None:
        before_report(out, r.device)
    write_report(out, results)


def _write_curves(out: Path, r: PipelineRun) -> None:
    """``metrics.jsonl``: the subject's training curve (when trained here) and every forward model's, rebuilt
    from the stages this run used (so no line from a stale stage survives). The curves of stages reused from an
    earlier run (not trained, so not mirrored, here) go to the mirror now, which is then closed."""
    records = [{"model": "subject", **rec} for rec in read_jsonl(r.opened.files["metrics.jsonl"])] if "metrics.jsonl" in r.opened.files else []
    for name, path in r.curves.items():
        records += [{"model": name, **rec} for rec in read_jsonl(path)]
    with atomic_path(out / "metrics.jsonl") as tmp:
        tmp.write_text("")
        for record in records:
            append_jsonl(tmp, record)
    reused = {name for name, entry in r.store.log.items() if not entry["computed"]}
    if (r.opened.training or {}).get("reused_from_cache"):  # None: a pretrained subject, not trained here
        reused.add("subject")
    r.mirror.log_all(record for record in records if record["model"] in reused)
    r.mirror.close()


def _copy_into(src: Path, dst: Path) -> None:
    """Copy a file atomically (a cached artifact into the run directory)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
