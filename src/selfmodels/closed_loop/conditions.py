"""The conditions of a closed-loop run: what is injected at h_m, one registry entry each.

Every condition co-trains the same forward model F (i -> j, MSE on the on-policy target) and the same zero gate G;
they differ only in the signal ``u`` that G reads, ``h_m <- h_m + G(u)``:

==================  =========================================================================================
open-loop           nothing is injected (G is never used; F is still co-trained)
forward             u_t = sg(F(h_i))_t
shifted             u_t = sg(F(h_i))_{t-k}, zeros for t < k
random-projection   u_t = R h_{i,t}, R frozen, entries N(0, 1/d)
autoencoder         u_t = sg(A(h_{i,t})), A: d -> b -> d with no skip path, default init, trained on ||A(h_i) - h_i||²
forward-frozen      u_t = F0(h_i)_t, F0 another forward model frozen at a random init, output projections non-zero
==================  =========================================================================================

Each entry names its **function class**, the set of maps from the residual stream to u that G can end up reading:
our :class:`~selfmodels.forward.model.ForwardModel` starts as the exact identity, so a frozen-at-init F or an
autoencoder with a skip path would inject G·h_i, the random projection's function class; the entries that differ
from it say how.

No torch here (the command line's ``choices`` and validation read the registry); an entry's ``signal`` is a
:class:`~selfmodels.closed_loop.signals.Signal` subclass or its ``"module:Class"`` path, imported when a run builds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from selfmodels.registries import Registry


@dataclass(frozen=True)
class Condition:
    """One condition: its ``name``, the ``signal`` it injects (a Signal subclass or ``"module:Class"``), a one-line
    ``description`` (the equation of u) and its ``function_class`` (what maps of the residual stream u can be)."""

    name: str
    signal: object
    description: str
    function_class: str


CONDITIONS: Registry[Condition] = Registry("closed-loop condition")


def register_condition(condition: Condition, *, replace: bool = False) -> Condition:
    """Add a condition to the closed-loop runs (``--condition NAME``); returns the entry."""
    return CONDITIONS.register(condition.name, condition, replace=replace)


_SIGNALS = "selfmodels.closed_loop.signals"
register_condition(Condition(
    "open-loop", f"{_SIGNALS}:OpenLoop", "no injection: h_m unchanged (F co-trained beside it)",
    "none: nothing is added to the residual stream"))
register_condition(Condition(
    "forward", f"{_SIGNALS}:Forward", "h_m <- h_m + G(sg(F(h_i))), F trained toward the on-policy h_j",
    "a learned causal map of h_i at positions <= t, trained to predict h_j (the identity at init, so G h_i at first)"))
register_condition(Condition(
    "shifted", f"{_SIGNALS}:Shifted", "position t receives G(sg(F(h_i))_{t-k}); zeros for t < k",
    "the forward condition's map, read k positions late: a prediction of an earlier position's h_j"))
register_condition(Condition(
    "random-projection", f"{_SIGNALS}:RandomProjection", "h_m <- h_m + G(R h_i), R frozen with entries N(0, 1/d)",
    "linear per-position maps of h_i (G R: any linear map of h_i, as G h_i)"))
register_condition(Condition(
    "autoencoder", f"{_SIGNALS}:Autoencoder", "h_m <- h_m + G(sg(A(h_i))), A = W2 GELU(W1 h) with a b-wide bottleneck, "
    "trained to reconstruct h_i",
    "a learned nonlinear per-position map of h_i through a b-wide bottleneck (no skip path: not the identity)"))
register_condition(Condition(
    "forward-frozen", f"{_SIGNALS}:ForwardFrozen", "h_m <- h_m + G(F0(h_i)), F0 a forward model frozen at a random "
    "init with non-zero output projections",
    "a fixed random causal nonlinear map of h_i at positions <= t (identity plus random attention and MLP writes)"))
