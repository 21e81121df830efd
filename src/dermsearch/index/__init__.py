"""The index: sources (reader), the build pipeline, and the LanceDB store (writer)."""

from .store import FORMAT, Index, IndexError_, IndexLockedError, ModelMismatchError, Record, Snapshot

__all__ = ["FORMAT", "Index", "IndexError_", "IndexLockedError", "ModelMismatchError", "Record", "Snapshot"]
