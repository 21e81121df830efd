"""Labels read the same way everywhere: the one split-file reader and the one melanoma rule.

The index readers (``index/sources.py``, ``index/readers.py``), the training data sets
(``extract/datasets.py``) and the evaluation all call these, so an image is a melanoma, or of
unknown melanoma status, for the same reason wherever it is read. Imports nothing but the errors.

The melanoma rule (:func:`melanoma_status`):

1. a ``melanoma`` column, when the row has a value there, decides: ``1``/``true``/``yes`` is a
   melanoma, ``0``/``false``/``no`` is not; any other value (``malignant`` among them: a basal cell
   carcinoma is malignant too) is refused with :class:`LabelError`;
2. otherwise the diagnosis levels decide (one level, e.g. ``diagnosis`` or HAM10000's ``dx``, or
   ISIC's hierarchical ``diagnosis_1``..``diagnosis_5``): a melanoma when any level names one
   (``mel``, or the word ``melanoma(s)`` anywhere, ``_`` and ``-`` read as spaces: ``Melanoma in
   situ``, ``Melanoma Invasive``, ``Malignant melanocytic proliferations (Melanoma)``, ``malignant
   melanoma``, ``superficial_spreading_melanoma``, ...; also ``lentigo maligna``, a melanoma in
   situ; never ``non-melanoma``, ``not melanoma``, ``melanoma excluded`` or ``pseudomelanoma``);
   unknown when there is no level, or the most specific level given is ``unknown``,
   ``indeterminate`` or just ``malignant``; else not a melanoma.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from pathlib import Path

from .errors import ConfigError, NotFoundError

__all__ = ["LabelError", "is_melanoma_name", "is_unknown_label", "melanoma_flag", "melanoma_status", "read_split"]

TRUE = frozenset({"1", "1.0", "true", "yes"})
FALSE = frozenset({"0", "0.0", "false", "no"})
# a most specific diagnosis level that says nothing about melanoma
UNDECIDED = frozenset({"", "unknown", "indeterminate", "malignant", "unk"})
# matched after runs of spaces, "_" and "-" are made one space ("melanoma_in_situ", "amelanotic-melanoma"):
# the word "melanoma(s)" (not inside "pseudomelanoma"), or lentigo maligna; never its negations
_SEPARATORS = re.compile(r"[\s_\-]+")
_MELANOMA = re.compile(r"(?<![a-z0-9])melanomas?\b|\blentigo maligna\b")
_NOT_MELANOMA = re.compile(r"\b(?:non ?|not |no )melanoma|\bmelanoma (?:excluded|ruled out)")


class LabelError(ConfigError):
    """A label value that cannot be read (the message names the value)."""


def melanoma_flag(value: str) -> int:
    """A ``melanoma`` column's value as 0/1; anything but a yes/no value is a :class:`LabelError`."""
    v = value.strip().lower()
    if v in TRUE:
        return 1
    if v in FALSE:
        return 0
    hint = " (malignant is not melanoma: give 0/1, or leave the column out and let the diagnosis decide)" \
        if v in ("malignant", "benign") else ""
    raise LabelError(f"melanoma value {value!r} is not 0/1{hint}")


def is_melanoma_name(diagnosis: str | None) -> bool:
    """True when a diagnosis (at any level of detail) names a melanoma."""
    v = _SEPARATORS.sub(" ", (diagnosis or "").lower()).strip()
    return v == "mel" or (_MELANOMA.search(v) is not None and _NOT_MELANOMA.search(v) is None)


def is_unknown_label(diagnosis: str | None) -> bool:
    """True for a diagnosis that says nothing (empty, ``unknown``, ``indeterminate``)."""
    return (diagnosis or "").strip().lower() in ("", "unknown", "indeterminate", "unk")


def melanoma_status(melanoma: str | None, diagnoses: Iterable[str | None]) -> int | None:
    """The one melanoma rule (see the module text): 1, 0 or None (unknown).

    ``melanoma``: the row's ``melanoma`` value (None or "" when it has none); ``diagnoses``: the
    row's diagnosis levels, most general first."""
    if melanoma is not None and melanoma.strip():
        return melanoma_flag(melanoma)
    levels = [d.strip() for d in diagnoses if d is not None and d.strip()]
    if any(is_melanoma_name(d) for d in levels):
        return 1
    if not levels or levels[-1].lower() in UNDECIDED:
        return None
    return 0


def read_split(path: str | Path) -> dict[str, str]:
    """image_id -> split name from a CSV with columns ``image_id`` and ``split`` (the one split reader)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image_id", "split"} <= set(reader.fieldnames):
                raise ConfigError(f"{path}: a split CSV needs columns image_id and split "
                                  f"(found: {', '.join(reader.fieldnames or []) or 'none'})")
            return {r["image_id"].strip(): (r["split"] or "").strip() for r in reader if r["image_id"]}
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such split file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text CSV ({e.reason})") from None
    except csv.Error as e:
        raise ConfigError(f"{path}: malformed CSV ({e})") from None
