"""Settings of the search engines, in a module that imports nothing heavy (the CLI reads its
defaults while building its parser)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["FastConfig"]


@dataclass(frozen=True)
class FastConfig:
    style_dims: int = 128          # PCA components kept for the style vectors
    sketch_dims: int = 256         # count-sketch buckets of each style vector's PCA residual (0: none)
    feature_dims: int = 128        # PCA components kept for the feature vectors
    mask_grid: int = 16            # mask cells per side for the Dice estimate
    candidates: int = 32           # rows per style measure re-ranked exactly (each reads a 323 KB style row)
    wide_candidates: int = 128     # rows per measure whose feature and mask components are computed exactly
    wide_rows: int = 1024          # ... or wide_rows / (measures asked for), if more (one measure alone: 1024)
    normaliser_candidates: int = 16  # rows measured exactly to find each max-normaliser
    fit_rows: int = 10_000         # PCA fitted on a random sample of this many rows
    seed: int = 0
    precision: str = "auto"        # re-rank rows on disk: names.STORAGE_PRECISIONS (search/fast_rows.py)
    full_rows: str = ""            # the full float32 rows: "" by size, "here", "index", a tier (search/fast_rows.py)

    def __post_init__(self) -> None:
        if min(self.style_dims, self.feature_dims, self.mask_grid, self.candidates, self.wide_candidates,
               self.wide_rows, self.normaliser_candidates) < 1 or self.sketch_dims < 0:
            raise ConfigError("fast-mode sizes must be positive (sketch_dims may be 0)")
