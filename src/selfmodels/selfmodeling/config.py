"""The settings of a self-modeling grid (no torch here: ``--help`` and config files read them without it)."""

from __future__ import annotations

from dataclasses import dataclass

from selfmodels.configs import option
from selfmodels.errors import UserError
from selfmodels.registries import Registry
from selfmodels.selfmodeling.presets import preset


@dataclass(frozen=True)
class Method:
    """A training objective of the classifier grid: the self-model or one of its controls (or the baseline).
    ``objective``: an :class:`~selfmodels.selfmodeling.objectives.Objective` subclass, or its ``"module:Class"`` path
    (imported when a run is built); its ``build`` classmethod makes the objective of a run."""

    name: str
    objective: object
    description: str


# Every method a grid can run, in the order reports show them (the baseline first); register_method adds one.
METHODS: Registry[Method] = Registry("method")


def register_method(name: str, objective, description: str, *, replace: bool = False) -> Method:
    """Add a method (e.g. a new control) to every grid and run: ``GridConfig(methods=[..., name])``."""
    return METHODS.register(name, Method(name, objective, description), replace=replace)


_OBJECTIVES = "selfmodels.selfmodeling.objectives"
register_method("baseline", f"{_OBJECTIVES}:Objective", "CE only")
register_method("self-model", f"{_OBJECTIVES}:SelfModelObjective", "CE + w mse(prediction, sg(target)), extra head outputs")
register_method("activation-l2", f"{_OBJECTIVES}:ActivationL2Objective", "CE + w mean(a^2) on the target modules")
register_method("weight-decay", f"{_OBJECTIVES}:WeightDecayObjective", "CE + w/2 ||theta||^2 (coupled L2)")
LLC_CHOICES = ("none", "paper")


@dataclass
class GridConfig:
    """A grid of runs. Empty lists and unset values take the paper's setting for the task."""

    task: str = option("mnist", "classification task (mnist, fashion-mnist, cifar10, imdb)")
    source: str = option("auto", "data source: auto (hub when reachable, else offline), hub or offline", choices=("auto", "hub", "offline"))
    hidden: list[int] = option([], "hidden sizes H; [] = the paper's grid for the task")
    methods: list[str] = option(list(METHODS.names()), "methods to run", choices=METHODS)
    strengths: list[float] = option([], "strengths w for every non-baseline method; [] = the paper's auxiliary weights")
    activation_l2_strengths: list[float] = option([], "strengths of activation-l2 only; [] = --strengths")
    weight_decay_strengths: list[float] = option(
        [], "strengths of weight-decay only; [] = --strengths. w/2 |theta|^2 on every parameter collapses training at the "
        "self-modeling weights (w >= 1): 0.0001 0.001 0.01 compare usefully")
    seeds: list[int] = option([], "training seeds; [] = 0..9, the paper's 10 runs")
    epochs: int | None = option(None, "epochs; None = the paper's for the task")
    lr: float | None = option(None, "learning rate; None = the paper's for the task")
    batch_size: int | None = option(None, "minibatch size; None = the paper's for the task")
    targets: list[str] = option([], "self-modeled / activation-regularised module names; [] = the paper's")
    detach: bool = option(True, "self-model: stop-gradient on the target (--no-detach: gradient flows into the target too)")
    val_is_test: bool = option(False, "validate on the test set, as the paper did")
    llc: str = option("none", "estimate each run's LLC: none, or paper (the paper's SGLD settings)", choices=LLC_CHOICES)
    llc_draws: int | None = option(None, "LLC draws per chain; None = the paper's")
    llc_chains: int | None = option(None, "number of LLC chains; None = the paper's 4")
    device: str = option("auto", "auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    threads: int = option(1, "torch CPU threads of each process training runs (1: runs go in parallel, --workers)")
    workers: int = option(1, "runs trained in parallel (processes); 2 suits a 2-core machine")

    def validate(self) -> None:
        preset(self.task)  # unknown task -> UserError listing the known ones
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise UserError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        bad = [s for s in self.strengths + self.activation_l2_strengths + self.weight_decay_strengths if not (0 <= s < float("inf"))]
        if bad:
            raise UserError(f"strengths must be finite and non-negative, got {', '.join(map(str, bad))}")
        if any(h < 1 for h in self.hidden):
            raise UserError(f"hidden sizes must be positive, got {self.hidden}")
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
        for name in ("epochs", "batch_size", "llc_draws", "llc_chains"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.lr is not None and not (self.lr > 0):
            raise UserError(f"--lr must be positive, got {self.lr}")
