"""Analyses of a forward self-model against the layer(s) it predicts: pure functions over tensors.

- :mod:`.decomposition`: a layer's update split into per-head contributions and the MLP output, and how
  the forward model's residual lines up with each component.
- :mod:`.attention`: attention-pattern similarity (per example and batch-averaged), attention entropy.
- :mod:`.gauge`: raw Q/K/V weight cosines and gauge-invariant comparisons (QK / OV circuits, principal
  angles of subspaces).
- :mod:`.cka`: linear CKA between representations.
- :mod:`.residual`: the residual's PCA ranks, both effective ranks, per-category effect sizes, correlations.
- :mod:`.plots`: one figure per analysis, written as PNG by :mod:`selfmodels.report.figures`.

They work for any subject: :mod:`selfmodels.forward.analyze` feeds them the tensors a subject's
``block_parts`` and ``head_weights`` give.
"""
