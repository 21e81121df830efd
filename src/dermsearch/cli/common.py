"""What every command handler shares: the stderr console, the usage error (exit 2), and the
argument types that check paths and numbers while the command line is parsed, before any work
runs (a missing file, a file where a folder belongs, an output folder that does not exist, a
number out of range: one line and exit 2, never a traceback after minutes of work)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.text import Text

from ..errors import ConfigError

__all__ = ["err", "UsageError", "emit", "tagged", "existing_file", "existing_dir", "existing_folder", "existing_path",
           "folder_to_write", "file_to_write", "at_least", "positive_int", "count", "positive_float", "number_in",
           "check_port_free"]

# markup off: messages carry file names, ids and reasons from the data, printed as they are; a coloured
# prefix is built with ``tagged``, never by interpolating data into markup
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def tagged(prefix: str, style: str, text: object) -> Text:
    """``prefix`` in ``style``, a space, then ``str(text)`` verbatim (brackets, backslashes and all)."""
    return Text.assemble((prefix, style), " ", str(text))


class UsageError(ConfigError):
    """A command given options it cannot work with; the CLI prints the message and exits 2."""


def emit(rows: dict, as_json: bool, line) -> None:
    """Print ``rows`` (name -> figures) as one JSON object, or one ``line(name, figures)`` each."""
    import json

    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        for name, figures in rows.items():
            print(line(name, figures))


# ------------------------------------------------------------------ argument types (argparse ``type=``)
def _bad(message: str):
    return argparse.ArgumentTypeError(message)


def existing_file(text: str) -> Path:
    """A file to read: it exists and is a file."""
    path = Path(text)
    if not path.exists():
        raise _bad(f"{text}: no such file; check the path")
    if not path.is_file():
        raise _bad(f"{text} is a folder, not a file; give the file's path")
    return path


def _folder(text: str, missing: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise _bad(f"{text}: no such folder; {missing}")
    if not path.is_dir():
        raise _bad(f"{text} is a file, not a folder; give the folder's path")
    return path


def existing_dir(text: str) -> Path:
    """A folder to read (an index, a run directory): it exists and is a folder."""
    return _folder(text, f"check the path (an index is made with 'dermsearch index SOURCE --index {text}')")


def existing_folder(text: str) -> Path:
    """A folder to read that is not an index (e.g. the image files of a CSV): it exists and is a folder."""
    return _folder(text, "check the path")


def existing_path(text: str) -> Path:
    """A file or a folder to read (an index's source: a folder of images or a labels CSV)."""
    path = Path(text)
    if not path.exists():
        raise _bad(f"{text}: no such file or folder; check the path")
    return path


def _no_file_on_the_way(path: Path, text: str) -> None:
    for above in path.parents:
        if above.exists():
            if not above.is_dir():
                raise _bad(f"{text}: {above} is a file, not a folder; choose another path")
            return


def folder_to_write(text: str) -> Path:
    """A folder to create or add to: not an existing file, and no file where a folder on its path belongs."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise _bad(f"{text} is a file, not a folder; give a folder path (it is created when missing)")
    _no_file_on_the_way(path, text)
    return path


def export_folder(text: str) -> Path:
    """A folder an export replaces as a whole (resolved, so ``.`` works): missing, empty or an
    earlier export (it holds ``onnx.json``); any other folder is refused, never emptied."""
    path = folder_to_write(text).resolve()
    if path.is_dir() and any(path.iterdir()) and not (path / "onnx.json").is_file():
        raise _bad(f"{text} is a folder with other files in it (no onnx.json: not an earlier export), and the "
                   "export replaces the whole folder; give a new or empty folder")
    return path


def file_to_write(text: str) -> Path:
    """A file to (over)write: not a folder, and its folder exists (checked before the work runs)."""
    path = Path(text)
    if path.is_dir():
        raise _bad(f"{text} is a folder, not a file; give a file path")
    parent = path.parent
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise _bad(f"{text}: the folder {parent} {what}; create it first or choose another path")
    return path


def at_least(low: int, what: str = "a whole number", high: int | None = None):
    """An int type that refuses values below ``low`` (and above ``high`` when given)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _bad(f"{text!r} is not {what}") from None
        if value < low:
            raise _bad(f"must be at least {low}, not {value}")
        if high is not None and value > high:
            raise _bad(f"must be at most {high}, not {value}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


positive_int = at_least(1)
count = at_least(0)          # 0 allowed (e.g. -k 0: every candidate; --limit 0: no limit)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _bad(f"{text!r} is not a number") from None
    if not value > 0:
        raise _bad(f"must be above 0, not {text}")
    return value


def number_in(low=None, high=None, above=None, below=None):
    """A float type that refuses values outside ``[low, high]`` / ``(above, below)`` (those given)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _bad(f"{text!r} is not a number") from None
        bad = ((low is not None and not value >= low) or (high is not None and not value <= high)
               or (above is not None and not value > above) or (below is not None and not value < below))
        if bad:
            lo = f"[{low:g}" if low is not None else f"({above:g}" if above is not None else "(-inf"
            hi = f"{high:g}]" if high is not None else f"{below:g})" if below is not None else "inf)"
            raise _bad(f"must be in {lo}, {hi}, not {text}")
        return value

    parse.__name__ = "number"
    return parse


def check_port_free(host: str, port: int, flag: str = "--port") -> None:
    """Raise :class:`UsageError` (exit 2) when ``host:port`` cannot be bound here (in use, or not
    this machine's address), before a server announces it is serving there."""
    import errno
    import socket

    if not 0 <= port <= 65535:
        raise UsageError(f"{flag} {port}: a port is 0..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: not an address of this machine ({e.strerror}); give an interface "
                         "address, e.g. 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as uvicorn binds
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(f"{flag} {port}: the port is in use on {host}; stop what uses it or give "
                                 f"another {flag}") from None
            raise UsageError(f"{flag} {port} on {host}: cannot bind ({e.strerror}); choose another port or "
                             "--host") from None
