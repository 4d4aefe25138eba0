"""Forward models as artifacts people reuse: a directory with ``config.json`` and ``model.safetensors``.

``config.json`` holds the forward model's config, the subject it was trained on (family, id, revision and
``weights_sha256`` with ``weights_hash``, what that hash is), the layer pair (source and target residual
indices), the data it saw (corpus, training tokens) and the package version. For a Hugging Face subject the hash
is the digest of its weights in memory with floats rounded to bfloat16 (``tensors-bf16-sha256/1``, see
:func:`selfmodels.subjects.base.weights_digest`), so a forward model trained on a bf16 copy of a subject on a
GPU loads beside the same subject in fp32 on a CPU, while one trained on other weights (a model built from the
same config, or changed after loading) is refused with a message naming both.

The weights are loaded into the architecture the config names (:mod:`selfmodels.forward.architectures`), so a
forward model of any registered architecture saves and loads the same way: :func:`load_forward_model` (which
``ForwardModel.from_pretrained`` calls) reads a local directory, or a Hugging Face hub repository id through
``huggingface_hub`` (optionally a ``subfolder`` of it, for repositories holding one model per layer pair).
"""

from __future__ import annotations

from pathlib import Path

import torch

from selfmodels import __version__
from selfmodels.artifacts import load_tensors, read_json, save_tensors, write_json
from selfmodels.configs import from_dict, to_dict
from selfmodels.errors import UserError, require
from selfmodels.forward.architectures import build_forward_model, num_params
from selfmodels.forward.config import ForwardModelConfig

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
FORMAT = "selfmodels-forward-model/1"


def save_pretrained(model: torch.nn.Module, directory: str | Path, *, subject: dict, source: int, target: int, data: dict) -> Path:
    """Write ``model`` to ``directory`` (created if needed). ``subject``: the subject's ``describe()``;
    ``data``: at least the corpus and the number of training tokens."""
    directory = Path(directory)
    require(not directory.is_file(), f"{directory} is a file: give a directory to save the forward model in")
    save_tensors(directory / WEIGHTS_NAME, {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()})
    keep = ("family", "name", "id", "revision", "weights_sha256", "weights_hash", "n_layers", "d_model")
    write_json(directory / CONFIG_NAME, {
        "format": FORMAT, "selfmodels_version": __version__, "config": to_dict(model.cfg),
        "subject": {k: subject.get(k) for k in keep}, "source": source, "target": target, "data": data,
        "params": num_params(model),
    })
    return directory


def _resolve(name_or_dir: str | Path, subfolder: str | None, revision: str | None) -> Path:
    local = Path(name_or_dir) / (subfolder or "")
    if local.is_dir():
        return local
    if Path(name_or_dir).exists():
        raise UserError(f"{name_or_dir} is not a forward-model directory (no {subfolder or ''} folder with {CONFIG_NAME})")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    pattern = f"{subfolder}/*" if subfolder else None
    try:
        root = snapshot_download(str(name_or_dir), revision=revision, allow_patterns=pattern)
    except (HFValidationError, OSError, ValueError) as exc:
        raise UserError(f"cannot load forward model {name_or_dir!r}: not a local directory, and the hub answered "
                        f"{type(exc).__name__} (offline, or no such repository)") from None
    return Path(root) / (subfolder or "")


def load_record(name_or_dir: str | Path, subfolder: str | None = None, revision: str | None = None) -> tuple[dict, Path]:
    """The ``config.json`` record of a saved forward model and the directory holding it."""
    directory = _resolve(name_or_dir, subfolder, revision)
    path = directory / CONFIG_NAME
    require(path.is_file(), f"{directory} holds no {CONFIG_NAME}: it is not a saved forward model")
    record = read_json(path)
    require(record.get("format") == FORMAT, f"{path} is not a selfmodels forward-model config (format {record.get('format')!r})")
    return record, directory


def check_subject(record: dict, subject: dict) -> None:
    """Refuse a forward model trained on another subject than ``subject`` (a ``describe()``), naming both."""
    mine = record["subject"]
    if mine.get("weights_sha256") != subject.get("weights_sha256"):
        scheme = ""
        if mine.get("weights_hash") != subject.get("weights_hash"):
            scheme = (f" (its record hashes weights as {mine.get('weights_hash') or 'the files they were loaded from'}, "
                      f"this subject as {subject.get('weights_hash') or 'its weight file'}: retrain, or load it without subject=)")
        raise UserError(
            f"this forward model was trained on {mine.get('id')} (weights {str(mine.get('weights_sha256'))[:12]}), not on "
            f"{subject.get('id')} (weights {str(subject.get('weights_sha256'))[:12]}): load it beside the subject it was "
            f"trained on{scheme}")


def load_weights(model: torch.nn.Module, directory: Path) -> None:
    """Load ``model.safetensors`` from ``directory`` into ``model``; a mismatch is a UserError naming the file."""
    try:
        model.load_state_dict(load_tensors(Path(directory) / WEIGHTS_NAME))
    except RuntimeError as exc:
        raise UserError(f"{Path(directory) / WEIGHTS_NAME} does not fit its config ({str(exc).splitlines()[-1].strip()})") from None


def load_forward_model(name_or_dir: str | Path, subfolder: str | None = None, *, subject=None, device="cpu",
                       revision: str | None = None) -> torch.nn.Module:
    """A saved forward model (eval mode, on ``device``), built in the architecture its config names, from a directory
    or a hub repository (``subfolder``: one model of a repository holding several). With ``subject`` (a Subject or its
    ``describe()``), a model trained on other weights is refused. The model's ``pair`` is its ``(source, target)``,
    its ``record`` the saved config."""
    record, directory = load_record(name_or_dir, subfolder, revision)
    if subject is not None:
        check_subject(record, subject.describe() if hasattr(subject, "describe") else subject)
    model = build_forward_model(from_dict(ForwardModelConfig, record["config"]))
    load_weights(model, directory)
    model.pair, model.record = (record["source"], record["target"]), record
    return model.to(device).eval()
