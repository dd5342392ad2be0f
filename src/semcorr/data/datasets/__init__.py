"""Pair datasets. Importing this package registers every dataset kind."""

from semcorr.data.datasets import ap10k, folder, pf_pascal, pf_willow, spair, synthetic, tss  # noqa: F401
