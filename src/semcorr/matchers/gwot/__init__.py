"""Gromov-Wasserstein optimal transport (GW-OT) matcher, by job:

- :mod:`~semcorr.matchers.gwot.options`: :class:`GWOTOptions`, every setting and default;
- :mod:`~semcorr.matchers.gwot.solver`: the functional solver :func:`solve_gwot` (the maths);
- :mod:`~semcorr.matchers.gwot.terms`: the GW-filter and symmetry gradient pieces;
- :mod:`~semcorr.matchers.gwot.crop`: solving on the valid cells of padded batches;
- :mod:`~semcorr.matchers.gwot.matcher`: :class:`GWOTMatcher`, the ``nn.Module`` (``kind: gwot``).
"""

from semcorr.matchers.gwot.matcher import GWOTConfig, GWOTMatcher
from semcorr.matchers.gwot.options import GRAD_MODES, REF_CELLS, GWOTOptions
from semcorr.matchers.gwot.solver import GWOTResult, solve_gwot

__all__ = ["GRAD_MODES", "REF_CELLS", "GWOTConfig", "GWOTMatcher", "GWOTOptions", "GWOTResult",
           "solve_gwot"]
