"""Settings of the search engines' fast mode (``dermsearch optimize``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..names import CODE_PRECISIONS, SEARCH_MODES, STORAGE_PRECISIONS
from .fields import check_fields, choice, setting

__all__ = ["FastConfig", "SearchConfig"]


@dataclass(frozen=True)
class FastConfig:
    """What ``optimize`` writes and how many candidates fast mode re-ranks exactly."""

    style_dims: int = setting(128, "PCA components of the style vectors", min=1)
    sketch_dims: int = setting(256, "count-sketch buckets of the style PCA residual (0: none)", min=0)
    feature_dims: int = setting(128, "PCA components of the feature vectors", min=1)
    mask_grid: int = setting(16, "mask cells per side for the Dice estimate", min=1)
    candidates: int = setting(32, "rows per style measure re-ranked exactly (each reads a 323 KB style row)", min=1)
    wide_candidates: int = setting(128, "rows per measure whose feature and mask components are computed exactly",
                                   min=1)
    wide_rows: int = setting(1024, "...or this many rows divided among the measures asked for, when that is more "
                             "(one measure alone: all of them)", min=1)
    normaliser_candidates: int = setting(16, "rows measured exactly to find each max-normaliser", min=1)
    fit_rows: int = setting(10_000, "the PCA is fitted on a random sample of this many rows", min=1)
    seed: int = setting(0, "seed of the PCA's sample")
    precision: Literal[*STORAGE_PRECISIONS] = choice(
        STORAGE_PRECISIONS, "auto", "the style rows fast mode re-ranks from: float32 (the exact rows), fp16, int8 "
        "or int6 (a compact copy; int6: 6-bit codes after a DCT, deflate-coded, 48.2 KB a row; the full rows "
        "then stay only in the index's table, and returned scores are still exact); "
        "auto: float32 below 100,000 images, int8 from there (docs/performance.md)")
    full_rows: str = setting("", "where the full float32 style rows stay: empty (by size: a copy beside the fast-mode "
                             "files below 100,000 images, else the index's table), 'here', 'index', or a second "
                             "location read only for the rows re-ranked (a directory or an fsspec URL)",
                             metavar="PLACE")
    code_precision: Literal[*CODE_PRECISIONS] = choice(
        CODE_PRECISIONS, "auto", "the style sketches and mask cells every query scans: fp16 (half their bytes in RAM "
        "and on disk, products ~2.9x faster at a million rows; they only choose candidates), float32, or auto: "
        "float32 below 100,000 images, fp16 from there; the PCA projections, which the normalisers' proven "
        "bounds use, stay float32")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class SearchConfig:
    """How a searcher ranks by default (``dermsearch search`` and ``serve``; a request may name another
    mode or another ``k``)."""

    mode: Literal[*SEARCH_MODES] = choice(
        SEARCH_MODES, "exact", "exact (every byte of every row), fast (compressed vectors pick candidates, exact ones "
        "re-rank them; needs 'dermsearch optimize DIR'), certified (exact answers from an int8 first pass, proven "
        "per query)")
    k: int = setting(5, "results per measure; 0 ranks every candidate", min=0)
    max_checked: float = setting(0.02, "certified mode: the largest share of the rows one query may check exactly "
                                 "before it is searched exactly instead", min=0.0, max=1.0, metavar="SHARE")

    def __post_init__(self) -> None:
        check_fields(self)
