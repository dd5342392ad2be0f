"""Metrics: PCK (percentage of correct keypoints) under the literature's protocols, and PCK as a
function of alpha."""

from semcorr.metrics.curve import alpha_grid, curve_entry, pck_curve
from semcorr.metrics.pck import PCK, pck_correct, pck_thresholds

__all__ = ["PCK", "alpha_grid", "curve_entry", "pck_correct", "pck_curve", "pck_thresholds"]
