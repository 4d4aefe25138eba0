"""Named entries of an extension point: the one shape every registry of the package has.

The extension points (forward-model architectures, baselines, metrics, the self-modeling controls of classifiers
and of language models) each keep one :class:`Registry`; ``docs/extending.md`` walks through adding to each. An
entry is registered under a name, looked up by it (an unknown name is a UserError listing the registered ones) and
listed in the order of registration, which is the order reports show them in.

An entry may be given as ``"module:attribute"`` (:func:`resolve`), imported when first used: the built-in entries
of the registries that the command line reads are named that way, so that knowing the names (validation, --help)
imports no torch, as Hugging Face's auto classes name theirs. Importing nothing, this module sits in the foundation.
"""

from __future__ import annotations

import importlib
from typing import Any, Generic, Iterator, TypeVar

from selfmodels.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """``what``: how messages name an entry (e.g. "forward-model architecture")."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Add ``entry`` under ``name``; a second entry of the same name needs ``replace=True``."""
        if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise UserError(f"a {self.what}'s name is letters, digits, '-' and '_', got {name!r}")
        if name in self._entries and not replace:
            raise UserError(f"{self.what} {name!r} is already registered (pass replace=True to redefine it)")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> T:
        """Take ``name``'s entry out (e.g. a test's toy entry when it is done); returns it."""
        entry = self.get(name)  # an unknown name: the lookup's message
        del self._entries[name]
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UserError(f"unknown {self.what} {name!r}; registered: {', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:  # the names: a registry serves as an argparse ``choices``, read when used
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"


def resolve(path: Any) -> Any:
    """``"package.module:attribute.inner"`` imported and looked up; anything else is returned as it is."""
    if not isinstance(path, str):
        return path
    module, _, attribute = path.partition(":")
    found = importlib.import_module(module)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found
