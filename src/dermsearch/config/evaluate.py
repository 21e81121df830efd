"""The settings of an evaluation (``dermsearch evaluate`` takes its flags from these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..names import CI_UNITS, EXCLUDE_SAME
from .fields import check_fields, choice, setting

__all__ = ["EvaluationConfig", "CI_UNITS"]


@dataclass(frozen=True)
class EvaluationConfig:
    k: int = setting(5, "ranks counted in P@k, macro-P@k and mAP@k (the paper used k = 5)", min=1)
    vote_k: int = setting(16, "neighbours in the melanoma vote (Tschandl et al. 2019)", min=1)
    bootstrap: int = setting(1000, "bootstrap resamples for the 95% CIs (0: none, the intervals are nan)", min=0)
    ci_unit: Literal[*CI_UNITS] = choice(CI_UNITS, "lesion", "what the bootstrap resamples: lesions (all images of "
                                         "a lesion together) or single images")
    seed: int = setting(0, "seed of the bootstrap and the rating sheet")
    batch_size: int = setting(64, "queries ranked at once", min=1)
    exclude_same_lesion: bool = setting(True, "leave the query's lesion out of its candidates")
    exclude_same: Literal[*EXCLUDE_SAME] | None = choice(
        EXCLUDE_SAME, None, "leave out of each query's candidates its lesion's other images (lesion) or every image "
        "of its patient (patient); default: the strictest the data allows (patient when the index stores patient "
        "ids), said in the report", also=(None,))
    label_column: str | None = setting(None, "relevance by this stored column instead of the diagnosis (e.g. "
                                       "diagnosis_1 for benign/malignant, diagnosis_3)", metavar="COL")
    metadata_head: str | None = setting(None, "a melanoma head from fit-metadata-head that also reads age, sex and "
                                        "site: its AUC is reported beside the image head's (rows without them are "
                                        "scored from the image alone)", metavar="JSON")

    def __post_init__(self) -> None:
        check_fields(self)
