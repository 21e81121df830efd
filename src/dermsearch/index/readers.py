"""Labels CSVs as archives have them: the layout is detected from the columns (or forced with a
format name, or given column by column), then every row goes through one row reader.

Layouts (:data:`FORMATS`):

- ``dermsearch``: ``image_id``, ``image_path`` (relative to the CSV; without it, images are found
  by id), ``diagnosis``, ``melanoma``,
  ``lesion_id``, ``patient_id``, ``license`` (or ``licence``, ``copyright_license``), ``attribution``;
- ``isic-archive``: the ``metadata.csv`` that ``isic image download`` writes beside the images:
  ``isic_id``, ``diagnosis`` or ``diagnosis_1``..``diagnosis_5``, ``benign_malignant``,
  ``anatom_site_general``, ``age_approx``, ``sex``, ``lesion_id``, ``patient_id``, ``attribution``,
  ``copyright_license``; the diagnosis is ``diagnosis``, else the most specific of ``diagnosis_3``,
  ``diagnosis_2``, ``diagnosis_1``;
- ``ham10000``: ``HAM10000_metadata.csv`` (``lesion_id,image_id,dx,dx_type,age,sex,localization``);
- ``isic-challenge``: ground truth, one row per image: one-hot classes (2018/2019: ``image`` and
  ``MEL,NV,BCC,...``; 2017: ``image_id,melanoma,seborrheic_keratosis``, neither = nevus), or 2020's
  ``image_name,patient_id,...,diagnosis,benign_malignant,target``.

Images without a path column are found by id (``<id>.jpg``, ``.png``, ``.dcm``, ...) in ``--images``
or, by default, beside the CSV and in its ``images/`` folder (and the layout's usual folders).
Melanoma comes from :func:`dermsearch.labels.melanoma_status`, the package's one rule. Every
image keeps all its CSV columns as metadata, plus ``patient_id``, ``license`` and ``attribution``
under those names when the row has them.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ConfigError
from ..labels import LabelError, melanoma_status
from .records import Record

__all__ = ["FIELDS", "FORMATS", "Layout", "ReadOptions", "detect_layout", "parse_columns", "read_table"]

FORMATS = ("auto", "folder", "dicom", "dermsearch", "isic-archive", "ham10000", "isic-challenge")
FIELDS = ("image_id", "image_path", "diagnosis", "melanoma", "lesion_id", "patient_id", "license", "attribution")
FILE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".JPG", ".JPEG", ".PNG")
ONE_HOT = ("MEL", "NV", "BCC", "AK", "AKIEC", "BKL", "DF", "VASC", "SCC", "UNK")
LICENSE_COLUMNS = ("license", "licence", "copyright_license")


@dataclass(frozen=True)
class ReadOptions:
    """How to read a source: ``format`` (one of :data:`FORMATS`; ``auto`` detects it), ``columns``
    (field -> CSV column, overriding the layout's), ``images`` (the folder image files are found
    in by id), and a ``license`` / ``attribution`` for rows that name none."""

    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    images: Path | None = None
    license: str | None = None
    attribution: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; valid: {', '.join(FORMATS)}")
        unknown = [k for k in self.columns if k not in FIELDS]
        if unknown:
            raise ConfigError(f"unknown field(s) {', '.join(unknown)} in the column mapping; "
                              f"valid: {', '.join(FIELDS)}")


def parse_columns(text: str | None) -> dict[str, str]:
    """``image_id=isic_id,diagnosis=diagnosis_3`` as a dict (field -> column)."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        name, eq, column = part.partition("=")
        if not eq or not name.strip() or not column.strip():
            raise ConfigError(f"column mapping {text!r}: expected FIELD=COLUMN,... (e.g. image_id=isic_id)")
        out[name.strip()] = column.strip()
    ReadOptions(columns=out)         # checks the field names
    return out


