"""Importing this module registers every component kind (see :mod:`semcorr.registry`).

The one place that fills the registry: configuration and the run builder import it; component
modules themselves import only the registry.
"""

from semcorr import backbones, data, heads, losses, matchers  # noqa: F401

__all__ = ["backbones", "data", "heads", "losses", "matchers"]
