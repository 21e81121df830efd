"""How a config field is declared: its default, its help text, and what values it takes (a choice
from a tuple in :mod:`dermsearch.names`, or a range), all beside the field in its metadata. One
generic check (:func:`check_fields`) enforces the choices and ranges of every config class, and the
command line builds its flags from the same metadata (``cli/options.add_config_flags``), so a
default, a choice list or a help text is written once.

Imports only the standard library and :mod:`dermsearch.errors`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError

__all__ = ["setting", "choice", "check_fields", "default_of", "field_of", "help_of", "choices_of", "value_type"]

_BOUNDS = ("min", "max", "above", "below", "multiple_of")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            metavar: str | None = None, **bounds) -> Any:
    """A config field with its help text and, optionally, bounds on its value: ``min``/``max``
    (inclusive), ``above``/``below`` (exclusive), ``multiple_of``. ``None`` always passes (unset)."""
    unknown = set(bounds) - set(_BOUNDS)
    if unknown or not help:
        raise TypeError(f"setting(): unknown bounds {sorted(unknown)}" if unknown else "setting(): help is required")
    meta = {"help": help, **bounds, **({"metavar": metavar} if metavar else {})}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def choice(values: tuple, default: Any, help: str, *, also: tuple = (), metavar: str | None = None) -> Any:
    """A config field whose value is one of ``values`` (a tuple from :mod:`dermsearch.names`) or of
    ``also`` (values with a special meaning beside them, e.g. ``"auto"`` or ``None``)."""
    meta = {"help": help, "choices": tuple(values), "also": tuple(also), **({"metavar": metavar} if metavar else {})}
    return dataclasses.field(default=default, metadata=meta)


def check_fields(config) -> None:
    """Raise :class:`ConfigError` naming the first field whose value is not among its choices or
    outside its bounds (what :func:`choice` and :func:`setting` declared)."""
    for f in dataclasses.fields(config):
        meta, value = f.metadata, getattr(config, f.name)
        if "choices" in meta:
            allowed = (*meta["also"], *meta["choices"])
            if value not in allowed:
                raise ConfigError(f"{f.name} must be one of {', '.join(map(str, allowed))}, not {value!r}")
        elif value is not None and any(b in meta for b in _BOUNDS):
            _check_bounds(f.name, value, meta)


def _check_bounds(name: str, value, meta) -> None:
    low, high = meta.get("min"), meta.get("max")
    above, below = meta.get("above"), meta.get("below")
    bad = ((low is not None and value < low) or (high is not None and value > high)
           or (above is not None and not value > above) or (below is not None and not value < below))
    if bad:
        lo = f"[{low}" if low is not None else (f"({above}" if above is not None else None)
        hi = f"{high}]" if high is not None else (f"{below})" if below is not None else None)
        if lo and hi:
            raise ConfigError(f"{name} must be in {lo}, {hi}, not {value}")
        raise ConfigError(f"{name} must be at least {low}, not {value}" if low is not None
                          else f"{name} must be above {above}, not {value}" if above is not None
                          else f"{name} must be at most {high}, not {value}" if high is not None
                          else f"{name} must be below {below}, not {value}")
    step = meta.get("multiple_of")
    if step and value % step:
        raise ConfigError(f"{name} must be a multiple of {step}, not {value}")


def field_of(config, name: str) -> dataclasses.Field:
    """The field ``name`` of a config class (or instance)."""
    for f in dataclasses.fields(config):
        if f.name == name:
            return f
    raise KeyError(f"{getattr(config, '__name__', type(config).__name__)} has no field {name!r}")


def default_of(config, name: str):
    """The class default of field ``name`` (from its default or its factory)."""
    f = field_of(config, name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def help_of(config, name: str) -> str:
    return field_of(config, name).metadata.get("help", "")


def choices_of(config, name: str) -> tuple | None:
    """The choices of field ``name`` (the :mod:`dermsearch.names` tuple), or None: not a choice."""
    return field_of(config, name).metadata.get("choices")


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def value_type(config, name: str) -> type:
    """The type of field ``name``'s values (``int``, ``float``, ``str``, ``bool``, ``tuple``...), from
    its annotation with ``None`` left out; a ``Literal``'s values give their own type."""
    hint = _hints(config if isinstance(config, type) else type(config))[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return type(typing.get_args(hint)[0])
    return typing.get_origin(hint) or hint
