"""The index: sources (reader), the build pipeline, and the LanceDB store (writer)."""

from .._lazy import lazy_exports

_EXPORTS = {name: ".store" for name in
            ("FORMAT", "Index", "IndexDirectoryError", "IndexLockedError", "ModelMismatchError", "Snapshot")}
_EXPORTS["Record"] = ".records"
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
