"""Readers: turn a folder of images or a labels CSV into :class:`Record` items.

Problems with single entries (duplicate ids, empty ids) are returned, never raised, so that
the rest of the source is indexed; a source that cannot be read at all raises ``SourceError``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DermsearchError
from .records import Record

__all__ = ["IMAGE_SUFFIXES", "Problem", "SourceError", "read_source", "read_folder", "read_labels_csv"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
REQUIRED = ("image_id", "image_path")
MELANOMA_DIAGNOSES = {"mel", "melanoma"}


class SourceError(DermsearchError, ValueError):
    pass


@dataclass(frozen=True)
class Problem:
    where: str   # a file path or "CSV line N"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def read_source(source: str | os.PathLike) -> tuple[list[Record], list[Problem]]:
    source = Path(source)
    if source.is_dir():
        return read_folder(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return read_labels_csv(source)
    if not source.exists():
        raise SourceError(f"{source}: no such file or folder")
    raise SourceError(f"{source}: give a folder of images or a labels .csv file")


def read_folder(folder: Path) -> tuple[list[Record], list[Problem]]:
    folder = folder.resolve()
    records: list[Record] = []
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.is_dir():
            continue
        rel = path.relative_to(folder)
        if path.is_symlink() and not _inside(path.resolve(), folder):
            problems.append(Problem(str(path), "symlink points outside the source folder"))
            continue
        image_id = rel.with_suffix("").as_posix()
        if image_id in seen:
            problems.append(Problem(str(path), f"duplicate id {image_id!r} (also {seen[image_id]})"))
            continue
        seen[image_id] = path
        records.append(Record(id=image_id, path=str(path), meta={"image_path": rel.as_posix()}))
    return records, problems


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _melanoma(row: dict[str, str]) -> int | None:
    value = (row.get("melanoma") or "").strip().lower()
    if value in ("1", "1.0", "true", "yes"):
        return 1
    if value in ("0", "0.0", "false", "no"):
        return 0
    if "melanoma" not in row and row.get("diagnosis"):
        # No melanoma column: derive it from the diagnosis.
        return int(row["diagnosis"].strip().lower() in MELANOMA_DIAGNOSES)
    return None


def read_labels_csv(path: Path) -> tuple[list[Record], list[Problem]]:
    path = path.resolve()
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise SourceError(f"{path}: missing column(s) {', '.join(missing)}; a labels CSV needs "
                                  f"{', '.join(REQUIRED)} (found: {', '.join(columns) or 'none'})")
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not a UTF-8 text CSV ({e.reason})") from None
    except csv.Error as e:
        raise SourceError(f"{path}: malformed CSV ({e})") from None
    records: list[Record] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        image_id = (row.get("image_id") or "").strip()
        rel = (row.get("image_path") or "").strip()
        where = f"{path.name} line {line}"
        if not image_id:
            problems.append(Problem(where, "empty image_id"))
            continue
        if not rel:
            problems.append(Problem(where, f"empty image_path for {image_id}"))
            continue
        if image_id in seen:
            problems.append(Problem(where, f"duplicate image_id {image_id!r}"))
            continue
        seen.add(image_id)
        meta = {k: (v if v is not None else "") for k, v in row.items() if k is not None}
        records.append(Record(
            id=image_id,
            path=str((base / rel).resolve()) if not os.path.isabs(rel) else rel,
            diagnosis=(row.get("diagnosis") or "").strip() or None,
            melanoma=_melanoma(row),
            lesion_id=(row.get("lesion_id") or "").strip() or None,
            meta=meta,
        ))
    return records, problems
