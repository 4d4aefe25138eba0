"""Training curves: a record appended to ``metrics.jsonl``, and the same numbers mirrored to TensorBoard or W&B.

A curve record is a flat dict: a step field (``step``, or ``epoch`` for the classifier runs), label fields
that say which curve it belongs to (``model``, ``source``, ``target``) and scalar metrics. :func:`append_curve`
appends it to the run's ``metrics.jsonl`` (a whole line or none, as :func:`selfmodels.artifacts.append_jsonl`)
and hands it to a :class:`Mirror`, which writes every finite metric ``m`` of curve ``c`` as the scalar
``c/m`` at that step:

- ``tensorboard``: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``), local, offline;
- ``wandb``: a Weights & Biases run in ``RUN_DIR/wandb``, in W&B's offline mode unless ``WANDB_MODE`` says
  otherwise (``wandb sync`` uploads it later); each curve has its own step axis ``c/<step field>``.

Both are optional extras (``pip install 'selfmodels[tensorboard]'``, ``'selfmodels[wandb]'``), imported only
when a run asks for them. A mirror is never an input to a result: the run's settings, stage keys and
``results.json`` are the same with or without it.
"""

from __future__ import annotations

import importlib
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from selfmodels.errors import UserError

SINKS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # --log choice -> the module its extra installs
LOG_CHOICES = tuple(SINKS)
LABELS = ("model", "source", "target")  # fields that name a curve, never plotted as a metric
LOG_HELP = ("mirror the training curves (also written to metrics.jsonl) to tensorboard (event files in the run "
            "directory's tensorboard/) and/or wandb (offline unless WANDB_MODE is set); each needs its extra, "
            "e.g. pip install 'selfmodels[tensorboard]'; see docs/logging.md")


def add_log_option(parser) -> None:
    """``--log SINK [SINK ...]`` on an argparse parser (the one definition every command uses); the value is a
    list of sink names, to be checked with :func:`check_sinks` before any work starts."""
    parser.add_argument("--log", nargs="+", choices=LOG_CHOICES, default=[], metavar="{" + ",".join(LOG_CHOICES) + "}",
                        help=LOG_HELP + " (default: metrics.jsonl only)")


def pip_command(sink: str) -> str:
    """The command that installs the optional extra of ``sink``."""
    return f"pip install 'selfmodels[{sink}]'"


def check_sinks(sinks: Iterable[str] | None) -> tuple[str, ...]:
    """The requested sinks, each known and importable, without repeats; otherwise one :class:`UserError` naming
    the pip command. Commands call this before any work starts."""
    names = tuple(dict.fromkeys(sinks or ()))
    for name in names:
        if name not in SINKS:
            raise UserError(f"unknown --log {name!r}: choose among {', '.join(LOG_CHOICES)}")
        try:
            importlib.import_module(SINKS[name])
        except ImportError:
            raise UserError(f"--log {name} needs the optional package {SINKS[name]!r}, which is not installed: "
                            f"{pip_command(name)}") from None
    return names


def scalars(record: dict, step: str = "step", labels: Sequence[str] = LABELS) -> dict[str, float]:
    """The metrics of ``record`` a mirror writes: every finite int or float value other than the step and the
    labels (``metrics.jsonl`` keeps NaN and infinity as null, so neither is plotted)."""
    return {key: float(value) for key, value in record.items()
            if key != step and key not in labels and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def _tag(name: str) -> str:
    """A curve name as a tag prefix: whitespace becomes ``_`` (``capacity 1%`` -> ``capacity_1%``)."""
    return re.sub(r"\s+", "_", str(name).strip()) or "train"


class Mirror:
    """The sinks of one run directory; ``Mirror(run_dir)`` with no sinks does nothing. Use as a context manager
    (or call :meth:`close`) so that the event files are flushed and the W&B run finished."""

    def __init__(self, run_dir: str | os.PathLike, sinks: Iterable[str] | None = (), *, name: str | None = None,
                 config: dict | None = None):
        self.sinks = check_sinks(sinks)
        self.run_dir, self.name, self.config = Path(run_dir), name, config
        self._writer = self._wandb = None
        self._axes: set[str] = set()  # W&B step metrics already defined

    def _open(self) -> None:
        """Open the sinks at the first record, so that a command stopped by bad input before training leaves no
        event file or W&B run behind."""
        if "tensorboard" in self.sinks and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if "wandb" in self.sinks and self._wandb is None:
            import wandb

            self.run_dir.mkdir(parents=True, exist_ok=True)
            mode = None if os.environ.get("WANDB_MODE") else "offline"  # the user's choice wins; else no network needed
            try:
                self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "selfmodels"), dir=str(self.run_dir),
                                         name=self.name or self.run_dir.name, config=self.config, mode=mode)
            except Exception as exc:  # e.g. WANDB_MODE=online without a login or a network
                raise UserError(f"--log wandb: W&B could not start a run ({type(exc).__name__}: {exc}); unset WANDB_MODE "
                                "to log offline, or run `wandb login`") from None
            self._axes.clear()

    def log(self, record: dict, curve: str | None = None, step: str = "step", labels: Sequence[str] = LABELS) -> None:
        """Write ``record``'s metrics as ``<curve>/<metric>`` at ``record[step]``; ``curve`` defaults to the
        record's ``model`` label, else ``train``."""
        if not self.sinks:
            return
        self._open()
        prefix = _tag(curve if curve is not None else record.get("model", "train"))
        values = {f"{prefix}/{key}": value for key, value in scalars(record, step, labels).items()}
        at = int(record[step])
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, global_step=at)
            self._writer.flush()  # on disk now: TensorBoard shows the curve while training runs, and a crash loses none of it
        if self._wandb is not None:
            axis = f"{prefix}/{step}"
            if axis not in self._axes:  # each curve has its own x axis: curves of several models need not share steps
                self._wandb.define_metric(axis, hidden=True)
                self._wandb.define_metric(f"{prefix}/*", step_metric=axis)
                self._axes.add(axis)
            self._wandb.log({axis: at, **values})

    def log_all(self, records: Iterable[dict], curve: str | None = None, step: str = "step",
                labels: Sequence[str] = LABELS) -> None:
        """:meth:`log` every record (a curve read back from ``metrics.jsonl``, e.g. of a stage reused from an earlier run)."""
        for record in records:
            if step in record:
                self.log(record, curve, step, labels)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> "Mirror":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def append_curve(path: str | os.PathLike, record: dict, mirror: Mirror | None = None, *, curve: str | None = None,
                 step: str = "step", labels: Sequence[str] = LABELS) -> None:
    """Append ``record`` to the ``metrics.jsonl`` at ``path``, then hand the same record to ``mirror`` (if any)."""
    from selfmodels.artifacts import append_jsonl  # imports torch: not at import time (``--help`` reads LOG_CHOICES)

    append_jsonl(path, record)
    if mirror is not None:
        mirror.log(record, curve, step, labels)
