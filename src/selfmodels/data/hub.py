"""The one door to the Hugging Face hub for datasets: offline detection and clear errors.

Every hub load in ``selfmodels.data`` goes through :func:`load_hub_dataset`, so that a missing network
always becomes the same kind of message (a :class:`HubUnavailable`, which is a ``UserError``).
"""

from __future__ import annotations

import os
from typing import Any

from selfmodels.errors import UserError

SOURCES = ("auto", "hub", "offline")
_TRUTHY = {"1", "on", "yes", "true"}


class HubUnavailable(UserError):
    """A hub dataset could not be loaded (no network, offline mode, unknown repository)."""


def hub_offline() -> bool:
    """True when the environment asks the Hugging Face libraries to stay offline."""
    return any(os.environ.get(name, "").strip().lower() in _TRUTHY for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def check_source(source: str) -> str:
    """Validate a ``source`` argument (``auto``, ``hub`` or ``offline``)."""
    if source not in SOURCES:
        raise UserError(f"unknown data source {source!r}: use one of {', '.join(SOURCES)}")
    return source


def use_hub_first(source: str) -> bool:
    """``hub`` always tries the hub; ``auto`` tries it unless offline mode is set; ``offline`` never."""
    check_source(source)
    return source == "hub" or (source == "auto" and not hub_offline())


def load_hub_dataset(repo: str, *args: Any, **kwargs: Any):
    """``datasets.load_dataset(repo, ...)``, with any failure to reach or find it as :class:`HubUnavailable`."""
    import datasets  # imported here: it is slow to import and offline runs never need it

    try:
        return datasets.load_dataset(repo, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the download boundary: network, auth, missing repo all end here
        mode = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
        raise HubUnavailable(
            f"could not load {repo!r} from the Hugging Face hub{mode}: {type(exc).__name__}: {exc}. "
            "Connect to the internet (and unset HF_HUB_OFFLINE), or use the offline source"
        ) from None
