"""Build the explorer's embedded data and render the page from its package-data template.

The data travels as JSON inside ``<script type="application/json">``; ``<``, ``>`` and ``&`` are written as
``\\u003c`` / ``\\u003e`` / ``\\u0026`` so that no token text (``</script>``, ``<!--``) can end the element
early; the script reads it with ``JSON.parse`` and puts token text in the page as text nodes only.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from selfmodels.artifacts import write_text
from selfmodels.errors import require
from selfmodels.forward.categories import CATEGORIES
from selfmodels.forward.explore import (
    FLAG_OK, MODES, ExploredRun, attention_rows, open_run, save_arrays, token_data, worst_positions,
)

CONTEXT_BEFORE, CONTEXT_AFTER = 16, 4  # tokens shown around each of the worst positions


def _num(value, digits: int = 4):
    """A float rounded to ``digits`` significant digits (None for NaN / inf: JSON has neither)."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def _position(data: dict[str, np.ndarray], b: int, t: int) -> dict:
    """The details of one position, with short keys (the script's ``P`` record)."""
    record = {
        "b": b, "t": t, "tok": int(data["ids"][b, t]), "next": int(data["next"][b, t]),
        "e": _num(data["normalised_error"][b, t]) if data["flag"][b, t] == FLAG_OK else None, "f": int(data["flag"][b, t]),
        "err": _num(data["error"][b, t]), "upd": _num(data["update"][b, t]),
        "ks": _num(data["kl_substituted"][b, t]), "kk": _num(data["kl_skipped"][b, t]),
        "c": int(data["categories"][b, t]),
        "h": _num(data["attention_entropy"][b, t]) if "attention_entropy" in data else None,
        "top": data["top_ids"][b, t].tolist(), "p": [[_num(p, 4) for p in row] for row in data["top_probs"][b, t].tolist()],
    }
    if "align_heads" in data:
        record["ah"] = [_num(v, 3) for v in data["align_heads"][b, t].tolist()]
        record["am"] = _num(data["align_mlp"][b, t], 3)
    return record


def _rows(matrix: np.ndarray, mean_heads: bool) -> list[list[float]]:
    """Attention rows (heads, keys) rounded to 3 decimals; their head mean only when ``mean_heads``."""
    rows = matrix.mean(0, keepdims=True) if mean_heads else matrix
    return [[round(float(v), 3) for v in row] for row in rows]


def layer_view(explored: ExploredRun, index: int, data: dict[str, np.ndarray], sequences: int, worst: int,
               mean_heads: bool) -> dict:
    """One pair's part of the page: its first ``sequences`` windows in full, its ``worst`` positions over the whole
    evaluation set with their context, every embedded position's details and attention rows."""
    pair = explored.pairs[index]
    n, length = data["ids"].shape
    shown = list(range(min(sequences, n)))
    ranked = worst_positions(data, worst)
    wanted: dict[int, set[int]] = {b: set(range(length)) for b in shown}
    for b, t in ranked:
        wanted.setdefault(b, set()).add(t)
    attention = attention_rows(explored.subject, pair.model, explored.x, pair.source,
                               {b: sorted(ts) for b, ts in wanted.items()})
    positions = {f"{b}:{t}": _position(data, b, t) for b, ts in wanted.items() for t in ts}
    worst_rows = []
    for b, t in ranked:
        start, stop = max(0, t - CONTEXT_BEFORE), min(length, t + CONTEXT_AFTER + 1)
        # ids from 0: the attention rows of the position reach back to the start of its window
        worst_rows.append({"b": b, "t": t, "start": start, "ids": data["ids"][b, :stop].tolist()})
    first = next(iter(attention.values()), {}).get("layer")
    heads = 0 if first is None else first.shape[0]
    return {
        "name": pair.name, "source": pair.source, "target": pair.target, "summary": {k: _num(v) for k, v in pair.summary.items() if isinstance(v, (int, float))},
        "heads": 1 if mean_heads else heads, "mean_heads": mean_heads, "one_block": pair.target == pair.source + 1,
        "sequences": [{"b": b, "ids": data["ids"][b].tolist()} for b in shown],
        "worst": worst_rows, "positions": positions,
        "attention": {f"{b}:{t}": {"layer": None if r["layer"] is None else _rows(r["layer"], mean_heads),
                                   "forward": _rows(r["forward"], mean_heads)}
                      for (b, t), r in attention.items()},
        "flagged": {"position0": int((data["flag"] == 1).sum()), "near_zero": int((data["flag"] == 2).sum()),
                    "tokens": int(data["flag"].size)},
        "median_error": _num(np.nanmedian(data["normalised_error"])),
    }


