"""Settings of the search engines' fast mode (``dermsearch optimize``)."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import check_fields, setting

__all__ = ["FastConfig"]


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

    def __post_init__(self) -> None:
        check_fields(self)
