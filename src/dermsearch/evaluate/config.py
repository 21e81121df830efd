"""The settings of an evaluation; defined in the config root (:mod:`dermsearch.config.evaluate`)."""

from ..config.evaluate import CI_UNITS, EvaluationConfig

__all__ = ["EvaluationConfig", "CI_UNITS"]
