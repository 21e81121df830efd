"""Where the fast-mode files of an index version live, and carrying them over a compaction.

The files themselves (their arrays and how fast mode searches them) belong to
:mod:`dermsearch.search.fast`; the index knows only their place, ``INDEX/fast/v{version}/``, their
format number and the ids they were written for, so that :meth:`Index.compact
<dermsearch.index.store.Index.compact>` (the same rows in the same order, a new version) keeps
them serving the new version without an import of the search layer.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..io import replace_dir, temp_dir_for, write_json

__all__ = ["FAST_FORMAT", "READ_FAST_FORMATS", "fast_dir", "index_identity", "carry_forward_files"]

FAST_FORMAT = 4          # 2: residual sketches; 3: style rows stored once (full_rows), re-rank precision;
                         # 4: float16 sketches and mask cells possible (code_precision)
READ_FAST_FORMATS = (3, 4)   # format 3 files read as before (their codes are float32)


def fast_dir(index_directory: str | os.PathLike, version: int) -> Path:
    return Path(index_directory) / "fast" / f"v{version}"


def index_identity(manifest: dict) -> dict:
    """What tells one index from another in the same directory: its model and creation time."""
    return {"fingerprint": manifest.get("fingerprint"), "created": manifest.get("created")}


def carry_forward_files(directory: str | os.PathLike, old_version: int, new_version: int, ids: np.ndarray,
                        held: list[int]) -> Path | None:
    """Make the fast-mode files of ``old_version`` serve ``new_version`` (the same rows, ``ids``, in
    the same order): hard links to the same files and a new ``fast.json``, in a directory renamed
    into place (atomic). The old version's files go unless a reader holds it (``held``). None when
    there is nothing to carry (no files, files of an older format, or other rows: then
    ``dermsearch optimize`` must run again)."""
    src = fast_dir(directory, old_version)
    if new_version == old_version or not (src / "fast.json").is_file():
        return None
    info = json.loads((src / "fast.json").read_text())
    if info.get("format") not in READ_FAST_FORMATS:
        return None                          # files of an older format: 'optimize' writes new ones
    if not np.array_equal(np.asarray(ids).astype(str), np.load(src / "ids.npy")):
        return None
    target = fast_dir(directory, new_version)
    tmp = temp_dir_for(target)
    for f in src.iterdir():
        if f.name != "fast.json":
            os.link(f, tmp / f.name)
    info["index_version"] = new_version
    write_json(tmp / "fast.json", info, indent=2)
    replace_dir(tmp, target)
    if old_version not in held:
        shutil.rmtree(src, ignore_errors=True)
    return target
