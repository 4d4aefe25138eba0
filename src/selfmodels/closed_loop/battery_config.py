"""The settings of the closed loop's measurement battery (no torch here: ``--help`` and config files read them).

The battery (:mod:`selfmodels.closed_loop.battery`) measures a trained, frozen closed loop: a fresh observer O,
probes without leakage, robustness to random perturbations, the LLC of the network and G with F frozen, weight
spread and residual norms. The defaults are sized for the quick preset (GPT 4 x 4 x 64, context 64): the whole
battery of one run in well under a minute on one CPU core. Held-out windows come from the quarters of the held-out
stream: O trains on the first half, the probes fit on the third quarter and are scored on the fourth, where the
robustness windows come from too; the LLC's windows come from the training stream, as for every LM LLC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from selfmodels.complexity.config import LLCConfig
from selfmodels.configs import option
from selfmodels.errors import require
from selfmodels.forward.config import ForwardModelConfig


@dataclass
class ObserverSettings:
    """The fresh observer O (never the co-trained F): a forward model of a fixed size trained i -> j by MSE for a
    fixed budget on the frozen loop's residuals of held-out windows."""

    model: ForwardModelConfig = field(default_factory=lambda: ForwardModelConfig(n_layer=2, n_head=1, d_head=16))
    steps: int = option(300, "observer training steps")
    batch_size: int = option(16, "observer windows per step")
    lr: float = option(1e-3, "observer learning rate (AdamW, decay 0.01, clip 1.0)")
    train_windows: int = option(256, "windows spread over the held-out stream's first half that O trains on")

    def validate(self) -> None:
        self.model.validate()
        for name in ("steps", "batch_size", "train_windows"):
            require(getattr(self, name) >= 1, f"observer --{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        require(self.lr > 0, f"observer --lr must be positive, got {self.lr}")


@dataclass
class ProbeSettings:
    """Ridge probes from each residual (with the covariates) to O's residual h_j - O(h_i)."""

    windows: int = option(32, "windows of each quarter: fitted on the third quarter's, scored on the fourth's")
    lambdas: list[float] = option([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0],
                                  "ridge penalties tried (on standardised regressors, per-token mean loss)")
    folds: int = option(4, "folds of whole windows within the third quarter that choose the penalty")

    def validate(self) -> None:
        require(self.windows >= 2, f"probe --windows must be at least 2, got {self.windows}")
        require(len(self.lambdas) >= 1 and all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
                                                for v in self.lambdas),
                f"probe --lambdas must be one or more finite numbers >= 0, got {self.lambdas}")
        require(2 <= self.folds <= self.windows,
                f"probe --folds must be between 2 and --windows ({self.windows}), got {self.folds}")


@dataclass
class RobustnessSettings:
    """Random perturbations δ, ||δ_t|| = r ||h_{m,t}||, added after the injection and, separately, at index i."""

    directions: int = option(16, "random unit directions per run (seeded by the battery's seed)")
    radii: list[float] = option([0.1, 0.3, 1.0], "r: each perturbation's norm as a fraction of ||h_m|| at its position")
    windows: int = option(8, "held-out windows (of the fourth quarter) each perturbed pass runs on")

    def validate(self) -> None:
        require(self.directions >= 1, f"robustness --directions must be at least 1, got {self.directions}")
        require(len(self.radii) >= 1 and all(isinstance(r, (int, float)) and math.isfinite(r) and r > 0
                                              for r in self.radii),
                f"robustness --radii must be one or more positive numbers, got {self.radii}")
        require(self.windows >= 1, f"robustness --windows must be at least 1, got {self.windows}")


@dataclass
class BatteryConfig:
    """Everything the measurement battery of one trained closed loop depends on."""

    observer: ObserverSettings = field(default_factory=ObserverSettings)
    probes: ProbeSettings = field(default_factory=ProbeSettings)
    robustness: RobustnessSettings = field(default_factory=RobustnessSettings)
    llc: LLCConfig = field(default_factory=lambda: LLCConfig(chains=2, draws=200, batch_size=16, epsilon=3e-4,
                                                             gamma=100.0))
    estimate_llc: bool = option(True, "estimate the LLC of the network and G with F (and the signal) frozen")
    llc_windows: int = option(512, "training windows the LLC's minibatches come from")
    norm_windows: int = option(32, "held-out windows (of the fourth quarter) for the residual norms")
    batch_size: int = option(32, "windows per pass when collecting residuals")
    seed: int = option(0, "seed of the observer's initialisation and data order and of the random directions (set "
                          "it to the run's seed: every condition of a seed then gets the same ones)")

    def validate(self) -> None:
        """Everything that can be wrong with the settings, as one message each (fields are never rewritten)."""
        self.observer.validate()
        self.probes.validate()
        self.robustness.validate()
        self.llc.validate()
        for name in ("llc_windows", "norm_windows", "batch_size"):
            require(getattr(self, name) >= 1, f"battery --{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
