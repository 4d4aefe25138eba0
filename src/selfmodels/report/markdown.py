"""Small helpers for writing markdown reports."""

from __future__ import annotations

import math
from typing import Any, Sequence


def fmt(value: Any, digits: int = 3) -> str:
    """Format a number for a table: fixed digits, '-' for missing or non-finite values."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(mean: Any, half_width: Any, digits: int = 3) -> str:
    """'mean ± half_width' (half_width of a 95% CI), or just the mean when the CI is unknown."""
    if half_width is None or (isinstance(half_width, float) and not math.isfinite(half_width)):
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} ± {fmt(half_width, digits)}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub-flavoured markdown table; cells go through :func:`fmt` unless already strings."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c, digits) for c in row) + " |")
    return "\n".join(lines) + "\n"
