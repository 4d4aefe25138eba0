"""The run-directory artifact format, written atomically.

Every run directory holds ``config.json`` (resolved config, package version, git commit),
``results.json`` (metrics), ``metrics.jsonl`` (training curves), weights as ``*.safetensors`` and, for
reports, ``report.md`` with PNG plots. Every write goes to a temporary file in the same directory and is
renamed into place, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import math
import hashlib
import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from selfmodels import __version__
from selfmodels.errors import UserError


def _file_mode() -> int:
    """The mode an ordinary new file gets under the process umask (mkstemp's files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically; non-finite floats become ``null``."""
    obj = json.loads(json.dumps(obj, default=_json_default))  # normalise tensors / numpy first
    write_text(path, json.dumps(_finite_or_none(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing or corrupt file into a :class:`UserError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); delete it or restore it from a backup") from None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON record as a line (training curves); a line is written whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_finite_or_none(json.loads(json.dumps(record, default=_json_default))))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file, ignoring a truncated last line left by a crash."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def keep_jsonl(path: str | os.PathLike, keep: Callable[[dict], bool]) -> None:
    """Rewrite a JSONL file atomically with only the records for which ``keep`` is true (a resumed
    training loop drops the lines it is about to write again); a missing file stays missing."""
    path = Path(path)
    if path.is_file():
        write_text(path, "".join(json.dumps(r) + "\n" for r in read_jsonl(path) if keep(r)))


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors atomically (tensors are made contiguous and moved to CPU). A tensor two names share
    (a tied LM head and embedding: safetensors refuses two names over one storage) is stored once, under its first
    name; the metadata's ``tied`` maps each other name to it, and :func:`load_tensors` gives every name back."""
    unique, aliases = _untied(tensors)
    clean = {name: t.detach().to("cpu").contiguous() for name, t in unique.items()}
    if aliases:
        metadata = {**(metadata or {}), TIED: json.dumps(aliases)}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


TIED = "tied"  # the metadata key of save_tensors' {tied name: kept name}


def _untied(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``tensors`` with each shared tensor once, under its first name, and ``{tied name: kept name}``."""
    kept: dict[tuple, str] = {}
    unique, aliases = {}, {}
    for name, tensor in tensors.items():
        where = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and where in kept:
            aliases[name] = kept[where]
            continue
        kept[where] = name
        unique[name] = tensor
    return unique, aliases


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file, every tied name of :func:`save_tensors` restored (as the same tensor as the name it
    was stored under); a missing or corrupt file becomes a :class:`UserError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            tied = json.loads((handle.metadata() or {}).get(TIED) or "{}")
    except (SafetensorError, OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise UserError(f"{path} is corrupt or not a safetensors file ({exc}); delete it to start that run again") from None
    for name, kept in tied.items():
        tensors[name] = tensors[kept]
    return tensors


def git_commit() -> str | None:
    """The commit of the source tree this package was imported from, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def write_config(run_dir: str | os.PathLike, config: dict) -> None:
    """Write ``config.json``: the resolved config plus package version and git commit."""
    record = {"selfmodels_version": __version__, "git_commit": git_commit(), **config}
    write_json(Path(run_dir) / "config.json", record)
