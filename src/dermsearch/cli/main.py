"""The ``dermsearch`` command: a thin layer over the Python API (Index, Searcher, Evaluator).

One module per command group (``cmd_index``, ``cmd_search``, ``cmd_evaluate``, ``cmd_train``,
``serve``); shared flags are declared once (``options``). Building the parser imports no network
or database library, so ``dermsearch --help`` is instant; each handler imports what it uses.

Errors: a :class:`~dermsearch.errors.DermsearchError` (bad input, a missing file, an index of
another model) prints its message and exits with its ``exit_code`` (2; 3 for a missing optional
extra); anything else is a bug and shows its traceback. Exit 1 means "ran, and found problems"
(``index --check``).
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dermsearch", description="Reverse image search for dermoscopic images.")
    p.add_argument("--version", action="version", version=f"dermsearch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    common = Common()
    for group in GROUPS:
        group.register(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
