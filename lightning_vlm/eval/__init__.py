"""Evaluation tools: the study's scoring formulas, the attribute reader and reader-feature distances."""

from .scoring import battery_score, score_answer, time_score

__all__ = ["battery_score", "score_answer", "time_score"]
