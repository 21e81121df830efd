"""The flags several commands share, declared once each (argparse parent parsers), and the one
spelling of each: ``--device``, ``--json``, ``--quiet``, ``--labels``, ``--split``, ``--mode``.

Nothing here imports numpy, torch or lancedb: building the parser must stay instant
(``dermsearch --help``); the command modules import what they need inside their handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..names import DEVICE_HELP, SEARCH_MODES
from .common import existing_dir, existing_file, positive_int

__all__ = ["Common", "index_dir", "runtime_of"]


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


class Common:
    """Parent parsers; pass the ones a command takes as ``parents=[...]``."""

    def __init__(self) -> None:
        self.device = _parent()
        self.device.add_argument("--device", default="auto", help=DEVICE_HELP + " (default auto)")
        self.device.add_argument("--threads", type=positive_int, default=None, metavar="N",
                                 help="threads for torch and ONNX Runtime (default: the cores)")
        self.json = _parent()
        self.json.add_argument("--json", action="store_true", help="print JSON instead of text")
        self.quiet = _parent()
        self.quiet.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        self.labels = _parent()
        self.labels.add_argument("--labels", required=True, type=existing_file, metavar="CSV",
                                 help="labels CSV (image_id, image_path, diagnosis, ...)")
        self.split = _parent()
        self.split.add_argument("--split", type=existing_file, metavar="CSV", help="image_id,split file "
                                "(e.g. ham10000/split.csv)")
        self.index = _parent()
        index_dir(self.index)
        self.mode = _parent()
        self.mode.add_argument("--mode", choices=SEARCH_MODES, default="exact",
                               help="exact (every byte of every row), fast (compressed vectors pick candidates, "
                                    "exact ones re-rank them; needs 'dermsearch optimize DIR'), certified (exact "
                                    "answers from an int8 first pass, proven per query); default exact")


def runtime_of(args: argparse.Namespace, **more):
    """The :class:`~dermsearch.runtime.Runtime` of a command given the ``device`` parent's flags,
    with ``more`` (e.g. an index build's batch size and backend)."""
    from ..runtime import Runtime

    return Runtime(device=args.device, threads=args.threads, **more)


def index_dir(parser: argparse.ArgumentParser) -> None:
    """The positional index directory that most commands act on."""
    parser.add_argument("index", type=existing_dir, metavar="DIR", help="an index directory")


def optional(parser: argparse.ArgumentParser, *flags: str, **kwargs) -> None:
    """A flag whose absence means "the config's default": its value is None unless given, so only
    flags given on the command line override a preset or a config (:func:`given`)."""
    parser.add_argument(*flags, default=None, **kwargs)


def given(args: argparse.Namespace, names) -> dict:
    """The flags among ``names`` given on the command line (value not None); paths as strings."""
    out = {}
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            out[name] = str(v) if isinstance(v, Path) else v
    return out
