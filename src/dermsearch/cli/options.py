"""The flags several commands share, declared once each (argparse parent parsers), and the one
spelling of each: ``--device``, ``--json``, ``--quiet``, ``--labels``, ``--split``, ``--mode``; and
:func:`add_config_flags`, which declares the flags that set a config field from the field itself
(its type, choices, default and help: :mod:`dermsearch.config`), so none is written twice.

Nothing here imports numpy, torch or lancedb: building the parser must stay instant
(``dermsearch --help``); the command modules import what they need inside their handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Runtime, SearchConfig, choices_of, default_of, field_of, value_type
from .common import at_least, existing_dir, existing_file, number_in

__all__ = ["Common", "index_dir", "runtime_of", "add_config_flags", "optional", "given"]


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


class Common:
    """Parent parsers; pass the ones a command takes as ``parents=[...]``."""

    def __init__(self) -> None:
        self.device = _parent()
        add_config_flags(self.device, Runtime, ("device", "threads"))
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
        add_config_flags(self.mode, SearchConfig, ("mode", "max_checked"))


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


def add_config_flags(parser, config: type, names, *, flags: dict | None = None, optional: bool = False,
                     helps: dict | None = None, types: dict | None = None) -> None:
    """One flag per field of ``config`` in ``names``, all derived from the field: its type (``int``
    with a ``min`` checks it while parsing; a ``bool`` is ``--x`` when it defaults to off, ``--x/--no-x``
    when on, ``store_const False`` when spelled ``--no-x``), its choices, its default and its help
    with "(default X)". ``flags``: a spelling other than ``--field-name`` (a string or a tuple of
    them); ``optional``: absent means "the preset's or config's value" (default None, see :func:`given`);
    ``helps``/``types``: a flag's own help or argument type where the command line differs."""
    for name in names:
        spelling = (flags or {}).get(name) or "--" + name.replace("_", "-")
        spellings = (spelling,) if isinstance(spelling, str) else tuple(spelling)
        kwargs = _flag_kwargs(config, name, spellings[0], optional, (types or {}).get(name))
        text = (helps or {}).get(name) or field_of(config, name).metadata["help"]
        kwargs["help"] = _with_default(text, default_of(config, name), spellings[0]).replace("%", "%%")
        action = parser.add_argument(*spellings, dest=name, **kwargs)
        action.config_field = (config, name)     # what it sets: the tests compare the two


def _flag_kwargs(config, name: str, flag: str, optional: bool, kind) -> dict:
    default = default_of(config, name)
    unset = None if optional else default
    if value_type(config, name) is bool:
        if flag.startswith("--no-"):
            return {"action": "store_const", "const": False, "default": unset}
        if default is False:
            return {"action": "store_true", "default": unset}
        return {"action": argparse.BooleanOptionalAction, "default": unset}
    meta = field_of(config, name).metadata
    kwargs = {"default": unset}
    kind = kind or _parse_type(value_type(config, name), meta)
    if kind is not str:
        kwargs["type"] = kind
    if choices_of(config, name):
        kwargs["choices"] = (*[a for a in meta["also"] if a is not None], *meta["choices"])
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    return kwargs


def _parse_type(kind: type, meta):
    """The argument type of a field: bounded as the field is, so a value out of range is refused
    while parsing, naming the flag."""
    low, high = meta.get("min"), meta.get("max")
    if kind is int:
        return at_least(low, high=high) if low is not None else int
    if kind is float and any(meta.get(b) is not None for b in ("min", "max", "above", "below")):
        return number_in(low, high, meta.get("above"), meta.get("below"))
    return kind if kind in (float, str) else str


def _with_default(text: str, default, flag: str) -> str:
    """``text`` with "(default X)" unless it says its default already, or there is none to say."""
    if "(default" in text or "default:" in text or default in (None, "", ()) or flag.startswith("--no-"):
        return text
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, (list, tuple)):
        shown = " ".join(map(str, default))
    else:
        shown = f"{default:g}" if isinstance(default, float) else str(default)
    return f"{text} (default {shown})"
