"""selfmodels: self-models of neural networks.

Two methods, usable on any PyTorch model:
- self-modeling as an auxiliary objective (``selfmodels.selfmodeling``), with its complexity measures
  (``selfmodels.complexity``: weight spread and the local learning coefficient);
- forward self-models that predict a model's later-layer activations from earlier ones
  (``selfmodels.forward``).

What a command does, a line of Python does (each runs the command's own functions)::

    subject = selfmodels.open_subject("smollm2")                        # or (model, tokenizer) objects you hold
    fit = selfmodels.forward.fit(subject, source=7, target=8)           # selfmodels forward train --preset quick
    profile = selfmodels.forward.fit_profile(subject)                   # selfmodels forward profile --preset quick
    run = selfmodels.selfmodel_lm("self-model", strength=1.0)          # selfmodels selfmodel-lm --preset quick
    grid = selfmodels.regularize("mnist", hidden=[64], strengths=[10])  # selfmodels regularize

Names are imported on first use, so ``import selfmodels`` stays cheap (no torch).
"""

__version__ = "0.1.0"

_LAZY = {"open_subject": ("selfmodels.subjects.held", "as_subject"),
         "regularize": ("selfmodels.selfmodeling.library", "regularize"),
         "selfmodel_lm": ("selfmodels.lm_selfmodeling.library", "selfmodel_lm")}
_SUBPACKAGES = ("complexity", "data", "forward", "lm_selfmodeling", "nets", "selfmodeling", "subjects")


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    if name in _SUBPACKAGES:  # selfmodels.forward.fit(...) after a bare `import selfmodels`
        return importlib.import_module(f"selfmodels.{name}")
    raise AttributeError(f"module 'selfmodels' has no attribute {name!r}")
