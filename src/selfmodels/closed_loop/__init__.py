"""Closed-loop self-models: a network that reads its own forward model while it trains.

A forward model F predicts a later residual h_j from an earlier one h_i; a zero-initialised linear gate G adds its
(stop-gradient) prediction to the residual at a middle index, ``h_m <- h_m + G(sg(F(h_i)))``, i <= m < j, so the
later blocks see a preview of their own output. The conditions (:mod:`~selfmodels.closed_loop.conditions`) replace
``F(h_i)`` by controls that separate "a preview of my own computation" from "any extra input". See
``docs/closed-loop.md``.
"""
