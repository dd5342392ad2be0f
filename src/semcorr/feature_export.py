"""Write features of a dataset's images in the precomputed layout
(:mod:`semcorr.backbones.feature_files`), from any extractor: a semcorr backbone
(``semcorr-features``) or another codebase's model (docs/export_features.py).

Each image is put into the network frame exactly as the evaluation pipeline does
(:meth:`~semcorr.data.base.PairDataset.read_image`, then :func:`~semcorr.data.resize.resize_image`
with ``data.image_size``, ``data.resize`` and the stride), so ``backbone=precomputed`` on the
written folder sees, cell for cell, the features the extractor gives on the pipeline's own
images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator, List, Sequence, Tuple

import torch

from semcorr.backbones.feature_files import (META_FILE, FeatureLayout, read_layout, save_feature_file,
                                             write_layout)
from semcorr.backbones.precomputed import split_flip
from semcorr.data.base import FLIP_SUFFIX, PairDataset
from semcorr.data.resize import resize_image
from semcorr.errors import ConfigError, NumericalError

log = logging.getLogger(__name__)

# (B, 3, H, W) network-frame images in [0, 1] and their ids -> (B, D, H / stride, W / stride)
Extractor = Callable[[torch.Tensor, List[str]], torch.Tensor]


def export_ids(dataset: PairDataset, mirrored: bool = False) -> List[str]:
    """The dataset's distinct image ids (first-use order), and with ``mirrored`` each image's
    mirrored id (``<id>#hflip``, for a flipped Pose-Align source) after them."""
    ids = dataset.image_ids()
    if mirrored:
        have = set(ids)
        ids = ids + [i + FLIP_SUFFIX for i in ids
                     if not split_flip(i)[1] and i + FLIP_SUFFIX not in have]
    return ids


def network_image(dataset: PairDataset, image_id: str, image_size: int, resize: str,
                  stride: int, mirror: bool = False) -> torch.Tensor:
    """(3, H, W) network-frame image of ``image_id`` as the evaluation pipeline makes it. With
    ``mirror`` (a ``<id>#hflip`` the dataset does not serve itself, from ``--mirrored``) the image
    of ``<id>`` is flipped left-right before resizing, as
    :meth:`~semcorr.data.base.PairDataset.read_image` serves flipped ids."""
    image = dataset.read_image(split_flip(image_id)[0]).flip(-1) if mirror else dataset.read_image(image_id)
    return resize_image(image, image_size, resize, stride)[0]


def batches(dataset: PairDataset, ids: Sequence[str], layout: FeatureLayout,
            batch_size: int) -> Iterator[Tuple[List[str], torch.Tensor]]:
    """Consecutive images of one size, at most ``batch_size`` at a time: (ids, (B, 3, H, W))."""
    served = set(dataset.image_ids())
    pending: List[Tuple[str, torch.Tensor]] = []
    for image_id in ids:
        image = network_image(dataset, image_id, layout.image_size, layout.resize, layout.stride,
                              mirror=image_id not in served)
        if pending and (len(pending) == batch_size or pending[0][1].shape != image.shape):
            yield [i for i, _ in pending], torch.stack([im for _, im in pending])
            pending = []
        pending.append((image_id, image))
    if pending:
        yield [i for i, _ in pending], torch.stack([im for _, im in pending])


def prepare_folder(root: str | Path, layout: FeatureLayout) -> None:
    """Write ``features.json``; a folder that already describes other features (another stride,
    frame or dim) is refused, so one folder never mixes two."""
    root = Path(root)
    if (root / META_FILE).is_file():
        old = read_layout(root)
        if (old.frame(), old.dim) != (layout.frame(), layout.dim):
            raise ConfigError(f"out_dir {root} already holds features of another kind ({old.describe()}; "
                              f"these: {layout.describe()}); choose another out_dir")
    write_layout(root, layout)


@torch.no_grad()
def export_features(dataset: PairDataset, extract: Extractor, root: str | Path, layout: FeatureLayout,
                    fmt: str = "pt", mirrored: bool = False, batch_size: int = 8,
                    device: str | torch.device = "cpu") -> int:
    """Write the features of every image of ``dataset`` under ``root``; returns how many files.

    Args:
        extract: ``extract(images, ids)`` -> (B, D, h, w) with (h, w) = (H, W) / ``layout.stride``.
        layout: the frame and size written to ``features.json`` (its ``image_size`` / ``resize``
            must be the dataset's; its ``stride`` the extractor's).
        fmt: ``pt`` | ``npy`` | ``safetensors``; ``mirrored``: also every image's mirror image.
    """
    if (layout.image_size, layout.resize) != (dataset.image_size, dataset.resize):
        raise ConfigError(f"the layout's frame ({layout.image_size}-px {layout.resize}) is not the "
                          f"dataset's ({dataset.image_size}-px {dataset.resize})")
    prepare_folder(root, layout)
    ids = export_ids(dataset, mirrored)
    written = 0
    for batch_ids, images in batches(dataset, ids, layout, batch_size):
        feats = extract(images.to(device), batch_ids)
        h, w = images.shape[-2] // layout.stride, images.shape[-1] // layout.stride
        if tuple(feats.shape) != (len(batch_ids), layout.dim, h, w):
            raise ValueError(f"the extractor returned {tuple(feats.shape)} for {len(batch_ids)} images "
                             f"of {images.shape[-2]}x{images.shape[-1]} px; expected "
                             f"({len(batch_ids)}, {layout.dim}, {h}, {w}) (stride {layout.stride})")
        finite = torch.isfinite(feats).flatten(1).all(1)
        if not finite.all():
            bad = batch_ids[int((~finite).nonzero()[0])]
            raise NumericalError(f"the extractor returned non-finite features (NaN or Inf) for image {bad!r}")
        for image_id, f in zip(batch_ids, feats):
            save_feature_file(root, image_id, f, fmt)
        written += len(batch_ids)
        log.info("features: %d / %d images", written, len(ids))
    return written
