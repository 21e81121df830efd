"""Atomic writes: a file or a directory is either its old self or its complete new self, never half.

Every write goes to a temporary name beside its target (the same directory, so the same file
system), is flushed to disk (``fsync``), renamed over the target (``os.replace``: atomic on POSIX)
and the parent directory is flushed too, so the rename itself survives a power cut. If anything
fails before the rename, the temporary is removed and the target is untouched.

- :func:`write_bytes`, :func:`write_text`, :func:`write_json`: whole files from memory.
- :func:`atomic_path`: a temporary path for writers that take a file name (safetensors, numpy, ONNX);
  :func:`replace_file`: a file finished under another name (e.g. a resumable partial) moved into place.
- :func:`replace_dir`: a finished temporary directory renamed over a directory (its files flushed first);
  :func:`temp_dir_for` names such a directory.

Imports nothing of dermsearch: every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["write_bytes", "write_text", "write_json", "atomic_path", "replace_file", "replace_dir", "temp_dir_for",
           "fsync_dir"]


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk; a no-op where directories
    cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:        # some file systems do not flush directories: the rename is still atomic
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    # hidden (listings that skip dot files never see it), unique per process and call (concurrent writers)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def replace_file(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make the finished file ``tmp`` (in ``path``'s directory) the file ``path``: flushed, renamed over
    ``path``, the directory flushed. Returns ``path``."""
    path = Path(path)
    _fsync_file(Path(tmp))
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an exception it is
    flushed, given ``mode`` (permission bits) if set and renamed to ``path``, and the directory is
    flushed. On an exception the temporary is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        replace_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); ``mode``: the file's
    permission bits (default: as a new file gets them). Returns the path."""
    path = Path(path)
    with atomic_path(path, mode) as tmp:
        # created with the final mode, so a restrictive file is never readable by others, even briefly
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return path


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", mode: int | None = None) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode(encoding), mode)


def write_json(path: str | os.PathLike, obj, indent: int | None = 1, sort_keys: bool = False,
               mode: int | None = None) -> Path:
    """Write ``obj`` as JSON (``json.dumps`` with ``indent`` and ``sort_keys``) to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys), mode=mode)


def temp_dir_for(target: str | os.PathLike) -> Path:
    """A fresh, empty directory beside ``target`` to build its replacement in (``{name}.tmp-{pid}``;
    one left by an earlier process with this id is cleared)."""
    target = Path(target)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Make the finished directory ``tmp`` (beside ``target``) the directory ``target``: its files and
    itself are flushed, an existing ``target`` is removed and ``tmp`` renamed in its place; the parent
    is flushed. Returns ``target``.

    A rename cannot replace a non-empty directory, so between the removal and the rename ``target``
    does not exist for a moment: readers must treat a missing directory as "not there yet"."""
    tmp, target = Path(tmp), Path(target)
    for root, _dirs, files in os.walk(tmp):
        for name in files:
            _fsync_file(Path(root) / name)
        fsync_dir(root)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    return target
