"""Subcommands of the ``forward`` area (filled in by that area's work)."""

import argparse


def register(commands: argparse._SubParsersAction, reproduce: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``selfmodels`` and its experiments to ``selfmodels reproduce``."""