@dataclass(frozen=True)
class Layout:
    """Where a format keeps each field: ``columns`` (field -> column); ``levels``: the diagnosis
    columns the melanoma rule reads, most general first; ``diagnosis``: the columns tried in turn
    for the stored diagnosis; ``one_hot`` (+ ``rest``, the class when none is set): one-hot class
    columns; ``image_dirs``: folders (relative to the CSV) searched for ``<id>.<ext>``."""

    name: str
    columns: dict[str, str]
    levels: tuple[str, ...] = ()
    diagnosis: tuple[str, ...] = ()
    one_hot: tuple[str, ...] = ()
    rest: str | None = None
    image_dirs: tuple[str, ...] = (".", "images")


def _present(header, mapping: dict[str, str | tuple[str, ...]]) -> dict[str, str]:
    """field -> the first of its candidate columns that the header has."""
    out = {}
    for name, candidates in mapping.items():
        for c in (candidates,) if isinstance(candidates, str) else candidates:
            if c in header:
                out[name] = c
                break
    return out


def _layouts(header: list[str]) -> dict[str, Layout]:
    common = {"lesion_id": "lesion_id", "patient_id": "patient_id", "license": LICENSE_COLUMNS,
              "attribution": "attribution"}
    hierarchy = tuple(c for c in ("diagnosis_1", "diagnosis_2", "diagnosis_3", "diagnosis_4", "diagnosis_5")
                      if c in header)
    isic_diag = tuple(c for c in ("diagnosis", "diagnosis_3", "diagnosis_2", "diagnosis_1") if c in header)
    one_hot = tuple(c for c in ONE_HOT if c in header)
    challenge = (Layout("isic-challenge", _present(header, {"image_id": ("image", "image_id"), **common}),
                        one_hot=one_hot, image_dirs=(".", "images", "ISIC2018_Task3_Training_Input",
                                                     "ISIC_2019_Training_Input"))
                 if one_hot else
                 Layout("isic-challenge", _present(header, {"image_id": "image_name", "melanoma": "target", **common}),
                        levels=("diagnosis",), diagnosis=("diagnosis",),
                        image_dirs=(".", "images", "train", "jpeg/train"))
                 if "image_name" in header else
                 Layout("isic-challenge", _present(header, {"image_id": "image_id", **common}),
                        one_hot=("melanoma", "seborrheic_keratosis"), rest="nevus",
                        image_dirs=(".", "images", "ISIC-2017_Training_Data")))
    return {
        "dermsearch": Layout("dermsearch", _present(header, {"image_id": "image_id", "image_path": "image_path",
                                                             "melanoma": "melanoma", **common}),
                             levels=("diagnosis",), diagnosis=("diagnosis",)),
        "isic-archive": Layout("isic-archive", _present(header, {"image_id": "isic_id", **common}),
                               levels=(("diagnosis",) if "diagnosis" in header else ()) + hierarchy,
                               diagnosis=isic_diag),
        "ham10000": Layout("ham10000", _present(header, {"image_id": "image_id", **common}), levels=("dx",),
                           diagnosis=("dx",), image_dirs=(".", "images", "HAM10000_images_part_1",
                                                          "HAM10000_images_part_2", "HAM10000_images")),
        "isic-challenge": challenge,
    }


def detect_layout(header: list[str]) -> str | None:
    """The format name these columns are in, or None."""
    h = set(header)
    if {"image_id", "image_path"} <= h:
        return "dermsearch"
    if "isic_id" in h:
        return "isic-archive"
    if {"image_id", "dx"} <= h:
        return "ham10000"
    if ("image" in h and "MEL" in h) or {"image_name", "target"} <= h or {"image_id", "melanoma",
                                                                            "seborrheic_keratosis"} <= h:
        return "isic-challenge"
    if "image_id" in h:                 # dermsearch's columns without image_path: images found by id
        return "dermsearch"
    return None


