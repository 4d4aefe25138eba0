"""selfmodels: self-modeling objectives, local learning coefficients and forward self-models.

The command parses arguments and calls the same functions a notebook would.

Each area registers its own subcommands from its command modules (``register(subparsers,
reproduce)``; listed in :data:`COMMAND_MODULES`), so this file only assembles them. A
:class:`~selfmodels.errors.UserError` anywhere becomes one message on stderr and exit status 2.

Building the parser imports no torch (the command modules import only settings, which are torch-free; the
work is imported when a command runs), so ``--help`` and bad flags answer at once (tests/test_cli.py checks it).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from selfmodels import __version__
from selfmodels.errors import UserError
from selfmodels.options import CommandParser as _Parser  # one-line errors (exit 2); --help states preset values

# The modules that contribute subcommands, in --help order.
COMMAND_MODULES = (
    "selfmodels.selfmodeling.commands",
    "selfmodels.selfmodeling.llc_commands",
    "selfmodels.forward.commands",
    "selfmodels.lm_selfmodeling.commands",
    "selfmodels.closed_loop.commands",
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser: every area's subcommands plus the ``reproduce`` group."""
    import importlib

    parser = _Parser(prog="selfmodels", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"selfmodels {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    reproduce_parser = commands.add_parser("reproduce", help="reproduce a paper's experiments end to end")
    reproduce = reproduce_parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", parser_class=_Parser)
    reproduce.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands, reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the process exit status (0 ok, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    from selfmodels import distributed  # torch: imported once a command runs, never for --help

    try:
        status = distributed.run_main(args.func, args)  # under torchrun: one process group, failures reach every rank
    except UserError as exc:
        print(f"selfmodels: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfmodels: interrupted; finished work is saved, run the same command again to resume", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
