"""Dataclass configs whose field help becomes ``--help``.

Declare fields with :func:`option` so the help text lives beside the field::

    @dataclass
    class OptimConfig:
        lr: float = option(0.005, "learning rate")

:func:`add_arguments` mirrors a dataclass onto an argparse parser, :func:`from_args` builds it back,
:func:`to_dict` / :func:`from_dict` round-trip it through JSON. Validation lives in each config's
``validate()`` method, which raises :class:`~selfmodels.errors.UserError` and never rewrites a field.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any, TypeVar

from selfmodels.errors import UserError

T = TypeVar("T")


def option(default: Any, help: str, *, choices: typing.Sequence[Any] | None = None, cli: bool = True) -> Any:
    """A dataclass field with a help string (and optional choices) for the generated CLI. ``choices`` may be a live
    collection (a :class:`selfmodels.registries.Registry`): it is read when a command line is parsed, so entries
    registered after this field was defined are accepted too."""
    meta = {"help": help, "choices": (tuple(choices) if isinstance(choices, (list, tuple)) else choices) if choices else None,
            "cli": cli}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class OptimizerSettings:
    """The AdamW settings every trainer of the package shares (our GPT, forward models, the self-modeling LMs): steps
    of ``batch_size`` sequences, learning rate, decoupled weight decay on matrices, gradient-norm clip. A trainer's
    config extends it (its own defaults, its cadence of logs and checkpoints)."""

    steps: int = option(10_000, "optimizer steps")
    batch_size: int = option(64, "sequences per step")
    lr: float = option(1e-3, "learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay (matrices only)")
    grad_clip: float = option(1.0, "gradient-norm clip")

    def validate(self, what: str = "") -> None:
        """``what`` names the trainer in the messages (e.g. "forward ")."""
        from selfmodels.errors import require

        require(self.steps >= 1, f"{what}--steps must be at least 1, got {self.steps}")
        require(self.batch_size >= 1, f"{what}--batch-size must be at least 1, got {self.batch_size}")
        require(self.lr > 0, f"{what}--lr must be positive, got {self.lr}")


def _flag(name: str, prefix: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _scalar_type(annotation: Any) -> Any:
    """int / float / str for an annotation, unwrapping Optional and list element types."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0])
    if origin in (list, tuple):
        return _scalar_type(typing.get_args(annotation)[0])
    return annotation


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "", *, exclude: typing.Collection[str] = (),
                  groups: bool = False, _group: Any = None) -> None:
    """Add one ``--flag`` per CLI-visible field of dataclass ``cls`` (nested dataclasses recurse).

    ``exclude``: dotted field names (``train.steps``) that get no flag. ``groups``: each nested dataclass's
    flags go in their own ``--help`` section, titled by its prefix and its docstring's first line. Every
    action records its field (``action.field``, dotted) and its help without a default (``action.base_help``),
    so that :func:`show_defaults` can state the values a preset or a config file would give."""
    hints = typing.get_type_hints(cls)
    target = _group if _group is not None else parser
    if groups and _group is None:
        doc = (cls.__doc__ or "").strip().splitlines()
        target = parser.add_argument_group("settings", doc[0] if doc else None)
    for field in dataclasses.fields(cls):
        dotted = prefix + field.name
        if not field.metadata.get("cli", True) or dotted in exclude:
            continue
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            group = None
            if groups:
                doc = (annotation.__doc__ or "").strip().splitlines()
                group = parser.add_argument_group(f"--{dotted.replace('_', '-')}.*", doc[0] if doc else None)
            add_arguments(parser, annotation, prefix=f"{dotted}.", exclude=exclude, groups=groups, _group=group)
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kwargs: dict[str, Any] = {"dest": dotted.replace(".", "__"), "default": argparse.SUPPRESS,
                                  "metavar": field.name.upper()}
        help_text = field.metadata.get("help", "")
        kwargs["help"] = f"{help_text} (default: {show_value(default)})".replace("%", "%%")  # argparse %-formats help
        if field.metadata.get("choices"):
            kwargs["choices"] = field.metadata["choices"]
            kwargs.pop("metavar")
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs.pop("metavar", None)
        else:
            kwargs["type"] = _scalar_type(annotation)
            if typing.get_origin(annotation) in (list, tuple):
                kwargs["nargs"] = "*"  # an empty list is a value too (--gaps with nothing: no sweep)
        action = target.add_argument(_flag(field.name, prefix), **kwargs)
        action.field, action.base_help = dotted, help_text


