"""Pair datasets. Importing this package registers every dataset kind."""

from semcorr.data.datasets import pf_willow, synthetic  # noqa: F401
