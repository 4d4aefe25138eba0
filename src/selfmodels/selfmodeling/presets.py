"""The paper's setup per task (from the authors' code; see docs/self-modeling.md), and the quick preset.

One place holds these facts: the grid, the optimizer, the model and its default self-modeling targets.
"""

from __future__ import annotations

from dataclasses import dataclass

from selfmodels.errors import UserError
from selfmodels.nets.classifiers import DEFAULT_TARGETS
from selfmodels.selfmodeling.train import OptimConfig


@dataclass(frozen=True)
class TaskPreset:
    """Everything the paper fixed for one task."""

    arch: str
    hidden: tuple[int, ...]  # hidden sizes of the paper's grid
    strengths: tuple[float, ...]  # auxiliary weights in the paper's figures
    optim: OptimConfig
    seeds: int = 10

    @property
    def targets(self) -> tuple[str, ...]:
        return DEFAULT_TARGETS[self.arch]


_MNIST = TaskPreset(
    arch="mlp",
    hidden=(64, 128, 256, 512),
    strengths=(1.0, 5.0, 10.0, 20.0, 50.0),
    optim=OptimConfig(optimizer="sgd", lr=0.005, momentum=0.9, nesterov=True, batch_size=512, epochs=50),
)

PRESETS: dict[str, TaskPreset] = {
    "mnist": _MNIST,
    "fashion-mnist": _MNIST,  # not in the paper: MNIST's setup on the same-format images
    "cifar10": TaskPreset(
        arch="resnet18",
        hidden=(2000,),
        strengths=(0.5, 1.0, 2.0),
        optim=OptimConfig(optimizer="adam", lr=1e-4, momentum=0.0, nesterov=False, batch_size=64, epochs=250, augment=True),
    ),
    "imdb": TaskPreset(
        arch="bag",
        hidden=(128,),
        strengths=(100.0, 500.0),
        optim=OptimConfig(optimizer="sgd", lr=0.1, momentum=0.0, nesterov=False, batch_size=64, epochs=500),
    ),
}

# `reproduce self-modeling --quick`: MNIST on the offline 5,000-image subset, CPU-sized.
QUICK_TASK = "mnist"
QUICK_HIDDEN = (64, 128)
QUICK_STRENGTHS = (1.0, 10.0, 50.0)
# Both reproductions give the weight-decay control its own strengths: w/2 |theta|^2 at the auxiliary
# weights (w >= 1) collapses every run, which compares nothing.
WEIGHT_DECAY_STRENGTHS = (1e-4, 1e-3, 1e-2)
QUICK_SEEDS = (0, 1, 2)
# 3,600 training images at batch 512 are 8 steps an epoch; 100 epochs (800 steps) bring the
# baseline to ~0.9 test accuracy and the 60 runs within the 10-minute budget on 2 cores (2 workers).
QUICK_EPOCHS = 100
# The quick reproduction's LLCs use the paper's SGLD settings, 1,000 draws per chain included: at 200
# draws the chains had not settled (an H 64 baseline gave 24 at 200 draws, 27 at 400, 29 at 1,000).


def preset(task: str) -> TaskPreset:
    """The paper's preset for ``task``; an unknown task is a UserError listing the known ones."""
    if task not in PRESETS:
        raise UserError(f"unknown task {task!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[task]
