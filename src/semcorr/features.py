"""Backbone feature extraction with per-image caches, in-batch deduplication and a call counter.

Pair benchmarks reuse each image many times (PF-WILLOW: 1,800 image slots, 70 images), so during
evaluation the features of each distinct image are computed once. A feature is identified by
:meth:`FeatureExtractor.key`: the backbone's ``cache_key()`` (model, weights, layer), the
network-frame size and a digest of the network-frame pixels -- the content, not the file name, so
a picture stored twice is computed once and a different resize mode, an augmented copy or an
edited file never reuses stale features. The digests come with the batch (``src_digest`` /
``trg_digest``, computed by the datasets in the data workers: :mod:`semcorr.digest`); a batch
without them is hashed here, once per image, and only when a cache is read or filled. A backbone
that reads features by image name (``needs_ids``, e.g. ``backbone=precomputed``) gets the ids, and
its features are keyed on the id.

Stores (:class:`~semcorr.stores.FeatureStore`: ``get(key)`` / ``put(key, tensor)``) are
:class:`~semcorr.stores.MemoryCache` and :class:`~semcorr.stores.DiskCache`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from semcorr.backbones.base import Backbone, FeatureMap
from semcorr.digest import image_digest
from semcorr.stores import FeatureStore


class FeatureExtractor(nn.Module):
    """Runs the backbone once per distinct image of a batch, through ``stores`` when caching.

    Images of one call that share their key (same size and pixels, see :meth:`key`) are
    computed once (``dedupe``); with ``use_cache`` the ``stores`` are checked in order first, and
    computed features are written to all of them.

    Attributes:
        backbone_calls: number of images the backbone has processed.
    """

    def __init__(self, backbone: Backbone, stores: Sequence[FeatureStore] = (),
                 dedupe: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.stores = list(stores)
        self.dedupe = dedupe
        self.backbone_calls = 0

    def key(self, image: torch.Tensor, digest: Optional[str] = None,
            image_id: Optional[str] = None) -> str:
        """``<backbone cache key>|<H>x<W>|<pixel digest>`` of one (3, H, W) network-frame image;
        ``digest``: its :func:`~semcorr.digest.image_digest` when known (else computed).

        The key names the content, not the file: the same picture under two ids (PF-WILLOW
        subsets share files) is computed once, and an edited or augmented image never reuses
        stale features. For a backbone that ``needs_ids`` (its features are files named by the
        id) the id takes the digest's place.
        """
        h, w = image.shape[-2:]
        content = f"id:{image_id}" if self.needs_ids else (digest or image_digest(image))
        return f"{self.backbone.cache_key()}|{h}x{w}|{content}"

    @property
    def needs_ids(self) -> bool:
        return bool(getattr(self.backbone, "needs_ids", False))

    def _compute(self, images: torch.Tensor, ids: Optional[Sequence[str]]) -> FeatureMap:
        """The backbone on ``images`` (with their ``ids`` when it needs them), counted."""
        self.backbone_calls += images.shape[0]
        if self.needs_ids:
            return self.backbone(images, ids=list(ids))
        return self.backbone(images)

    def _lookup(self, key: str) -> Optional[torch.Tensor]:
        for i, store in enumerate(self.stores):
            value = store.get(key)
            if value is not None:
                for earlier in self.stores[:i]:  # promote disk hits to memory
                    earlier.put(key, value)
                return value
        return None

    def forward(self, images: torch.Tensor, ids: Optional[Sequence[str]] = None,
                use_cache: bool = False, digests: Optional[Sequence[str]] = None) -> FeatureMap:
        """Features of (B, 3, H, W) images. ``ids`` (B,) name the images; without them nothing is
        deduplicated or cached. ``digests`` (B,): the images' :func:`~semcorr.digest.image_digest`
        (the batch's ``src_digest`` / ``trg_digest``); without them the images are hashed here when
        a cache is used, and not deduplicated otherwise (a training step never hashes).

        Returns a :class:`FeatureMap` with (B, D, h, w) features.
        """
        # features of a backbone that is being trained go stale after every optimiser step
        trainable = any(p.requires_grad for p in self.backbone.parameters())
        caching = use_cache and bool(self.stores) and ids is not None and not trainable
        if ids is None and self.needs_ids:
            raise ValueError(f"{type(self.backbone).__name__} reads features by image id; the batch has none")
        if digests is None and caching and not self.needs_ids:  # a batch from outside the datasets
            digests = [image_digest(im) for im in images]
        identified = ids is not None and (self.needs_ids or digests is not None)
        if not identified or not (caching or self.dedupe):
            return self._compute(images, ids)
        if digests is not None and len(digests) != images.shape[0]:
            raise ValueError(f"{len(digests)} digests for {images.shape[0]} images")
        keys = [self.key(im, digests[b] if digests is not None else None, ids[b])
                for b, im in enumerate(images)]
        found: dict[str, torch.Tensor] = {}
        if caching:
            for key in dict.fromkeys(keys):
                value = self._lookup(key)
                if value is not None:
                    found[key] = value
        first = {}  # key -> first batch index needing computation
        for b, key in enumerate(keys):
            if key not in found and key not in first:
                first[key] = b
        stride = self.backbone.stride
        if first:
            todo = list(first.values())
            fmap = self._compute(images[todo], [ids[b] for b in todo])
            stride = fmap.stride
            for key, feats in zip(first, fmap.features):
                found[key] = feats
                if caching:  # a copy: a slice would keep the whole batch's storage alive
                    own = feats.detach().clone()
                    for store in self.stores:
                        store.put(key, own)
        feats = torch.stack([found[k].to(images.device) for k in keys])
        return FeatureMap(features=feats, stride=stride)
