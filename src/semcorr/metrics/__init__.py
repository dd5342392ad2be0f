"""Metrics: the one PCK rule (:mod:`.functional`), the PCK metric that sums it over batches and
processes, the literature's protocols (:mod:`.protocol`) and PCK as a function of alpha."""

from semcorr.metrics.curve import alpha_grid, curve_entry, pck_curve
from semcorr.metrics.functional import (KeypointScores, on_pck_grid, pck_lengths, pck_scores,
                                        quantize, to_frame)
from semcorr.metrics.pck import PCK
from semcorr.metrics.protocol import Protocol, protocol, resolve_protocol

__all__ = ["PCK", "KeypointScores", "Protocol", "alpha_grid", "curve_entry", "on_pck_grid",
           "pck_curve", "pck_lengths", "pck_scores", "protocol", "quantize", "resolve_protocol",
           "to_frame"]