def layout_for(path: Path, header: list[str], options: ReadOptions) -> Layout:
    """The layout to read ``path`` with: detected (or ``options.format``), then ``options.columns``
    on top; a column the mapping or the format needs that the header lacks is named."""
    from .sources import SourceError

    found = ", ".join(header) or "none"
    missing = [f"{k}={c}" for k, c in options.columns.items() if c not in header]
    if missing:
        raise SourceError(f"{path}: the column mapping names column(s) the CSV does not have: "
                          f"{', '.join(missing)} (found: {found})")
    name = options.format if options.format not in ("auto", "folder", "dicom") else detect_layout(header)
    if name is None and not options.columns:
        raise SourceError(f"{path}: missing column image_id: the columns are not those of a "
                          f"dermsearch labels CSV (image_id, image_path), an ISIC Archive metadata.csv "
                          f"(isic_id), HAM10000 (image_id, dx) or ISIC challenge ground truth (found: {found}); "
                          "map them with columns (--columns image_id=COL,diagnosis=COL,...)")
    layout = _layouts(header)[name] if name else Layout("columns", {})
    if options.columns:
        mapped = {**layout.columns, **options.columns}
        layout = replace(layout, name=layout.name if layout.name == "columns" else f"{layout.name}+columns",
                         columns=mapped,
                         levels=_levels_with(layout.levels, options.columns.get("diagnosis")),
                         diagnosis=(mapped["diagnosis"],) if "diagnosis" in mapped else layout.diagnosis)
    absent = [f for f in ("image_id",) if f not in layout.columns]
    if layout.name == "ham10000" and "dx" not in header:     # forced: its labels must be there (or mapped)
        absent.append("dx")
    if layout.rest:                         # ISIC 2017 ground truth (forced): its class columns
        absent += [c for c in layout.one_hot if c not in header]
    if absent:
        raise SourceError(f"{path}: missing column(s) {', '.join(absent)} for the {layout.name} format "
                          f"(found: {found})")
    return layout


def _levels_with(levels: tuple[str, ...], mapped: str | None) -> tuple[str, ...]:
    """The diagnosis levels the melanoma rule reads when ``--columns`` maps ``diagnosis`` to ``mapped``:
    the format's own levels stay (an image is a melanoma, or not, whichever level is stored as its
    diagnosis: ISIC's ``diagnosis=diagnosis_1`` keeps ``diagnosis_2``'s "(Melanoma)"), and the mapped
    column is read too, as the most specific, when it is not one of them."""
    if not mapped or mapped in levels:
        return levels
    return levels + (mapped,)


class ImageFinder:
    """Image files by id in a list of folders (each listed once, on first use)."""

    def __init__(self, folders: list[Path]):
        self.folders = [f for f in folders if f.is_dir()]
        self.shown = ", ".join(str(f) for f in folders)
        self._by_stem: dict[str, str] | None = None

    def find(self, image_id: str) -> str | None:
        if self._by_stem is None:
            self._by_stem = {}
            for folder in self.folders:
                with os.scandir(folder) as entries:
                    for e in entries:
                        stem, ext = os.path.splitext(e.name)
                        if ext in FILE_SUFFIXES and stem not in self._by_stem and e.is_file():
                            self._by_stem[stem] = e.path
        hit = self._by_stem.get(image_id)
        if hit is None:
            for folder in self.folders:         # an id with a folder part ("part_1/ISIC_x")
                for ext in FILE_SUFFIXES:
                    candidate = folder / f"{image_id}{ext}"
                    if "/" in image_id and candidate.is_file():
                        return str(candidate.resolve())
        return None if hit is None else str(Path(hit).resolve())


def _one_hot_class(row: dict[str, str], layout: Layout) -> str:
    chosen = []
    for c in layout.one_hot:
        v = (row.get(c) or "").strip()
        try:
            if float(v) >= 0.5:
                chosen.append(c)
        except ValueError:
            raise LabelError(f"class column {c} holds {v!r}, not 0/1") from None
    if len(chosen) == 1:
        return chosen[0]
    if not chosen and layout.rest:
        return layout.rest
    raise LabelError(f"{'no' if not chosen else 'more than one'} class set among {', '.join(layout.one_hot)}")