def show_value(value: Any) -> str:
    """A value as ``--help`` states it: lists space-separated (as typed), None as none."""
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "[]"
    return str(value)


def lookup(data: dict, dotted: str) -> Any:
    """``data["a"]["b"]`` for ``a.b``; KeyError when absent."""
    for part in dotted.split("."):
        data = data[part]
    return data


def show_defaults(parser: argparse.ArgumentParser, values: dict) -> None:
    """Restate every recorded action's default as the value ``values`` (a nested dict) gives its field."""
    for action in parser._actions:
        field = getattr(action, "field", None)
        if field is None:
            continue
        try:
            value = lookup(values, field)
        except (KeyError, TypeError):
            continue
        action.help = f"{action.base_help} (default: {show_value(value)})".replace("%", "%%")


def overlay(base: dict, over: dict, where: str = "") -> dict:
    """``over`` laid over ``base`` (nested dicts merged key by key); a key ``base`` lacks is a :class:`UserError`
    naming it (dotted) and the keys known there."""
    out = dict(base)
    for key, value in over.items():
        name = f"{where}{key}"
        if key not in base:
            known = ", ".join(sorted(base)) or "none"
            raise UserError(f"unknown key {name!r}; known{' under ' + where.rstrip('.') if where else ''}: {known}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"{name!r} must be a table of settings ({', '.join(sorted(base[key]))}), got {value!r}")
            out[key] = overlay(base[key], value, f"{name}.")
        else:
            out[key] = value
    return out


def validate(config: Any, prefix: str = "") -> None:
    """``config.validate()``, nested configs first, so that a nested config's message names the flag a user types.

    A nested config's own ``validate()`` names its fields as ``--steps``; run from here, the message says
    ``--train.steps`` (the flag of that field under its prefix). Methods that need arguments are left to
    the code that has them."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        if dataclasses.is_dataclass(hints[field.name]):
            validate(getattr(config, field.name), f"{prefix}{field.name}.")
    method = getattr(config, "validate", None)
    if method is None or _takes_arguments(method):
        return
    try:
        method()
    except UserError as exc:
        if not prefix:
            raise
        message = str(exc)
        for field in dataclasses.fields(config):
            name = field.name.replace("_", "-")
            message = re.sub(rf"(?<![\w.-])--{re.escape(name)}(?![\w-])", _flag(field.name, prefix), message)
        raise UserError(message) from None


def _takes_arguments(method: Any) -> bool:
    import inspect

    return any(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in inspect.signature(method).parameters.values())


def from_args(cls: type[T], args: argparse.Namespace, prefix: str = "", base: T | None = None) -> T:
    """Build ``cls`` from parsed arguments; fields not given on the command line keep ``base``'s values."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    given = vars(args)
    for field in dataclasses.fields(cls):
        current = getattr(base, field.name) if base is not None else dataclasses.MISSING
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            values[field.name] = from_args(annotation, args, f"{prefix}{field.name}.", None if current is dataclasses.MISSING else current)
            continue
        key = (prefix + field.name).replace(".", "__")
        if key in given:
            value = given[key]
            values[field.name] = list(value) if isinstance(value, tuple) else value
        elif current is not dataclasses.MISSING:
            values[field.name] = current
    return cls(**values)


def to_dict(config: Any) -> dict:
    """A JSON-ready dict of a (nested) dataclass config."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a (nested) dataclass from :func:`to_dict` output; unknown keys are a :class:`UserError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}")
    values = {}
    for name, value in data.items():
        annotation = hints[name]
        values[name] = from_dict(annotation, value) if dataclasses.is_dataclass(annotation) and isinstance(value, dict) else value
    return cls(**values)
