"""The errors dermsearch raises for problems a user can fix (bad input, a missing file, an index
built with another model). They share one base class, :class:`DermsearchError`, so a caller (the
CLI, the web app) can tell them from programming errors: the CLI prints a :class:`DermsearchError`'s
message and exits with its ``exit_code``; anything else still shows its traceback.

Each class also derives from the builtin that fits (``ValueError``, ``FileNotFoundError``, ...),
so ``except ValueError`` keeps working. Messages speak of the API's own terms (settings, files,
ids), never of command-line flags: the CLI adds those.
"""

from __future__ import annotations

__all__ = ["DermsearchError", "ConfigError", "NotFoundError", "MissingExtraError", "require", "install_hint"]


class DermsearchError(Exception):
    """Base of every error a user can act on. ``exit_code``: what the CLI exits with (2, as for
    a usage error; 3 for a missing extra; 1 stays "the command ran and found problems")."""

    exit_code = 2


class ConfigError(DermsearchError, ValueError):
    """A setting or argument that cannot work (unknown name, out of range, inconsistent)."""


class NotFoundError(DermsearchError, KeyError):
    """A named thing (an image id, a preset, a measure) that does not exist."""

    def __str__(self) -> str:        # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingExtraError(DermsearchError, ImportError):
    """An optional part of dermsearch whose dependencies are not installed."""

    exit_code = 3


def install_hint(extra: str) -> str:
    """How to install an extra, in the words the docs use (docs/usage.md, "Installing"): from a
    clone, or from a built wheel. dermsearch is not on a package index."""
    from . import __version__

    return (f"pip install -e '.[{extra}]' in a clone of dermsearch, or "
            f"pip install 'dist/dermsearch-{__version__}-py3-none-any.whl[{extra}]' from a built wheel")


def require(module: str, extra: str, purpose: str):
    """Import ``module``, or raise :class:`MissingExtraError` naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{purpose} needs the '{extra}' extra ({module} is not installed): "
                                f"{install_hint(extra)}") from e
