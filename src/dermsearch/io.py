"""Atomic writes: a file or a directory is either its old self or its complete new self, never half.

Every write goes to a temporary name beside its target (the same directory, so the same file
system), is flushed to disk (``fsync``), renamed over the target (``os.replace``: atomic on POSIX)
and the parent directory is flushed too, so the rename itself survives a power cut. If anything
fails before the rename, the temporary is removed and the target is untouched.

- :func:`write_bytes`, :func:`write_text`, :func:`write_json`: whole files from memory.
- :func:`atomic_path`: a temporary path for writers that take a file name (safetensors, numpy, ONNX);
  :func:`replace_file`: a file finished under another name (e.g. a resumable partial) moved into place.
- :func:`replace_dir`: a finished temporary directory put in a directory's place (its files flushed first;
  on Linux an atomic exchange, so the directory is never missing);
  :func:`temp_dir_for` names such a directory.

Imports nothing of dermsearch: every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
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


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``, kernel 3.15+, glibc
    2.28+). False where the system or the file system cannot; then nothing was changed."""
    global _EXCHANGE
    if _EXCHANGE is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            _EXCHANGE = libc.renameat2
            _EXCHANGE.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        except (AttributeError, OSError):          # not Linux, or a C library without renameat2
            _EXCHANGE = False
    if not _EXCHANGE:
        return False
    import ctypes

    at_fdcwd, rename_exchange = -100, 2
    if _EXCHANGE(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):   # unsupported here: the fallback
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


_EXCHANGE = None


def replace_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Make the finished directory ``tmp`` (beside ``target``) the directory ``target``: its files and
    itself are flushed, then ``tmp`` takes ``target``'s place and the parent is flushed; the old
    directory is removed after that. Returns ``target``.

    On Linux the two directories are exchanged in one atomic step (``renameat2``), so a reader or a
    crash sees the complete old or the complete new directory, never none. Where that is not
    available (other systems, some network file systems), the old directory is first renamed aside
    (``.{name}.old-{pid}``) and then ``tmp`` into place: a crash between those two renames leaves no
    ``target`` and the old files aside, so readers must treat a missing directory as "not there yet".
    Such leftovers of a process that no longer runs are removed by the next ``replace_dir`` of the
    same ``target`` (:func:`remove_stale_asides`): the directory it puts in place supersedes them."""
    tmp, target = Path(tmp), Path(target)
    remove_stale_asides(target)
    for root, _dirs, files in os.walk(tmp):
        for name in files:
            _fsync_file(Path(root) / name)
        fsync_dir(root)
    old = None
    if target.exists():
        if _exchange(tmp, target):
            old = tmp                               # now holds the old directory
        else:
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            os.replace(tmp, target)
    else:
        os.replace(tmp, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                       # another user's process: it exists
    return True


def remove_stale_asides(target: str | os.PathLike) -> list[Path]:
    """Remove the ``.{name}.old-{pid}-{tag}`` directories that :func:`replace_dir`'s fallback left
    beside ``target`` when its process died before removing them (a crash between or after its
    renames). Those of a process still running (it may be between its renames now) are kept, and so
    are names that do not parse. A pid names a process of this machine only: on a file system that
    several machines write, another machine's aside may be removed while it still moves it (that
    writer then removes nothing of its own); one writer per index is the rule there. Returns the
    directories removed."""
    target = Path(target)
    removed = []
    prefix = f".{target.name}.old-"
    if not target.parent.is_dir():
        return removed
    for p in target.parent.iterdir():
        if not p.name.startswith(prefix) or not p.is_dir():
            continue
        pid = p.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed
