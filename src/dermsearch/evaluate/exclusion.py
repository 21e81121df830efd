"""Which candidates a query may not retrieve, and which label makes a candidate relevant.

- ``exclude_same``: ``"lesion"`` (the query's own lesion's other images, as always) or
  ``"patient"`` (every image of the query's patient: other lesions of the same person too, on top
  of the same lesion). ISIC 2020 holds ~16 lesions per patient, so same-patient neighbours inflate
  figures there. The default is the strictest the data allows (:func:`strictest`): ``patient``
  when the index stores patients, else ``lesion``; the report says which was used.
- ``label_column``: relevance by another stored column than ``diagnosis`` (e.g. ISIC's
  ``diagnosis_1`` benign/malignant or ``diagnosis_3``), read from each image's metadata.

The query itself is never a candidate under either setting.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..names import EXCLUDE_SAME

__all__ = ["EXCLUDE_SAME", "exclusion_note", "meta_column", "patients_of", "strictest", "strictest_of"]


def meta_column(metadata: list[dict], name: str) -> np.ndarray:
    """One metadata field per row as text ("" where a row lacks it)."""
    return np.array([str(m.get(name) or "").strip() for m in metadata], dtype=object)


def labels_of(searcher, label_column: str | None) -> np.ndarray:
    """The candidates' labels: the diagnosis, or ``label_column`` from the stored metadata (every
    row lacking it is refused: a typo must not evaluate against empty labels)."""
    s = searcher.snapshot
    if not label_column or label_column == "diagnosis":
        return np.array([d or "" for d in s.diagnosis], dtype=object)
    values = meta_column(searcher.metadata(), label_column)
    if len(values) and not any(values):
        raise ConfigError(f"no image of the index has a value in column {label_column!r}; its columns: "
                          f"{', '.join(sorted({k for m in searcher.metadata() for k in m}))}")
    return values


def patients_of(searcher) -> np.ndarray:
    """Each row's ``patient_id`` ("" when unknown)."""
    return meta_column(searcher.metadata(), "patient_id")


def strictest(searcher) -> str:
    """``patient`` when any indexed image has a patient id, else ``lesion``."""
    return strictest_of(patients_of(searcher))


def strictest_of(patients: np.ndarray) -> str:
    """``patient`` when any of these rows' patient ids (``""`` when unknown) is known, else ``lesion``."""
    return "patient" if patients.astype(bool).any() else "lesion"


def check(exclude_same: str) -> str:
    if exclude_same not in EXCLUDE_SAME:
        raise ConfigError(f"exclude_same must be one of {', '.join(EXCLUDE_SAME)}, not {exclude_same!r}")
    return exclude_same


def exclusion_note(exclude_same: str, chosen_by_default: bool, queries_with_patient: int, queries: int) -> str:
    """The report's sentence on what was excluded."""
    how = "the strictest the data allows" if chosen_by_default else "as asked"
    if exclude_same == "patient":
        return (f"excluded from each query's candidates: the query, its lesion's other images and every image of "
                f"its patient ({how}; {queries_with_patient} of {queries} queries have a patient id)")
    return f"excluded from each query's candidates: the query and its lesion's other images ({how})"
