"""Reader leases: which versions of an index are in use, so that housekeeping never deletes them.

A reader that works on one version (a :class:`~dermsearch.search.Searcher`, a Dask worker that may
reload its shard of that version) holds a lease: a small file ``DIR/readers/<host>-<pid>-<n>.json``
naming the version, written atomically and removed when the reader lets go (or its process ends).
``dermsearch compact`` removes only versions older than every live lease.

A lease is live when its process still runs (same host), or, for a reader on another host (a
shared file system), when its file was written less than ``stale_after`` seconds ago; leases of
processes that died on this host are removed when they are seen.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
import weakref
from pathlib import Path

from ..io import write_json

__all__ = ["Lease", "held_versions", "READERS"]

READERS = "readers"
_COUNTER = itertools.count()
_LOCK = threading.Lock()


def _write(path: Path, record: dict) -> None:
    write_json(path, record, indent=None)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


class Lease:
    """Holds ``version`` of the index in ``directory`` until :meth:`release` (or garbage
    collection, or the end of the process). On a read-only directory it holds nothing (and
    says so in :attr:`held`): nobody can compact such an index either."""

    def __init__(self, directory: str | os.PathLike, version: int):
        with _LOCK:
            n = next(_COUNTER)
        self.path = Path(directory) / READERS / f"{socket.gethostname()}-{os.getpid()}-{n}.json"
        self.version = None
        self.held = False
        self._finalizer = weakref.finalize(self, _remove, self.path)
        self.move(version)

    def move(self, version: int) -> None:
        """Hold ``version`` instead (a reader that refreshed to a newer version)."""
        self.version = int(version)
        try:
            self.path.parent.mkdir(exist_ok=True)
            _write(self.path, {"version": self.version, "host": socket.gethostname(), "pid": os.getpid(),
                               "since": time.time()})
            self.held = True
        except OSError:
            self.held = False

    def release(self) -> None:
        self._finalizer()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                 # another user's process: it exists
        return True
    return True


def held_versions(directory: str | os.PathLike, stale_after: float = 24 * 3600) -> list[int]:
    """The versions live leases hold (sorted, with repeats removed)."""
    folder = Path(directory) / READERS
    host, now, held = socket.gethostname(), time.time(), set()
    try:
        files = [f for f in folder.iterdir() if f.suffix == ".json" and not f.name.startswith(".")]
    except OSError:
        return []
    for f in files:
        try:
            record = json.loads(f.read_text())
            version, pid, where = int(record["version"]), int(record["pid"]), record["host"]
            age = now - f.stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            continue                        # removed meanwhile, or half-written by a crash: not a lease
        if where == host:
            if not _alive(pid):
                _remove(f)
                continue
        elif age > stale_after:
            continue
        held.add(version)
    return sorted(held)
