"""Per-token data behind the explorer page (``selfmodels forward explore RUN_DIR``).

For a forward model ``f`` standing in for blocks source+1..target, on held-out windows (inputs x, next
tokens y), per position t (one subject split, shared by every number below)::

    src_t = residual at source,  tgt_t = residual at target (the blocks run),  pred_t = f(src)_t
    error_t      = ‖tgt_t - pred_t‖                   (what the forward model misses)
    update_t     = ‖tgt_t - src_t‖                    (what the predicted blocks add)
    normalised_t = error_t / update_t                 (1 = no better than copying the source)
    kl_sub_t     = KL(normal ‖ substituted)_t,  kl_skip_t = KL(normal ‖ skipped)_t     (nats)
    top-5 next tokens under the normal, substituted (f spliced in) and skipped (blocks removed) runs
    entropy_t    = mean over the layer's heads of -Σ_k a_tk log a_tk  (block source+1's attention)
    align_t      = cos(tgt_t - pred_t, head h's write_t) per head, and cos(·, MLP output_t)
                   (one-block pairs only, where the block's update decomposes into heads + MLP)

A subject that cannot split a block into its parts (``subject.parts_unavailable``: found structurally, no
FAMILIES row) has every quantity above but ``entropy_t`` and ``align_t``, and no layer attention rows; the page
says why.

``normalised_t`` is left undefined (``flag``) at position 0 (every causal head attends only to itself
there; in pretrained models it is the attention sink) and where the update is near zero (below
``NEAR_ZERO`` times the median update norm), where a ratio says nothing.

Everything goes through the subject interface (``split``, ``block_parts``) and the package's own metrics
(:func:`~selfmodels.forward.metrics.kl_per_token`, :class:`~selfmodels.forward.categories.TokenCategories`,
:func:`~selfmodels.forward.analysis.attention.attention_entropy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selfmodels.artifacts import load_tensors, read_json
from selfmodels.configs import from_dict
from selfmodels.errors import UserError, require
from selfmodels.forward.analysis.attention import attention_entropy
from selfmodels.forward.architectures import build_forward_model
from selfmodels.forward.categories import CATEGORIES, TokenCategories
from selfmodels.forward.config import ForwardModelConfig
from selfmodels.forward.evaluate import as_predictor, batches_of
from selfmodels.forward.metrics import kl_per_token
from selfmodels.forward.pretrained import load_forward_model
from selfmodels.subjects.base import Subject

MODES = ("normal", "substituted", "skipped")
TOP_K = 5
NEAR_ZERO = 1e-3  # an update below this share of the median update norm is "near zero"
FLAG_OK, FLAG_POSITION0, FLAG_NEAR_ZERO = 0, 1, 2


@dataclass
class ExploredPair:
    """One forward model on one pair, with the held-out windows it is explored on."""

    name: str  # "source->target"
    source: int
    target: int
    model: torch.nn.Module
    summary: dict  # the run's numbers for this pair (results.json)


@dataclass
class ExploredRun:
    """What the page is made from: the subject, its token strings, the held-out windows and the pairs."""

    kind: str  # "pair" (forward train / reproduce) or "profile"
    run_dir: Path
    results: dict
    subject: Subject
    token_strings: list[str]
    categories: TokenCategories
    x: torch.Tensor  # (N, T) held-out inputs
    y: torch.Tensor  # (N, T) next tokens
    batch: int
    pairs: list[ExploredPair]


def _missing(run_dir: Path, what: str, command: str) -> UserError:
    return UserError(f"{run_dir} has no {what}: {command}")


def open_run(run_dir: Path, device: torch.device, progress: bool = False) -> ExploredRun:
    """Reopen a run directory of ``forward train`` / ``reproduce forward-self-models`` or ``forward profile``: its
    subject (through the registry), held-out windows and forward models. Missing pieces are a UserError naming
    the command that makes them."""
    run_dir = Path(run_dir)
    require(run_dir.is_dir(), f"run directory {run_dir} does not exist: make one with `selfmodels forward train --out "
                              f"{run_dir}`, `selfmodels reproduce forward-self-models --out {run_dir}` or `selfmodels forward "
                              f"profile --out {run_dir}`")
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise _missing(run_dir, "config.json", "it is not a forward run directory: make one with `selfmodels forward train "
                                               "--out DIR`, `selfmodels reproduce forward-self-models --out DIR` or "
                                               "`selfmodels forward profile --out DIR`")
    record = read_json(config_path)
    experiment = record.get("experiment")
    require(experiment in ("forward-self-models", "forward-profile"),
            f"{run_dir} is a {experiment!r} run, not a forward-self-model run: explore a directory of `selfmodels forward "
            "train`, `reproduce forward-self-models` or `forward profile`")
    if not (run_dir / "results.json").is_file():
        command = "forward profile" if experiment == "forward-profile" else "forward train"
        raise _missing(run_dir, "results.json (the run did not finish)",
                       f"run the command that made it again (`selfmodels {command} ... --out {run_dir}`), which resumes it")
    results = read_json(run_dir / "results.json")
    if experiment == "forward-profile":
        return _open_profile(run_dir, record, results, device, progress)
    return _open_pair(run_dir, record, results, device, progress)


def _open_pair(run_dir: Path, record: dict, results: dict, device: torch.device, progress: bool) -> ExploredRun:
    from selfmodels.forward.config import RunConfig
    from selfmodels.forward.pipeline import PipelineRun

    if not (run_dir / "forward_model" / "config.json").is_file():
        raise _missing(run_dir, "forward_model/ (the saved forward model)",
                       f"run `selfmodels forward eval {run_dir}`, which writes it")
    cfg = from_dict(RunConfig, record["config"])
    opened = PipelineRun(cfg, run_dir, device, progress)  # the pipeline's own door: subject, held-out windows, categories
    opened.open()
    model = load_forward_model(run_dir / "forward_model", subject=opened.subject, device=device)
    source, target = model.pair
    summary = {k: results.get(k) for k in ("cosine", "skip_cosine", "delta_cosine", "delta_r2", "mse")}
    summary.update({k: results["substitution"].get(k) for k in ("kl_substituted", "kl_skipped", "recovery")})
    pair = ExploredPair(f"{source}->{target}", source, target, model, summary)
    return ExploredRun("pair", run_dir, results, opened.subject, opened.token_strings, opened.categories,
                       opened.eval_x, opened.eval_y, cfg.eval_batch, [pair])


def _open_profile(run_dir: Path, record: dict, results: dict, device: torch.device, progress: bool) -> ExploredRun:
    from selfmodels.data.windows import consecutive_windows
    from selfmodels.forward.profile import ProfileConfig
    from selfmodels.subjects.registry import open_subject

    cfg = from_dict(ProfileConfig, record["config"])
    key = results.get("stages", {}).get("train", {}).get("key")
    weights_path = run_dir / "stages" / f"train-{key}" / "models.safetensors"
    if key is None or not weights_path.is_file():
        raise _missing(run_dir, "trained profile models (stages/train-*/models.safetensors)",
                       f"run `selfmodels forward profile ... --out {run_dir}` again, which resumes it")
    opened = open_subject(cfg.subject, cfg.corpus, device, cfg.seed, None, progress)
    subject = opened.subject
    described = subject.describe()
    require(described["weights_sha256"] == results["subject"]["weights_sha256"],
            f"the subject reopened for {run_dir} has other weights than the profile was made on: rerun the profile")
    weights = load_tensors(weights_path)
    model_cfg = from_dict(ForwardModelConfig, results["forward_model"]["config"])
    pairs = []
    for row in results["rows"]:
        name = f"{row['source']}->{row['target']}"
        model = build_forward_model(model_cfg)
        model.load_state_dict({k.split("/", 1)[1]: v for k, v in weights.items() if k.startswith(name + "/")})
        pairs.append(ExploredPair(name, row["source"], row["target"], model.to(device).eval(), row))
    x, y = consecutive_windows(opened.val, cfg.seq_len, cfg.eval_sequences, opened.bos_id, "validation")
    strings = opened.token_strings()
    counts = torch.bincount(opened.train, minlength=subject.vocab_size)
    return ExploredRun("profile", run_dir, results, subject, strings, TokenCategories(strings, counts), x, y,
                       cfg.eval_batch, pairs)


def category_bits(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Category masks (B, T) each -> one bitmask (B, T): bit i set when the position is in ``CATEGORIES[i]``."""
    bits = torch.zeros_like(next(iter(masks.values())), dtype=torch.int32)
    for i, name in enumerate(CATEGORIES):
        bits |= masks[name].to(torch.int32) << i
    return bits


