"""The settings of an evaluation, in a module that imports nothing heavy (the CLI takes its flags'
defaults from here while building its parser, so each default is written once)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["EvaluationConfig", "CI_UNITS"]

CI_UNITS = ("lesion", "image")   # what the bootstrap resamples


@dataclass(frozen=True)
class EvaluationConfig:
    k: int = 5                 # P@k, mAP@k (the paper used k = 5)
    vote_k: int = 16           # neighbours voting for melanoma (Tschandl et al. 2019)
    bootstrap: int = 1000      # resamples for 95 % CIs (0: none, the intervals are nan)
    ci_unit: str = "lesion"    # "lesion": resample lesions (all of a lesion's images together); "image": images
    seed: int = 0
    batch_size: int = 64
    exclude_same_lesion: bool = True
    exclude_same: str | None = None     # "lesion" or "patient"; None: the strictest the data allows
    label_column: str | None = None     # relevance by this stored column instead of the diagnosis

    def __post_init__(self) -> None:
        for name, low in (("k", 1), ("vote_k", 1), ("bootstrap", 0), ("batch_size", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be at least {low}, not {getattr(self, name)}")
        if self.ci_unit not in CI_UNITS:
            raise ConfigError(f"ci_unit must be one of {', '.join(CI_UNITS)}, not {self.ci_unit!r}")
