"""Lazy package attributes (PEP 562): ``from dermsearch.search import Searcher`` works as before,
but importing a light submodule (``dermsearch.search.measures``) no longer loads the heavy ones
(torch, lancedb) that the package's other names need."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for a package whose names live in submodules:
    ``exports`` maps each public name to the submodule (relative, e.g. ``.searcher``) defining it."""

    def __getattr__(name: str):
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module, package), name)
        globals_of(package)[name] = value          # later lookups skip __getattr__
        return value

    def __dir__():
        return sorted(set(globals_of(package)) | set(exports))

    return __getattr__, __dir__


def globals_of(package: str) -> dict:
    import sys

    return vars(sys.modules[package])
