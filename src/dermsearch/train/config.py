"""A training run's configs; defined in the config root (:mod:`dermsearch.config.train`)."""

from ..config.train import N_STAGES, NEUTRAL_SETTINGS, TARGETS, AugmentConfig, ClassifierTrainConfig, SegTrainConfig

__all__ = ["AugmentConfig", "ClassifierTrainConfig", "SegTrainConfig", "TARGETS", "N_STAGES", "NEUTRAL_SETTINGS"]
