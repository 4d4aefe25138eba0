"""Figures for reports, made without pyplot and without touching the matplotlib backend.

Every plot in the package draws on a :class:`matplotlib.figure.Figure` made here and writes it with
:func:`save_figure`. Nothing in this module (or in the plotting modules that use it) calls
``matplotlib.use()`` or imports ``matplotlib.pyplot``: a bare ``Figure`` needs no backend, its PNG is
rendered by Agg when it is saved, and so importing a plotting module in a notebook leaves the notebook's
backend and its open figures alone.

API:

- ``figure(figsize=None, **kwargs) -> Figure``: a new figure; ``kwargs`` go to ``Figure`` unchanged
  (``constrained_layout=True``, ``dpi=...``). Draw on it with the object-oriented API:
  ``ax = fig.add_subplot()`` or ``axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)``,
  then ``fig.tight_layout()`` / ``fig.suptitle(...)`` as usual.
- ``subplots(nrows=1, ncols=1, *, figsize=None, constrained_layout=False, **kwargs) -> (Figure, axes)``:
  the ``pyplot.subplots`` shape in one call; ``kwargs`` (``squeeze``, ``sharex``, ``sharey``,
  ``gridspec_kw``, ...) go to ``Figure.subplots``.
- ``save_figure(fig, path) -> str``: write ``fig`` to ``path`` as PNG (dpi 110, ``bbox_inches="tight"``)
  atomically through :func:`selfmodels.artifacts.atomic_path` (an interrupted write leaves no
  half-written file), release the figure, and return the file name (``Path(path).name``) for a report
  to link. A figure that did come from pyplot is closed there too, so it does not stay open.
- ``colors() -> list[str]``: the colours of the current property cycle (``rcParams["axes.prop_cycle"]``).
- ``colormap(name, n=None)``: the registered colormap ``name``, resampled to ``n`` entries when ``n`` is
  given (what ``pyplot.get_cmap(name, n)`` returns).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from selfmodels.artifacts import atomic_path

DPI = 110


def figure(figsize: tuple[float, float] | None = None, **kwargs: Any) -> Figure:
    """A new figure, not registered with pyplot: no global figure list, no backend chosen."""
    return Figure(figsize=figsize, **kwargs)


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
             constrained_layout: bool = False, **kwargs: Any):
    """A new figure and its grid of axes, as ``pyplot.subplots`` would return them."""
    fig = figure(figsize=figsize, constrained_layout=constrained_layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Figure, path: str | os.PathLike) -> str:
    """Write ``fig`` to ``path`` as a PNG atomically, release it, and return the file name."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")  # only a figure pyplot made is registered with it
        if pyplot is not None and getattr(fig.canvas, "manager", None) is not None:
            pyplot.close(fig)
        fig.clear()
    return path.name


def colors() -> list[str]:
    """The colours of the current property cycle, in order."""
    return list(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])


def colormap(name: str, n: int | None = None):
    """The colormap ``name``, resampled to ``n`` entries when ``n`` is given."""
    cmap = matplotlib.colormaps[name]
    return cmap if n is None else cmap.resampled(n)
