"""What the reader yields and the writer stores about each image besides its vectors: a neutral
module that both sides import (sources -> Record -> store)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Record"]


@dataclass(frozen=True)
class Record:
    """Everything about one image except its vectors."""

    id: str
    path: str
    diagnosis: str | None = None
    melanoma: int | None = None
    lesion_id: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
