"""How an index build commits and distributes its work: the numbers that the build functions
(``build_index``, ``build_index_dask``) and the CLI's flags share."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import check_fields, setting

__all__ = ["BuildConfig", "COMMIT_EVERY", "DASK_CHUNK"]


@dataclass(frozen=True)
class BuildConfig:
    commit_every: int = setting(128, "images per atomic commit (an interrupted build resumes after the last one)",
                                min=1)
    dask_chunk: int = setting(64, "images per Dask task of a distributed build", min=1)

    def __post_init__(self) -> None:
        check_fields(self)


COMMIT_EVERY = BuildConfig.commit_every   # the class defaults, as plain numbers for the build functions' signatures
DASK_CHUNK = BuildConfig.dask_chunk
