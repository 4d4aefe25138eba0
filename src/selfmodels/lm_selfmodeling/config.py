"""The settings of a self-modeling LM run, their names and checks, and the presets that fill them in.

No torch here: ``--help``, ``--print-config`` and config files read these without it; the modules that train and
measure (``run``, ``objective``, ``sites``, ``observer``) import them from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from selfmodels.complexity.config import LLCConfig
from selfmodels.configs import option, to_dict
from selfmodels.errors import UserError, require
from selfmodels.nets.config import GPTConfig
from selfmodels.options import Presets
from selfmodels.registries import Registry
from selfmodels.subjects.config import CorpusConfig, LMTrainConfig

LOSSES = ("mse", "scaled-mse", "cosine")
FLOWS = ("source", "target", "both", "none")


@dataclass(frozen=True)
class Method:
    """An objective of the LM runs: the self-model, the forward form, a control, or the baseline. ``term``: an
    :class:`~selfmodels.lm_selfmodeling.objective.Term` subclass (or its ``"module:Class"`` path, imported when a
    run is built) that names the sites it reads and computes A from them. What the rest of a run needs to know of
    it: ``predicting`` (extra LM-head outputs predicting the site: their width is the site's), ``reads_site``
    (``--site`` is its site: the observer's pair must avoid it), ``forward_form`` (a co-trained forward model on
    ``--source`` -> ``--target``), ``decay_from_strength`` (the strength is AdamW's decay instead of a term's weight)."""

    name: str
    term: object
    description: str
    predicting: bool = False
    reads_site: bool = False
    forward_form: bool = False
    decay_from_strength: bool = False


# Every objective a run or grid can use, in the order reports show them (the baseline first).
METHODS: Registry[Method] = Registry("method")


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add an objective to the LM runs and grids (``ObjectiveConfig(method=name)``)."""
    return METHODS.register(method.name, method, replace=replace)


_TERMS = "selfmodels.lm_selfmodeling.objective"
register_method(Method("baseline", f"{_TERMS}:Term", "CE only"))
register_method(Method("self-model", f"{_TERMS}:SelfModelTerm", "extra head outputs predict the site: A = D(P, sg(a))",
                       predicting=True, reads_site=True))
register_method(Method("forward", f"{_TERMS}:ForwardTerm", "a co-trained forward model: A = D(F(h_i), h_j)", forward_form=True))
register_method(Method("activation-l2", f"{_TERMS}:ActivationL2Term", "A = mean(a^2) over the site", reads_site=True))
register_method(Method("random-target", f"{_TERMS}:RandomTargetTerm", "the self-model's head predicts another "
                       "sequence's site (b predicts b-1's)", predicting=True, reads_site=True))
register_method(Method("weight-decay", f"{_TERMS}:Term", "A = 0; the strength is AdamW's decay coefficient",
                       decay_from_strength=True))
HEAD_INPUT = "head-input"
RESULT_VERSION = 1

# One run's presets (``selfmodel-lm --preset NAME``): data files, ``preset_files/*.json``.
PRESETS = Presets("selfmodels.lm_selfmodeling", (("gpt-", "gpt"), ("pretrained-", "pretrained"), ("", None)),
                  folder="preset_files")


def check_objective(method: str, strength: float, loss: str, flow: str) -> None:
    """One clear message for a method, strength, loss or gradient-flow option that is not allowed."""
    METHODS.get(method)  # unknown -> UserError listing the registered ones
    require(isinstance(strength, (int, float)) and math.isfinite(strength) and strength >= 0,
            f"strengths must be finite and non-negative, got {strength}")
    require(loss in LOSSES, f"unknown self-model loss {loss!r}; choose from {', '.join(LOSSES)}")
    require(flow in FLOWS, f"gradient flow {flow!r} is not one of {', '.join(FLOWS)} (where the forward form's "
                           "loss may send its gradient into the main model)")


def valid_sites(n_layers: int) -> list[str]:
    """Every site name a subject with ``n_layers`` blocks has."""
    from selfmodels.subjects.base import EMBED  # torch: only when a setting is checked

    return [HEAD_INPUT] + [f"resid:{k}" for k in range(EMBED, n_layers)] + [f"mlp:{k}" for k in range(n_layers)]


def parse_site(name: str, n_layers: int) -> tuple[str, int | None]:
    """``(kind, index)`` of a site name; an unknown name raises a :class:`UserError` listing the valid ones."""
    text = str(name).strip().lower()
    if text in valid_sites(n_layers):
        if text == HEAD_INPUT:
            return HEAD_INPUT, None
        kind, index = text.split(":")
        return kind, int(index)
    raise UserError(f"unknown site {name!r} for a model with {n_layers} blocks; valid sites: {HEAD_INPUT}, "
                    f"resid:-1 .. resid:{n_layers - 1}, mlp:0 .. mlp:{n_layers - 1}")


def site_indices(name: str, n_layers: int) -> set[int]:
    """Residual indices a site touches: the head's input is the last residual (normed); ``resid:K`` is K;
    ``mlp:K`` lies inside block K, between residuals K-1 and K."""
    kind, index = parse_site(name, n_layers)
    if kind == HEAD_INPUT:
        return {n_layers - 1}
    if kind == "resid":
        return {index}
    return {index - 1, index}


def check_disjoint(pair: tuple[int, int], trained: set[int], what: str) -> None:
    """The observer's pair covers indices source..target; none may be one the objective trained."""
    covered = set(range(pair[0], pair[1] + 1))
    shared = covered & trained
    if shared:
        raise UserError(f"observer pair {pair[0]} -> {pair[1]} ({what}) shares indices {sorted(shared)} with the trained "
                        f"site or forward pair (indices {sorted(trained)}): choose an observer pair away from them")


@dataclass
class ObserverConfig:
    """The fresh observer: pairs, size and budget (the same for every run of a comparison)."""

    near: list[int] = option([0, 1], "the observer's layer pair near the trained site (source target)")
    far: list[int] = option([-1, 0], "a second observer pair, far from the trained site")
    steps: int = option(300, "observer training steps")
    batch_size: int = option(16, "observer sequences per step")
    lr: float = option(1e-3, "observer learning rate")
    n_head: int = option(1, "observer attention heads")
    d_head: int = option(32, "observer head width")
    mlp_mult: int = option(2, "observer GELU MLP width multiple")
    train_windows: int = option(512, "held-out windows the observer trains on (from the first half of the validation stream)")
    eval_windows: int = option(64, "held-out windows the observer is evaluated on (from the second half)")

    def pairs(self) -> dict[str, tuple[int, int]]:
        return {"near": tuple(self.near), "far": tuple(self.far)}

    def validate(self) -> None:
        for name, pair in (("near", self.near), ("far", self.far)):
            require(len(pair) == 2, f"observer --{name} takes two indices (source target), got {pair}")
        for name in ("steps", "batch_size", "n_head", "d_head", "mlp_mult", "train_windows", "eval_windows"):
            require(getattr(self, name) >= 1, f"observer {name} must be at least 1, got {getattr(self, name)}")


@dataclass
class ObjectiveConfig:
    """Which objective trains the LM (see :mod:`selfmodels.lm_selfmodeling.objective`)."""

    method: str = option("baseline", "the objective, from the registry (lm_selfmodeling/config.py METHODS): baseline, "
                         "self-model, forward, activation-l2, random-target or weight-decay", choices=METHODS)
    strength: float = option(0.0, "w in CE + w * A (weight-decay: AdamW's decay coefficient instead of the baseline's)")
    site: str = option("head-input", "site the self-model predicts / activation-l2 regularises: head-input, resid:K, mlp:K")
    loss: str = option("mse", "discrepancy: mse, scaled-mse (mse / mean target²) or cosine (1 - cos)")
    detach_target: bool = option(True, "stop-gradient on the self-model's target, as in the paper")
    source: int = option(2, "forward form: source residual index i")
    target: int = option(3, "forward form: target residual index j")
    flow: str = option("both", "forward form: where its loss sends gradient into the main model: source, target, both, none")
    forward_lr: float = option(1e-3, "forward form: the co-trained forward model's learning rate")
    forward_d_head: int = option(32, "forward form: the co-trained forward model's head width (1 head, MLP 2x)")

    def validate(self, n_layers: int) -> None:
        """Everything that can be wrong with the objective, as one message (exit 2)."""
        check_objective(self.method, self.strength, self.loss, self.flow)
        parse_site(self.site, n_layers)
        if METHODS.get(self.method).forward_form:
            require(-1 <= self.source < self.target < n_layers,
                    f"forward-form pair {self.source} -> {self.target} is out of range for {n_layers} blocks: use "
                    f"-1 <= source < target <= {n_layers - 1}")

    def trained_indices(self, n_layers: int) -> set[int]:
        """Residual indices the objective acts on (a fresh observer's pair must avoid them)."""
        method = METHODS.get(self.method)
        if method.reads_site:
            return site_indices(self.site, n_layers)
        if method.forward_form:
            return set(range(self.source, self.target + 1))
        return set()

    @property
    def label(self) -> str:
        return "baseline" if self.method == "baseline" else f"{self.method}-{self.strength:g}"


@dataclass
class LMRunConfig:
    """One self-modeling LM run."""

    main: str = option("gpt", "gpt (ours, trained from scratch) or a pretrained Hugging Face model to fine-tune", cli=False)
    seq_len: int = option(64, "tokens per window (our GPT's context)")
    gpt: GPTConfig = field(default_factory=lambda: GPTConfig(n_layer=4, n_head=4, d_model=64))
    lm: LMTrainConfig = field(default_factory=lambda: LMTrainConfig(steps=1000, batch_size=16, lr=1e-3, eval_every=100))
    corpus: CorpusConfig = field(default_factory=lambda: CorpusConfig(vocab_size=512))
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    observer: ObserverConfig = field(default_factory=ObserverConfig)
    eval_windows: int = option(64, "held-out windows for the validation loss, norms and the self-model's fit")
    llc: LLCConfig = field(default_factory=lambda: LLCConfig(chains=2, draws=200, batch_size=16, epsilon=1e-4, gamma=100.0))
    estimate_llc: bool = option(True, "estimate the LM's LLC (SGLD on per-token LM loss)")
    llc_windows: int = option(512, "training windows the LLC's minibatches come from")
    snapshots: bool = option(False, "save the main model along training (the baseline's matched-loss checkpoints)")
    seed: int = option(0, "seed of the initialisation, data order, observer")

    def validate(self, n_layers: int) -> None:
        self.objective.validate(n_layers)
        self.observer.validate()
        self.lm.validate()
        require(self.seq_len >= 2, f"--seq-len must be at least 2, got {self.seq_len}")
        require(self.eval_windows >= 1, f"--eval-windows must be at least 1, got {self.eval_windows}")
        trained = self.objective.trained_indices(n_layers)
        for name, pair in self.observer.pairs().items():
            require(-1 <= pair[0] < pair[1] < n_layers,
                    f"observer pair {pair[0]} -> {pair[1]} ({name}) is out of range for {n_layers} blocks")
            check_disjoint(pair, trained, name)

    def key(self) -> str:
        from selfmodels.stages import content_key

        return content_key({"config": to_dict(self), "version": RESULT_VERSION})
