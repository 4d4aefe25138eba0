"""The forward commands in a line from a notebook: ``selfmodels.forward.fit`` and ``selfmodels.forward.fit_profile``.

    import selfmodels
    subject = selfmodels.open_subject("smollm2")          # or a model object you hold, with its tokenizer
    fit = selfmodels.forward.fit(subject, source=7, target=8, preset="quick")
    fit.model          # the trained ForwardModel (what RUN_DIR/forward_model holds)
    fit.evaluation     # cosine beside the skip cosine, update R2, KL substituted / skipped, recovery

Each builds its settings as the command does (``forward train`` / ``forward profile``: the defaults < the preset < the
keyword arguments, each a setting's name, nested ones as dicts: ``train={"steps": 50}``) and runs the function the
command runs (:func:`selfmodels.forward.pipeline.run`, :func:`selfmodels.forward.profile.run`) into ``out`` (a new
temporary directory when not given), so a library run and a command-line run with the same settings are the same run
and resume each other. ``subject`` is a name (what ``--subject`` takes, ``gpt`` included: trained there) or anything
``selfmodels.open_subject`` takes (a model object is observed as it is, in its dtype and on its device).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from selfmodels.configs import from_dict, overlay
from selfmodels.subjects.base import Subject, parse_index


@dataclass
class ForwardFit:
    """A trained forward model and its evaluation on the held-out windows (``results``: all of ``results.json``)."""

    model: object  # ForwardModel, eval mode
    evaluation: dict
    results: dict = field(repr=False)
    out: Path

    def __repr__(self) -> str:
        e, r = self.evaluation, self.results
        return (f"ForwardFit({r['subject']['name']} {r['pair']['source']} -> {r['pair']['target']}: {e['params']:,} params, "
                f"cosine {e['cosine']:.4f} (skip {e['skip_cosine']:.4f}), update R2 {e['delta_r2']:.3f}, recovery "
                f"{e['recovery']:.3f} (KL sub {e['kl_substituted']:.4f}, skip {e['kl_skipped']:.4f}); out={self.out})")


@dataclass
class ProfileFit:
    """A whole-model profile: one row per layer pair (``results``: all of ``results.json``)."""

    rows: list[dict]
    results: dict = field(repr=False)
    out: Path

    def __repr__(self) -> str:
        lines = [f"ProfileFit({self.results['subject']['name']}, {len(self.rows)} pairs; out={self.out})"]
        lines += [f"  {row['source']:>3} -> {row['target']:<3} cosine {row['cosine']:.4f} (skip {row['skip_cosine']:.4f}, "
                  f"ridge {row['ridge_cosine']:.4f})  recovery {row['recovery']:.3f}" for row in self.rows]
        return "\n".join(lines)


def _held(subject) -> tuple[Subject | None, str]:
    """(the subject object or None, the name the config records): a name is opened by the pipeline, as the CLI does."""
    if isinstance(subject, str):
        return None, subject
    from selfmodels.subjects.held import as_subject

    held = as_subject(subject)
    # Our GPT's name would mean "train one here" to the pipeline; a GPT object the caller holds is observed instead.
    return held, held.name if held.name != "gpt" else "gpt (in memory)"


def _out(out: str | Path | None, prefix: str) -> Path:
    return Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=prefix))


def _corpus(corpus: str | dict) -> dict:
    return dict(corpus) if isinstance(corpus, dict) else {"corpus": str(corpus)}


def _device(held: Subject | None, device) -> str:
    return str(device) if device is not None else (str(held.device) if held is not None else "auto")


def fit(subject, source: int | str, target: int | str, *, corpus: str | dict = "offline", preset: str = "quick",
        out: str | Path | None = None, seed: int = 0, device=None, progress: bool = False, **settings) -> ForwardFit:
    """``selfmodels forward train``: one forward model on (source, target) of ``subject``, trained and evaluated.

    ``preset``: quick (CPU-sized, the default here) or full (the paper's); ``settings``: any field of
    :class:`~selfmodels.forward.config.RunConfig` (``train={"steps": 50}``, ``eval_sequences=8``, ...); ``corpus``: its
    name or path, or a dict of corpus settings (``{"corpus": "offline", "max_chars": 50_000}``); ``device``: where the
    forward model trains (default: the subject's device, or auto for a name)."""
    from selfmodels.forward.commands import _pipeline_command  # the command's own preset layering and adjustments
    from selfmodels.forward.config import RunConfig
    from selfmodels.forward.model import ForwardModel
    from selfmodels.forward.pipeline import run

    held, main = _held(subject)
    base = _pipeline_command("forward train", one_pair=True)._base(preset, main)
    given = {"source": parse_index(source), "target": parse_index(target), "seed": seed, "corpus": _corpus(corpus)}
    cfg = from_dict(RunConfig, overlay(overlay(base, given), settings))
    out = _out(out, "selfmodels-forward-")
    results = run(cfg, out, _device(held, device), progress, subject=held)
    model = ForwardModel.from_pretrained(out / "forward_model", subject=results["subject"])
    sub = results["substitution"]
    evaluation = {"params": results["forward_model"]["params"],
                  **{k: results[k] for k in ("cosine", "skip_cosine", "mse", "delta_cosine", "delta_r2")},
                  **{k: sub[k] for k in ("kl_substituted", "kl_skipped", "recovery", "ce_normal", "tokens")},
                  "ridge_recovery": results["ridge_map"]["recovery"],
                  "baseline_mlp_recovery": (results.get("baseline_mlp") or {}).get("recovery")}
    return ForwardFit(model, evaluation, results, out)


def fit_profile(subject, *, gap: int = 1, layers: list[int] | None = None, corpus: str | dict = "offline", preset: str = "quick",
                out: str | Path | None = None, seed: int = 0, device=None, progress: bool = False, **settings) -> ProfileFit:
    """``selfmodels forward profile``: a forward model for every layer pair (k, k + gap) of ``subject`` from one
    streaming run, each beside the skip and ridge baselines. ``settings``: any field of
    :class:`~selfmodels.forward.profile.ProfileConfig`."""
    from selfmodels.configs import to_dict
    from selfmodels.forward.profile import ProfileConfig, preset as profile_preset, run
    from selfmodels.errors import require

    require(preset in ("quick", "full"), f"unknown preset {preset!r}: known presets: full, quick")
    held, main = _held(subject)
    given = {"gap": gap, "layers": list(layers or []), "seed": seed, "corpus": _corpus(corpus)}
    cfg = from_dict(ProfileConfig, overlay(overlay(to_dict(profile_preset(main, preset == "quick")), given), settings))
    out = _out(out, "selfmodels-profile-")
    results = run(cfg, out, _device(held, device), progress, subject=held)
    return ProfileFit(results["rows"], results, out)
