"""Evaluation: label-based retrieval metrics per measure, reports, and the blinded rating protocol."""

from .._lazy import lazy_exports

_EXPORTS = {name: ".evaluator" for name in
            ("EvaluationConfig", "EvaluationReport", "Evaluator", "QuerySet", "read_split", "choose_headline")}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
