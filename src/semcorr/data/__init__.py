"""Data: the pair-sample schema, resizing, datasets, transforms and the datamodule."""

from semcorr.data.base import DataConfig, PairDataset, PairRecord, load_image
from semcorr.data.schema import collate
from semcorr.data import datasets  # noqa: F401  (registers the dataset kinds)

__all__ = ["DataConfig", "PairDataset", "PairRecord", "collate", "load_image"]