def normalised_error(error: torch.Tensor, update: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``error / update`` per position (N, T) and its flag: NaN with FLAG_POSITION0 at position 0, NaN with
    FLAG_NEAR_ZERO where ``update`` < NEAR_ZERO x the median update norm of the other positions."""
    flag = torch.zeros(error.shape, dtype=torch.int8)
    flag[:, 0] = FLAG_POSITION0
    rest = update[:, 1:] if update.shape[1] > 1 else update
    floor = NEAR_ZERO * rest.median().item()
    flag[(update <= floor) & (flag == FLAG_OK)] = FLAG_NEAR_ZERO
    ratio = error / update.clamp_min(1e-30)
    return torch.where(flag == FLAG_OK, ratio, torch.full_like(ratio, float("nan"))), flag


@torch.no_grad()
def token_data(subject: Subject, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, source: int, target: int,
               categories: TokenCategories, batch: int) -> dict[str, np.ndarray]:
    """Every per-position quantity of the module docstring on inputs ``x`` / next tokens ``y`` (N, T), as numpy
    arrays: ``ids``, ``next``, ``error``, ``update``, ``normalised_error``, ``flag``, ``kl_substituted``, ``kl_skipped``,
    ``top_ids`` / ``top_probs`` (N, T, 3 modes, 5), ``categories`` (bitmask over CATEGORIES), ``attention_entropy``,
    and for a one-block pair ``align_heads`` (N, T, H) and ``align_mlp`` (N, T); the last three only where the
    subject has block parts (``subject.parts_unavailable`` is None)."""
    split = subject.split(source, target)
    predict = as_predictor(model)
    with_parts = subject.parts_unavailable is None
    one_block = target == source + 1
    out: dict[str, list[torch.Tensor]] = {}

    def keep(name: str, value: torch.Tensor) -> None:
        out.setdefault(name, []).append(value.detach().float().cpu() if value.is_floating_point() else value.cpu())

    for xb, yb in batches_of(x, y, batch):
        xb, yb = xb.to(subject.device), yb.to(subject.device)
        src = split.prefix(xb)  # (B, T, d)
        tgt = split.middle(src)  # (B, T, d): the blocks run
        pred = predict(src)  # (B, T, d) float32
        normal = split.suffix(tgt)  # (B, T, V)
        logits = {"normal": normal, "substituted": split.suffix(pred.to(src.dtype)), "skipped": split.suffix(src)}
        keep("error", (tgt.float() - pred).norm(dim=-1))
        keep("update", (tgt.float() - src.float()).norm(dim=-1))
        keep("kl_substituted", kl_per_token(normal, logits["substituted"]))
        keep("kl_skipped", kl_per_token(normal, logits["skipped"]))
        tops = [logits[m].float().softmax(-1).topk(TOP_K, dim=-1) for m in MODES]
        keep("top_ids", torch.stack([t.indices for t in tops], dim=2).to(torch.int32))  # (B, T, 3, 5)
        keep("top_probs", torch.stack([t.values for t in tops], dim=2))
        keep("categories", category_bits(categories.masks(xb.cpu(), yb, normal)))
        if not with_parts:
            continue
        parts = subject.block_parts(xb, source + 1, attention=True)
        keep("attention_entropy", attention_entropy(parts["attention"]).mean(1))  # (B, T), head mean
        if one_block:
            residual = (tgt.float() - pred).cpu()  # (B, T, d)
            keep("align_heads", F.cosine_similarity(parts["heads"].cpu(), residual[:, :, None], dim=-1, eps=1e-30))
            keep("align_mlp", F.cosine_similarity(parts["mlp_out"].cpu(), residual, dim=-1, eps=1e-30))
    data = {k: torch.cat(v) for k, v in out.items()}
    data["normalised_error"], data["flag"] = normalised_error(data["error"], data["update"])
    data["ids"], data["next"] = x.cpu().to(torch.int32), y.cpu().to(torch.int32)
    return {k: v.numpy() for k, v in data.items()}


def worst_positions(data: dict[str, np.ndarray], count: int) -> list[tuple[int, int]]:
    """The ``count`` positions (sequence, position) of largest normalised error over the whole set (flagged
    positions excluded), worst first."""
    err = np.where(data["flag"] == FLAG_OK, data["normalised_error"], -np.inf)
    order = np.argsort(-err, axis=None, kind="stable")[:count]
    return [(int(i // err.shape[1]), int(i % err.shape[1])) for i in order if np.isfinite(err.flat[i])]


@torch.no_grad()
def attention_rows(subject: Subject, model: torch.nn.Module, x: torch.Tensor, source: int,
                   wanted: dict[int, list[int]]) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """For each sequence b in ``wanted`` and each of its positions t: the attention rows (over keys 0..t) of the
    layer's heads (block source+1) and of the forward model's first block, ``{"layer": (H, t+1), "forward": (Hf, t+1)}``;
    ``"layer"`` is None where the subject has no block parts (``subject.parts_unavailable``)."""
    rows = {}
    for b, positions in wanted.items():
        ids = x[b : b + 1].to(subject.device)
        layer = (subject.block_parts(ids, source + 1, attention=True)["attention"][0].cpu()  # (H, T, T)
                 if subject.parts_unavailable is None else None)
        src = subject.residuals(ids, [source])[source]
        _, patterns = model(src.float(), return_attention=True)
        forward = patterns[0][0].float().cpu()  # (Hf, T, T)
        for t in positions:
            rows[(b, t)] = {"layer": None if layer is None else layer[:, t, : t + 1].numpy(),
                            "forward": forward[:, t, : t + 1].numpy()}
    return rows


def save_arrays(path: Path, per_pair: dict[str, dict[str, np.ndarray]], categories: tuple[str, ...] = CATEGORIES) -> None:
    """Every pair's per-token arrays in one ``.npz`` (keys ``"<source>_<target>/<name>"``; the category bit order
    under ``category_names``), written atomically."""
    from selfmodels.artifacts import atomic_path

    arrays = {f"{name.replace('->', '_')}/{k}": v for name, data in per_pair.items() for k, v in data.items()}
    arrays["category_names"] = np.array(categories)
    arrays["modes"] = np.array(MODES)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
