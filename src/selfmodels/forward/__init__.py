"""Forward self-models: small transformers that predict a subject's later residual stream from an earlier one.

- :mod:`~selfmodels.forward.model`: the forward model (GELU / SwiGLU), ``save_pretrained`` / ``from_pretrained``
  (format in :mod:`~selfmodels.forward.pretrained`); :mod:`~selfmodels.forward.baseline`: the per-position MLP;
- :mod:`~selfmodels.forward.train`: training from any stream of activation batches; :mod:`~selfmodels.forward.cache`:
  the on-disk activation cache;
- :mod:`~selfmodels.forward.metrics`, :mod:`~selfmodels.forward.substitution`, :mod:`~selfmodels.forward.categories`,
  :mod:`~selfmodels.forward.evaluate`: regression metrics, causal substitution, behavioural categories;
- :mod:`~selfmodels.forward.analysis` and :mod:`~selfmodels.forward.analyze`: the paper's analyses and their driver;
- :mod:`~selfmodels.forward.config`, :mod:`~selfmodels.forward.pipeline`, :mod:`~selfmodels.forward.report`,
  :mod:`~selfmodels.forward.reference`: the one pipeline for every subject (its stages keyed by their inputs in
  :mod:`selfmodels.stages`), its report and the paper's numbers.

Nothing here knows which kind of subject it observes: it sees :class:`selfmodels.subjects.base.Subject` only.

In a notebook, :func:`fit` and :func:`fit_profile` (:mod:`~selfmodels.forward.library`) do what ``forward train`` and
``forward profile`` do, on a name or a model object. They are imported on first use, so importing this package stays
cheap.
"""

_LIBRARY = ("fit", "fit_profile", "ForwardFit", "ProfileFit")


def __getattr__(name: str):
    if name in _LIBRARY:
        from selfmodels.forward import library

        return getattr(library, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
