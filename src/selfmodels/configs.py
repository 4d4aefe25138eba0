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
import typing
from typing import Any, TypeVar

from selfmodels.errors import UserError

T = TypeVar("T")


def option(default: Any, help: str, *, choices: typing.Sequence[Any] | None = None, cli: bool = True) -> Any:
    """A dataclass field with a help string (and optional choices) for the generated CLI."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "cli": cli}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


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


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--flag`` per CLI-visible field of dataclass ``cls`` (nested dataclasses recurse)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.metadata.get("cli", True):
            continue
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            add_arguments(parser, annotation, prefix=f"{prefix}{field.name}.")
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kwargs: dict[str, Any] = {"dest": (prefix + field.name).replace(".", "__"), "default": argparse.SUPPRESS}
        help_text = field.metadata.get("help", "")
        kwargs["help"] = f"{help_text} (default: {default})".replace("%", "%%")  # argparse %-formats help
        if field.metadata.get("choices"):
            kwargs["choices"] = field.metadata["choices"]
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _scalar_type(annotation)
            if typing.get_origin(annotation) in (list, tuple):
                kwargs["nargs"] = "+"
        parser.add_argument(_flag(field.name, prefix), **kwargs)


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