def _header(explored: ExploredRun) -> dict:
    r = explored.results
    s, d, f = r["subject"], r["data"], r["forward_model"]
    header = {
        "subject": {k: s.get(k) for k in ("name", "family", "id", "params", "n_layers", "d_model", "n_heads")},
        "corpus": d.get("corpus"), "corpus_source": d.get("source"), "eval_tokens": int(explored.x.numel()),
        "eval_sequences": int(explored.x.shape[0]), "seq_len": int(explored.x.shape[1]),
        "forward_model": {"params": f.get("params"), "share_of_main": _num(f.get("share_of_main")), "config": f.get("config")},
        "pairs": [p.name for p in explored.pairs], "run_dir": str(explored.run_dir),
        # why the block's attention, entropy and head / MLP alignment are missing (None: they are there)
        "without_parts": explored.subject.parts_unavailable,
    }
    if explored.kind == "pair":
        sub = r["substitution"]
        header["numbers"] = [
            ["cosine", _num(r["cosine"]), "skip cosine", _num(r["skip_cosine"])],
            ["update R²", _num(r["delta_r2"]), "update cosine", _num(r["delta_cosine"])],
            ["KL substituted (nats)", _num(sub["kl_substituted"]), "KL of skipping", _num(sub["kl_skipped"])],
            ["recovery = 1 − KL_sub / KL_skip", _num(sub["recovery"]), "KL zero-ablated", _num(sub.get("kl_zero"))],
            ["accuracy substituted", _num(sub["accuracy_substituted"]), "accuracy normal / skipped",
             f"{_num(sub['accuracy_normal'], 3)} / {_num(sub['accuracy_skipped'], 3)}"],
        ]
        header["training"] = r["pair"].get("training")
    else:
        rows = r["rows"]
        mean = lambda key: _num(sum(x[key] for x in rows) / len(rows))
        header["numbers"] = [["mean cosine", mean("cosine"), "mean skip cosine", mean("skip_cosine")],
                             ["mean update R²", mean("delta_r2"), "mean ridge R²", mean("ridge_delta_r2")],
                             ["mean recovery", mean("recovery"), "mean KL of skipping", mean("kl_skipped")]]
        header["training"] = "one streaming run, every pair"
    return header


def page_data(explored: ExploredRun, per_pair: dict[str, dict[str, np.ndarray]], sequences: int, worst: int) -> dict:
    """Everything the page's script reads."""
    profile = explored.kind == "profile"
    layers = [layer_view(explored, i, per_pair[p.name], sequences, worst, mean_heads=profile) for i, p in enumerate(explored.pairs)]
    used = set()
    for layer in layers:
        for seq in layer["sequences"]:
            used.update(seq["ids"])
        for row in layer["worst"]:
            used.update(row["ids"])
        for p in layer["positions"].values():
            used.add(p["next"])
            used.update(i for mode in p["top"] for i in mode)
    subject = explored.results["subject"]
    title = (f"Forward self-model explorer: {subject.get('name')} " +
             (f"profile, {len(layers)} pairs" if profile else f"{layers[0]['source']} -> {layers[0]['target']}"))
    return {
        "title": title, "kind": explored.kind, "header": _header(explored), "categories": list(CATEGORIES),
        "modes": list(MODES), "vocab": {str(i): explored.token_strings[i] for i in sorted(used)},
        "profile": [{"name": p.name, "source": p.source, "target": p.target,
                     **{k: _num(p.summary.get(k)) for k in ("cosine", "skip_cosine", "delta_r2", "recovery", "kl_skipped",
                                                            "ridge_recovery", "ridge_delta_r2")}}
                    for p in explored.pairs] if profile else None,
        "layers": layers,
    }


def embed_json(obj) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` escaped as JSON unicode escapes."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _asset(name: str) -> str:
    return resources.files("selfmodels.forward.explorer").joinpath(name).read_text(encoding="utf-8")


def render_page(data: dict) -> str:
    """The page: the template with the style, the script and the data inlined."""
    from html import escape

    return (_asset("page.html").replace("{{TITLE}}", escape(data["title"]))
            .replace("/*{{CSS}}*/", _asset("page.css"))
            .replace("/*{{JS}}*/", _asset("page.js"))
            .replace("{{DATA}}", embed_json(data)))


def default_out(run_dir: Path) -> Path:
    return Path(run_dir) / "explorer.html"


def write_explorer(run_dir: Path, out: Path | None = None, device: torch.device | str = "cpu", sequences: int | None = None,
                   worst: int | None = None, progress: bool = False) -> tuple[Path, Path]:
    """Write the page (default ``RUN_DIR/explorer.html``) and the arrays beside it (same name, ``.npz``).
    ``sequences`` / ``worst``: windows shown in full and worst positions embedded, per pair (defaults: 4 and 100
    for one pair; 1 and 25 per pair for a profile: its per-layer token budget)."""
    if out is None:  # the page goes into the run directory: say first when that is missing
        require(Path(run_dir).is_dir(), f"run directory {run_dir} does not exist: make one with `selfmodels forward train "
                                        f"--out {run_dir}` (or `reproduce forward-self-models`, `forward profile`)")
    out = default_out(run_dir) if out is None else Path(out)
    require(out.parent.is_dir(), f"--out {out}: the directory {out.parent} does not exist: create it first")
    require(not out.is_dir(), f"--out {out} is a directory: give a file name such as {out / 'explorer.html'}")
    for name, value in (("--sequences", sequences), ("--worst", worst)):
        require(value is None or value >= 0, f"{name} must be 0 or more, got {value}")
    explored = open_run(run_dir, torch.device(device), progress)
    profile = explored.kind == "profile"
    sequences = (1 if profile else 4) if sequences is None else sequences
    worst = (25 if profile else 100) if worst is None else worst
    per_pair = {p.name: token_data(explored.subject, p.model, explored.x, explored.y, p.source, p.target, explored.categories,
                                   explored.batch) for p in explored.pairs}
    arrays = out.with_suffix(".npz")
    save_arrays(arrays, per_pair)
    write_text(out, render_page(page_data(explored, per_pair, sequences, worst)))
    return out, arrays
