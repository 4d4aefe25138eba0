"""The one training loop every trainer in the package runs on (:mod:`selfmodels.training.loop`)."""

from selfmodels.training.loop import CHECKPOINT, METRICS, Diverged, Optimized, Outcome, Schedule, Step, Task, train

__all__ = ["CHECKPOINT", "METRICS", "Diverged", "Optimized", "Outcome", "Schedule", "Step", "Task", "train"]
