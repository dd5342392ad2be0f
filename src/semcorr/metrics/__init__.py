"""Metrics: PCK (percentage of correct keypoints) under the literature's protocols, and PCK as a
function of alpha."""

from semcorr.metrics.curve import alpha_grid, curve_entry, pck_curve
from semcorr.metrics.pck import PCK, pck_correct, pck_inputs, pck_thresholds, to_frame
from semcorr.metrics.protocol import metric_kwargs, protocol, resolve_protocol

__all__ = ["PCK", "alpha_grid", "curve_entry", "metric_kwargs", "pck_correct", "pck_curve",
           "pck_inputs", "pck_thresholds", "protocol", "resolve_protocol", "to_frame"]
