"""Readers: turn a folder of images (DICOM among them) or a labels CSV (any layout of
:mod:`~dermsearch.index.readers`) into :class:`Record` items.

Problems with single entries (duplicate ids, empty ids) are returned, never raised, so that
the rest of the source is indexed; a source that cannot be read at all raises ``SourceError``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DermsearchError, MissingExtraError
from ..extract.images import ImageError
from .readers import ReadOptions, read_table
from .records import Record

__all__ = ["IMAGE_SUFFIXES", "Problem", "ReadOptions", "Source", "SourceError", "read_source", "read_folder",
           "read_labels_csv"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


class SourceError(DermsearchError, ValueError):
    pass


@dataclass(frozen=True)
class Problem:
    where: str   # a file path or "CSV line N"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class Source:
    """A source path with the options to read it with: what :func:`~dermsearch.index.build.build`
    takes wherever it takes a path (``build_index(Source(csv, ReadOptions(format="ham10000")), ...)``)."""

    path: str | os.PathLike
    options: ReadOptions = ReadOptions()

    def __str__(self) -> str:
        return str(self.path)


def read_source(source: str | os.PathLike | Source, options: ReadOptions | None = None
                ) -> tuple[list[Record], list[Problem]]:
    """The records of ``source``: a folder of images (DICOM files among them), a folder holding an
    ISIC Archive download (``metadata.csv`` beside the images), or a labels CSV in any layout of
    :mod:`~dermsearch.index.readers`; ``options`` forces a format, maps columns, says where images are."""
    if isinstance(source, Source):
        source, options = source.path, options or source.options
    options = options or ReadOptions()
    source = Path(source)
    if source.is_dir():
        metadata = source / "metadata.csv"
        if options.format in ("auto", "isic-archive") and metadata.is_file() and _is_isic_metadata(metadata):
            return read_table(metadata, options)
        if options.format == "isic-archive":
            raise SourceError(f"{source}: no ISIC Archive metadata.csv (with an isic_id column) in this folder; "
                              "give the CSV itself, or map its columns with --columns")
        if options.format not in ("auto", "folder", "dicom"):
            raise SourceError(f"{source}: a folder cannot be read as {options.format}; give its labels CSV")
        records, problems = read_folder(source, dicom_only=options.format == "dicom", options=options)
        if not records and not problems:     # before any index is made or model loaded for nothing
            raise SourceError(f"{source}: no image files found in this folder (JPEG, PNG, TIFF, BMP, WebP, DICOM); "
                              "give the folder that holds the images, or a labels CSV")
        return records, problems
    if source.is_file() and source.suffix.lower() == ".csv":
        if options.format in ("folder", "dicom"):
            raise SourceError(f"{source}: a CSV file cannot be read as {options.format}; give the folder")
        return read_table(source, options)
    if not source.exists():
        raise SourceError(f"{source}: no such file or folder")
    raise SourceError(f"{source}: give a folder of images or a labels .csv file")


def _is_isic_metadata(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return "isic_id" in (csv.DictReader(f).fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def read_folder(folder: Path, dicom_only: bool = False, options: ReadOptions | None = None
                ) -> tuple[list[Record], list[Problem]]:
    """Every image file under ``folder`` (DICOM files with their header facts as metadata; with
    ``dicom_only``, DICOM files alone, named ``*.dcm`` or not); ids are the paths without suffix."""
    from ..extract.dicom import DICOM_SUFFIXES, is_dicom

    options = options or ReadOptions()
    folder = folder.resolve()
    records: list[Record] = []
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        suffix = path.suffix.lower()
        if path.is_dir():
            continue
        dicom = suffix in DICOM_SUFFIXES or (dicom_only and suffix not in IMAGE_SUFFIXES and is_dicom(path))
        if (dicom_only and not dicom) or (suffix not in IMAGE_SUFFIXES and not dicom):
            continue
        rel = path.relative_to(folder)
        if path.is_symlink() and not _inside(path.resolve(), folder):
            problems.append(Problem(str(path), "symlink points outside the source folder"))
            continue
        image_id = (rel.with_suffix("") if suffix in IMAGE_SUFFIXES | DICOM_SUFFIXES else rel).as_posix()
        if image_id in seen:
            problems.append(Problem(str(path), f"duplicate id {image_id!r} (also {seen[image_id]})"))
            continue
        meta = {"image_path": rel.as_posix()}
        if dicom:
            try:
                meta.update(dicom_meta(path))
            except ImageError as e:
                problems.append(Problem(str(path), str(e)))
                continue
            except MissingExtraError as e:          # a stray .dcm among images: said, the rest goes on
                if dicom_only:
                    raise
                problems.append(Problem(str(path), str(e)))
                continue
        meta.update({k: v for k, v in (("license", options.license), ("attribution", options.attribution)) if v})
        seen[image_id] = path
        records.append(Record(id=image_id, path=str(path), meta=meta))
    return records, problems


def dicom_meta(path: Path) -> dict[str, str]:
    """A DICOM file's header facts (:func:`~dermsearch.extract.dicom.dicom_header`)."""
    from ..extract.dicom import dicom_header

    return dicom_header(path)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def read_labels_csv(path: Path, options: ReadOptions | None = None) -> tuple[list[Record], list[Problem]]:
    """A labels CSV in any layout (:func:`~dermsearch.index.readers.read_table`)."""
    return read_table(Path(path), options)
