"""The settings of a forward-self-model run, for every subject, and the presets that fill them in.

One :class:`RunConfig` drives ``selfmodels forward train`` and ``selfmodels reproduce forward-self-models``
alike, whatever the subject. Presets are data (``presets/*.json``: partial configs laid over the defaults),
chosen by the kind of subject (ours, trained here, or pretrained) and the size (``quick`` for 2 CPU cores,
``full`` for the papers' scale on a GPU); command-line flags are laid over the preset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, TypeVar

from selfmodels.configs import OptimizerSettings, from_dict, option, to_dict
from selfmodels.errors import require
from selfmodels.subjects.config import CorpusConfig, SubjectConfig

if TYPE_CHECKING:
    from selfmodels.training import Schedule

T = TypeVar("T")
TRAINING = ("cotrain", "cache", "stream")


@dataclass
class ForwardModelConfig:
    """Shape of a forward model. Defaults are the paper's 1% model (1 layer, 1 head of 64, MLP 2x)."""

    d_model: int = option(256, "width of the subject's residual stream (input and output width; set from the subject)", cli=False)
    n_layer: int = option(1, "transformer blocks in the forward model")
    n_head: int = option(1, "attention heads per block")
    d_head: int = option(64, "width of each attention head")
    mlp_mult: int = option(2, "GELU MLP hidden width as a multiple of d_model")
    mlp: str = option("gelu", "MLP type", choices=("gelu", "swiglu"))
    swiglu_hidden: int | None = option(None, "SwiGLU hidden width (default: mlp_mult * d_model)")
    causal: bool = option(True, "causal attention (position t sees positions <= t only)")
    architecture: str = option("transformer", "forward-model architecture, from the registry "
                               "(selfmodels.forward.architectures; built in: transformer)")

    def validate(self) -> None:
        from selfmodels.forward.architectures import architecture

        architecture(self.architecture)  # unknown -> UserError listing the registered ones
        for name in ("d_model", "n_layer", "n_head", "d_head", "mlp_mult"):
            require(getattr(self, name) >= 1, f"forward model {name} must be at least 1, got {getattr(self, name)}")
        require(self.mlp in ("gelu", "swiglu"), f"forward model mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        require(self.swiglu_hidden is None or self.swiglu_hidden >= 1, "forward model swiglu_hidden must be at least 1")

    @property
    def mlp_hidden(self) -> int:
        if self.mlp == "swiglu" and self.swiglu_hidden is not None:
            return self.swiglu_hidden
        return self.mlp_mult * self.d_model


@dataclass
class ForwardTrainConfig(OptimizerSettings):
    """Optimisation of the forward model (paper: AdamW lr 1e-3, wd 0.01, clip 1.0, 10K steps, batch 64)."""

    lr: float = option(1e-3, "forward-model learning rate (the paper needed 1e-4 at d=2048)")
    log_every: int = option(25, "steps between lines of metrics.jsonl")
    checkpoint_every: int = option(500, "steps between checkpoints")

    def validate(self) -> None:
        super().validate("forward ")

    def schedule(self) -> Schedule:
        from selfmodels.training import Schedule

        return Schedule(self.steps, log_every=self.log_every, checkpoint_every=self.checkpoint_every)


@dataclass
class BaselineConfig:
    """The per-position MLP baseline: the forward model without attention, trained on the same data."""

    enabled: bool = option(True, "train and evaluate the per-position MLP baseline")
    hidden_mult: int = option(2, "its hidden width as a multiple of d (2 at d=256 ~ the 1% forward model's MLP)")
    steps: str = option("same", "same: the forward model's steps; time: about the forward model's training time "
                                "(the step count then depends on the machine's speed)", choices=("same", "time"))
    sources: list[int] = option([], "also fit it from each of these sources to --target, as the paper's from the "
                                    "embeddings to block 1 (-1 -> 1); reported in a table of their own")


@dataclass
class SweepConfig:
    """Capacity and layer-gap sweeps of forward models trained from the activation cache (empty: none)."""

    capacity: list[str] = option([], "capacity sweep configurations among 1% 3% 10% 22% (the paper's four)")
    capacity_source: int = option(0, "capacity sweep: source index")
    capacity_target: int = option(3, "capacity sweep: target index")
    gaps: list[int] = option([], "layer-gap sweep: gaps (blocks predicted) from --sweeps.gap-source")
    gap_source: int = option(0, "layer-gap sweep: source index")
    steps: int | None = option(None, "training steps of every sweep model (unset: those of --train.steps)")
    slope_fraction: float = option(0.0, "capacity sweep: report each model's training-loss slope over this last fraction "
                                        "of its steps, to show whether it had converged (0: not reported)")


@dataclass
class RunConfig:
    """Everything a forward-self-model run depends on. Layer indices: -1 = embeddings, k = after block k."""

    subject: SubjectConfig = field(default_factory=SubjectConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    source: int = option(0, "source layer index (-1 = embeddings, k = residual after block k)")
    target: int = option(1, "target layer index, after the source (the forward model stands in for blocks source+1..target)")
    model: ForwardModelConfig = field(default_factory=ForwardModelConfig)
    train: ForwardTrainConfig = field(default_factory=ForwardTrainConfig)
    training: str = option("cache", "how the forward model is trained: cotrain (beside our GPT, as the paper), "
                                    "cache (from the disk cache of the frozen subject's activations) or stream (activations "
                                    "computed on the fly through a shuffle buffer, no disk)", choices=TRAINING)
    buffer_sequences: int = option(64, "stream: shuffle buffer of whole sequences (memory: buffer x 2 x seq_len x d x 4 bytes)")
    pass_sequences: int = option(8, "stream: sequences per subject forward pass filling the buffer")
    seq_len: int = option(128, "tokens per sequence for caching, evaluation and analyses")
    train_sequences: int = option(2048, "training sequences in the activation cache (spread over the training text)")
    eval_sequences: int = option(256, "held-out sequences for the regression metrics and causal substitution")
    eval_batch: int = option(32, "sequences per evaluation / collection batch")
    analysis_sequences: int = option(64, "held-out sequences for the analyses (0: none)")
    cache_dtype: str = option("float16", "activation cache precision", choices=("float16", "float32"))
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    ridge: float = option(1e-3, "the ridge (affine) baseline map's regulariser, relative to the source covariance's mean eigenvalue")
    sweeps: SweepConfig = field(default_factory=SweepConfig)
    seed: int = option(0, "random seed (weights, data order)")
    whole_windows: bool = option(False, "refuse, before anything trains, a corpus whose training part holds fewer than "
                                        "--train-sequences non-overlapping windows or whose held-out part fewer than "
                                        "--eval-sequences (otherwise a small corpus gives fewer windows)")

    def validate(self) -> None:
        for part in (self.subject, self.corpus, self.model, self.train):
            part.validate()
        require(self.training in TRAINING, f"--training must be one of {', '.join(TRAINING)}, got {self.training!r}")
        for name in ("seq_len", "train_sequences", "eval_sequences", "eval_batch", "buffer_sequences", "pass_sequences"):
            require(getattr(self, name) >= 1 if name != "seq_len" else self.seq_len >= 2, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        require(self.analysis_sequences == 0 or self.analysis_sequences >= 2,
                f"--analysis-sequences must be 0 (no analyses) or at least 2, got {self.analysis_sequences}")
        if self.training == "stream":
            require(self.buffer_sequences >= self.train.batch_size, f"--buffer-sequences {self.buffer_sequences} is smaller "
                                                                    f"than a batch (--train.batch-size {self.train.batch_size})")
        require(self.ridge > 0, f"--ridge must be positive, got {self.ridge}")
        require(self.baseline.hidden_mult >= 1, f"--baseline.hidden-mult must be at least 1, got {self.baseline.hidden_mult}")
        unknown = [c for c in self.sweeps.capacity if c not in CAPACITY]
        require(not unknown, f"unknown capacity configuration(s) {', '.join(unknown)}: use {', '.join(CAPACITY)}")
        require(all(g >= 1 for g in self.sweeps.gaps), f"--sweeps.gaps must be at least 1, got {self.sweeps.gaps}")
        require(self.sweeps.steps is None or self.sweeps.steps >= 1, f"--sweeps.steps must be at least 1, got {self.sweeps.steps}")
        require(0.0 <= self.sweeps.slope_fraction <= 1.0,
                f"--sweeps.slope-fraction must be between 0 and 1, got {self.sweeps.slope_fraction}")
        if self.subject.trained_here:
            require(self.seq_len <= self.subject.gpt.block_size,
                    f"--seq-len {self.seq_len} is longer than our GPT's context --subject.gpt.block-size {self.subject.gpt.block_size}")


# The paper's capacity configurations: name -> (n_layer, n_head, d_head, mlp_mult), GELU MLPs.
CAPACITY = {"1%": (1, 1, 64, 2), "3%": (2, 2, 64, 2), "10%": (3, 4, 128, 4), "22%": (4, 4, 256, 4)}


@dataclass
class ProfileConfig:
    """Settings of a whole-model profile. Layer indices: -1 = embeddings, k = residual after block k."""

    subject: SubjectConfig = field(default_factory=lambda: SubjectConfig(main="smollm2"))
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    gap: int = option(1, "blocks each forward model stands in for: pairs (k, k + gap)")
    layers: list[int] = option([], "source indices to profile (empty: every source from -1 to the last that fits the gap)")
    model: ForwardModelConfig = field(default_factory=ForwardModelConfig)
    train: ForwardTrainConfig = field(default_factory=ForwardTrainConfig)
    seq_len: int = option(128, "tokens per sequence")
    buffer_sequences: int = option(64, "shuffle buffer of whole sequences (memory: buffer x indices x seq_len x d x 4 bytes)")
    pass_sequences: int = option(8, "sequences per subject forward pass filling the buffer")
    ridge: float = option(1e-3, "ridge map regulariser, relative to the source covariance's mean eigenvalue")
    ridge_sequences: int = option(64, "training windows the ridge maps are fitted on")
    eval_sequences: int = option(16, "held-out windows every pair is evaluated on (the same for all pairs)")
    eval_batch: int = option(4, "sequences per evaluation batch")
    decomposition_sequences: int = option(4, "held-out windows for the one-block pairs' decomposition (0: none)")
    seed: int = option(0, "random seed (weights, data order)")

    def validate(self) -> None:
        for part in (self.subject, self.corpus, self.model, self.train):
            part.validate()
        require(self.gap >= 1, f"--gap must be at least 1, got {self.gap}")
        for name in ("seq_len", "buffer_sequences", "pass_sequences", "ridge_sequences", "eval_sequences", "eval_batch"):
            require(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        require(self.buffer_sequences >= self.train.batch_size,
                f"--buffer-sequences {self.buffer_sequences} is smaller than a batch (--train.batch-size {self.train.batch_size})")
        require(self.ridge > 0, f"--ridge must be positive, got {self.ridge}")


def preset_name(main: str, quick: bool) -> str:
    """``gpt-quick``, ``gpt-full``, ``pretrained-quick`` or ``pretrained-full``: the file of the quick or full preset
    for a subject. Other presets are files too (``gpt-paper-toy.json`` is ``--preset paper-toy`` for our GPT, listed
    by :class:`selfmodels.options.Presets` from the files); load one with ``load_preset("gpt-paper-toy", RunConfig, "gpt")``."""
    return f"{'gpt' if main == 'gpt' else 'pretrained'}-{'quick' if quick else 'full'}"


def _overlay(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _overlay(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def load_preset(name: str, cls: type[T], main: str) -> T:
    """``presets/<name>.json`` laid over ``cls``'s defaults (keys starting with ``_`` are comments), ``main`` set."""
    text = resources.files("selfmodels.forward").joinpath("presets", f"{name}.json").read_text(encoding="utf-8")
    data = _overlay(to_dict(cls()), {k: v for k, v in json.loads(text).items() if not k.startswith("_")})
    data["subject"]["main"] = main
    return from_dict(cls, data)


def preset(main: str, quick: bool) -> RunConfig:
    """The preset for a subject (``gpt`` or a pretrained model name) at quick or full size, with ``main`` set."""
    return load_preset(preset_name(main, quick), RunConfig, main)
