"""Evaluation: label-based retrieval metrics per measure, reports, and the blinded rating protocol."""

from .evaluator import EvaluationConfig, EvaluationReport, Evaluator, QuerySet, choose_headline, read_split

__all__ = ["EvaluationConfig", "EvaluationReport", "Evaluator", "QuerySet", "read_split", "choose_headline"]
