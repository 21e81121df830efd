"""The ``dermsearch`` command: a thin layer over the Python API (Index, Searcher, Evaluator).

One module per command group (``cmd_index``, ``cmd_search``, ``cmd_evaluate``, ``cmd_train``,
``serve``); shared flags are declared once (``options``). Building the parser imports no network
or database library, so ``dermsearch --help`` is instant; each handler imports what it uses.

Errors, one contract: a problem the user can fix prints ONE line, ``dermsearch COMMAND: error:
...`` naming the thing and what to do, and exits 2. Paths and numbers are checked while the
command line is parsed (``common``'s argument types), before any work runs; what only the work can
find raises a :class:`~dermsearch.errors.DermsearchError`, printed the same way with its
``exit_code`` (2; 3 for a missing optional extra). Anything else is a bug and shows its
traceback. Exit 1 means "ran, and found problems" (``index --check``). :func:`main` returns the
exit code in every case (parse errors included), so a caller may run it in-process.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import DermsearchError
from . import cmd_evaluate, cmd_export, cmd_index, cmd_search, cmd_train, serve
from .options import Common

__all__ = ["main", "build_parser"]

GROUPS = (cmd_index, cmd_search, cmd_evaluate, cmd_train, serve, cmd_export)


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: a usage error is one line and exit 2 (argparse
    itself prints the whole usage first). Subcommand parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append "(default X)" to the help of every option with a default its help does not state
    already, in every subcommand: ``--help`` shows each default, written down once (in the flag
    or, through it, in the config it comes from)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)
            continue
        default = action.default
        if (not action.option_strings or default in (None, False, [], argparse.SUPPRESS)
                or action.help == argparse.SUPPRESS or "default" in (action.help or "")):
            continue
        shown = (" ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)).replace("%", "%%")
        action.help = f"{action.help} (default {shown})" if action.help else f"default {shown}"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="dermsearch", description="Reverse image search for dermoscopic images.")
    p.add_argument("--version", action="version", version=f"dermsearch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    common = Common()
    for group in GROUPS:
        group.register(sub, common)
    _show_defaults(p)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:       # --help, --version (0) or a usage error (2, printed already)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.handler(args)
    except DermsearchError as e:
        from .common import err

        err.print(f"dermsearch {args.command}: error: {e}", highlight=False)
        return e.exit_code
    except KeyboardInterrupt:
        from .common import err

        err.print("interrupted; committed rows are kept, rerun the command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
