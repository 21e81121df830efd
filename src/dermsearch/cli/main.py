"""The ``dermsearch`` command: a thin layer over the Python API (Index, Searcher, Evaluator).

One module per command group (``cmd_index``, ``cmd_search``, ``cmd_evaluate``, ``cmd_train``,
``serve``); shared flags are declared once (``options``). Building the parser imports no network
or database library, so ``dermsearch --help`` is instant; each handler imports what it uses.

Errors, one contract: a problem the user can fix prints ONE line, ``dermsearch COMMAND: error:
...`` naming the thing and what to do, and exits 2. Paths and numbers are checked while the
command line is parsed (``common``'s argument types), before any work runs; what only the work can
find raises a :class:`~dermsearch.errors.DermsearchError`, printed the same way with its
``exit_code`` (2; 3 for a missing optional extra). An ``OSError`` on a path given on the command
line, or on a file inside or beside one (a folder that cannot be written, a full disk, a file
removed while the command ran), is printed the same way too, naming that path, exit 2
(:func:`user_path_error`). Anything else is a bug and shows its traceback. Exit 1 means "ran, and
found problems" (``index --check``). :func:`main` returns the exit code in every case (parse errors
included), so a caller may run it in-process.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

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


def _name_commands(parser: argparse.ArgumentParser) -> None:
    """Give each command's namespace its whole name (``train classifier``, ``token create``): the
    prefix of its one-line errors, as argparse's own usage errors have it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(command_name=sub.prog.removeprefix("dermsearch "))
                _name_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="dermsearch", description="Reverse image search for dermoscopic images.")
    p.add_argument("--version", action="version", version=f"dermsearch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    common = Common()
    for group in GROUPS:
        group.register(sub, common)
    _show_defaults(p)
    _name_commands(p)
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

        err.print(f"dermsearch {args.command_name}: error: {e}", highlight=False)
        return e.exit_code
    except OSError as e:
        message = user_path_error(e, args)
        if message is None:
            raise
        from .common import err

        err.print(f"dermsearch {args.command_name}: error: {message}", highlight=False)
        return 2
    except KeyboardInterrupt:
        from .common import err

        err.print("interrupted; committed rows are kept, rerun the command to resume")
        return 130


def _given_paths(args: argparse.Namespace) -> list[Path]:
    """The paths on the command line: the values the argument types made :class:`Path` objects."""
    paths = []
    for value in vars(args).values():
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(v, Path):
                paths.append(v)
    return paths


def user_path_error(error: OSError, args: argparse.Namespace) -> str | None:
    """The one line for ``error`` when it concerns a path given on the command line: the path
    itself, a file inside it (an index's own files) or beside it (the temporary file a write goes
    through first, ``.NAME.tmp-...`` or ``NAME.tmp-...``); None otherwise (a bug: the traceback shows)."""
    named = [str(f) for f in (error.filename, error.filename2) if f]
    # some libraries (pyarrow) put the path in the message only
    named += re.findall(r"'(/[^']+)'", str(error)) if not named else []
    code = error.errno or next((int(n) for n in re.findall(r"\[errno (\d+)\]", str(error), flags=re.I)), None)
    reason = os.strerror(code) if code else (error.strerror or str(error))
    for given in _given_paths(args):
        target = Path(os.path.abspath(given))
        for name in named:
            path = Path(os.path.abspath(name))
            inside = path == target or target in path.parents
            beside = path.parent == target.parent and path.name.lstrip(".").startswith(target.name + ".tmp")
            if inside or beside:
                shown = name if inside and path != target else str(given)
                return f"{shown}: {reason}; check the path, its permissions and the free space there"
    return None


if __name__ == "__main__":
    sys.exit(main())
