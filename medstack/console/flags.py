"""The flags every ``medstack`` sub-command shares by name, built afresh for each parser.

argparse shares ``Action`` objects between parsers made with ``parents=[...]``: rewriting one command's ``-q`` help
rewrote every command's. Here each command adds its own actions and says what ``-q``/``-v`` do for it; a command
for which they would mean nothing does not take them.
"""

from __future__ import annotations

import argparse

from medstack.console.quiet import NORMAL, QUIET, VERBOSE


def add_common_flags(parser: argparse.ArgumentParser, *, quiet: str | None = None, verbose: str | None = None) -> None:
    """``--debug`` always; ``-q``/``-v`` (mutually exclusive, into ``verbosity``) only with their help for this command."""
    parser.set_defaults(verbosity=NORMAL)
    if quiet or verbose:
        noise = parser.add_mutually_exclusive_group()
        if verbose:
            noise.add_argument("-v", "--verbose", action="store_const", const=VERBOSE, dest="verbosity", help=verbose)
        if quiet:
            noise.add_argument("-q", "--quiet", action="store_const", const=QUIET, dest="verbosity", help=quiet)
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also MEDSTACK_DEBUG=1)")
