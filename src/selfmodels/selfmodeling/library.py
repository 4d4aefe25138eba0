"""``selfmodels regularize`` in a line from a notebook: ``selfmodels.regularize(task=..., hidden=..., ...)``.

The keyword arguments are the fields of :class:`~selfmodels.selfmodeling.config.GridConfig` (the command's flags), laid
over its defaults; the grid runs through :func:`selfmodels.selfmodeling.grid.run_and_report`, the function the command
runs, into ``out`` (a new temporary directory when not given; a finished run there is read back, not trained again).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class GridRun:
    """A classifier grid's results (``results``: all of ``results.json``; ``summary``: one row per condition)."""

    results: dict = field(repr=False)
    out: Path

    @property
    def summary(self) -> list[dict]:
        return self.results["summary"]

    def __repr__(self) -> str:
        lines = [f"GridRun({len(self.results['runs'])} runs, {len(self.summary)} conditions; out={self.out})"]
        for row in self.summary:
            lines.append(f"  H {row['hidden']:<4} {row['method']:<14} w {row['strength']:<6g} accuracy "
                         f"{row['accuracy_mean']:.3f}  weight SD {row['weight_sd_mean']:.4f}  (n = {row['n']})")
        return "\n".join(lines)


def regularize(task: str = "mnist", *, out: str | Path | None = None, progress: bool = False, data=None, **settings) -> GridRun:
    """The grid of task x hidden size x method x strength x seed, trained, measured and reported (``report.md``).
    ``data``: a :class:`~selfmodels.data.classification.ClassificationData` to use instead of loading ``task``'s."""
    from selfmodels.configs import from_dict, overlay, to_dict
    from selfmodels.selfmodeling.config import GridConfig
    from selfmodels.selfmodeling.grid import run_and_report

    grid = from_dict(GridConfig, overlay(to_dict(GridConfig()), {"task": task, **settings}))
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="selfmodels-regularize-"))
    return GridRun(run_and_report(grid, out, progress=progress, data=data), out)
