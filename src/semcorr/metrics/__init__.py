"""Metrics: PCK (percentage of correct keypoints) under the literature's protocols."""

from semcorr.metrics.pck import PCK, pck_correct, pck_thresholds

__all__ = ["PCK", "pck_correct", "pck_thresholds"]