def row_record(row: dict[str, str], layout: Layout, base: Path, finder: ImageFinder | None,
               options: ReadOptions) -> Record:
    """One row as a :class:`Record`; ``ValueError`` (with a one-line reason) for a row that cannot be."""
    cols = layout.columns

    def get(name: str) -> str:
        return (row.get(cols[name]) or "").strip() if name in cols else ""

    image_id = get("image_id")
    if not image_id:
        raise ValueError(f"empty {cols['image_id']}")
    rel = get("image_path")
    if rel:
        path = rel if os.path.isabs(rel) else str((base / rel).resolve())
    elif "image_path" in cols:
        raise ValueError(f"empty {cols['image_path']} for {image_id}")
    else:
        path = finder.find(image_id) if finder else None
        if path is None:
            raise ValueError(f"no image file for {image_id} in {finder.shown if finder else base}")
    if layout.one_hot:
        diagnosis = _one_hot_class(row, layout)
        levels = [diagnosis.lower()]
    else:
        diagnosis = next((row[c].strip() for c in layout.diagnosis if (row.get(c) or "").strip()), "")
        levels = [row.get(c) for c in layout.levels]
    melanoma = melanoma_status(get("melanoma") or None, levels)
    meta = {k: (v if v is not None else "") for k, v in row.items() if k is not None}
    extra = {"patient_id": get("patient_id"), "license": get("license") or (options.license or ""),
             "attribution": get("attribution") or (options.attribution or "")}
    meta.update({k: v for k, v in extra.items() if v})
    return Record(id=image_id, path=path, diagnosis=diagnosis or None, melanoma=melanoma,
                  lesion_id=get("lesion_id") or None, meta=meta)


def _dicom_facts(path: str) -> dict[str, str]:
    from ..extract.dicom import dicom_header

    return dicom_header(path)


def _first_bad_line(path: Path) -> int | str:
    """The number of the first line of ``path`` that is not UTF-8 ("?" when none is found alone)."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return "?"


def read_table(path: Path, options: ReadOptions | None = None):
    """(records, problems) of a labels CSV in any of the layouts (see the module text)."""
    from ..extract.images import ImageError
    from .sources import Problem, SourceError

    options = options or ReadOptions()
    path = path.resolve()
    reader = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = header
            layout = layout_for(path, header, options)
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise SourceError(f"{path} line {_first_bad_line(path)}: not UTF-8 text ({e.reason}); save the CSV "
                          "as UTF-8 (spreadsheets: 'CSV UTF-8')") from None
    except csv.Error as e:
        line = f" line {reader.line_num + 1}" if reader is not None else ""     # the line it failed in
        raise SourceError(f"{path}{line}: malformed CSV ({e})") from None
    base = options.images.resolve() if options.images else path.parent
    finder = None
    if "image_path" not in layout.columns:
        folders = [base] if options.images else [(path.parent / d).resolve() for d in layout.image_dirs]
        finder = ImageFinder(folders)
    records, problems, seen = [], [], set()
    for line, row in enumerate(rows, start=2):
        where = f"{path.name} line {line}"
        try:
            record = row_record(row, layout, base, finder, options)
        except ValueError as e:
            problems.append(Problem(where, str(e)))
            continue
        if record.id in seen:
            problems.append(Problem(where, f"duplicate image_id {record.id!r}"))
            continue
        if Path(record.path).suffix.lower() in (".dcm", ".dicom"):
            try:                            # a DICOM image: its header's patient, sex, age, site (the CSV wins)
                record = replace(record, meta={**_dicom_facts(record.path), **record.meta})
            except ImageError as e:
                problems.append(Problem(where, f"{record.path}: {e}"))
                continue
        seen.add(record.id)
        records.append(record)
    if layout.name == "ham10000":        # HAM10000's file lists by lesion; its images (and labels) by id
        records.sort(key=lambda r: r.id)
    return records, problems
